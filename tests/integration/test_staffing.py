"""The staffing planner against real ticket databases (SQLite, PostgreSQL) and the API
that serves its plan to the wallboard (aiohttp in-process, real store, no Asterisk)."""

from __future__ import annotations

import dataclasses
import io
import json
import socket
from collections.abc import AsyncIterator, Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from callrouter.acd import Acd, load_lines
from callrouter.api.app import build_app
from callrouter.api.tokens import TokenStore
from callrouter.ari import AriClient
from callrouter.calls.service import CallService
from callrouter.capacity.cli import _publish, staffing_main
from callrouter.capacity.history import learn_scenario, read_rows
from callrouter.capacity.report import render_svg
from callrouter.capacity.scenario import load_scenario
from callrouter.capacity.staffing import expected_calls, plan_staffing
from callrouter.cli import build_parser
from callrouter.config import Settings, load_settings
from callrouter.numberplan import load_plan
from callrouter.tickets import (
    AddTransfer,
    AnswerTicket,
    CloseTicket,
    OpenTicket,
    SetSeat,
    TicketOp,
    TicketStore,
    TicketWriter,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LINES = load_lines(ROOT / "queues" / "lines.toml")
SHANGHAI = ZoneInfo("Asia/Shanghai")
UNTIL = date(2026, 12, 1)  # a Tuesday
MakeStore = Callable[..., tuple[TicketStore, Any]]


def call(n: int, at: datetime, *, line: str = "110", category: str = "police", wait: float | None = 6.0,
         talk: float = 90.0, gave_up_after: float = 40.0, handed_to: str | None = None) -> list[TicketOp]:
    tid = f"T-{n}"
    ops: list[TicketOp] = [
        OpenTicket(id=tid, dialled=line, number=line, caller=f"1380000{n:04d}", caller_name="", line=line,
                   category=category, department="d", priority=1 if line == "110" else 5, listed=True,
                   channel_id=f"1764000000.{n}", arrived_at=at),
        AnswerTicket(tid, at + timedelta(milliseconds=30))]
    if wait is None:
        return [*ops, CloseTicket(tid, at + timedelta(seconds=gave_up_after), "abandoned")]
    seated = at + timedelta(seconds=wait)
    ops.append(SetSeat(tid, f"s{line}-01", seated))
    if handed_to is not None:
        ops.append(AddTransfer(tid, line, handed_to, f"s{line}-01", "misrouted", seated + timedelta(seconds=20)))
        seated += timedelta(seconds=40)
        ops.append(SetSeat(tid, f"s{handed_to}-01", seated))
    return [*ops, CloseTicket(tid, seated + timedelta(seconds=talk), "completed")]


def history() -> list[TicketOp]:
    """Four Tuesdays: 10 police calls at 09:xx (one gives up after 40 s), two misrouted
    calls at 14:xx handed to 96345, five 96345 calls at 10:xx; and a Wednesday."""
    ops: list[TicketOp] = []
    n = 0
    for week in range(1, 5):
        day = UNTIL - timedelta(weeks=week)
        for i in range(10):
            n += 1
            at = datetime(day.year, day.month, day.day, 9, 5 * i, tzinfo=SHANGHAI)
            ops += call(n, at, wait=None) if i == 0 else call(n, at, wait=6.0, talk=60.0 + 10 * i)
        for i in range(2):
            n += 1
            ops += call(n, datetime(day.year, day.month, day.day, 14, 10 * i, tzinfo=SHANGHAI),
                        category="public_service", handed_to="96345")
        for i in range(5):
            n += 1
            ops += call(n, datetime(day.year, day.month, day.day, 10, 7 * i, tzinfo=SHANGHAI), line="96345",
                        category="public_service", talk=150.0)
        wednesday = day + timedelta(days=1)
        n += 1
        ops += call(n, datetime(wednesday.year, wednesday.month, wednesday.day, 9, tzinfo=SHANGHAI))
    return ops


def test_a_tuesday_learned_from_the_ticket_database(backend: str, make_store: MakeStore) -> None:
    store, _ = make_store(backend)
    store.apply(history())
    start = datetime(2026, 11, 3, tzinfo=SHANGHAI)
    rows = list(read_rows(store, start, datetime(2026, 12, 1, tzinfo=SHANGHAI), batch=7))
    assert len(rows) == 4 * 18 and all(r.arrived_at.tzinfo is not None for r in rows)
    learned = learn_scenario(rows, LINES, day=date(2026, 12, 8), until=UNTIL, tz=SHANGHAI)
    streams = {s.name: s for s in learned.scenario.streams}
    assert set(streams) == {"110 police", "110 public_service", "96345 public_service"}
    police = streams["110 police"]
    assert expected_calls(police, 9 * 3600, 10 * 3600) == pytest.approx(10.0)
    assert expected_calls(police, 0, 86400) == pytest.approx(10.0)  # the Wednesday call is not a Tuesday's
    # handle and patience from every day of the window: 36 Tuesday talks of 70..150 s and 4
    # Wednesday ones of 90 s; 4 x 40 s given up + 40 x 6 s waited, over the 4 who gave up
    assert police.handle.mean_s == pytest.approx((36 * 110 + 4 * 90) / 40, abs=0.01)
    assert police.patience.mean_s == pytest.approx((4 * 40 + 40 * 6) / 4, abs=0.01)
    misrouted = streams["110 public_service"]
    assert (misrouted.line, misrouted.transfer_to, misrouted.transfer_probability) == ("110", "96345", 1.0)
    assert expected_calls(misrouted, 14 * 3600, 15 * 3600) == pytest.approx(2.0)
    assert expected_calls(streams["96345 public_service"], 10 * 3600, 11 * 3600) == pytest.approx(5.0)
    # and the planner plans that day: the 09:00 hour needs the most 110 seats
    plan = plan_staffing(learned.scenario, seeds=(1,), surge=0.0, jobs=1)
    seats = [r.seats for r in plan.rows["110"]]
    assert seats[9] == max(seats) >= 1 and all(plan.goals["110"].met(r.predicted) for r in plan.rows["110"])


def test_the_command_learns_from_the_engines_database(backend: str, make_store: MakeStore, tmp_path: Path) -> None:
    store, db = make_store(backend)
    store.apply(history())
    args = build_parser().parse_args(["staffing", "plan", "--history", "--weeks", "4", "--until", "2026-12-01",
                                      "--day", "2026-12-08", "--tz", "Asia/Shanghai", "--seeds", "1", "--jobs",
                                      "1", "--surge", "0", "--format", "json"])
    out, err = io.StringIO(), io.StringIO()
    assert staffing_main(args, Settings(home=tmp_path, db_url=db.url), out, err) == 0, err.getvalue()
    data = json.loads(out.getvalue())
    assert data["scenario"] == "history-tuesday" and data["periods"] == 24
    assert "learned from 72 tickets" in err.getvalue()
    assert data["rows"]["110"][9]["calls"] == pytest.approx(10.0)


# --- the API ------------------------------------------------------------------------------------
ADMIN = "integration-admin-token-staffing-0123456789"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, Path, TokenStore]]:
    settings = load_settings()
    store = TicketStore(f"sqlite:///{tmp_path / 'tickets.sqlite3'}")
    ari = AriClient(f"http://127.0.0.1:{_closed_port()}/ari", "u", "p", "callrouter")
    service = CallService(ari, load_plan(settings.numberplan_path), TicketWriter(store),
                          Acd(load_lines(settings.lines_path)))
    tokens = TokenStore(tmp_path / "tokens.json", ADMIN)
    directory = tmp_path / "staffing"
    app = build_app(service, tokens, store, settings.lines_path, settings.numberplan_path, staffing_dir=directory)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}", directory, tokens
    finally:
        await server.close()
        await ari.close()
        store.close()


