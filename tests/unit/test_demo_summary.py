"""The demo's summary and its dispatch checks (pure functions of ticket and order rows)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from callrouter.demo import (
    acknowledged_in_time,
    dispatch_settled,
    redacted,
    summarise,
    summarise_dispatch,
    without_order,
)
from callrouter.sim.units import arrived_since

T0 = "2026-12-01T08:00:00+00:00"


def ticket(tid: str, line: str = "110", category: str = "fire", *, answered: bool = True, outcome: str = "completed",
           solved: bool = False, follow_up: str | None = None) -> dict[str, Any]:
    return {"id": tid, "line": line, "category": category, "outcome": outcome, "arrived_at": T0,
            "seat_answered_at": "2026-12-01T08:00:03+00:00" if answered else None,
            "solved_at": "2026-12-01T08:00:09+00:00" if solved else None, "follow_up": follow_up}


def order(tid: str, unit: str, name: str, state: str = "reported", *, ack: str | None = "2026-12-01T08:00:05+00:00",
          due: str = "2026-12-01T08:03:00+00:00", attempt: int = 1) -> dict[str, Any]:
    return {"id": f"O{tid}-{attempt}", "ticket_id": tid, "unit": unit, "unit_name": name, "state": state,
            "acknowledged_at": ack, "ack_due_at": due}


def test_categories_show_by_their_chinese_label_with_slug_fallback() -> None:
    rows = [ticket("a", category="fire"), ticket("b", category="fire"), ticket("c", "96345", "new_thing")]
    text = summarise(rows, {"fire": "火警"})
    assert "110             2  火警" not in text  # label last, after the count
    lines = text.splitlines()
    assert "110         2  火警" in lines
    assert "96345       1  new_thing" in lines
    assert "fire" not in text.split("category", 1)[1]


def test_dispatch_summary_counts_orders_per_unit_by_name() -> None:
    tickets = [ticket("a", solved=True), ticket("b", solved=True),
               ticket("c", "96345", "gas_repair", solved=True, follow_up="done"),
               ticket("d", "96345", "labour", follow_up="pending"),
               ticket("e", "96345", answered=False, outcome="abandoned")]
    orders = [order("a", "fire_1", "县消防救援大队"), order("b", "fire_1", "县消防救援大队"),
              order("c", "gas", "县燃气公司"),
              # acknowledged after its deadline: reported, but not in time
              order("d", "labour", "县人社局", ack="2026-12-01T09:00:00+00:00")]
    text = summarise_dispatch(tickets, orders)
    lines = text.splitlines()
    assert "dispatch: 4 of 4 answered calls' tickets got an order" in lines
    assert "  orders 4: acknowledged in time 3, reported 4, escalated 0, still open 0" in lines
    assert "  tickets solved 3 of 4 (110 on the unit's report 2, 96345 after the follow-up call 1)" in lines
    assert "  follow-up calls (回访) done 1, 1 waiting" in lines
    table = lines[lines.index("orders  in time  reported  unit") + 1:]
    # the busiest unit first, then by name
    assert table == ["     2        2         2  县消防救援大队", "     1        0         1  县人社局",
                     "     1        1         1  县燃气公司"]


def test_two_units_of_one_name_are_told_apart_by_id() -> None:
    tickets = [ticket("a"), ticket("b")]
    orders = [order("a", "county_fire_brigade", "县消防救援大队"), order("b", "county_fire_inspection", "县消防救援大队")]
    lines = summarise_dispatch(tickets, orders).splitlines()
    assert "     1        1         1  县消防救援大队 (county_fire_brigade)" in lines
    assert "     1        1         1  县消防救援大队 (county_fire_inspection)" in lines


def test_an_answered_ticket_without_order_is_named_and_not_settled() -> None:
    tickets = [ticket("a"), ticket("b"), ticket("x", answered=False, outcome="abandoned")]
    orders = [order("a", "u", "单位")]
    assert without_order(tickets, orders) == ["b"]
    assert "dispatch: 1 of 2 answered calls' tickets got an order (none yet: b)" in summarise_dispatch(tickets, orders)
    assert not dispatch_settled(tickets, orders)


def test_settled_only_when_no_order_is_open_and_no_follow_up_waits() -> None:
    tickets = [ticket("a"), ticket("b", "96345", follow_up="done")]
    done = [order("a", "u", "单位"), order("b", "v", "单位二")]
    assert dispatch_settled(tickets, done)
    assert not dispatch_settled(tickets, [order("a", "u", "单位", "acknowledged"), done[1]])
    assert not dispatch_settled(tickets, [order("a", "u", "单位", "notified", ack=None), done[1]])
    assert not dispatch_settled([ticket("a"), ticket("b", "96345", follow_up="pending")], done)
    # an escalated order is closed; its successor counts
    escalated = [order("a", "u", "单位", "escalated", ack=None), order("a", "w", "单位三", attempt=2), done[1]]
    assert dispatch_settled(tickets, escalated)
    assert "escalated 1" in summarise_dispatch(tickets, escalated)


def test_acknowledged_in_time_compares_instants() -> None:
    assert acknowledged_in_time(order("a", "u", "n", ack="2026-12-01T16:02:59+08:00"))  # 08:02:59 UTC
    assert not acknowledged_in_time(order("a", "u", "n", ack="2026-12-01T08:03:01+00:00"))
    assert not acknowledged_in_time(order("a", "u", "n", ack=None))


def test_redis_url_printed_without_password() -> None:
    assert redacted("redis://:s3cret@10.0.0.5:6380/2") == "redis://:***@10.0.0.5:6380/2"
    assert "s3cret" not in redacted("redis://user:s3cret@host/0")
    assert redacted("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_simulated_people_take_only_the_demos_tickets() -> None:
    since = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    assert arrived_since({"ticket": {"arrived_at": T0}}, since)
    assert arrived_since({"arrived_at": "2026-12-01T08:00:01+00:00"}, since)
    assert not arrived_since({"ticket": {"arrived_at": "2026-12-01T07:59:59+00:00"}}, since)
    assert not arrived_since({"ticket": None}, since)
    assert not arrived_since({"arrived_at": "yesterday"}, since)
