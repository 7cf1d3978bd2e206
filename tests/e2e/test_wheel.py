"""The built wheel, installed into fresh venvs outside the source tree (issue 12 item 3).

The wheel is built once per session from a copy of what the build reads (so a build in
the shared checkout is not disturbed and nothing else of the tree leaks in). For Python
3.11, 3.12 and 3.13 (Debian's, pyenv's or uv's interpreter, whichever is here; under CI a
missing one fails) it is installed with the host's pip configuration into a fresh venv and
run from a directory outside the tree with no PYTHONPATH and no data setting: every module
imports, the shipped data is found inside the installed package (number plan, lines,
categories, units, keywords, prompt scripts spoken through espeak-ng and pydub, SIPp
scenarios, pages), the Asterisk configuration renders, the simulator runs a shipped
scenario; the wheel holds every data file byte for byte. On 3.13 (Debian sid's Python, the
image's) `callrouter demo` runs against the session's Asterisk. 1.5 to 2.5 min in all on the
shared 2-core box (warm pip cache), most of it the three installs (run at once) and the demo
(about 25 s).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from callrouter.config import DATA_DIRS
from tests.conftest import missing_part, wait_for
from tests.e2e.conftest import Engine, EngineFactory, asterisk_leftovers

ROOT = Path(__file__).resolve().parents[2]
VERSIONS = ("3.11", "3.12", "3.13")
DEMO_VERSION = "3.13"
# what the build reads: the package, the data it maps into the wheel, the metadata
BUILD_INPUTS = ("setup.py", "setup.cfg", "pyproject.toml", "MANIFEST.in", "README.md", "callrouter", *DATA_DIRS)
# settings that would point the installed callrouter at the checkout's data
DATA_SETTINGS = ("CALLROUTER_DATA_DIR", "CALLROUTER_CONFIG", "CALLROUTER_NUMBERPLAN", "CALLROUTER_CATEGORIES",
                 "CALLROUTER_UNITS", "CALLROUTER_LINES", "CALLROUTER_KEYWORDS")


def find_interpreter(version: str) -> str | None:
    """An interpreter of ``version`` with venv and ensurepip, from PATH, Debian, pyenv or
    uv's managed ones (already installed: nothing is downloaded)."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [shutil.which(f"python{version}"), f"/usr/bin/python{version}",
                  *sorted(glob.glob(str(pyenv / "versions" / f"{version}.*" / "bin" / f"python{version}")),
                          reverse=True),
                  *sorted(glob.glob(str(Path.home() / ".local/share/uv/python" / f"cpython-{version}.*" / "bin"
                                        / f"python{version}")), reverse=True)]
    for cand in candidates:
        if not cand or not os.access(cand, os.X_OK):
            continue
        probe = subprocess.run([cand, "-c", "import sys, venv, ensurepip; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True, timeout=30, check=False)
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return cand
    return None


def outside_env(home: Path) -> dict[str, str]:
    """The environment of a user of the installed package: no PYTHONPATH, no venv of the
    tests, no setting naming the data; the isolation settings (binds, ports) stay."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSAFEPATH") and k not in DATA_SETTINGS}
    env["CALLROUTER_HOME"] = str(home)
    return env


@dataclass
class Installed:
    version: str
    venv: Path
    install_s: float

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def data_dir(self) -> Path:
        site = self.venv / "lib" / f"python{self.version}" / "site-packages"
        return site / "callrouter" / "data"


class Wheels:
    """The wheel (built on first use) and a fresh venv per Python version holding it, the
    three installed at once (mostly waiting on the index)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self._pool = ThreadPoolExecutor(len(VERSIONS))
        self._wheel: Path | None = None
        self._installs: dict[str, Future[Installed | None]] = {}

    def wheel(self) -> Path:
        if self._wheel is None:
            self._wheel = self.build()
            # the installs start at once, while the tests that need no venv run
            self._installs = {v: self._pool.submit(self._install, v, self._wheel) for v in VERSIONS}
        return self._wheel

    def build(self) -> Path:
        src = self.tmp / "src"
        for name in BUILD_INPUTS:
            path = ROOT / name
            if path.is_dir():
                shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                src.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, src / name)
        out = self.tmp / "dist"
        build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
                               cwd=self.tmp, capture_output=True, text=True, timeout=300, check=False)
        assert build.returncode == 0, build.stdout + build.stderr
        (wheel,) = out.glob("callrouter-*.whl")
        return wheel

    def _install(self, version: str, wheel: Path) -> Installed | None:
        python = find_interpreter(version)
        if python is None:
            return None
        venv = self.tmp / f"venv-{version}"
        started = time.monotonic()
        subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=120, cwd=self.tmp)
        pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile", str(wheel)],
                             cwd=self.tmp, capture_output=True, text=True, timeout=600, check=False,
                             env=outside_env(self.tmp / "home"))
        assert pip.returncode == 0, f"Python {version}: pip install {wheel.name}:\n{pip.stdout}{pip.stderr[-5000:]}"
        return Installed(version, venv, time.monotonic() - started)

    def install(self, version: str) -> Installed:
        self.wheel()
        installed = self._installs[version].result()
        if installed is None:
            missing_part(f"a Python {version} interpreter with venv (Debian's python{version}, pyenv's or uv's)")
            raise AssertionError("unreachable")
        return installed

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        for venv in self.tmp.glob("venv-*"):  # about 110 MB each
            shutil.rmtree(venv, ignore_errors=True)


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Wheels]:
    # outside the source tree: /tmp (pytest's base temp), never under the checkout
    tmp = tmp_path_factory.mktemp("wheel")
    assert not tmp.resolve().is_relative_to(ROOT)
    wheels = Wheels(tmp)
    yield wheels
    wheels.close()


