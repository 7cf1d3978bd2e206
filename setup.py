"""Build hook: the wheel carries callrouter's default data inside the package.

The repository keeps the data at the top level (DATA_DIRS: asterisk-conf/, ivr_prompts/,
kamailio-conf/, queues/, sip-sim/), where a checkout reads it. ``build_py`` copies those
directories into the built package as ``callrouter/data/<dir>/``, so an installed callrouter
finds them through importlib.resources (``callrouter.config``) with no setting. An editable
install reads the checkout's directories directly: nothing is copied for it. Everything else
is declared in setup.cfg.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# keep in step with callrouter.config.DATA_DIRS and MANIFEST.in (the build must not import
# the package; tests/unit/test_config.py checks all three agree)
DATA_DIRS = ("asterisk-conf", "ivr_prompts", "kamailio-conf", "queues", "sip-sim")


class BuildPyWithData(build_py):
    def run(self) -> None:
        editable = getattr(self, "editable_mode", False)
        if not editable:
            # an in-tree build reuses build/lib: a module moved or removed since the last
            # build would otherwise still ship in the wheel
            shutil.rmtree(Path(self.build_lib) / "callrouter", ignore_errors=True)
        super().run()
        if editable:
            return
        target = Path(self.build_lib) / "callrouter" / "data"
        for name in DATA_DIRS:
            src = ROOT / name
            if not src.is_dir():
                raise SystemExit(f"setup.py: {src} is missing; the wheel would ship without its data")
            shutil.copytree(src, target / name, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*~", ".*"))


setup(cmdclass={"build_py": BuildPyWithData})
