"""TicketStore and TicketWriter against real SQLite and PostgreSQL databases."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import select

from callrouter.tickets import (
    AnswerTicket,
    CloseTicket,
    OpenTicket,
    RecordUnseenCall,
    SetSeat,
    Ticket,
    TicketOp,
    TicketStore,
    TicketWriter,
    new_ticket_id,
)

pytestmark = pytest.mark.integration

MakeStore = Callable[..., tuple[TicketStore, Any]]

T0 = datetime(2026, 11, 29, 5, 33, 1, 250000, tzinfo=UTC)


def open_op(ticket_id: str, *, at: datetime = T0, line: str = "110",
            channel: str | None = None, dialled: str = "119") -> OpenTicket:
    return OpenTicket(
        id=ticket_id, dialled=dialled, number=dialled, caller="13800138000",
        caller_name="", line=line, category="fire" if line == "110" else "consumer",
        department="fire brigade" if line == "110" else "market supervision",
        priority=1 if line == "110" else 5, listed=True,
        channel_id=channel or f"1764394381.{ticket_id}", arrived_at=at)


def lifecycle(ticket_id: str, at: datetime, *, line: str = "110") -> list[TicketOp]:
    return [open_op(ticket_id, at=at, line=line),
            AnswerTicket(ticket_id, at + timedelta(milliseconds=40)),
            CloseTicket(ticket_id, at + timedelta(seconds=61.5), "completed")]


def event_log(store: TicketStore) -> list[tuple[str, str]]:
    return [(e["ticket_id"], e["kind"]) for e in store.events()]


def expected_log(ops: list[TicketOp]) -> list[tuple[str, str]]:
    kinds = {OpenTicket: "opened", AnswerTicket: "answered", CloseTicket: "closed",
             SetSeat: "seated"}
    return [(op.id, kinds[type(op)]) for op in ops]


async def eventually(condition: Callable[[], bool], timeout: float = 10.0,
                     what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


# --- the store ---------------------------------------------------------------------------

def test_lifecycle_records_times_and_duration(backend: str, make_store: MakeStore) -> None:
    store, _ = make_store(backend)
    tid = new_ticket_id(T0)
    store.apply([open_op(tid, channel="1764394381.17")])

    opened = store.get(tid)
    assert opened is not None
    assert opened["arrived_at"] == "2026-11-29T05:33:01.250000+00:00"
    assert opened["answered_at"] is None and opened["ended_at"] is None
    assert opened["outcome"] is None and opened["duration_s"] is None
    assert (opened["dialled"], opened["number"], opened["line"]) == ("119", "119", "110")
    assert (opened["priority"], opened["listed"], opened["seat"]) == (1, True, None)

    # a timestamp in another zone is stored as the same instant in UTC
    answered = (T0 + timedelta(seconds=0.5)).astimezone(timezone(timedelta(hours=8)))
    store.apply([AnswerTicket(tid, answered)])
    store.apply([SetSeat(tid, "110-03", T0 + timedelta(seconds=12))])
    store.apply([CloseTicket(tid, T0 + timedelta(seconds=95.75), "completed")])

    ticket = store.get(tid)
    assert ticket is not None
    assert ticket["answered_at"] == "2026-11-29T05:33:01.750000+00:00"
    assert ticket["seat"] == "110-03"
    assert ticket["seat_answered_at"] == "2026-11-29T05:33:13.250000+00:00"
    assert ticket["ended_at"] == "2026-11-29T05:34:37+00:00"
    assert ticket["outcome"] == "completed"
    assert ticket["duration_s"] == pytest.approx(95.75)
    assert datetime.fromisoformat(ticket["updated_at"]).tzinfo is not None

    # the ORM hands out aware UTC datetimes on both backends (SQLite keeps them naive)
    with store.engine.connect() as conn:
        arrived = conn.scalar(select(Ticket.arrived_at).where(Ticket.id == tid))
    assert arrived == T0 and arrived is not None and arrived.utcoffset() == timedelta(0)

    assert event_log(store) == [(tid, "opened"), (tid, "answered"), (tid, "seated"),
                                (tid, "closed")]
    closed = store.events(tid)[-1]
    assert closed["data"] == {"ended_at": "2026-11-29T05:34:37+00:00",
                              "outcome": "completed", "duration_s": 95.75}
    assert store.count() == 1


def test_reapplying_a_batch_changes_nothing(backend: str, make_store: MakeStore) -> None:
    store, _ = make_store(backend)
    tid = new_ticket_id(T0)
    batch = [*lifecycle(tid, T0), SetSeat(tid, "110-01", T0 + timedelta(seconds=3))]
    store.apply(batch)
    before = store.get(tid)
    events_before = store.events()

    # what the writer does after a commit whose outcome it could not see
    store.apply(batch)
    # a second close and a late answer do not rewrite history
    store.apply([CloseTicket(tid, T0 + timedelta(hours=1), "failed"),
                 AnswerTicket(tid, T0 + timedelta(minutes=5)),
                 SetSeat(tid, "110-09", T0 + timedelta(seconds=2))])

    after = store.get(tid)
    assert before is not None and after is not None
    assert {k: v for k, v in after.items() if k != "updated_at"} == \
        {k: v for k, v in before.items() if k != "updated_at"}
    assert after["outcome"] == "completed" and after["duration_s"] == pytest.approx(61.5)
    assert store.events() == events_before
    assert store.count() == 1


def test_open_and_close_in_one_batch_and_across_batches(backend: str,
                                                        make_store: MakeStore) -> None:
    store, _ = make_store(backend)
    a, b = new_ticket_id(T0), new_ticket_id(T0)
    store.apply([*lifecycle(a, T0), open_op(b, at=T0 + timedelta(seconds=1))])
    store.apply([CloseTicket(b, T0 + timedelta(seconds=4), "abandoned")])
    ta, tb = store.get(a), store.get(b)
    assert ta is not None and tb is not None
    assert (ta["outcome"], ta["duration_s"]) == ("completed", pytest.approx(61.5))
    assert (tb["outcome"], tb["answered_at"], tb["duration_s"]) == ("abandoned", None,
                                                                    pytest.approx(3.0))


def test_changes_for_unknown_ticket_are_logged(backend: str, make_store: MakeStore,
                                               caplog: pytest.LogCaptureFixture) -> None:
    store, _ = make_store(backend)
    with caplog.at_level(logging.WARNING, logger="callrouter.tickets"):
        store.apply([CloseTicket("T20261129-000000-deadbeef", T0, "completed"),
                     AnswerTicket("T20261129-000000-deadbeef", T0)])
    messages = [r.getMessage() for r in caplog.records if r.name == "callrouter.tickets"]
    assert len(messages) == 2
    assert all("unknown ticket T20261129-000000-deadbeef" in m for m in messages)
    assert store.count() == 0 and store.events() == []


def test_second_ticket_for_a_channel_is_refused(backend: str, make_store: MakeStore,
                                                caplog: pytest.LogCaptureFixture) -> None:
    store, _ = make_store(backend)
    first, second = new_ticket_id(T0), new_ticket_id(T0)
    with caplog.at_level(logging.WARNING, logger="callrouter.tickets"):
        store.apply([open_op(first, channel="chan-1")])
        store.apply([open_op(second, channel="chan-1"), open_op(first, channel="chan-2")])
    by_channel = store.by_channel("chan-1")
    assert by_channel is not None and by_channel["id"] == first
    assert store.get(second) is None and store.by_channel("chan-2") is None
    assert any("already has ticket" in r.getMessage() for r in caplog.records)
    assert any("clashes" in r.getMessage() for r in caplog.records)


def test_list_newest_first_with_limit_and_line(backend: str, make_store: MakeStore) -> None:
    store, _ = make_store(backend)
    # written out of arrival order, across two lines
    arrivals = [(7, "110"), (2, "96345"), (9, "96345"), (4, "110"), (1, "110"),
                (5, "96345")]
    ids: dict[int, str] = {}
    for minute, line in arrivals:
        at = T0 + timedelta(minutes=minute)
        ids[minute] = new_ticket_id(at)
        store.apply([open_op(ids[minute], at=at, line=line)])

    newest_first = [ids[m] for m in sorted(ids, reverse=True)]
    assert [t["id"] for t in store.list()] == newest_first
    assert [t["id"] for t in store.list(limit=3)] == newest_first[:3]
    assert [t["id"] for t in store.list(line="110")] == [ids[7], ids[4], ids[1]]
    assert [t["id"] for t in store.list(limit=2, line="96345")] == [ids[9], ids[5]]
    assert store.list(limit=0) == []

    row = store.list(limit=1)[0]
    for key in ("id", "dialled", "number", "caller", "line", "category", "department",
                "priority", "channel_id", "arrived_at", "answered_at", "ended_at",
                "outcome", "duration_s", "seat"):
        assert key in row
    assert row["arrived_at"] == (T0 + timedelta(minutes=9)).isoformat()


def test_by_channel_and_get(backend: str, make_store: MakeStore) -> None:
    store, _ = make_store(backend)
    tid = new_ticket_id(T0)
    store.apply([open_op(tid, channel="1764394381.42", dialled="12315", line="96345")])
    found = store.by_channel("1764394381.42")
    assert found is not None
    assert (found["id"], found["dialled"], found["line"]) == (tid, "12315", "96345")
    assert store.get(tid) == found
    assert store.by_channel("1764394381.43") is None
    assert store.get("T20261129-000000-00000000") is None


def test_create_schema_is_idempotent(backend: str, make_store: MakeStore) -> None:
    store, database = make_store(backend)
    tid = new_ticket_id(T0)
    store.apply([open_op(tid)])
    store.create_schema()
    with TicketStore(database.url) as again:
        again.create_schema()
        assert again.get(tid) is not None


# --- the writer --------------------------------------------------------------------------

@asynccontextmanager
async def running(writer: TicketWriter) -> AsyncIterator[TicketWriter]:
    """Run the writer as the engine does: a task owned by a task group."""
    async with asyncio.TaskGroup() as tg:
        tg.create_task(writer.run())
        try:
            yield writer
        finally:
            await writer.close(timeout=30)


async def test_writer_writes_everything_in_order(backend: str,
                                                 make_store: MakeStore) -> None:
    store, _ = make_store(backend)
    writer = TicketWriter(store, batch_max=64)
    ops: list[TicketOp] = []
    async with running(writer):
        for i in range(400):
            at = T0 + timedelta(seconds=i)
            ops.extend(lifecycle(f"T-{i:05d}", at, line="110" if i % 3 else "96345"))
        # interleave the lifecycles so order across tickets matters too
        ops.sort(key=lambda op: op.arrived_at if isinstance(op, OpenTicket | RecordUnseenCall) else op.at)
        for op in ops:
            writer.submit(op)
        assert writer.pending == len(ops)
        assert await writer.drain(timeout=60)
        assert writer.pending == 0 and writer.written == len(ops)

    assert store.count() == 400
    assert event_log(store) == expected_log(ops)
    tickets = store.list(limit=1000)
    assert all(t["outcome"] == "completed" for t in tickets)
    assert all(t["duration_s"] == pytest.approx(61.5) for t in tickets)


@asynccontextmanager
async def outage(backend: str, store: TicketStore, database: Any,
                 request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Make the store's database unavailable for the body of the ``async with``."""
    if backend == "sqlite":
        # another process holding the write lock: our writes fail after the busy timeout
        lock = sqlite3.connect(database.name, isolation_level=None)
        try:
            lock.execute("BEGIN EXCLUSIVE")
            yield
        finally:
            lock.execute("ROLLBACK")
            lock.close()
    else:
        server = request.getfixturevalue("postgres_server")
        server.block_connections(database.name)
        try:
            yield
        finally:
            server.allow_connections(database.name)