async def test_the_wallboard_gets_the_published_plan_and_chart(served: tuple[str, Path, TokenStore]) -> None:
    base, directory, tokens = served
    supervisor = {"Authorization": f"Bearer {tokens.create('supervisor')}"}
    agent = {"Authorization": f"Bearer {tokens.create('agent', seat='s110-01')}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/api/staffing", headers=supervisor) as resp:
            body = await resp.json()
            assert resp.status == 404 and body["error"] == "no_staffing_plan" and "--publish" in body["details"]
        scenario = load_scenario(ROOT / "queues" / "scenarios" / "normal-tuesday.toml")
        scenario = dataclasses.replace(scenario, duration_s=2 * 3600.0)
        report = plan_staffing(scenario, seeds=(1,), surge=0.0, jobs=1)
        _publish(report, render_svg(report), directory)
        async with http.get(base + "/api/staffing", headers=supervisor) as resp:
            assert resp.status == 200 and resp.content_type == "application/json"
            data = await resp.json()
            assert data["kind"] == "plan" and data["periods"] == 2
            assert resp.headers["Cache-Control"] == "no-store"
        async with http.get(base + "/api/staffing/chart.svg", headers=supervisor) as resp:
            assert resp.status == 200 and resp.content_type == "image/svg+xml"
            svg = await resp.text()
            assert svg.startswith("<?xml") and "<svg" in svg and "<script" not in svg
            assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
        for path in ("/api/staffing", "/api/staffing/chart.svg"):
            async with http.get(base + path, headers=agent) as resp:
                assert resp.status == 403, path
            async with http.get(base + path) as resp:
                assert resp.status == 401, path
        async with http.post(base + "/api/staffing", headers=supervisor) as resp:
            assert resp.status == 405
