"""Dispatch orders over the API and the live feed (issue 10), in-process (aiohttp on
loopback) with a real ticket store and no Asterisk: the unit role's reach, which feed
clients get which order's changes, and the orders routes' answers."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from callrouter.acd import Acd, load_lines
from callrouter.api.app import FEED_KEY, build_app
from callrouter.api.dispatch import DISPATCH_KEY
from callrouter.api.tokens import TokenStore
from callrouter.ari import AriClient
from callrouter.calls.service import CallService
from callrouter.categories import load_categories
from callrouter.config import load_settings
from callrouter.dispatch.store import DispatchStore
from callrouter.dispatch.units import load_units
from callrouter.numberplan import load_plan
from callrouter.tickets import AnswerTicket, CloseTicket, OpenTicket, SetSeat, SetTown, TicketStore, TicketWriter

pytestmark = pytest.mark.integration

ADMIN = "integration-admin-token-0123456789"
UNIT_A, UNIT_B = "fire_zhukou", "fire_hedi"  # queues/units.toml: the fire units of 竹口镇 and 荷地镇
T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Api:
    def __init__(self, base: str, app: Any, store: TicketStore, tokens: dict[str, str]) -> None:
        self.base, self.app, self.store, self.tokens = base, app, store, tokens

    def order_for(self, n: int, town: str | None, *, line: str = "110", category: str = "fire",
                  caller: str = "13950000011") -> dict[str, Any]:
        """A call's ticket (answered, the caller's town set, closed) and the order the
        dispatcher opens for it."""
        tid = f"T20261201-080000-{n}.1"
        at = T0 + timedelta(seconds=n)
        self.store.apply([
            OpenTicket(id=tid, dialled="119" if line == "110" else "12345", number=line, caller=caller,
                       caller_name="", line=line, category=category, department="fire", priority=1, listed=True,
                       channel_id=f"chan-{n}", arrived_at=at),
            AnswerTicket(tid, at), SetSeat(tid, "s110-01", at + timedelta(seconds=2)),
            SetTown(tid, town, "agent:s110-01", at + timedelta(seconds=5)),
            CloseTicket(tid, at + timedelta(seconds=30), "completed")])
        order = self.app[DISPATCH_KEY].open_order(tid, at + timedelta(seconds=31))
        assert order is not None
        return dict(order)

    async def call(self, who: str, method: str, path: str, body: Any = None,
                   raw: bytes | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        async with aiohttp.ClientSession(headers=headers) as http, http.request(
                method, self.base + path, json=body if raw is None else None, data=raw) as resp:
            try:
                return resp.status, await resp.json()
            except (aiohttp.ContentTypeError, ValueError):
                return resp.status, await resp.text()


@pytest.fixture
async def api(tmp_path: Path, make_store: Callable[..., tuple[TicketStore, Any]]) -> AsyncIterator[Callable[..., Any]]:
    """``await api(backend="sqlite")`` -> a running API (a fresh ticket database, no
    Asterisk) with tokens for a supervisor, an agent and two units."""
    settings = load_settings()
    servers: list[TestServer] = []
    clients: list[AriClient] = []

    async def make(backend: str = "sqlite") -> Api:
        store, _ = await asyncio.to_thread(make_store, backend)
        ari = AriClient(f"http://127.0.0.1:{_closed_port()}/ari", "u", "p", "callrouter")
        clients.append(ari)
        service = CallService(ari, load_plan(settings.numberplan_path), TicketWriter(store),
                              Acd(load_lines(settings.lines_path)))
        tokens = TokenStore(tmp_path / "tokens.json", ADMIN)
        names = {"admin": ADMIN, "supervisor": tokens.create("supervisor"),
                 "agent": tokens.create("agent", "s110-01"),
                 "unit_a": tokens.create("unit", unit=UNIT_A, name="竹口消防"),
                 "unit_b": tokens.create("unit", unit=UNIT_B)}
        app = build_app(service, tokens, store, settings.lines_path, settings.numberplan_path)
        plan = load_plan(settings.numberplan_path)
        app[DISPATCH_KEY] = DispatchStore(store, units=load_units(settings.units_path, plan),
                                          labels=load_categories(settings.categories_path, plan))
        server = TestServer(app, host="127.0.0.1", port=0)
        await server.start_server()
        servers.append(server)
        return Api(f"http://127.0.0.1:{server.port}", app, store, names)

    yield make
    for server in servers:
        await server.close()
    for ari in clients:
        await ari.close()


async def test_a_unit_token_reaches_its_own_endpoints_only(api: Any) -> None:
    a = await api()
    status, me = await a.call("unit_a", "GET", "/api/me")
    assert status == 200 and me["role"] == "unit" and me["unit"] == UNIT_A and me["seat"] is None
    for method, path in (("GET", "/api/status"), ("GET", "/api/tickets"), ("GET", "/api/calls"),
                         ("GET", "/metrics"), ("GET", "/api/plan"), ("POST", "/api/seats/s110-01/login"),
                         ("POST", "/api/plan/reload"),
                         ("GET", "/api/tickets/T1-1"), ("POST", "/api/tickets/T1-1/notes")):
        status, body = await a.call("unit_a", method, path, {})
        assert status == 403 and body["error"] == "forbidden", (path, body)
    status, _ = await a.call("agent", "GET", "/api/status")  # the ladder as before
    assert status == 200


def _order_row(kind: str, unit: str, order_id: str, **extra: Any) -> dict[str, Any]:
    """A published outbox row of an order's change, as the relay hands it to listeners."""
    ticket_id = order_id[1:].rsplit("-", 1)[0]
    return {"seq": 1, "event_id": f"e-{order_id}-{kind}", "ticket_id": ticket_id, "kind": kind,
            "at": "2026-12-01T08:00:00+00:00", "created_at": "2026-12-01T08:00:00+00:00", "sent_at": None,
            "ticket": {"order": {"id": order_id, "unit": unit, "ticket_id": ticket_id, "state": "notified",
                                 "ticket": {"caller": "13900000000"}}, **extra}}


