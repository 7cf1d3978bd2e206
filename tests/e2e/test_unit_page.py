"""A 119 call in a named town through to "solved" (issue 10), every part real: the caller
over the SIPp trunk into Asterisk, a simulated seat answering, the seat setting the
caller's town over the API, the dispatcher as its own process (`callrouter dispatch run`)
opening an order for that town's fire unit, the unit's webhook received by a test server
with a valid signature, and the unit acknowledging and reporting on /unit in Chromium."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from aiohttp import web

from callrouter.sim.processes import end_process
from callrouter.sim.seats import SeatSpec, start_seats
from callrouter.sim.trunk import CallSpec
from callrouter.tickets import SetTranscript
from tests.conftest import missing_part, wait_for
from tests.e2e.conftest import EngineFactory
from tests.e2e.test_pages import ARTIFACTS, HOSTILE, _attr, _text, _token, browser  # noqa: F401 - browser is a fixture

TOWN, TOWN_NAME, UNIT = "zhukou", "竹口镇", "fire_zhukou"  # queues/units.toml: 竹口镇 and its fire station
CALLER = HOSTILE  # a caller id that would run script if the page inserted it as HTML
SAID = "<b>厨房着火了</b><img src=x onerror=document.title='said'>"


class WebhookReceiver:
    """A unit's own system as the test sees it: an aiohttp server (its own thread and
    loop) that records every POST it takes."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="webhook-receiver", daemon=True)
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def _hook(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        return web.json_response({"received": True})

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    def start(self) -> WebhookReceiver:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def units_with_webhook(src: Path, dest: Path, unit: str, url: str) -> Path:
    """The shipped units file with ``unit`` notified at ``url``."""
    text, n = re.subn(rf'(?m)^(id = "{unit}"\n(?:(?!\[\[).*\n)*?)(ack_minutes)',
                      rf'\g<1>notify = {{ webhook = "{url}" }}\n\g<2>', src.read_text())
    assert n == 1, f"{src}: no unit {unit} to give a webhook"
    dest.write_text(text)
    return dest


def api_as(engines: EngineFactory, token: str, method: str, path: str, body: object = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{engines.settings.api_url}{path}", data=data, method=method, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def cli(engines: EngineFactory, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "callrouter.cli", *args], env={**os.environ, **engines.env},
                         capture_output=True, text=True, check=False, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_a_119_call_in_a_named_town_is_dispatched_to_its_fire_unit_and_solved_from_the_unit_page(
        engines: EngineFactory, browser: Any, tmp_path: Path) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    web_: Any = browser
    client = redis.Redis.from_url(engines.settings.redis_url, decode_responses=True)
    try:
        client.ping()
    except redis.RedisError as exc:
        missing_part(f"Redis at {engines.settings.redis_url}: {exc}")
    finally:
        client.close()
    hooks = WebhookReceiver(engines.settings.api_bind).start()
    dispatcher: subprocess.Popen[bytes] | None = None
    seats = None
    try:
        units = units_with_webhook(engines.settings.units_path, tmp_path / "units.toml", UNIT,
                                   f"http://{hooks.host}:{hooks.port}/hook")
        engines.env["CALLROUTER_UNITS"] = str(units)
        engines.use_lines(wrap_up_s=1)
        engines.start()
        agent = _token(engines, "--role", "agent", "--seat", "s110-01")
        unit = _token(engines, "--role", "unit", "--unit", UNIT, "--name", "竹口消防站值班室")
        with (tmp_path / "dispatcher.log").open("wb") as log:
            dispatcher = subprocess.Popen([sys.executable, "-m", "callrouter.cli", "dispatch", "run"], stdout=log,
                                          stderr=subprocess.STDOUT, env={**os.environ, **engines.env})
        seats = start_seats(engines.settings, [SeatSpec("s110-01", answer_delay_s=0.3, talk_s=0)])
        engines.login("s110-01")
        # the unit's page is open before the call: the order must arrive over the live feed
        web_.get(f"{engines.settings.api_url}/unit?token={unit}")
        try:
            # (_attr and _text survive the page being replaced by its token-less self)
            wait_for(lambda: _text(web_, "#no-orders") and _attr(web_, "body", "data-live") == "live", 10,
                     "the unit's page, live and empty")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the page says {_text(web_, 'body')!r}") from exc
        assert "token" not in web_.current_url and _text(web_, "#unit") == "竹口消防站值班室"

        title = web_.title
        # percent-encoded in the From URI, as a carrier may send it
        thread, out = engines.calls_in_background([CallSpec("119", urllib.parse.quote(CALLER, safe=""), 6.0)], 1)

        def talking() -> dict[str, Any]:  # {}: not yet
            status, calls = api_as(engines, agent, "GET", "/api/calls")
            assert status == 200, calls
            return next((c for c in calls if c["seat"] == "s110-01" and c["phase"] == "talking"), {})
        ticket_id = str(wait_for(talking, 15, "the seat to answer the caller")["ticket"])
        # the seat sets the caller's town while talking (the console's town list does this)
        # the call is a moment old: its ticket's first write may still be under way, which
        # the API answers 409 "being written; try again in a moment" (as a console does)
        def set_town() -> tuple[int, Any] | None:
            got = api_as(engines, agent, "POST", f"/api/tickets/{ticket_id}/town", {"town": TOWN})
            return None if got[0] == 409 and "being written" in str(got[1]) else got
        status, body = wait_for(set_town, 5, "the ticket written, then the town set")
        assert status == 200, body
        # what the caller said (speech recognition writes this while the caller waits; the
        # simulated caller is silent, so the test writes it, as recognised markup)
        store = engines.store()
        try:
            store.apply([SetTranscript(ticket_id, "test", SAID, datetime.now(UTC), final=True)])
        finally:
            store.close()
        thread.join(timeout=30)
        assert out and out[0].calls[0].ok, "the caller stayed connected until hanging up"

        # the dispatcher opens the order for the town's fire unit; it reaches the page live
        card = f'[data-order="O{ticket_id}-1"]'
        try:
            wait_for(lambda: web_.find_elements(By.CSS_SELECTOR, card), 20, "the order on the unit's page")
        except AssertionError as exc:
            log_tail = (tmp_path / "dispatcher.log").read_text(errors="replace")[-3000:]
            raise AssertionError(f"{exc}; the page says {_text(web_, 'main')!r}; dispatcher log:\n{log_tail}") from exc
        assert _attr(web_, card, "data-state") == "notified"
        due = _text(web_, f"{card} .o-due")
        assert due.startswith("签收时限还剩"), due  # 竹口's fire station has 3 minutes
        wait_for(lambda: _text(web_, f"{card} .o-due") not in ("", due), 5, "the deadline counting down")
        assert _text(web_, f"{card} .o-dialled") == "119"
        assert _text(web_, f"{card} .o-category") == "火警", "the category by its label, never the slug"
        assert _text(web_, f"{card} .o-town-name") == TOWN_NAME
        assert _text(web_, f"{card} .o-contact") == CALLER, "the caller's number, as text"
        assert web_.title == title and not web_.find_elements(By.CSS_SELECTOR, "main img"), "no markup from caller data"
        assert _text(web_, f"{card} .o-ticket") == ticket_id
        assert _text(web_, f"{card} .o-transcript") == SAID, "the transcript, as text"

        # the unit's own system got the webhook, signed with the unit's secret
        wait_for(lambda: hooks.received, 20, "the unit's webhook")
        headers, raw = hooks.received[0]
        secret = cli(engines, "dispatch", "secret", UNIT).strip()
        stamp = headers["X-Callrouter-Timestamp"]
        expected = hmac.new(secret.encode(), stamp.encode() + b"." + raw, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Callrouter-Signature"], f"sha256={expected}"), "a valid signature"
        assert abs(time.time() - int(stamp)) < 120
        payload = json.loads(raw)
        assert payload["delivery"] == headers["X-Callrouter-Delivery"]
        assert payload["order"]["id"] == f"O{ticket_id}-1" and payload["order"]["unit"] == UNIT
        assert payload["ticket"]["id"] == ticket_id and payload["ticket"]["town"] == TOWN
        assert payload["ticket"]["caller"] == CALLER

        # the unit acknowledges, then reports back, on its page
        web_.find_element(By.CSS_SELECTOR, f"{card} button.ack").click()
        wait_for(lambda: _attr(web_, card, "data-state") == "acknowledged", 10, "the order acknowledged")
        web_.find_element(By.CSS_SELECTOR, f"{card} textarea.result-text").send_keys("明火已扑灭，无人员伤亡")
        Select(web_.find_element(By.CSS_SELECTOR, f"{card} select.solved")).select_by_value("true")
        ARTIFACTS.mkdir(exist_ok=True)
        web_.save_screenshot(str(ARTIFACTS / "unit.png"))
        web_.find_element(By.CSS_SELECTOR, f"{card} button.report").click()
        wait_for(lambda: web_.find_elements(By.ID, "no-orders"), 10, "the reported order to leave the open list")

        def solved() -> dict[str, Any]:  # {}: not yet
            status, ticket = api_as(engines, engines.settings.secret("api_token"), "GET", f"/api/tickets/{ticket_id}")
            assert status == 200, ticket
            return ticket if ticket.get("solved_at") else {}
        assert wait_for(solved, 10, "the ticket solved")["town"] == TOWN
        status, orders = api_as(engines, unit, "GET", "/api/orders?open=0")
        assert status == 200 and [(o["state"], o["solved"], o["result"]) for o in orders] == [
            ("reported", True, "明火已扑灭，无人员伤亡")]
        assert orders[0]["acknowledged_by"].startswith(f"unit:{UNIT}")
        assert len(hooks.received) == 1, "one order, one webhook"
    finally:
        if seats is not None:
            seats.stop()
        killed = dispatcher is not None and end_process(dispatcher, wait_s=10).killed
        hooks.stop()
    assert not killed, "the dispatcher outlived SIGTERM: " + (tmp_path / "dispatcher.log").read_text()[-2000:]
