"""The seats' and the wallboard's side of dispatch (issue 10) over the API, in-process
(aiohttp on loopback) with a real ticket store and its writer, no Asterisk: category
labels, units and towns, the caller's town, sending to dispatch, the follow-up list, the
wallboard's summary and history, and intake requests from the other channels."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from callrouter.acd import Acd, load_lines
from callrouter.api.app import FEED_KEY, build_app
from callrouter.api.intake import contact_key
from callrouter.api.tokens import TokenStore
from callrouter.ari import AriClient
from callrouter.calls.service import CallService
from callrouter.config import load_settings
from callrouter.dispatch.store import DispatchStore
from callrouter.dispatch.units import load_units
from callrouter.numberplan import load_plan
from callrouter.tickets import (
    AnswerTicket,
    CloseTicket,
    OpenTicket,
    RequestFollowUp,
    SetSeat,
    TicketStore,
    TicketWriter,
)

pytestmark = pytest.mark.integration

ADMIN = "integration-admin-token-0123456789"
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
MakeStore = Callable[..., tuple[TicketStore, Any]]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Api:
    def __init__(self, base: str, store: TicketStore, writer: TicketWriter, tokens: dict[str, str],
                 app: web.Application) -> None:
        self.base, self.store, self.writer, self.tokens, self.app = base, store, writer, tokens, app

    async def call(self, who: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        async with aiohttp.ClientSession(headers=headers) as http, \
                http.request(method, self.base + path, json=body) as resp:
            return resp.status, await resp.json()

    def call_ticket(self, n: int, seat: str, *, line: str = "110", category: str = "fire") -> str:
        """A call's ticket, answered at ``seat`` and closed."""
        tid = f"T{T0:%Y%m%d-%H%M%S}-{n}.1"
        at = T0 + timedelta(seconds=n)
        self.store.apply([
            OpenTicket(id=tid, dialled="119" if line == "110" else "12345", number="119", caller=f"1395000{n:04d}",
                       caller_name="", line=line, category=category, department="x", priority=1, listed=True,
                       channel_id=f"1764500000.{n}", arrived_at=at),
            AnswerTicket(tid, at + timedelta(seconds=1)), SetSeat(tid, seat, at + timedelta(seconds=2)),
            CloseTicket(tid, at + timedelta(seconds=30), "completed")])
        return tid

    async def written(self) -> None:
        assert await self.writer.drain(timeout=10), "the ticket writer wrote what the API submitted"


@pytest.fixture
async def api(tmp_path: Path, make_store: MakeStore) -> AsyncIterator[Callable[..., Any]]:
    settings = load_settings()
    started: list[tuple[TestServer, AriClient, asyncio.Task[None]]] = []

    async def make(backend: str = "sqlite", plan_path: Path | None = None, categories_path: Path | None = None) -> Api:
        store, _ = make_store(backend)
        ari = AriClient(f"http://127.0.0.1:{_closed_port()}/ari", "u", "p", "callrouter")
        writer = TicketWriter(store)
        plan_path = plan_path or settings.numberplan_path
        service = CallService(ari, load_plan(plan_path), writer, Acd(load_lines(settings.lines_path)))
        tokens = TokenStore(tmp_path / "tokens.json", ADMIN)
        app = build_app(service, tokens, store, settings.lines_path, plan_path,
                        categories_path=categories_path or settings.categories_path, units_path=settings.units_path,
                        intake_window_s=3600)
        server = TestServer(app, host="127.0.0.1", port=0)
        await server.start_server()
        task = asyncio.create_task(writer.run())
        started.append((server, ari, task))
        names = {"admin": ADMIN, "supervisor": tokens.create("supervisor"),
                 "agent1": tokens.create("agent", "s110-01"), "agent2": tokens.create("agent", "s110-02"),
                 "agent96": tokens.create("agent", "s96345-01"), "intake": tokens.create("intake", name="web-form"),
                 "unit": tokens.create("unit", unit="fire_zhukou")}
        return Api(f"http://127.0.0.1:{server.port}", store, writer, names, app)

    yield make
    for server, ari, task in started:
        await server.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await ari.close()


