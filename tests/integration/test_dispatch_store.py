"""Dispatch in the ticket database (SQLite and PostgreSQL): the ticket columns and ops of
issue 10, intake with linking, orders opened once, escalated, acknowledged, reported, the
follow-up, the wallboard summary and the monthly report."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text

from callrouter.dispatch.store import DispatchStore, OrderError
from callrouter.tickets import (
    FollowUpDone,
    MarkSolved,
    OpenIntake,
    SendToDispatch,
    SetTown,
    TicketOp,
    TicketStore,
)

from .dispatch_helpers import a_call, load_test_units

pytestmark = pytest.mark.integration

MakeStore = Callable[..., tuple[TicketStore, Any]]
T0 = datetime(2026, 11, 3, 8, 0, 0, tzinfo=UTC)


def kinds(store: TicketStore, ticket_id: str) -> list[str]:
    return [e["kind"] for e in store.events(ticket_id)]


def outbox_kinds(store: TicketStore, ticket_id: str) -> list[str]:
    return [r["kind"] for r in store.outbox() if r["ticket_id"] == ticket_id]


def test_an_older_database_gains_the_dispatch_columns(make_store: MakeStore, backend: str) -> None:
    store, _ = make_store(backend)
    store.apply(a_call("T1", T0, town=None))
    columns = ("channel", "contact", "town", "dispatched_at", "solved_at", "follow_up")
    with store.engine.begin() as conn:  # as a database made before issue 10
        conn.execute(text("DROP TABLE order_notifications"))
        conn.execute(text("DROP TABLE dispatch_orders"))
        for column in columns:
            conn.execute(text(f"ALTER TABLE tickets DROP COLUMN {column}"))
    store.create_schema()
    present = inspect(store.engine)
    assert set(columns) <= {c["name"] for c in present.get_columns("tickets")}
    assert {"dispatch_orders", "order_notifications"} <= set(present.get_table_names())
    ticket = store.get("T1") or {}
    assert (ticket["channel"], ticket["contact"], ticket["town"], ticket["solved_at"], ticket["follow_up"]) == \
        ("phone", "", None, None, None)


def test_ticket_ops_leave_events_and_outbox_rows_and_repeat_as_no_ops(make_store: MakeStore, backend: str) -> None:
    store, _ = make_store(backend)
    store.apply(a_call("T1", T0, town=None))
    ops: list[TicketOp] = [SetTown("T1", "north", "seat:s110-01", T0 + timedelta(minutes=2)),
           SendToDispatch("T1", "seat:s110-01", T0 + timedelta(minutes=3)),
           MarkSolved("T1", "supervisor:lin", T0 + timedelta(minutes=4))]
    store.apply(ops)
    store.apply(ops[::2])  # the same town, solved again: nothing
    ticket = store.get("T1") or {}
    assert ticket["town"] == "north"
    assert ticket["solved_at"] == (T0 + timedelta(minutes=4)).isoformat()
    assert kinds(store, "T1")[-3:] == ["town_set", "dispatch_requested", "solved"]
    assert outbox_kinds(store, "T1")[-3:] == ["town_set", "dispatch_requested", "solved"]
    # a follow-up nobody asked for changes nothing
    store.apply([FollowUpDone("T1", "reached", "seat:s96345-01", "", T0 + timedelta(minutes=5))])
    assert kinds(store, "T1")[-1] == "solved"
    with pytest.raises(ValueError):
        SetTown("T1", "North Town", "seat", T0)
    with pytest.raises(ValueError):
        FollowUpDone("T1", "maybe", "seat", "", T0)


def test_intake_opens_a_ticket_and_a_duplicate_within_the_window_links(make_store: MakeStore, backend: str) -> None:
    store, _ = make_store(backend)
    first = OpenIntake("web", " wx-1234\n", "96345", "water_repair", "south", "水管爆了\x1b[2J", T0, 3600)
    opened = store.open_intake(first)
    assert not opened.linked
    assert store.open_intake(first) == opened  # the same request again: the same ticket, nothing new
    again = store.open_intake(OpenIntake("wechat", "wx-1234", "96345", "water_repair", None, "还没修",
                                         T0 + timedelta(minutes=30), 3600))
    assert again.linked and again.ticket_id == opened.ticket_id
    other = store.open_intake(OpenIntake("web", "wx-1234", "96345", "power_repair", None, "停电",
                                         T0 + timedelta(minutes=31), 3600))
    late = store.open_intake(OpenIntake("web", "wx-1234", "96345", "water_repair", None, "又坏了",
                                        T0 + timedelta(hours=2), 3600))
    assert not other.linked and not late.linked
    assert len({opened.ticket_id, other.ticket_id, late.ticket_id}) == 3
    ticket = store.get(opened.ticket_id) or {}
    assert (ticket["channel"], ticket["contact"], ticket["town"], ticket["line"]) == ("web", "wx-1234", "south", "96345")
    assert ticket["transcript"]["text"] == "水管爆了[2J"
    assert kinds(store, opened.ticket_id) == ["opened", "linked"]
    assert outbox_kinds(store, opened.ticket_id) == ["intake", "linked"]
    # intake tickets are no calls: the day's call figures do not count them
    assert store.figures(T0 - timedelta(days=1))["offered"] == 0
    # a solved ticket is not linked to
    store.apply([MarkSolved(opened.ticket_id, "supervisor", T0 + timedelta(minutes=40))])
    fresh = store.open_intake(OpenIntake("web", "wx-1234", "96345", "water_repair", None, "x",
                                         T0 + timedelta(minutes=45), 3600))
    assert not fresh.linked


def test_an_order_is_opened_once_and_escalated_down_the_chain(make_store: MakeStore, backend: str,
                                                               tmp_path: Path) -> None:
    store, _ = make_store(backend)
    units = load_test_units(tmp_path / "units.toml", webhook="http://127.0.0.1:9/north", ack_minutes=5)
    orders = DispatchStore(store, units=units, labels={"fire": "火警"})
    store.apply(a_call("T1", T0))
    first = orders.open_order("T1", T0 + timedelta(minutes=1))
    assert first is not None and first["id"] == "OT1-1" and first["unit"] == "north_fire"
    assert orders.open_order("T1", T0 + timedelta(minutes=1)) is None  # a redelivered event
    assert orders.open_order("T-unknown", T0) is None
    assert [d["unit"] for d in orders.deliveries()] == ["north_fire"]  # only units with a webhook
    ticket = store.get("T1") or {}
    assert ticket["dispatched_at"] == (T0 + timedelta(minutes=1)).isoformat()
    assert orders.next_due() == T0 + timedelta(minutes=6)
    assert orders.escalate_due(T0 + timedelta(minutes=5)) == []  # not yet
    changed = orders.escalate_due(T0 + timedelta(minutes=6))
    assert [(o["id"], o["unit"], o["state"], o["overdue"]) for o in changed] == [
        ("OT1-1", "north_fire", "escalated", True), ("OT1-2", "county_fire", "notified", False)]
    assert orders.escalate_due(T0 + timedelta(minutes=20))[1]["unit"] == "county_duty"
    last = orders.escalate_due(T0 + timedelta(hours=1))
    assert [(o["id"], o["state"], o["overdue"]) for o in last] == [("OT1-3", "notified", True)]  # end of the chain
    assert orders.escalate_due(T0 + timedelta(hours=2)) == []
    assert outbox_kinds(store, "T1").count("order_opened") == 3
    assert outbox_kinds(store, "T1").count("order_escalated") == 3
    row = next(r for r in store.outbox() if r["kind"] == "order_escalated")
    assert row["ticket"]["order"]["id"] == "OT1-1" and row["ticket"]["unit"] == "north_fire"
    shown = orders.order("OT1-3") or {}
    assert shown["ticket"]["category_label"] == "火警" and shown["ticket"]["town_name"] == "北镇"
    summary = orders.summary(T0 + timedelta(hours=2), window_s=86400 * 60)
    assert summary[0]["overdue"] == 1 and summary[0]["unit"] in ("north_fire", "county_fire", "county_duty")
    assert {r["unit"]: r["open"] for r in summary} == {"county_duty": 1, "north_fire": 0, "county_fire": 0}


def test_acknowledge_and_report_110_solves_96345_needs_the_follow_up(make_store: MakeStore, backend: str,
                                                                     tmp_path: Path) -> None:
    store, _ = make_store(backend)
    orders = DispatchStore(store, units=load_test_units(tmp_path / "units.toml"))
    store.apply(a_call("T110", T0))
    store.apply(a_call("T963", T0, line="96345", category="water_repair", town="south"))
    o110 = orders.open_order("T110", T0) or {}
    o963 = orders.open_order("T963", T0) or {}
    assert (o110["unit"], o963["unit"]) == ("north_fire", "county_all")
    with pytest.raises(OrderError) as e404:
        orders.acknowledge(o110["id"], "county_all", "x", T0)
    assert e404.value.status == 404
    with pytest.raises(OrderError) as e400:
        orders.report(o110["id"], "north_fire", "  ", True, T0)
    assert e400.value.status == 400
    acked = orders.acknowledge(o110["id"], "north_fire", "unit:north_fire", T0 + timedelta(minutes=2))
    assert acked["state"] == "acknowledged" and acked["ticket"]["caller"] == "13800138000"
    with pytest.raises(OrderError) as e409:
        orders.acknowledge(o110["id"], "north_fire", "again", T0 + timedelta(minutes=3))
    assert e409.value.status == 409
    orders.report(o110["id"], "north_fire", "火已扑灭", True, T0 + timedelta(minutes=30))
    assert (store.get("T110") or {})["solved_at"] == (T0 + timedelta(minutes=30)).isoformat()
    assert orders.orders(unit="north_fire") == []
    assert orders.orders(unit="north_fire", open_only=False)[0]["result"] == "火已扑灭"

    orders.report(o963["id"], "county_all", "已修复", True, T0 + timedelta(hours=3))  # straight away
    t963 = store.get("T963") or {}
    assert t963["follow_up"] == "pending" and t963["solved_at"] is None
    pending = orders.follow_ups()
    assert [(f["id"], f["order"]["result"]) for f in pending] == [("T963", "已修复")]
    store.apply([FollowUpDone("T963", "no_answer", "seat:s96345-01", "无人接听", T0 + timedelta(hours=4))])
    assert [f["id"] for f in orders.follow_ups()] == ["T963"]
    store.apply([FollowUpDone("T963", "reached", "seat:s96345-01", "群众满意", T0 + timedelta(hours=5))])
    t963 = store.get("T963") or {}
    assert (t963["follow_up"], t963["solved_at"]) == ("done", (T0 + timedelta(hours=5)).isoformat())
    assert orders.follow_ups() == []
    assert kinds(store, "T963")[-4:] == ["follow_up_requested", "follow_up_done", "follow_up_done", "solved"]
    assert "order_reported" in outbox_kinds(store, "T963")


def test_monthly_report_figures_from_a_known_set_of_orders(make_store: MakeStore, backend: str,
                                                            tmp_path: Path) -> None:
    store, _ = make_store(backend)
    orders = DispatchStore(store, units=load_test_units(tmp_path / "units.toml", ack_minutes=5))
    # north_fire: A acked in 60 s and solved at 600 s; B acked in 240 s, solved at 1200 s;
    # C never acked -> escalated (overdue) to county_fire, which acks in 400 s (late) and
    # solves at 1800 s from its own order. D (96345, county_all) acked in 3600 s, reported,
    # follow-up reached. E is in December: not counted.
    for tid in ("A", "B", "C"):
        store.apply(a_call(tid, T0))
    store.apply(a_call("D", T0, line="96345", category="water_repair", town=None))
    store.apply(a_call("E", T0 + timedelta(days=30)))
    for tid in ("A", "B", "C", "D"):
        orders.open_order(tid, T0)
    orders.open_order("E", T0 + timedelta(days=30))

    def at(s: float) -> datetime:
        return T0 + timedelta(seconds=s)

    orders.acknowledge("OA-1", "north_fire", "u", at(60))
    orders.report("OA-1", "north_fire", "ok", True, at(600))
    orders.acknowledge("OB-1", "north_fire", "u", at(240))
    orders.report("OB-1", "north_fire", "ok", True, at(1200))
    orders.escalate_due(at(301))
    orders.acknowledge("OC-2", "county_fire", "u", at(301 + 400))
    orders.report("OC-2", "county_fire", "ok", True, at(1800))
    orders.acknowledge("OD-1", "county_all", "u", at(3600))
    orders.report("OD-1", "county_all", "fixed", True, at(7200))
    store.apply([FollowUpDone("D", "reached", "s", "", at(9000))])
    report = {r["unit"]: r for r in orders.monthly_report("2026-11")}
    assert set(report) == {"north_fire", "county_fire", "county_all"}
    nf = report["north_fire"]
    assert (nf["orders"], nf["acknowledged_in_time"], nf["overdue"]) == (3, 2, 1)
    assert nf["median_ack_s"] == 150.0 and nf["median_solve_s"] == 900.0 and nf["follow_ups_done"] == 0
    cf = report["county_fire"]
    # its order was created at the escalation (301 s): acked 400 s later (> 300 s), solved 1499 s after it
    assert (cf["orders"], cf["acknowledged_in_time"], cf["overdue"], cf["median_ack_s"], cf["median_solve_s"]) == \
        (1, 0, 0, 400.0, 1499.0)
    ca = report["county_all"]
    assert (ca["orders"], ca["acknowledged_in_time"], ca["median_ack_s"], ca["median_solve_s"],
            ca["follow_ups_done"]) == (1, 1, 3600.0, 9000.0, 1)
    assert [r["orders"] for r in orders.monthly_report("2026-12")] == [1]
    with pytest.raises(ValueError):
        orders.monthly_report("2026-13")


def test_deliveries_are_claimed_once_until_their_lease_runs_out(make_store: MakeStore, backend: str,
                                                                tmp_path: Path) -> None:
    store, _ = make_store(backend)
    units = load_test_units(tmp_path / "units.toml", webhook="http://127.0.0.1:9/north")
    orders = DispatchStore(store, units=units)
    store.apply(a_call("T1", T0) + a_call("T2", T0))
    now = datetime.now(UTC)
    opened = orders.open_orders(["T1"], now, claim_for="a", lease_s=30)
    assert [o["delivery_id"] for o in opened] == [orders.deliveries()[0]["id"]]
    orders.open_order("T2", now)  # not claimed
    now = datetime.now(UTC)  # the deliveries are due from when they were written
    # T1's delivery is a's, being sent: neither a nor b takes it again; b takes T2's
    assert [d.order["id"] for d in orders.claim_deliveries("b", 10, 30, now)] == ["OT2-1"]
    assert orders.claim_deliveries("a", 10, 30, now) == []
    assert orders.claim_deliveries("b", 10, 30, now) == []
    # a died: after its lease, another dispatcher sends it
    later = now + timedelta(seconds=31)
    taken = orders.claim_deliveries("c", 10, 30, later)
    assert sorted(d.order["id"] for d in taken) == ["OT1-1", "OT2-1"]
    assert taken[0].order["ticket"]["town_name"] == "北镇"
    assert orders.delivered("c", [d.id for d in taken], later) == 2
    assert orders.delivered("b", [d.id for d in taken], later) == 0
    assert all(d["delivered_at"] for d in orders.deliveries())
