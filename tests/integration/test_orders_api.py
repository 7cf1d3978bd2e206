"""Dispatch orders over the API and the live feed (issue 10), in-process (aiohttp on
loopback) with a real ticket store and no Asterisk: the unit role's reach, which feed
clients get which order's changes, and the orders routes' answers."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from callrouter.acd import Acd, load_lines
from callrouter.api.app import FEED_KEY, build_app
from callrouter.api.tokens import TokenStore
from callrouter.ari import AriClient
from callrouter.calls.service import CallService
from callrouter.config import load_settings
from callrouter.numberplan import load_plan
from callrouter.tickets import TicketStore, TicketWriter

pytestmark = pytest.mark.integration

ADMIN = "integration-admin-token-0123456789"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Api:
    def __init__(self, base: str, app: Any, store: TicketStore, tokens: dict[str, str]) -> None:
        self.base, self.app, self.store, self.tokens = base, app, store, tokens

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
async def api(tmp_path: Path) -> AsyncIterator[Callable[[], Any]]:
    """``await api()`` -> a running API (SQLite tickets, no Asterisk) with tokens for a
    supervisor, an agent and two units."""
    settings = load_settings()
    servers: list[TestServer] = []
    clients: list[AriClient] = []
    stores: list[TicketStore] = []

    async def make() -> Api:
        store = TicketStore(f"sqlite:///{tmp_path / 'tickets.sqlite3'}")
        await asyncio.to_thread(store.create_schema)
        stores.append(store)
        ari = AriClient(f"http://127.0.0.1:{_closed_port()}/ari", "u", "p", "callrouter")
        clients.append(ari)
        service = CallService(ari, load_plan(settings.numberplan_path), TicketWriter(store),
                              Acd(load_lines(settings.lines_path)))
        tokens = TokenStore(tmp_path / "tokens.json", ADMIN)
        names = {"admin": ADMIN, "supervisor": tokens.create("supervisor"),
                 "agent": tokens.create("agent", "s110-01"),
                 "unit_a": tokens.create("unit", unit="fire_a", name="A 消防站"),
                 "unit_b": tokens.create("unit", unit="fire_b")}
        app = build_app(service, tokens, store, settings.lines_path, settings.numberplan_path)
        server = TestServer(app, host="127.0.0.1", port=0)
        await server.start_server()
        servers.append(server)
        return Api(f"http://127.0.0.1:{server.port}", app, store, names)

    yield make
    for server in servers:
        await server.close()
    for ari in clients:
        await ari.close()
    for store in stores:
        store.close()


async def test_a_unit_token_reaches_its_own_endpoints_only(api: Any) -> None:
    a = await api()
    status, me = await a.call("unit_a", "GET", "/api/me")
    assert status == 200 and me["role"] == "unit" and me["unit"] == "fire_a" and me["seat"] is None
    for method, path in (("GET", "/api/status"), ("GET", "/api/tickets"), ("GET", "/api/calls"),
                         ("GET", "/metrics"), ("GET", "/api/plan"), ("POST", "/api/seats/s110-01/login"),
                         ("POST", "/api/plan/reload"), ("GET", "/api/openapi.json"),
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
            feed.on_outbox_row(_order_row("order_opened", "fire_a", "OT1-1"))
            feed.on_event("seat_state", {"seat": "s110-01", "state": "ready"})  # a call-centre change
            feed.on_outbox_row(_order_row("order_opened", "fire_b", "OT2-1"))
            feed.on_outbox_row({**_order_row("opened", "fire_a", "OT3-1")})  # a ticket event: not an order
            feed.on_outbox_row(_order_row("order_acknowledged", "fire_a", "OT1-1"))
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
            feed.on_outbox_row(_order_row("order_reported", "fire_b", "OT2-1"))
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
        feed.on_outbox_row(_order_row("order_opened", "fire_a", "OT9-1"))
        message = await ws.receive_json(timeout=5)
        assert message["data"] == {"id": "OT9-1", "order_id": "OT9-1", "unit": "fire_a", "ticket_id": "T9",
                                   "state": "notified"}, "the page reads the facts over the API"
        # a row the feed cannot read (no unit) goes nowhere, and breaks nothing
        feed.on_outbox_row({"kind": "order_opened", "ticket_id": "T8", "event_id": "x", "ticket": "garbage"})
        feed.on_outbox_row(_order_row("order_escalated", "fire_a", "OT9-1"))
        assert (await ws.receive_json(timeout=5))["type"] == "order_escalated"