async def test_order_changes_reach_their_unit_and_supervisors_and_no_agent(api: Any) -> None:
    a = await api()
    feed = a.app[FEED_KEY]
    async with aiohttp.ClientSession() as http:
        sockets = {who: await http.ws_connect(f"{a.base}/api/events?token={a.tokens[who]}")
                   for who in ("unit_a", "unit_b", "supervisor", "agent")}
        try:
            firsts = {who: await ws.receive_json(timeout=5) for who, ws in sockets.items()}
            assert all(m["type"] == "status" for m in firsts.values())
            assert "lines" not in firsts["unit_a"]["data"] and "seats" not in firsts["unit_a"]["data"], \
                "a unit gets none of the queues' state"
            assert "lines" in firsts["agent"]["data"]
            feed.on_outbox_row(_order_row("order_opened", UNIT_A, "OT1-1"))
            feed.on_event("seat_state", {"seat": "s110-01", "state": "ready"})  # a call-centre change
            feed.on_outbox_row(_order_row("order_opened", UNIT_B, "OT2-1"))
            feed.on_outbox_row({**_order_row("opened", UNIT_A, "OT3-1")})  # a ticket event: not an order
            feed.on_outbox_row(_order_row("order_acknowledged", UNIT_A, "OT1-1"))
            feed.on_event("overflow", {"line": "110", "active": True})

            async def seen(who: str, n: int) -> list[tuple[str, str | None]]:
                got = [await sockets[who].receive_json(timeout=5) for _ in range(n)]
                return [(m["type"], m["data"].get("order_id")) for m in got]
            assert await seen("unit_a", 2) == [("order_opened", "OT1-1"), ("order_acknowledged", "OT1-1")]
            assert await seen("unit_b", 1) == [("order_opened", "OT2-1")]
            assert await seen("supervisor", 5) == [("order_opened", "OT1-1"), ("seat_state", None),
                                                   ("order_opened", "OT2-1"), ("order_acknowledged", "OT1-1"),
                                                   ("overflow", None)]
            assert await seen("agent", 2) == [("seat_state", None), ("overflow", None)]
            # nothing else is queued for the units (the seat change and the overflow never reach them)
            feed.on_outbox_row(_order_row("order_reported", UNIT_B, "OT2-1"))
            assert await seen("unit_b", 1) == [("order_reported", "OT2-1")]
            for who in ("unit_a", "agent"):
                with pytest.raises(TimeoutError):
                    await sockets[who].receive_json(timeout=0.3)
        finally:
            for ws in sockets.values():
                await ws.close()