async def test_writer_survives_database_outage(backend: str, make_store: MakeStore,
                                               request: pytest.FixtureRequest,
                                               caplog: pytest.LogCaptureFixture) -> None:
    store, database = make_store(backend, sqlite_busy_timeout_s=0.1)
    writer = TicketWriter(store, batch_max=10, retry_initial_s=0.05, retry_max_s=0.4)
    before = [op for i in range(5) for op in lifecycle(f"A-{i}", T0 + timedelta(seconds=i))]
    during = [op for i in range(30)
              for op in lifecycle(f"B-{i}", T0 + timedelta(minutes=1, seconds=i))]
    after = [op for i in range(5)
             for op in lifecycle(f"C-{i}", T0 + timedelta(minutes=2, seconds=i))]

    caplog.set_level(logging.WARNING, logger="callrouter.tickets")
    async with running(writer):
        for op in before:
            writer.submit(op)
        assert await writer.drain(timeout=30)

        async with outage(backend, store, database, request):
            started = time.monotonic()
            for op in during:
                writer.submit(op)  # the call path: must not wait for the database
            assert time.monotonic() - started < 0.05
            await eventually(lambda: writer.retries >= 3, what="failed write attempts")
            assert writer.failing and writer.last_error
            assert writer.pending == len(during)
            assert not await writer.drain(timeout=0.5)
            for op in after:
                writer.submit(op)
            await asyncio.sleep(0.5)  # the outage lasts well over a second in all

        assert await writer.drain(timeout=30)
        assert not writer.failing and writer.pending == 0

    all_ops = before + during + after
    assert writer.written == len(all_ops)
    assert store.count() == 40
    assert event_log(store) == expected_log(all_ops)
    assert all(t["outcome"] == "completed" for t in store.list(limit=100))
    messages = [r.getMessage() for r in caplog.records]
    assert any("event=ticket_write_failed" in m for m in messages)
    assert any("recovered" in m for m in messages)