# runs inside the installed venv, from outside the tree
SMOKE = r"""
import importlib, json, pkgutil, sys, tempfile
from pathlib import Path
import callrouter
for mod in pkgutil.walk_packages(callrouter.__path__, "callrouter."):
    importlib.import_module(mod.name)
from callrouter.config import DATA_DIRS, load_settings
from callrouter.numberplan import load_plan
from callrouter.acd.lines import load_lines
from callrouter.categories import load_categories
from callrouter.dispatch.units import load_units
from callrouter.speech.keywords import load_keywords
from callrouter.prompts import load_scripts, speak
from callrouter.prompts.mandarin import script
from callrouter.provision.render import AsteriskPaths, render_config
from callrouter.sim.trunk import SCENARIO, scenario_path
from callrouter.api.app import STATIC_DIR
s = load_settings()
plan = load_plan(s.numberplan_path)
scripts = load_scripts(s.data_dir / "ivr_prompts")
name, text = sorted(scripts.items())[0]
audio = speak(script(text))
lines = load_lines(s.lines_path)
with tempfile.TemporaryDirectory() as d:
    conf = render_config(s, Path(d), AsteriskPaths(), ["s110-01", "s96345-01"])
    extensions = (Path(d) / "extensions.conf").read_text()
print(json.dumps({
    "python": "%d.%d" % sys.version_info[:2],
    "package": str(Path(callrouter.__file__).parent),
    "data_dir": str(s.data_dir),
    "data_dirs": [n for n in DATA_DIRS if (s.data_dir / n).is_dir()],
    "numbers": len(plan),
    "lines": sorted(line.id for line in lines.lines),
    "categories": len(load_categories(s.categories_path, plan)),
    "units": len(load_units(s.units_path, plan).units),
    "keywords": load_keywords(s.keywords_path) is not None,
    "scripts": len(scripts),
    "spoken_ms": len(audio),
    "conf": sorted(p.name for p in conf),
    "stasis_in_dialplan": "Stasis(" in extensions,
    "trunk_scenario": scenario_path(s, SCENARIO).is_file(),
    "pages": sorted(p.name for p in STATIC_DIR.glob("*.html")),
}))
"""


def test_the_wheel_holds_the_shipped_data_byte_for_byte(wheels: Wheels) -> None:
    with zipfile.ZipFile(wheels.wheel()) as whl:
        names = set(whl.namelist())
        assert {n.split("/", 1)[0] for n in names} == {"callrouter", "callrouter-0.1.0.dist-info"}, sorted(names)
        for name in DATA_DIRS:
            files = [f for f in (ROOT / name).rglob("*") if f.is_file() and "__pycache__" not in f.parts]
            assert files, name
            for f in files:
                packed = f"callrouter/data/{f.relative_to(ROOT).as_posix()}"
                assert packed in names, packed
                assert whl.read(packed) == f.read_bytes(), packed
        pages = [f"callrouter/api/static/{f.name}" for f in (ROOT / "callrouter/api/static").iterdir()]
        assert pages and set(pages) <= names