async def test_an_order_row_keeps_its_ticket_facts_out_of_the_feed(api: Any) -> None:
    a = await api()
    feed = a.app[FEED_KEY]
    async with aiohttp.ClientSession() as http, http.ws_connect(
            f"{a.base}/api/events?token={a.tokens['unit_a']}") as ws:
        await ws.receive_json(timeout=5)
        feed.on_outbox_row(_order_row("order_opened", UNIT_A, "OT9-1"))
        message = await ws.receive_json(timeout=5)
        assert message["data"] == {"id": "OT9-1", "order_id": "OT9-1", "unit": UNIT_A, "ticket_id": "T9",
                                   "state": "notified"}, "the page reads the facts over the API"
        # a row the feed cannot read (no unit) goes nowhere, and breaks nothing
        feed.on_outbox_row({"kind": "order_opened", "ticket_id": "T8", "event_id": "x", "ticket": "garbage"})
        feed.on_outbox_row(_order_row("order_escalated", UNIT_A, "OT9-1"))
        assert (await ws.receive_json(timeout=5))["type"] == "order_escalated"


async def test_a_unit_reads_acknowledges_and_reports_its_own_orders(api: Any, backend: str) -> None:
    a = await api(backend)
    mine = await asyncio.to_thread(a.order_for, 1, "zhukou", caller="<b>13950000011</b>")
    theirs = await asyncio.to_thread(a.order_for, 2, "hedi")
    assert mine["unit"] == UNIT_A and theirs["unit"] == UNIT_B
    status, rows = await a.call("unit_a", "GET", "/api/orders")
    assert status == 200 and [r["id"] for r in rows] == [mine["id"]], "its own orders only"
    facts = rows[0]["ticket"]
    assert (facts["dialled"], facts["category"], facts["category_label"], facts["town_name"], facts["caller"]) == \
        ("119", "fire", "火警", "竹口镇", "<b>13950000011</b>")
    status, rows = await a.call("supervisor", "GET", "/api/orders")
    assert status == 200 and {r["id"] for r in rows} == {mine["id"], theirs["id"]}
    status, rows = await a.call("supervisor", "GET", f"/api/orders?unit={UNIT_B}")
    assert status == 200 and [r["id"] for r in rows] == [theirs["id"]]
    status, body = await a.call("unit_a", "GET", f"/api/orders?unit={UNIT_B}")
    assert status == 403, body
    status, body = await a.call("agent", "GET", "/api/orders")
    assert status == 403, "agents read no orders"
    # another unit's order does not exist for this unit
    for method, path, body in (("GET", f"/api/orders/{theirs['id']}", None),
                               ("POST", f"/api/orders/{theirs['id']}/ack", {}),
                               ("POST", f"/api/orders/{theirs['id']}/report", {"result": "x", "solved": True})):
        status, answer = await a.call("unit_a", method, path, body)
        assert status == 404 and answer["error"] == "unknown_order", (path, answer)
    status, answer = await a.call("unit_a", "GET", "/api/orders/OT-nonexistent-1")
    assert status == 404
    # only the unit acts on its order
    status, answer = await a.call("supervisor", "POST", f"/api/orders/{mine['id']}/ack", {})
    assert status == 403, answer
    status, answer = await a.call("unit_a", "POST", f"/api/orders/{mine['id']}/ack", {"by": "值班员 张"})
    assert status == 200 and answer["state"] == "acknowledged", answer
    assert answer["acknowledged_by"] == f"unit:{UNIT_A}:值班员 张"
    status, answer = await a.call("unit_a", "POST", f"/api/orders/{mine['id']}/ack", {})
    assert status == 409 and answer["error"] == "order_state", "acknowledged once"
    status, answer = await a.call("unit_a", "POST", f"/api/orders/{mine['id']}/report",
                                  {"result": "明火已扑灭，无人员伤亡", "solved": True})
    assert status == 200 and answer["state"] == "reported" and answer["solved"] is True, answer
    status, answer = await a.call("unit_a", "POST", f"/api/orders/{mine['id']}/report",
                                  {"result": "again", "solved": True})
    assert status == 409, "reported once"
    ticket = await asyncio.to_thread(a.store.get, mine["ticket_id"])
    assert ticket is not None and ticket["solved_at"] is not None, "a 110 order reported solved solves the ticket"
    status, rows = await a.call("unit_a", "GET", "/api/orders")
    assert status == 200 and rows == [], "no open order left"
    status, rows = await a.call("unit_a", "GET", "/api/orders?open=0")
    assert status == 200 and [r["state"] for r in rows] == ["reported"]


