"""The house's import direction (DESIGN.md): no package imports a package that imports it,
no module cycle inside a package, and the pure core (acd/, callflow included) imports
nothing of the shell. Read from the source by scripts/import_cycles.py (no import)."""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def _cycles_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("import_cycles", ROOT / "scripts" / "import_cycles.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("import_cycles", module)
    spec.loader.exec_module(module)
    return module


@functools.cache
def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = _cycles_script().graph()
    return edges


def test_no_import_cycles() -> None:
    script = _cycles_script()
    edges = _edges()
    assert script.cycles(script.package_graph(edges)) == []
    assert script.cycles(edges) == []


def test_the_acd_core_imports_only_itself() -> None:
    edges = _edges()
    outside = {f"{m} -> {t}" for m, ts in edges.items() if m.startswith("callrouter.acd")
               for t in ts if not t.startswith("callrouter.acd")}
    assert outside == set()


def test_the_engine_wiring_is_imported_by_the_cli_and_the_demo_only() -> None:
    edges = _edges()
    assert {m for m, ts in edges.items() if "callrouter.engine" in ts} <= {"callrouter.cli", "callrouter.demo"}