@pytest.mark.parametrize("version", VERSIONS)
def test_the_installed_wheel_finds_its_data_and_runs(wheels: Wheels, version: str) -> None:
    inst = wheels.install(version)
    cwd = wheels.tmp / f"run-{version}"
    cwd.mkdir(exist_ok=True)
    env = outside_env(wheels.tmp / f"home-{version}")

    def run(*args: str, timeout: float = 120) -> str:
        done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        # stdout only: stderr may hold a dependency's warnings (pydub's SyntaxWarning on 3.12+)
        return done.stdout

    callrouter = str(inst.bin / "callrouter")
    assert "demo" in run(callrouter, "--help")
    data = inst.data_dir()
    assert run(callrouter, "plan", "check").startswith(f"{data / 'queues' / 'numberplan.csv'}: ok")
    assert run(callrouter, "dispatch", "units", "check").startswith(f"{data / 'queues' / 'units.toml'}: ok")
    assert json.loads(run(callrouter, "plan", "route", "110"))["line"] == "110"
    sim = json.loads(run(callrouter, "simulate", str(data / "queues" / "scenarios" / "storm-night.toml"),
                         "--duration", "600", "--json"))
    assert sim["runs"] and sim["runs"][0]["calls"] > 0

    got = json.loads(run(str(inst.bin / "python"), "-c", SMOKE).strip().splitlines()[-1])
    assert got["python"] == version
    assert Path(got["package"]).is_relative_to(inst.venv), got  # not the checkout
    assert got["data_dir"] == str(data) and got["data_dirs"] == list(DATA_DIRS), got
    assert got["numbers"] > 100 and got["lines"] == ["110", "96345"], got
    assert got["categories"] > 0 and got["units"] > 0 and got["keywords"] and got["scripts"] > 0, got
    assert got["spoken_ms"] > 200, got  # espeak-ng's voice through pydub (audioop-lts on 3.13)
    assert got["conf"] == sorted(p.name for p in (ROOT / "asterisk-conf").glob("*.conf")), got
    assert got["stasis_in_dialplan"] and got["trunk_scenario"], got
    assert {"agent.html", "unit.html", "wallboard.html"} <= set(got["pages"]), got
    sys.stderr.write(f"\nwheel: Python {version}: venv + install {inst.install_s:.1f} s (the three at once)\n")


def test_callrouter_demo_from_the_installed_wheel(wheels: Wheels, engines: EngineFactory) -> None:
    """`callrouter demo` of the wheel installed for Debian sid's Python, run from outside
    the tree against the session's Asterisk (its configuration rendered again from the
    installed package's templates); dispatch too when Redis answers."""
    inst = wheels.install(DEMO_VERSION)
    settings = engines.settings
    try:
        redis.Redis.from_url(settings.redis_url).ping()
        with_redis = True
    except redis.RedisError:
        with_redis = False
    env = {**outside_env(settings.home), **engines.env}
    cwd = wheels.tmp / "demo"
    cwd.mkdir(exist_ok=True)
    out_path, err_path = cwd / "demo.out", cwd / "demo.log"
    # --keep-running: the session's Asterisk stays up for the tests after this one
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen([str(inst.bin / "callrouter"), "demo", "--calls", "12", "--keep-running"],
                                cwd=cwd, stdout=out, stderr=err, env=env)
    demo = Engine(proc, err_path, engines.db_url)
    engines.started.append(demo)  # stopped by the fixture whatever happens

    def log() -> str:
        return err_path.read_text(errors="replace")
    wait_for(lambda: "kept running" in log() or proc.poll() is not None, 120, "the demo's summary")
    assert proc.poll() is None, log()[-3000:]
    assert not asterisk_leftovers(engines)
    assert demo.stop(signal.SIGTERM) == 0, log()[-3000:]
    assert "Traceback" not in log(), log()[-3000:]
    summary = out_path.read_text()
    tickets = re.search(r"^(\d+) tickets$", summary, re.MULTILINE)
    assert tickets and int(tickets[1]) > 0, summary
    if with_redis:
        got = re.search(r"^dispatch: (\d+) of (\d+) answered calls' tickets got an order$", summary, re.MULTILINE)
        assert got and got[1] == got[2], summary