async def test_bad_bodies_and_queries_are_400_with_the_reason(api: Any) -> None:
    a = await api()
    order = await asyncio.to_thread(a.order_for, 3, "zhukou")
    path = f"/api/orders/{order['id']}"
    bodies: list[Any] = [{"result": "", "solved": True}, {"result": "   ", "solved": True},
                         {"result": "x" * 2001, "solved": True},
                         {"result": "ok"}, {"result": "ok", "solved": "yes"}, {"result": 5, "solved": True},
                         {"result": "ok", "solved": True, "extra": 1}, [], "text"]
    for body in bodies:
        status, answer = await a.call("unit_a", "POST", path + "/report", body)
        assert status == 400 and answer["error"] in ("bad_report", "bad_request") and answer["details"], (body, answer)
    status, answer = await a.call("unit_a", "POST", path + "/report", raw=b"{not json")
    assert status == 400 and "JSON" in answer["details"]
    for body in ({"by": 5}, {"by": "x" * 33}, {"who": "me"}):
        status, answer = await a.call("unit_a", "POST", path + "/ack", body)
        assert status == 400 and answer["error"] == "bad_ack", (body, answer)
    for query in ("open=2", "limit=0", "limit=abc", "limit=1001", "unit=Fire%20A", "colour=red"):
        status, answer = await a.call("supervisor", "GET", "/api/orders?" + query)
        assert status == 400 and answer["error"] == "bad_query", (query, answer)
    status, answer = await a.call("unit_a", "GET", "/api/orders/" + "O" * 101)
    assert status == 404
    # nothing changed by any of that
    status, answer = await a.call("unit_a", "GET", path)
    assert status == 200 and answer["state"] == "notified"
    # the report without a separate acknowledgement is taken (it acknowledges too)
    status, answer = await a.call("unit_a", "POST", path + "/report", {"result": "已处置\n详见记录", "solved": False})
    assert status == 200 and answer["state"] == "reported" and answer["acknowledged_at"]


async def test_the_orders_routes_are_in_the_openapi_document(api: Any) -> None:
    a = await api()
    status, doc = await a.call("admin", "GET", "/api/openapi.json")
    assert status == 200
    for path, method, op_id in (("/api/orders", "get", "listOrders"), ("/api/orders/{order}", "get", "getOrder"),
                                ("/api/orders/{order}/ack", "post", "ackOrder"),
                                ("/api/orders/{order}/report", "post", "reportOrder")):
        assert doc["paths"][path][method]["operationId"] == op_id
        assert "unit" in doc["paths"][path][method]["description"]
    assert doc["paths"]["/api/orders/{order}/report"]["post"]["requestBody"]["content"]["application/json"][
        "schema"]["required"] == ["result", "solved"]


def test_a_unit_token_names_a_unit_of_the_units_file(tmp_path: Path) -> None:
    env = {**os.environ, "CALLROUTER_HOME": str(tmp_path / "home")}

    def create(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "callrouter.cli", "tokens", "create", *args], env=env,
                              capture_output=True, text=True, timeout=60, check=False)
    out = create("--role", "unit", "--unit", UNIT_A)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["unit"] == UNIT_A
    out = create("--role", "unit", "--unit", "fire_atlantis")
    assert out.returncode == 2 and "no unit 'fire_atlantis'" in out.stderr
    out = create("--role", "unit")
    assert out.returncode == 2 and "--unit" in out.stderr