async def test_categories_and_units_for_the_seats(api: Any) -> None:
    a = await api()
    status, cats = await a.call("agent1", "GET", "/api/categories")
    assert status == 200
    by_slug = {c["slug"]: c for c in cats}
    assert by_slug["fire"] == {"slug": "fire", "label": "火警", "line": "110"}
    assert by_slug["ambulance"]["label"] == "医疗急救" and by_slug["unlisted"]["line"] == "96345"
    assert all(c["label"] != c["slug"] for c in cats), "every category has its Chinese label"
    status, units = await a.call("agent1", "GET", "/api/units")
    assert status == 200 and len(units["towns"]) == 19
    assert {"id": "huangtian", "name": "黄田镇"} in units["towns"]
    assert units["units"] and all("liaison" not in u for u in units["units"]), "no liaison phones for agents"
    status, units = await a.call("supervisor", "GET", "/api/units")
    assert status == 200 and all(u["liaison"]["phone"] for u in units["units"])
    for who in ("intake", "unit"):  # outside the ladder: their own endpoints only
        for path in ("/api/categories", "/api/units", "/api/follow-ups", "/api/history", "/api/dispatch/summary"):
            status, body = await a.call(who, "GET", path)
            assert status == 403, (who, path, body)


async def test_an_agent_sets_the_town_and_sends_its_own_ticket_to_dispatch(api: Any) -> None:
    a = await api()
    tid = a.call_ticket(1, "s110-01")
    path = f"/api/tickets/{tid}"
    for body, reason in (({"town": "atlantis"}, "bad_town"), ({"town": 5}, "bad_town"), ({}, "bad_town"),
                         ({"town": "huangtian", "x": 1}, "bad_request"), ([1], "bad_request")):
        status, answer = await a.call("agent1", "POST", path + "/town", body)
        assert status == 400 and answer["error"] == reason, (body, answer)
    status, answer = await a.call("agent2", "POST", path + "/town", {"town": "huangtian"})
    assert status == 403, "an agent acts only on tickets its seat took"
    status, answer = await a.call("agent1", "POST", "/api/tickets/T-nope/town", {"town": "huangtian"})
    assert status == 404
    status, answer = await a.call("agent1", "POST", path + "/town", {"town": "huangtian"})
    assert status == 200 and answer == {"ticket": tid, "town": "huangtian", "town_name": "黄田镇"}
    await a.written()
    ticket = a.store.get(tid)
    assert ticket is not None and ticket["town"] == "huangtian"

    status, answer = await a.call("agent1", "POST", path + "/dispatch", {"unit": "x"})
    assert status == 400, "the body of a dispatch request is {}"
    status, answer = await a.call("agent2", "POST", path + "/dispatch", {})
    assert status == 403
    status, answer = await a.call("agent1", "POST", path + "/dispatch", {})
    units = load_units(load_settings().units_path, load_plan(load_settings().numberplan_path))
    first = units.choose("fire", "huangtian")[0]
    assert status == 202 and answer["unit"] == first.id and answer["unit_name"] == first.name, answer
    assert first.area == "huangtian", "the town's own fire unit first"
    await a.written()
    kinds = [e["kind"] for e in a.store.events(tid)]
    assert "dispatch_requested" in kinds, kinds
    assert any(row["kind"] == "dispatch_requested" and row["ticket_id"] == tid for row in a.store.outbox())
    # a category the plan does not have would reach no unit: refused
    status, answer = await a.call("agent1", "POST", path + "/reclassify", {"category": "noise_complaint"})
    assert status == 400 and "not a category of the number plan" in answer["details"], answer
    status, answer = await a.call("agent1", "POST", path + "/reclassify", {"category": "traffic_accident"})
    assert status == 200, answer
    # a supervisor may act on any ticket; the town may be cleared (unknown: county-wide units)
    status, answer = await a.call("supervisor", "POST", path + "/town", {"town": None})
    assert status == 200 and answer["town"] is None


