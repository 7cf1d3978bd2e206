"""The wallboard and the agent console in a real headless Chromium, against a live engine
on the real Asterisk with SIPp callers and seats. Screenshots go to artifacts/."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from callrouter.sim.seats import SeatSpec, start_seats
from callrouter.sim.trunk import CallSpec, run_calls
from tests.conftest import missing_part, wait_for
from tests.e2e.conftest import EngineFactory

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        missing_part("Debian's chromium and chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={tmp_path / 'chrome'}", "--window-size=1400,900"):
        options.add_argument(arg)
    web = webdriver.Chrome(service=Service(str(driver)), options=options)
    try:
        yield web
    finally:
        web.quit()


def _token(engines: EngineFactory, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "callrouter.cli", "tokens", "create", *args],
                         env={**os.environ, **engines.env}, capture_output=True, text=True, check=False, timeout=30)
    assert out.returncode == 0, out.stderr
    return str(json.loads(out.stdout)["token"])


def _log_time(log: str, needle: str) -> float | None:
    for line in log.splitlines():
        if needle in line:
            return datetime.fromisoformat(line.split()[0][3:]).timestamp()
    return None


def _text(web: object, css: str) -> str:
    from selenium.webdriver.common.by import By

    try:
        return str(web.find_element(By.CSS_SELECTOR, css).text)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - not rendered yet
        return ""


def _attr(web: object, css: str, name: str) -> str:
    from selenium.webdriver.common.by import By

    try:
        return str(web.find_element(By.CSS_SELECTOR, css).get_attribute(name))  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - not rendered yet
        return ""


def test_wallboard_shows_a_caller_within_a_second_and_seat_tiles_follow(engines: EngineFactory,
                                                                        browser: object) -> None:
    engines.use_lines(wrap_up_s=1)
    engine = engines.start()
    token = _token(engines, "--role", "supervisor")
    browser.get(f"{engines.settings.api_url}/wallboard?token={token}")  # type: ignore[attr-defined]
    wait_for(lambda: _text(browser, '[data-line="110"] [data-k="waiting"]') == "0", 10, "the wallboard to render")
    thread, out = engines.calls_in_background([CallSpec("119", "13950000001", 6.0)], 1)
    arrived = wait_for(lambda: _log_time(engine.log(), "event=call_arrived"), 10, "the caller to arrive")
    wait_for(lambda: _text(browser, '[data-line="110"] [data-k="waiting"]') == "1", 5, "the caller on the wallboard")
    shown = time.time()
    assert shown - arrived < 1.0, f"the wallboard showed the caller {shown - arrived:.2f} s after arrival"
    seats = start_seats(engines.settings, [SeatSpec("s110-01", answer_delay_s=0.3, talk_s=0)])
    try:
        engines.login("s110-01")
        wait_for(lambda: _attr(browser, '[data-seat="s110-01"]', "data-state") == "on_call", 10,
                 "the seat tile to show the call")
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "wallboard.png"))  # type: ignore[attr-defined]
        thread.join(timeout=30)
        assert out and out[0].calls[0].ok
    finally:
        seats.stop()


def test_agent_console_pops_the_ticket_and_transfers_the_call(engines: EngineFactory, browser: object) -> None:
    from selenium.webdriver.common.by import By

    engines.use_lines(wrap_up_s=1)
    engines.start()
    token = _token(engines, "--role", "agent", "--seat", "s110-01")
    seats = start_seats(engines.settings, [SeatSpec("s110-01", answer_delay_s=0.3, talk_s=0)])
    try:
        browser.get(f"{engines.settings.api_url}/agent?token={token}")  # type: ignore[attr-defined]
        wait_for(lambda: _text(browser, "#seat") == "s110-01", 10, "the console to know its seat")
        browser.find_element(By.ID, "login").click()  # type: ignore[attr-defined]
        wait_for(lambda: _attr(browser, "#state", "data-state") == "ready", 10, "the seat logged in from the page")
        thread, out = engines.calls_in_background([CallSpec("119", "13950000002", 12.0)], 1)
        wait_for(lambda: _text(browser, "#t-dialled") == "119", 10, "the ticket to pop")
        assert _text(browser, "#t-category") == "火警" and _text(browser, "#t-caller") == "13950000002"
        assert _attr(browser, "#t-category", "data-category") == "fire", "the label shown, the slug kept as data"
        assert _text(browser, "#t-meaning") == "火警", "the dialled number's meaning from the plan"
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "agent.png"))  # type: ignore[attr-defined]
        browser.find_element(By.ID, "transfer").click()  # type: ignore[attr-defined]
        wait_for(lambda: engines.status()["lines"]["96345"]["waiting"] == 1, 10,
                 "the caller moved to the 96345 queue by the page's transfer button")
        thread.join(timeout=30)
        assert out and out[0].calls[0].ok, "the caller stayed connected"
    finally:
        seats.stop()


# A caller id from the phone network that would run script if a page inserted it as HTML
HOSTILE = "1<img src=x onerror=document.title='pwned'>"
HOSTILE_NAME = "<img src=x onerror=document.title='pwned2'>"


def _ticket_of(engines: EngineFactory, caller: str, n: int) -> list[dict[str, object]]:
    status, rows = engines.api("GET", "/api/tickets?limit=10&caller=" + urllib.parse.quote(caller, safe=""))
    assert status == 200 and isinstance(rows, list)
    return rows if len(rows) >= n else []


def test_hostile_caller_id_shows_as_text_and_runs_no_script(engines: EngineFactory, browser: object) -> None:
    from selenium.webdriver.common.by import By

    web: Any = browser
    engines.use_lines(wrap_up_s=1)
    engines.start()
    supervisor = _token(engines, "--role", "supervisor")
    agent = _token(engines, "--role", "agent", "--seat", "s110-01")
    seats = start_seats(engines.settings, [SeatSpec("s110-01", answer_delay_s=0.3, talk_s=0),
                                           SeatSpec("s110-02", answer_delay_s=0.3, talk_s=0)])
    hostile_uri = urllib.parse.quote(HOSTILE, safe="")  # percent-encoded in the From URI, as a carrier may send
    try:
        # 1. the wallboard while the hostile caller's first call is answered by s110-02
        engines.login("s110-02")
        web.get(f"{engines.settings.api_url}/wallboard?token={supervisor}")
        wait_for(lambda: _text(web, '[data-line="110"] [data-k="waiting"]') == "0", 10, "the wallboard to render")
        assert "token" not in web.current_url, "the token left the address bar"
        title = web.title
        first = run_calls(engines.settings, [CallSpec("119", hostile_uri, 1.0, caller_name=HOSTILE_NAME)], rate=1)
        assert first.calls[0].ok, first
        rows = wait_for(lambda: _ticket_of(engines, HOSTILE, 1), 10, "the first ticket")
        # the payload really reached the engine as markup: else this test would prove nothing
        assert rows[0]["caller"] == HOSTILE and rows[0]["caller_name"] == HOSTILE_NAME and rows[0]["seat"] == "s110-02"
        wait_for(lambda: _text(web, '#by-number [data-key="119"]').endswith("1"), 10, "today's count of 119")
        # (the one image the wallboard has of its own: the staffing chart, an API resource)
        assert web.title == title and not web.find_elements(By.CSS_SELECTOR, "main img:not(#staffing-chart)")

        # 2. the same caller again, now answered at the agent console's seat
        engines.api("POST", "/api/seats/s110-02/logout")
        web.get(f"{engines.settings.api_url}/agent?token={agent}")
        wait_for(lambda: _text(web, "#seat") == "s110-01", 10, "the console to know its seat")
        assert "token" not in web.current_url
        assert agent not in str(web.execute_script("return document.cookie + JSON.stringify(sessionStorage)")), \
            "the token is out of the page scripts' reach (HttpOnly cookie)"
        title = web.title
        web.find_element(By.ID, "login").click()
        wait_for(lambda: _attr(web, "#state", "data-state") == "ready", 10, "the seat logged in from the page")
        thread, out = engines.calls_in_background([CallSpec("119", hostile_uri, 6.0, caller_name=HOSTILE_NAME)], 1)
        wait_for(lambda: _text(web, "#t-caller") == HOSTILE, 10, "the hostile number shown as text")
        wait_for(lambda: _text(web, "#t-caller-name") == HOSTILE_NAME, 10, "the hostile name shown as text")
        # the caller's earlier ticket (answered by another seat) is in the history
        wait_for(lambda: web.find_elements(By.CSS_SELECTOR, f'#history [data-ticket="{rows[0]["id"]}"]'), 10,
                 "the caller's earlier ticket in the console's history")
        assert not web.find_elements(By.CSS_SELECTOR, "main img:not(#staffing-chart)"), "no element was made from caller data"
        # even markup that did get in could not run: the CSP forbids inline handlers
        web.execute_script("document.getElementById('result').innerHTML = "
                           "'<img src=x onerror=\"document.title=\\'csp-failed\\'\">'")
        time.sleep(0.5)  # give an (unwanted) onerror handler its chance to run
        assert web.title == title, f"a script ran: title is {web.title!r}"
        ARTIFACTS.mkdir(exist_ok=True)
        web.save_screenshot(str(ARTIFACTS / "agent-hostile-caller.png"))
        thread.join(timeout=30)
        assert out and out[0].calls[0].ok
    finally:
        seats.stop()
    status, headers = _csp_of(engines, "/agent")
    assert status == 200 and "script-src 'self'" in headers and "unsafe-inline" not in headers


def _csp_of(engines: EngineFactory, path: str) -> tuple[int, str]:
    with urllib.request.urlopen(f"{engines.settings.api_url}{path}", timeout=5) as resp:
        return resp.status, str(resp.headers.get("Content-Security-Policy", ""))


def test_a_page_shows_its_feed_is_stale_and_recovers_when_the_engine_returns(engines: EngineFactory,
                                                                             browser: object) -> None:
    web: Any = browser
    engine = engines.start()
    token = _token(engines, "--role", "supervisor")
    web.get(f"{engines.settings.api_url}/wallboard?token={token}")
    wait_for(lambda: web.find_element("css selector", "body").get_attribute("data-live") == "live", 10,
             "the live feed")
    assert engine.stop() == 0
    wait_for(lambda: web.find_element("css selector", "body").get_attribute("data-live") == "stale", 10,
             "the page to say its figures are stale")
    assert "过时" in _text(web, "#live")
    engines.start()
    # the session cookie outlives the engine: the page reconnects by itself, no token again
    wait_for(lambda: web.find_element("css selector", "body").get_attribute("data-live") == "live", 20,
             "the page to reconnect to the returned engine")
    wait_for(lambda: _text(web, '[data-line="110"] [data-k="waiting"]') == "0", 10, "fresh figures")
