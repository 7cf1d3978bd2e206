"""Import cycles in the callrouter package, from the source (ast), without importing it.

    python scripts/import_cycles.py            # package cycles and module cycles
    python scripts/import_cycles.py --strict   # exit 1 if any cycle (CI)

Counts every ``import``/``from … import`` of a callrouter module, at module level or
inside a function (a deferred import is still a dependency), but not those under
``if TYPE_CHECKING:`` (no run-time dependency). Packages are the first level under
``callrouter`` (``calls``, ``api``, ``acd``…; a top-level module is its own package).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "callrouter"


def module_name(path: Path) -> str:
    parts = ["callrouter", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path, modules: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("callrouter") and (target := resolve(alias.name)):
                    found.add(target)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[:len(package.split(".")) - node.level + 1], base]).rstrip(".")
            if base.startswith("callrouter"):
                for alias in node.names:
                    target = resolve(f"{base}.{alias.name}") or resolve(base)
                    if target:
                        found.add(target)
        for child in ast.iter_child_nodes(node):
            visit(child)
    visit(tree)
    found.discard(me)
    return found


def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in ROOT.rglob("*.py")}
    modules = set(paths)
    return {m: imports_of(p, modules) for m, p in sorted(paths.items())}


def package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    sys.setrecursionlimit(10000)

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    for v in sorted(edges):
        if v not in index:
            strong(v)
    return sorted(out)


def package_graph(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    packages: dict[str, set[str]] = {}
    for module, targets in edges.items():
        src = package_of(module)
        packages.setdefault(src, set()).update(package_of(t) for t in targets if package_of(t) != src)
    return packages


def witnesses(edges: dict[str, set[str]], a: str, b: str) -> list[str]:
    return sorted(f"{m} -> {t}" for m, ts in edges.items() for t in ts
                  if package_of(m) == a and package_of(t) == b)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strict", action="store_true", help="exit 1 when there is any cycle")
    args = parser.parse_args(argv)
    edges = graph()
    pkg = package_graph(edges)
    pkg_cycles = cycles(pkg)
    mod_cycles = cycles(edges)
    print(f"package cycles: {len(pkg_cycles)}")
    for comp in pkg_cycles:
        print("  " + " <-> ".join(comp))
        for a in comp:
            for b in comp:
                if b in pkg.get(a, ()):
                    for w in witnesses(edges, a, b):
                        print(f"      {w}")
    print(f"module cycles: {len(mod_cycles)}")
    for comp in mod_cycles:
        print("  " + " <-> ".join(comp))
    return 1 if args.strict and (pkg_cycles or mod_cycles) else 0


if __name__ == "__main__":
    raise SystemExit(main())
