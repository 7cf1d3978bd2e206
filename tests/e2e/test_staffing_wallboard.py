"""The staffing chart on the wallboard, in a real headless Chromium: hidden until a plan
is published, shown (and loaded: an image the browser drew) once `callrouter staffing
plan --publish` wrote one, never to an agent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import wait_for
from tests.e2e.conftest import EngineFactory
from tests.e2e.test_pages import ARTIFACTS, _token, browser  # noqa: F401 - browser is a fixture

ROOT = Path(__file__).resolve().parents[2]
EVENING = f"""
[scenario]
name = "two-hours"
duration_s = 7200
seed = 1
lines = "{ROOT / 'queues' / 'lines.toml'}"

[[traffic]]
name = "110 calls"
line = "110"
priority = 1
calls_per_hour = [30, 50]
handle_mean_s = 90
patience_mean_s = 120

[[traffic]]
name = "96345 calls"
line = "96345"
priority = 5
calls_per_hour = [20, 30]
handle_mean_s = 150
patience_mean_s = 240
"""


def _shown(web: object) -> bool:
    # the section is shown once the image loaded; the browser drew it at its own size
    return bool(web.execute_script(  # type: ignore[attr-defined]
        "const s = document.getElementById('staffing'), i = document.getElementById('staffing-chart');"
        "return !s.hidden && i.complete && i.naturalWidth > 500;"))


def test_the_wallboard_shows_the_published_staffing_chart(engines: EngineFactory, browser: object,  # noqa: F811
                                                          tmp_path: Path) -> None:
    directory = tmp_path / "staffing"
    engines.env["CALLROUTER_STAFFING_DIR"] = str(directory)
    engines.start()
    supervisor = _token(engines, "--role", "supervisor")
    browser.get(f"{engines.settings.api_url}/wallboard?token={supervisor}")  # type: ignore[attr-defined]
    wait_for(lambda: browser.execute_script(  # type: ignore[attr-defined]
        "return document.querySelectorAll('[data-line]').length"), 10, "the wallboard to render")
    assert browser.execute_script("return document.getElementById('staffing').hidden")  # type: ignore[attr-defined]

    scenario = tmp_path / "evening.toml"
    scenario.write_text(EVENING)
    out = subprocess.run([sys.executable, "-m", "callrouter.cli", "staffing", "plan", "--scenario", str(scenario),
                          "--seeds", "1", "--publish"], env={**os.environ, **engines.env}, capture_output=True,
                         text=True, check=False, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (directory / "plan.svg").is_file() and (directory / "plan.json").is_file()
    browser.refresh()  # type: ignore[attr-defined]
    wait_for(lambda: _shown(browser), 15, "the staffing chart on the wallboard")
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "wallboard-staffing.png"))  # type: ignore[attr-defined]

    # an agent's wallboard: the chart is a supervisor's, so it stays hidden
    agent = _token(engines, "--role", "agent", "--seat", "s110-01")
    browser.delete_all_cookies()  # type: ignore[attr-defined]
    browser.get(f"{engines.settings.api_url}/wallboard?token={agent}")  # type: ignore[attr-defined]
    wait_for(lambda: browser.execute_script(  # type: ignore[attr-defined]
        "const i = document.getElementById('staffing-chart'); return i.complete && i.src !== '';"), 10,
        "the chart request to be answered")
    assert browser.execute_script("return document.getElementById('staffing').hidden")  # type: ignore[attr-defined]