def test_figures_of_the_day_are_counted_in_sql_past_1000_calls(backend: str, make_store: MakeStore) -> None:
    store, _ = make_store(backend)
    day = T0.replace(hour=0, minute=0, second=0, microsecond=0)
    ops: list[TicketOp] = []
    # 1,200 calls today on 110 (119 and 110 alternately): every third abandoned, the rest
    # answered by a seat after (i % 30) s; 30 calls on 96345 (12315) answered after 20 s;
    # 5 calls yesterday that must not count
    for i in range(1200):
        tid, at = f"T-a{i}", day + timedelta(seconds=10 * i)
        ops.append(open_op(tid, at=at, dialled="119" if i % 2 else "110"))
        if i % 3 == 0:
            ops.append(CloseTicket(tid, at + timedelta(seconds=5), "abandoned"))
        else:
            ops.append(SetSeat(tid, "s110-01", at + timedelta(seconds=i % 30)))
    for i in range(30):
        tid, at = f"T-b{i}", day + timedelta(minutes=i, seconds=1)
        ops += [open_op(tid, at=at, line="96345", dialled="12315"), SetSeat(tid, "s96345-01", at + timedelta(seconds=20))]
    ops += [open_op(f"T-y{i}", at=day - timedelta(hours=1, minutes=i)) for i in range(5)]
    store.apply(ops)

    fig = store.figures(day, target_s={"110": 15.0, "96345": 15.0})
    seated = [i for i in range(1200) if i % 3]
    within = [i for i in seated if i % 30 <= 15]
    l110 = fig["lines"]["110"]
    assert (l110["offered"], l110["done"], l110["answered"], l110["abandoned"]) == (1200, 1200, len(seated), 400)
    assert l110["within_target"] == len(within)
    assert l110["service_level"] == round(len(within) / 1200, 4)
    assert l110["abandon_rate"] == round(400 / 1200, 4)
    l96345 = fig["lines"]["96345"]
    assert (l96345["offered"], l96345["within_target"], l96345["service_level"]) == (30, 0, 0.0)
    assert fig["offered"] == 1230
    assert fig["by_number"] == {"110": 600, "119": 600, "12315": 30}
    assert fig["by_category"] == {"fire": 1200, "consumer": 30}
    # the same with a longer 96345 target; nothing before the day counts, an empty day is empty
    assert store.figures(day, target_s={"96345": 25.0})["lines"]["96345"]["within_target"] == 30
    assert store.figures(day + timedelta(days=1)) == {"since": (day + timedelta(days=1)).isoformat(), "until": None,
                                                      "offered": 0, "lines": {}, "by_number": {}, "by_category": {}}


