"""The seats' and the wallboard's side of dispatch (issue 10) in a real headless Chromium,
against a live engine on the real Asterisk with SIPp callers and seats: the console sets the
caller's town and the category (by its Chinese label) and sends the ticket to dispatch, and
completes the follow-up call (回访); the wallboard draws the last hour of a line and lists
the units with overdue orders first; a web request and its duplicate make one ticket and,
through the dispatcher (its own process), one order, and the wallboard shows the other
channels' requests (a new one live) by channel, never by contact."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from callrouter.dispatch.store import DispatchStore
from callrouter.dispatch.units import Units, load_units
from callrouter.numberplan import load_plan
from callrouter.sim.processes import end_process
from callrouter.sim.seats import SeatSpec, start_seats
from callrouter.sim.trunk import CallSpec
from callrouter.tickets import OpenTicket
from tests.conftest import wait_for
from tests.e2e.conftest import EngineFactory
from tests.e2e.test_pages import ARTIFACTS, _attr, _text, _token, browser  # noqa: F401 - browser is a fixture
from tests.e2e.test_unit_page import api_as

TOWN, TOWN_NAME = "zhukou", "竹口镇"
HOSTILE_REPORT = "<img src=x onerror=document.title='pwned'>"


def _units(engines: EngineFactory) -> Units:
    return load_units(engines.settings.units_path, load_plan(engines.settings.numberplan_path))


def _ticket(engines: EngineFactory, ticket_id: str) -> dict[str, Any]:
    status, row = engines.api("GET", f"/api/tickets/{ticket_id}")
    return row if status == 200 and isinstance(row, dict) else {}


def _orders_of(engines: EngineFactory, ticket_id: str) -> list[dict[str, Any]]:
    store = engines.store()
    try:
        return [o for o in DispatchStore(store).orders(open_only=False, limit=1000) if o["ticket_id"] == ticket_id]
    finally:
        store.close()


def test_console_sets_town_and_category_sends_to_dispatch_and_completes_the_follow_up(
        engines: EngineFactory, browser: Any) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    web: Any = browser
    engines.use_lines(wrap_up_s=1)
    engines.start()
    units = _units(engines)
    water = units.choose("water_repair", TOWN)[0]
    agent = _token(engines, "--role", "agent", "--seat", "s96345-01")
    unit = _token(engines, "--role", "unit", "--unit", water.id, "--name", "供水抢修班")
    seats = start_seats(engines.settings, [SeatSpec("s96345-01", answer_delay_s=0.3, talk_s=0)])
    try:
        web.get(f"{engines.settings.api_url}/agent?token={agent}")
        wait_for(lambda: _text(web, "#seat") == "s96345-01", 10, "the console to know its seat")
        title = web.title
        wait_for(lambda: len(web.find_elements(By.CSS_SELECTOR, "#town option")) == 20, 10, "the 19 towns listed")
        web.find_element(By.ID, "login").click()
        wait_for(lambda: _attr(web, "#state", "data-state") == "ready", 10, "the seat logged in from the page")
        thread, out = engines.calls_in_background([CallSpec("12345", "13950000021", 8.0)], 1)
        wait_for(lambda: _text(web, "#t-dialled") == "12345", 10, "the ticket to pop")
        assert _text(web, "#t-category") == "政务服务", "the category by its Chinese label, not government_service"
        ticket_id = _attr(web, "#ticket", "data-ticket")
        # the category, chosen from the plan's categories by label (the call's own line first)
        category = Select(web.find_element(By.ID, "category"))
        assert category.first_selected_option.text == "政务服务"
        assert "供水抢修" in [o.text for o in category.options] and "water_repair" not in web.page_source.split(
            'id="category"')[1].split("</select>")[0].replace('value="water_repair"', ""), "labels, slugs as values"
        category.select_by_visible_text("供水抢修")
        web.find_element(By.ID, "reclassify").click()
        wait_for(lambda: _ticket(engines, ticket_id).get("category") == "water_repair", 10, "the ticket reclassified")
        Select(web.find_element(By.ID, "town")).select_by_visible_text(TOWN_NAME)
        web.find_element(By.ID, "set-town").click()
        wait_for(lambda: _ticket(engines, ticket_id).get("town") == TOWN, 10, "the caller's town on the ticket")
        wait_for(lambda: _text(web, "#t-town") == TOWN_NAME, 10, "the town shown on the console")
        web.find_element(By.ID, "dispatch").click()
        wait_for(lambda: _text(web, "#result") == "已派单：" + water.name, 10, "the console to say where it went")
        store = engines.store()
        try:
            wait_for(lambda: "dispatch_requested" in [e["kind"] for e in store.events(ticket_id)], 10,
                     "the ticket sent to dispatch")
        finally:
            store.close()
        assert _text(web, "#t-category") == "供水抢修"
        ARTIFACTS.mkdir(exist_ok=True)
        web.save_screenshot(str(ARTIFACTS / "agent-dispatch.png"))
        thread.join(timeout=30)
        assert out and out[0].calls[0].ok

        # the unit reports (the order opened as the dispatcher does): the citizen is called back
        store = engines.store()
        try:
            order = DispatchStore(store, units=units).open_order(ticket_id, datetime.now(UTC))
        finally:
            store.close()
        assert order is not None and order["unit"] == water.id
        assert api_as(engines, unit, "POST", f"/api/orders/{order['id']}/ack", {})[0] == 200
        # what a unit writes is data too: markup in its report must show as text on the console
        status, _ = api_as(engines, unit, "POST", f"/api/orders/{order['id']}/report",
                           {"result": "已更换爆裂水管，恢复供水" + HOSTILE_REPORT, "solved": True})
        assert status == 200
        web.refresh()
        wait_for(lambda: web.find_elements(By.CSS_SELECTOR, f'#follow-ups tr[data-ticket="{ticket_id}"]'), 10,
                 "the follow-up on the console's list")
        row = web.find_element(By.CSS_SELECTOR, f'#follow-ups tr[data-ticket="{ticket_id}"]')
        assert "供水抢修" in row.text and "已更换爆裂水管，恢复供水" + HOSTILE_REPORT in row.text and "13950000021" in row.text
        assert not web.find_elements(By.CSS_SELECTOR, "main img") and web.title == title, "no markup from the report"
        row.find_element(By.CSS_SELECTOR, "input").send_keys("市民确认已恢复")
        row.find_element(By.CSS_SELECTOR, "button.reached").click()
        wait_for(lambda: _ticket(engines, ticket_id).get("follow_up") == "done", 10, "the follow-up done")
        assert _ticket(engines, ticket_id)["solved_at"], "reached: the ticket is solved"
        wait_for(lambda: not web.find_elements(By.CSS_SELECTOR, f'#follow-ups tr[data-ticket="{ticket_id}"]'), 10,
                 "the follow-up off the list")
    finally:
        seats.stop()


def test_wallboard_chart_and_overdue_units_first_and_a_web_request_with_its_duplicate_is_one_ticket_one_order(
        engines: EngineFactory, browser: Any, tmp_path: Path) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By

    web: Any = browser
    engines.use_lines(wrap_up_s=1)
    engines.start()
    units = _units(engines)
    supervisor = _token(engines, "--role", "supervisor")
    intake = _token(engines, "--role", "intake", "--name", "county-web-form")
    dispatcher: subprocess.Popen[bytes] | None = None
    try:
        with (tmp_path / "dispatcher.log").open("wb") as log:
            dispatcher = subprocess.Popen([sys.executable, "-m", "callrouter.cli", "dispatch", "run"], stdout=log,
                                          stderr=subprocess.STDOUT, env={**os.environ, **engines.env})
        # a web request and its duplicate (the same citizen on WeChat): one ticket, one order
        body = {"channel": "web", "contact": "139 5000 0041", "category": "water_repair", "town": TOWN,
                "text": "小区停水两天了"}
        status, first = api_as(engines, intake, "POST", "/api/intake", body)
        assert status == 201 and first["linked"] is False, first
        status, again = api_as(engines, intake, "POST", "/api/intake",
                               {**body, "channel": "wechat", "contact": "+8613950000041", "text": "还是没水"})
        assert status == 200 and again["linked"] is True and again["ticket_id"] == first["ticket_id"], again
        status, rows = engines.api("GET", "/api/tickets?limit=50&category=water_repair")
        assert status == 200 and isinstance(rows, list) and [r["id"] for r in rows] == [first["ticket_id"]], rows
        water = units.choose("water_repair", TOWN)[0]
        orders = wait_for(lambda: _orders_of(engines, first["ticket_id"]), 15, "the dispatcher to open the order")
        time.sleep(2)  # a duplicate would be opened by now
        orders = _orders_of(engines, first["ticket_id"])
        assert [(o["unit"], o["attempt"]) for o in orders] == [(water.id, 1)], orders

        # an order its unit never acknowledged in time: overdue, first on the wallboard
        fire = units.choose("fire", None)[0]  # a ticket with no town: the county-wide fire unit
        store = engines.store()
        try:
            now = datetime.now(UTC)
            late_ticket = f"T{now:%Y%m%d-%H%M%S}-late.1"
            store.apply([OpenTicket(id=late_ticket, dialled="119", number="119", caller="13950000042", caller_name="",
                                    line="110", category="fire", department="县消防救援大队", priority=1, listed=True,
                                    channel_id="late.1", arrived_at=now)])
            assert DispatchStore(store, units=units, ack_max_s=1).open_order(late_ticket, now) is not None
        finally:
            store.close()
        web.get(f"{engines.settings.api_url}/wallboard?token={supervisor}")
        # the other channels on the wallboard: the web request with its order, by channel only (the
        # screen is public in the room: never the citizen's contact)
        row = f'#intake-open tr[data-ticket="{first["ticket_id"]}"]'
        wait_for(lambda: _text(web, row + ' [data-k="unit"]') == water.name, 10, "the web request and its unit")
        assert [_text(web, f'{row} [data-k="{k}"]') for k in ("channel", "category", "town", "state")] == \
            ["网站", "供水抢修", TOWN_NAME, "待签收"]
        assert _text(web, '#intake-channels tr[data-channel="web"] [data-k="requests"]') == "1"
        assert _text(web, '#intake-channels tr[data-channel="wechat"] [data-k="linked"]') == "1"
        # live: a forum request shows up through the feed, well before the page's 15 s fallback poll
        status, forum = api_as(engines, intake, "POST", "/api/intake",
                               {"channel": "forum", "contact": "Forum_User_Secret", "category": "urban_management",
                                "text": "路灯坏了" + HOSTILE_REPORT})
        assert status == 201, forum
        wait_for(lambda: _text(web, f'#intake-open tr[data-ticket="{forum["ticket_id"]}"] [data-k="channel"]')
                 == "论坛", 8, "the forum request on the wallboard, live")
        page = web.page_source
        for secret in ("13950000041", "139 5000 0041", "forum_user_secret", "Forum_User_Secret", "路灯坏了"):
            assert secret not in page, f"{secret!r} on the wall screen"
        assert not web.find_elements(By.CSS_SELECTOR, "main img:not(#staffing-chart)"), "no markup from a request"
        # its deadline passes a second later: the page learns it live (the escalation on the feed)
        wait_for(lambda: _attr(web, "#open-orders tr[data-unit]", "data-unit") == fire.id and
                 _attr(web, "#open-orders tr[data-unit]", "class") == "overdue", 20,
                 "the unit with the overdue order first, marked overdue")
        # the feed may redraw the table between a find and a read (a stale element reads as ""): retried
        wait_for(lambda: fire.name in _text(web, "#open-orders tr[data-unit]") and
                 _text(web, '#open-orders tr[data-unit] [data-k="overdue"]') == "1", 5, "the overdue unit's row")
        assert web.find_elements(By.CSS_SELECTOR, f'#open-orders tr[data-unit="{water.id}"]'), "the web request's unit"
        wait_for(lambda: web.find_elements(By.CSS_SELECTOR, f'#accountability tr[data-unit="{fire.id}"]'), 10,
                 "the month's accountability")
        # the chart: a caller waits on 110 (no seat there) and shows up in this minute's bar
        wait_for(lambda: web.find_elements(By.CSS_SELECTOR, 'svg[data-history-line="110"]'), 20, "the 110 chart")
        thread, out = engines.calls_in_background([CallSpec("110", "13950000043", 8.0)], 1)
        # the chart is redrawn every few seconds: its bars are read in one script, never found then read
        wait_for(lambda: web.execute_script(
            "return Array.from(document.querySelectorAll(arguments[0]))"
            ".some(r => Number(r.getAttribute('data-waiting') || 0) >= 1)",
            'svg[data-history-line="110"] rect[data-waiting]'), 25, "the waiting caller on the chart")
        assert "排队" in _text(web, "#history-section")
        ARTIFACTS.mkdir(exist_ok=True)
        web.set_window_size(1400, 1700)  # the whole board: chart, orders and accountability below the lines
        web.save_screenshot(str(ARTIFACTS / "wallboard-dispatch.png"))
        thread.join(timeout=30)
        assert out, "the caller's call ran"
        # categories by label on the wallboard too: today's 110 call is 报警求助, never "police"
        wait_for(lambda: _text(web, '#by-category [data-key="police"]').startswith("报警求助"), 40,
                 "today's categories by label")
    finally:
        if dispatcher is not None:
            assert not end_process(dispatcher, wait_s=10).killed, (tmp_path / "dispatcher.log").read_text()[-2000:]
