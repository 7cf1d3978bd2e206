"""The API application in-process (aiohttp on loopback), with a real ticket store and no
Asterisk: what the API does when a part is missing or a feed client cannot keep up."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
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
        return int(s.getsockname()[1])  # nothing listens there once closed


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Callable[[str], Any]]:
    """Factory: ``await api(db_url)`` -> (base url, app) of a running API with no Asterisk."""
    settings = load_settings()
    servers: list[TestServer] = []
    clients: list[AriClient] = []

    async def make(db_url: str) -> tuple[str, Any]:
        store = TicketStore(db_url, connect_timeout_s=2)
        ari = AriClient(f"http://127.0.0.1:{_closed_port()}/ari", "u", "p", "callrouter")
        clients.append(ari)
        service = CallService(ari, load_plan(settings.numberplan_path), TicketWriter(store),
                              Acd(load_lines(settings.lines_path)))
        app = build_app(service, TokenStore(tmp_path / "tokens.json", ADMIN), store, settings.lines_path,
                        settings.numberplan_path)
        server = TestServer(app, host="127.0.0.1", port=0)
        await server.start_server()
        servers.append(server)
        return f"http://127.0.0.1:{server.port}", app

    yield make
    for server in servers:
        await server.close()
    for ari in clients:
        await ari.close()


async def test_a_database_that_does_not_answer_is_a_503_with_the_reason(api: Any) -> None:
    base, _ = await api(f"postgresql+psycopg://nobody@127.0.0.1:{_closed_port()}/tickets")
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        for path in ("/api/tickets", "/api/today", "/api/tickets/T20261201-000000-1.1"):
            async with http.get(base + path) as resp:
                body = await resp.json()
                assert resp.status == 503 and body["error"] == "database_unavailable", (path, body)
        async with http.get(base + "/api/status") as resp:  # the live state needs no database
            assert resp.status == 200


async def test_a_feed_client_that_falls_behind_is_closed_with_1013(api: Any, tmp_path: Path) -> None:
    base, app = await api(f"sqlite:///{tmp_path / 'tickets.sqlite3'}")
    feed = app[FEED_KEY]
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{base}/api/events?token={ADMIN}") as ws:
        first = await ws.receive_json(timeout=5)
        assert first["type"] == "status"
        # more changes at once than the client's queue holds, before its pump can send any
        for i in range(1001):
            feed.publish({"type": "seat_state", "at": 0, "data": {"seat": "s110-01", "state": "ready", "n": i}})
        assert not feed.clients, "dropped from the fan-out at once"
        while True:
            msg = await ws.receive(timeout=5)
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING):
                break
        assert ws.close_code == 1013, "closed with 'try again later' so the page reconnects"
    assert "callrouter_feed_clients_dropped_total 1" in feed.metrics_text(None).splitlines()
    # a new client is served again
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{base}/api/events?token={ADMIN}") as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "status"
        feed.publish({"type": "overflow", "at": 0, "data": {"line": "110", "active": True}})
        assert (await ws.receive_json(timeout=5))["type"] == "overflow"