async def test_follow_ups_are_listed_and_completed_by_the_seat_that_took_the_call(api: Any) -> None:
    a = await api()
    mine = a.call_ticket(2, "s96345-01", line="96345", category="water_repair")
    other = a.call_ticket(3, "s96345-02", line="96345", category="gas_repair")
    a.store.apply([RequestFollowUp(mine, T0 + timedelta(minutes=2)), RequestFollowUp(other, T0 + timedelta(minutes=2))])
    status, rows = await a.call("agent96", "GET", "/api/follow-ups")
    assert status == 200 and [r["id"] for r in rows] == [mine], rows
    assert rows[0]["category_label"] == "供水抢修"
    status, rows = await a.call("supervisor", "GET", "/api/follow-ups")
    assert status == 200 and {r["id"] for r in rows} == {mine, other}
    status, _ = await a.call("agent96", "GET", "/api/follow-ups?limit=0")
    assert status == 400
    path = f"/api/tickets/{mine}/follow-up"
    for body in ({"outcome": "maybe"}, {"outcome": "reached", "note": 5}, {"outcome": "reached", "note": "x" * 501},
                 {"outcome": "reached", "by": "me"}):
        status, answer = await a.call("agent96", "POST", path, body)
        assert status == 400, (body, answer)
    status, _ = await a.call("agent96", "POST", f"/api/tickets/{other}/follow-up", {"outcome": "reached"})
    assert status == 403
    status, answer = await a.call("agent96", "POST", path, {"outcome": "no_answer", "note": "无人接听"})
    assert status == 200 and answer["follow_up"] == "pending"
    await a.written()
    assert (a.store.get(mine) or {}).get("follow_up") == "pending"
    status, answer = await a.call("agent96", "POST", path, {"outcome": "reached", "note": "市民满意"})
    assert status == 200 and answer["follow_up"] == "done"
    await a.written()
    ticket = a.store.get(mine)
    assert ticket is not None and ticket["follow_up"] == "done" and ticket["solved_at"], ticket
    status, answer = await a.call("agent96", "POST", path, {"outcome": "reached"})
    assert status == 409 and answer["error"] == "no_follow_up"
    status, rows = await a.call("agent96", "GET", "/api/follow-ups")
    assert rows == []


async def test_wallboard_summary_and_history(api: Any) -> None:
    a = await api()
    tid = a.call_ticket(4, "s110-01")
    settings = load_settings()
    units = load_units(settings.units_path, load_plan(settings.numberplan_path))
    order = DispatchStore(a.store, units=units).open_order(tid, T0 + timedelta(seconds=40))
    assert order is not None
    status, body = await a.call("supervisor", "GET", "/api/dispatch/summary")
    assert status == 200, body
    (row,) = [u for u in body["units"] if u["unit"] == order["unit"]]
    assert row["open"] == 1 and row["unit_name"] == units.unit(order["unit"]).name  # type: ignore[union-attr]
    assert body["month"] == datetime.now().astimezone().strftime("%Y-%m")
    status, body = await a.call("supervisor", "GET", f"/api/dispatch/summary?month={T0:%Y-%m}")
    assert status == 200 and [u["orders"] for u in body["accountability"] if u["unit"] == order["unit"]] == [1]
    for query in ("?month=2026-13", "?month=26-01", "?month=x", "?month="):
        status, _ = await a.call("supervisor", "GET", "/api/dispatch/summary" + query)
        assert status == 400, query
    status, _ = await a.call("agent1", "GET", "/api/dispatch/summary")
    assert status == 403, "the wallboard's dispatch figures are for supervisors"

    status, body = await a.call("agent1", "GET", "/api/history?minutes=60")
    assert status == 200 and body["minute_s"] == 60
    assert set(body["lines"]) == {"110", "96345"}, "the sampler looked at both lines when the app started"
    (sample,) = body["lines"]["110"]
    assert sample["waiting"] == 0 and sample["service_level"] is None
    for query in ("?minutes=0", "?minutes=1441", "?minutes=abc", "?minutes=-5"):
        status, _ = await a.call("agent1", "GET", "/api/history" + query)
        assert status == 400, query


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_intake_opens_one_ticket_and_links_the_duplicate(api: Any, backend: str) -> None:
    a = await api(backend)
    body = {"channel": "web", "contact": "138 0013 8000", "category": "water_repair", "town": "zhukou",
            "text": "自来水管爆裂，水漫进屋里"}
    status, first = await a.call("intake", "POST", "/api/intake", body)
    assert status == 201 and first["linked"] is False and first["category_label"] == "供水抢修", first
    ticket = a.store.get(first["ticket_id"])
    assert ticket is not None
    assert (ticket["channel"], ticket["contact"], ticket["line"], ticket["category"], ticket["town"]) == \
        ("web", "13800138000", "96345", "water_repair", "zhukou")
    # the same citizen again (another way of writing the number, another channel): linked
    status, again = await a.call("intake", "POST", "/api/intake",
                                 {**body, "channel": "wechat", "contact": "+86 138-0013-8000", "text": "还没人来"})
    assert status == 200 and again == {**first, "linked": True}, again
    # another category is another matter
    status, other = await a.call("intake", "POST", "/api/intake", {**body, "category": "gas_repair"})
    assert status == 201 and other["ticket_id"] != first["ticket_id"]
    assert sum(1 for row in a.store.outbox() if row["kind"] == "intake") == 2, "two tickets go to dispatch"
    assert a.store.list(limit=10, category="water_repair") and len(a.store.list(limit=10, category="water_repair")) == 1