def test_seat_filter_applies_before_the_limit(backend: str, make_store: MakeStore) -> None:
    store, _ = make_store(backend)
    ops: list[TicketOp] = []
    for i in range(30):  # the caller's last 30 calls: only the oldest two were s110-02's
        tid = f"T-c{i:02d}"
        ops += [open_op(tid, at=T0 + timedelta(minutes=i)), SetSeat(tid, "s110-02" if i < 2 else "s110-01",
                                                                    T0 + timedelta(minutes=i, seconds=3))]
    store.apply(ops)
    assert [t["id"] for t in store.list(limit=20, caller="13800138000", seat="s110-02")] == ["T-c01", "T-c00"]
    assert len(store.list(limit=20, caller="13800138000")) == 20


def test_untrusted_caller_fields_are_capped_and_cleaned_by_the_store(backend: str, make_store: MakeStore) -> None:
    store, _ = make_store(backend)
    hostile = OpenTicket(id="T-h", dialled="1\r\n" + "9" * 500, number="1", caller="1<img src=x>\x00\u202e" + "8" * 500,
                         caller_name="\x1b[31mname" + "n" * 500, line="96345", category="unlisted",
                         department="d", priority=5, listed=False, channel_id="1764394381.77", arrived_at=T0)
    store.apply([hostile])
    row = store.get("T-h")
    assert row is not None
    assert row["caller"] == ("1<img src=x>" + "8" * 500)[:64]
    assert row["caller_name"] == ("[31mname" + "n" * 500)[:80]
    assert row["dialled"] == ("1" + "9" * 500)[:64]
