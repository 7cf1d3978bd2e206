"""The dispatcher's pure parts: which events open orders, webhook signatures, backoff, the
report's CSV."""

from __future__ import annotations

import hashlib
import hmac
import json

from callrouter.dispatch.dispatcher import retry_delay, sign, verify, wants_order, webhook_body
from callrouter.dispatch.report import to_csv, to_text
from callrouter.dispatch.store import Delivery, month_bounds
from callrouter.tickets.consumer import StreamEvent


def event(kind: str, **ticket: object) -> StreamEvent:
    return StreamEvent("1-0", "e1", "T1", kind, "2026-11-01T00:00:00+00:00", 1, {"id": "T1", **ticket}, 1)


def test_which_events_open_an_order() -> None:
    assert wants_order(event("closed", seat_answered_at="2026-11-01T00:00:03+00:00"))
    assert not wants_order(event("closed", seat_answered_at=None))  # nobody took the call
    assert not wants_order(event("abandoned"))
    assert wants_order(event("dispatch_requested"))
    assert wants_order(event("intake"))
    for kind in ("opened", "answered", "order_opened", "linked", "solved"):
        assert not wants_order(event(kind))


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"delivery":"d1"}'
    expected = hmac.new(b"s3cret", b"1764547200." + body, hashlib.sha256).hexdigest()
    assert sign("s3cret", 1764547200, body) == "sha256=" + expected
    signature = sign("s3cret", 1764547200, body)
    assert verify("s3cret", "1764547200", body, signature, now=1764547210)
    assert not verify("other", "1764547200", body, signature, now=1764547210)
    assert not verify("s3cret", "1764547200", body + b" ", signature, now=1764547210)
    assert not verify("s3cret", "1764547200", body, signature, now=1764547200 + 301)  # too old: a replay
    assert not verify("s3cret", "yesterday", body, signature)


def test_webhook_body_has_delivery_order_and_ticket() -> None:
    order = {"id": "OT1-1", "unit": "u", "ticket": {"id": "T1", "category_label": "火警"}}
    data = json.loads(webhook_body(Delivery("d1", "u", 0, order)))
    assert data == {"delivery": "d1", "order": {"id": "OT1-1", "unit": "u"},
                    "ticket": {"id": "T1", "category_label": "火警"}}


def test_retry_delay_doubles_up_to_the_cap() -> None:
    assert [retry_delay(n, 0.5, 5) for n in range(1, 7)] == [0.5, 1, 2, 4, 5, 5]
    assert retry_delay(10_000, 0.5, 300) == 300


def test_month_bounds_and_report_formats() -> None:
    start, end = month_bounds("2026-12")
    assert (start.isoformat(), end.isoformat()) == ("2026-12-01T00:00:00+00:00", "2027-01-01T00:00:00+00:00")
    rows = [{"month": "2026-11", "unit": "u1", "name": "单位, 一", "orders": 3, "acknowledged_in_time": 2,
             "overdue": 1, "median_ack_s": 150.0, "median_solve_s": None, "follow_ups_done": 0}]
    assert to_csv(rows).splitlines() == [
        "month,unit,name,orders,acknowledged_in_time,overdue,median_ack_s,median_solve_s,follow_ups_done",
        '2026-11,u1,"单位, 一",3,2,1,150.0,,0']
    assert "2.5 min" in to_text(rows)


def test_the_dispatch_ticket_ops_survive_the_spool() -> None:
    from datetime import UTC, datetime

    from callrouter.tickets import (
        FollowUpDone,
        MarkDispatched,
        MarkSolved,
        RequestFollowUp,
        SendToDispatch,
        SetTown,
        TicketOp,
    )
    from callrouter.tickets.spool import op_from_json, op_to_json

    at = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
    ops: list[TicketOp] = [SetTown("T1", "north", "seat:s110-01", at), SetTown("T1", None, "seat:s110-01", at),
           SendToDispatch("T1", "seat:s110-01", at), MarkSolved("T1", "unit:u", at), RequestFollowUp("T1", at, "OT1-1"),
           FollowUpDone("T1", "reached", "seat:s96345-01", "满意", at), MarkDispatched("T1", "OT1-1", "u", at)]
    for op in ops:
        assert op_from_json(json.loads(json.dumps(op_to_json(op)))) == op
        assert op.id == "T1"


async def test_poll_loop_backs_off_after_a_failure_and_a_wake_cuts_the_wait_short() -> None:
    import asyncio
    import time

    from callrouter.tasks import poll_loop

    stop, wake = asyncio.Event(), asyncio.Event()
    rounds: list[float] = []

    async def step() -> float:
        rounds.append(time.monotonic())
        if len(rounds) == 1:
            raise RuntimeError("the database is away")
        if len(rounds) >= 4:
            stop.set()
        return 10.0  # a long wait: only a wake-up starts the next round soon

    task = asyncio.create_task(poll_loop("test", step, stop, wake, retry_initial_s=0.05))
    # bounded waits, not a fixed sleep: a loaded CI machine may run the retry late
    for _ in range(200):
        if len(rounds) >= 2:
            break
        await asyncio.sleep(0.01)
    assert len(rounds) == 2, "retried after the backoff"
    assert 0.04 <= rounds[1] - rounds[0] < 1.5, "the backoff, not at once and not the step's 10 s"
    await asyncio.sleep(0.15)
    assert len(rounds) == 2, "then waiting (the step asked for 10 s): no round without a wake-up"
    wake.set()
    await asyncio.sleep(0.05)
    wake.set()
    await asyncio.wait_for(task, 1)
    assert len(rounds) == 4