async def test_intake_bodies_are_checked(api: Any) -> None:
    a = await api()
    good = {"channel": "forum", "contact": "wx_openid_ABC", "category": "urban_management", "text": "路灯坏了"}
    bad: list[Any] = [
        {**good, "channel": "phone"}, {**good, "channel": None}, {**good, "contact": ""}, {**good, "contact": "x" * 65},
        {**good, "contact": "\x00\x01"}, {**good, "contact": "\u202e\u200b"}, {**good, "category": "unknown_thing"}, {**good, "category": 7},
        {**good, "town": "atlantis"}, {**good, "town": 3}, {**good, "text": ""}, {**good, "text": " \n "},
        {**good, "text": "x" * 2001}, {**good, "priority": 1}, [good], "text",
    ]
    for body in bad:
        status, answer = await a.call("intake", "POST", "/api/intake", body)
        assert status == 400, (body, answer)
    for who in ("agent1", "supervisor", "unit"):
        status, _ = await a.call(who, "POST", "/api/intake", good)
        assert status == 403, who
    status, answer = await a.call("intake", "POST", "/api/intake", {**good, "town": None})
    assert status == 201, answer
    assert (a.store.get(answer["ticket_id"]) or {}).get("contact") == "wx_openid_abc"
    assert a.store.count() == 1, "no rejected request left a ticket"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_the_wallboard_counts_the_other_channels_without_a_contact(api: Any, backend: str) -> None:
    a = await api(backend)
    settings = load_settings()
    units = load_units(settings.units_path, load_plan(settings.numberplan_path))
    web = {"channel": "web", "contact": "138 0013 8001", "category": "water_repair", "town": "zhukou",
           "text": "小区停水"}
    status, first = await a.call("intake", "POST", "/api/intake", web)
    assert status == 201, first
    status, again = await a.call("intake", "POST", "/api/intake", {**web, "channel": "wechat",
                                                                   "contact": "+8613800138001", "text": "还没水"})
    assert status == 200 and again["linked"] is True
    status, forum = await a.call("intake", "POST", "/api/intake", {"channel": "forum", "contact": "wx_OPENID_7",
                                                                   "category": "urban_management", "text": "路灯坏了"})
    assert status == 201, forum
    a.call_ticket(5, "s110-01")  # a call: never in the other channels' figures
    order = DispatchStore(a.store, units=units).open_order(first["ticket_id"], datetime.now(UTC))
    assert order is not None
    status, body = await a.call("supervisor", "GET", "/api/intake/summary")
    assert status == 200, body
    assert body["channels"] == {"web": {"requests": 1, "tickets": 1, "linked": 0, "open": 1},
                                "wechat": {"requests": 1, "tickets": 0, "linked": 1, "open": 0},
                                "forum": {"requests": 1, "tickets": 1, "linked": 0, "open": 1}}, body
    newest, older = body["open_requests"]
    assert (newest["ticket_id"], newest["channel"], newest["category_label"], newest["town_name"],
            newest["unit_name"], newest["order_state"]) == (forum["ticket_id"], "forum", "城市管理", None, None, None)
    water = units.unit(order["unit"])
    assert water is not None
    assert (older["ticket_id"], older["channel"], older["category_label"], older["town_name"], older["unit"],
            older["unit_name"], older["order_state"], older["overdue"]) == \
        (first["ticket_id"], "web", "供水抢修", "竹口镇", water.id, water.name, "notified", False)
    text = str(body)
    assert "13800138001" not in text and "wx_openid_7" not in text and "路灯" not in text, "no contact, no words"
    # a day that starts later counts nothing; one open request at most; bad queries
    status, body = await a.call("admin", "GET", "/api/intake/summary?limit=1&since=" +
                                (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+", "%2B"))
    assert status == 200 and body["channels"]["web"]["requests"] == 0 and len(body["open_requests"]) == 1, body
    for query in ("?limit=0", "?limit=101", "?limit=x", "?since=yesterday", "?since=2026-12-01T00:00:00"):
        status, answer = await a.call("supervisor", "GET", "/api/intake/summary" + query)
        assert status == 400, (query, answer)
    for who in ("agent1", "intake", "unit"):
        status, _ = await a.call(who, "GET", "/api/intake/summary")
        assert status == 403, who
    # the supervisors' ticket list: intake tickets with their channel, and a channel filter
    status, rows = await a.call("supervisor", "GET", "/api/tickets?channel=web")
    assert status == 200 and [(r["id"], r["channel"]) for r in rows] == [(first["ticket_id"], "web")], rows
    status, rows = await a.call("supervisor", "GET", "/api/tickets?limit=10")
    assert status == 200 and {r["channel"] for r in rows} == {"web", "forum", "phone"}, rows
    status, rows = await a.call("supervisor", "GET", "/api/tickets?channel=phone")
    assert status == 200 and [r["channel"] for r in rows] == ["phone"], rows
    for bad in ("sms", "", "WEB"):
        status, answer = await a.call("supervisor", "GET", f"/api/tickets?channel={bad}")
        assert status == 400 and answer["error"] == "bad_query", (bad, answer)


async def test_intake_requests_reach_supervisors_feeds_without_a_contact_and_never_agents_or_units(api: Any) -> None:
    a = await api()
    feed = a.app[FEED_KEY]
    async with aiohttp.ClientSession() as http:
        sockets = {who: await http.ws_connect(f"{a.base}/api/events?token={a.tokens[who]}")
                   for who in ("supervisor", "admin", "agent1", "unit")}
        try:
            for ws in sockets.values():
                assert (await ws.receive_json(timeout=5))["type"] == "status"
            body = {"channel": "web", "contact": "138 0013 8002", "category": "water_repair", "town": "zhukou",
                    "text": "水管爆了"}
            status, first = await a.call("intake", "POST", "/api/intake", body)
            assert status == 201
            status, _ = await a.call("intake", "POST", "/api/intake", {**body, "channel": "forum"})
            assert status == 200
            # the relay hands the published rows to the feed, as it does in the engine
            rows = [r for r in a.store.outbox() if r["kind"] in ("intake", "linked")]
            assert [r["kind"] for r in rows] == ["intake", "linked"]
            assert all(r["ticket"]["contact"] == "13800138002" for r in rows), "the stream keeps the contact"
            for row in rows:
                feed.on_outbox_row(row)
            feed.on_event("overflow", {"line": "110", "active": True})  # the end of what this test sent
            for who in ("supervisor", "admin"):
                got = [await sockets[who].receive_json(timeout=5) for _ in range(3)]
                assert [m["type"] for m in got] == ["intake", "linked", "overflow"], (who, got)
                expected = {"ticket_id": first["ticket_id"], "channel": "web", "line": "96345",
                            "category": "water_repair", "town": "zhukou"}
                assert got[0]["data"] == expected and got[1]["data"] == expected, got
                assert "13800138002" not in str(got) and "水管" not in str(got), "no contact or words in the feed"
            assert (await sockets["agent1"].receive_json(timeout=5))["type"] == "overflow", "agents: no intake"
            for who in ("agent1", "unit"):
                with pytest.raises(TimeoutError):
                    await sockets[who].receive_json(timeout=0.3)
        finally:
            for ws in sockets.values():
                await ws.close()


def test_contacts_are_compared_in_one_form() -> None:
    assert contact_key("+86 138 0013 8000") == contact_key("13800138000") == "13800138000"
    assert contact_key("0578-6123456") == contact_key("6123456") == "05786123456"
    assert contact_key("  Wx_OpenID  ") == "wx_openid"
    assert contact_key("a@Example.org") == "a@example.org"


async def test_the_seat_routes_are_in_the_openapi_document(api: Any) -> None:
    a = await api()
    status, doc = await a.call("agent1", "GET", "/api/openapi.json")
    assert status == 200
    expected = {("/api/categories", "get"), ("/api/units", "get"), ("/api/tickets/{ticket}/town", "post"),
                ("/api/tickets/{ticket}/dispatch", "post"), ("/api/follow-ups", "get"),
                ("/api/tickets/{ticket}/follow-up", "post"), ("/api/dispatch/summary", "get"),
                ("/api/history", "get"), ("/api/intake", "post")}
    for path, method in expected:
        assert method in doc["paths"].get(path, {}), (path, method)
    assert "201" in doc["paths"]["/api/intake"]["post"]["responses"]
    assert "202" in doc["paths"]["/api/tickets/{ticket}/dispatch"]["post"]["responses"]
    # what the API accepts is data: the plan's categories and the units file's towns, as enums
    intake = doc["paths"]["/api/intake"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "water_repair" in intake["properties"]["category"]["enum"] and "noise_complaint" not in \
        intake["properties"]["category"]["enum"]
    assert "zhukou" in intake["properties"]["town"]["enum"] and None in intake["properties"]["town"]["enum"]
    assert intake["additionalProperties"] is False
    status, doc = await a.call("intake", "GET", "/api/openapi.json")
    assert status == 200, "a channel system integrates from the document"


async def test_a_plan_reload_reads_the_labels_again_and_refuses_a_category_without_one(api: Any, tmp_path: Path) -> None:
    settings = load_settings()
    plan, labels = tmp_path / "numberplan.csv", tmp_path / "categories.toml"
    plan.write_text(settings.numberplan_path.read_text(encoding="utf-8"), encoding="utf-8")
    labels.write_text(settings.categories_path.read_text(encoding="utf-8"), encoding="utf-8")
    a = await api(plan_path=plan, categories_path=labels)
    labels.write_text(labels.read_text(encoding="utf-8").replace('label = "火警"', 'label = "火灾报警"'), encoding="utf-8")
    status, body = await a.call("admin", "POST", "/api/plan/reload")
    assert status == 200, body
    status, cats = await a.call("agent1", "GET", "/api/categories")
    assert {c["slug"]: c["label"] for c in cats}["fire"] == "火灾报警", "the labels read again with the plan"
    good = plan.read_text(encoding="utf-8")
    plan.write_text(good + "05786110999,96345,noise_complaint,县生态环境局,5,噪声投诉,yes\n", encoding="utf-8")
    status, body = await a.call("admin", "POST", "/api/plan/reload")
    assert status == 400 and body["error"] == "invalid_plan", body
    assert 'category "noise_complaint"' in body["details"] and "no label" in body["details"], body
    status, cats = await a.call("agent1", "GET", "/api/categories")
    assert "noise_complaint" not in {c["slug"] for c in cats}, "the old plan stays in use"
    status, answer = await a.call("intake", "POST", "/api/intake", {"channel": "web", "contact": "x@example.org",
                                                                   "category": "noise_complaint", "text": "吵"})
    assert status == 400, answer
