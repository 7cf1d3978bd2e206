"""Ticket ids, op validation and the writer's queueing, batching and retry rules.

The writer runs against a real in-memory SQLite store; faults are injected by a store
subclass that fails chosen attempts before writing.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from callrouter.tickets import (
    AnswerTicket,
    CloseTicket,
    OpenTicket,
    SetSeat,
    TicketOp,
    TicketStore,
    TicketWriter,
    new_ticket_id,
)
from callrouter.tickets.models import UTCDateTime

T0 = datetime(2026, 11, 29, 5, 33, 1, tzinfo=UTC)


def open_op(ticket_id: str, at: datetime = T0, **changes: Any) -> OpenTicket:
    fields: dict[str, Any] = {
        "id": ticket_id, "dialled": "110", "number": "110", "caller": "13800138000",
        "caller_name": "", "line": "110", "category": "police",
        "department": "public security", "priority": 1, "listed": True,
        "channel_id": f"chan-{ticket_id}", "arrived_at": at}
    fields.update(changes)
    return OpenTicket(**fields)


class FlakyStore(TicketStore):
    """A real store whose next ``fail`` write attempts raise, as a lost database would."""

    def __init__(self, url: str = "sqlite://") -> None:
        super().__init__(url)
        self.fail = 0
        self.attempts: list[list[str]] = []
        self.gate: threading.Event | None = None

    def apply(self, ops: Sequence[TicketOp]) -> None:
        self.attempts.append([op.id for op in ops])
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail:
            self.fail -= 1
            raise OperationalError("INSERT ...", {}, Exception("server closed the connection"))
        super().apply(ops)


@pytest.fixture
def store() -> Iterator[FlakyStore]:
    s = FlakyStore()
    s.create_schema()
    yield s
    s.close()


# --- ids and ops -------------------------------------------------------------------------

def test_ticket_id_is_utc_time_then_random() -> None:
    beijing = T0.astimezone(timezone(timedelta(hours=8)))
    tid = new_ticket_id(beijing)
    assert re.fullmatch(r"T20261129-053301-[0-9a-f]{8}", tid)
    assert new_ticket_id(T0) != new_ticket_id(T0)
    later = new_ticket_id(T0 + timedelta(seconds=1))
    assert max(new_ticket_id(T0) for _ in range(50)) < later
    with pytest.raises(ValueError):
        new_ticket_id(datetime(2026, 11, 29, 5, 33, 1))


@pytest.mark.parametrize("bad", [
    {"arrived_at": datetime(2026, 11, 29)},  # naive
    {"line": "12345"},
    {"priority": True},
    {"priority": "1"},
    {"listed": 1},
    {"caller": None},
    {"channel_id": ""},
])
def test_open_ticket_rejects_what_the_database_would(bad: dict[str, Any]) -> None:
    with pytest.raises((ValueError, TypeError)):
        open_op("T-1", **bad)


NAIVE = datetime(2026, 11, 29, 5, 33, 1)


def test_other_ops_need_aware_times() -> None:
    with pytest.raises(ValueError):
        AnswerTicket("T-1", NAIVE)
    with pytest.raises(ValueError):
        CloseTicket("T-1", NAIVE, "completed")
    with pytest.raises(ValueError):
        SetSeat("T-1", "110-01", NAIVE)


def test_utc_datetime_type_reads_naive_sqlite_values_as_utc() -> None:
    from sqlalchemy.dialects.postgresql.base import PGDialect
    from sqlalchemy.dialects.sqlite.base import SQLiteDialect

    col = UTCDateTime()
    shanghai = T0.astimezone(timezone(timedelta(hours=8)))
    assert col.process_bind_param(shanghai, SQLiteDialect()) == T0.replace(tzinfo=None)
    assert col.process_bind_param(shanghai, PGDialect()) == T0  # type: ignore[no-untyped-call]
    read = col.process_result_value(T0.replace(tzinfo=None), SQLiteDialect())
    assert read == T0 and read is not None and read.tzinfo is UTC


# --- the writer --------------------------------------------------------------------------

async def test_submit_never_blocks_or_raises(store: FlakyStore,
                                             caplog: pytest.LogCaptureFixture) -> None:
    writer = TicketWriter(store)
    writer.submit(open_op("T-1"))
    writer.submit("not an op")  # type: ignore[arg-type]
    writer.submit(None)  # type: ignore[arg-type]
    assert writer.pending == 1 and writer.written == 0
    assert sum("not a ticket op" in r.getMessage() for r in caplog.records) == 2
    assert store.attempts == []  # nothing touches the database until run()


async def test_batches_take_everything_queued_up_to_batch_max(store: FlakyStore) -> None:
    writer = TicketWriter(store, batch_max=4)
    for i in range(10):
        writer.submit(open_op(f"T-{i}"))
    async with asyncio.TaskGroup() as tg:
        tg.create_task(writer.run())
        assert await writer.drain(timeout=10)
        assert await writer.close(timeout=10)
    assert [len(batch) for batch in store.attempts] == [4, 4, 2]
    assert [i for batch in store.attempts for i in batch] == [f"T-{i}" for i in range(10)]
    assert store.count() == 10 and writer.written == 10


async def test_failed_batch_is_retried_unchanged_with_backoff(
        store: FlakyStore, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="callrouter.tickets")
    writer = TicketWriter(store, batch_max=3, retry_initial_s=0.01, retry_max_s=0.04)
    store.fail = 4
    ops: list[TicketOp] = [open_op("T-1"), AnswerTicket("T-1", T0 + timedelta(seconds=1)),
                           CloseTicket("T-1", T0 + timedelta(seconds=9), "completed"),
                           open_op("T-2")]
    for op in ops:
        writer.submit(op)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(writer.run())
        assert await writer.drain(timeout=10)
        await writer.close(timeout=10)

    first = ["T-1", "T-1", "T-1"]
    assert store.attempts == [first] * 5 + [["T-2"]]
    delays = [float(m.group(1)) for r in caplog.records
              if (m := re.search(r"retry_in_s=([0-9.]+)", r.getMessage()))]
    assert delays == [0.01, 0.02, 0.04, 0.04]
    assert writer.retries == 4 and not writer.failing and writer.last_error is None
    ticket = store.get("T-1")
    assert ticket is not None and ticket["duration_s"] == 9.0
    assert [e["kind"] for e in store.events()] == ["opened", "answered", "closed", "opened"]


async def test_cancelled_run_keeps_its_batch(store: FlakyStore) -> None:
    writer = TicketWriter(store)
    writer.submit(open_op("T-1"))
    store.gate = threading.Event()  # the write hangs, as on a stalled connection
    store.fail = 1
    task = asyncio.create_task(writer.run())
    while not store.attempts:
        await asyncio.sleep(0.005)
    task.cancel()
    store.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert writer.pending == 1

    store.gate = None
    async with asyncio.TaskGroup() as tg:  # the engine starts the writer again
        tg.create_task(writer.run())
        assert await writer.close(timeout=10)
    assert store.count() == 1 and writer.pending == 0


async def test_close_reports_what_it_could_not_write(store: FlakyStore,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    writer = TicketWriter(store, retry_initial_s=0.01, retry_max_s=0.01)
    store.fail = 10_000
    writer.submit(open_op("T-1"))
    async with asyncio.TaskGroup() as tg:
        tg.create_task(writer.run())
        assert not await writer.drain(timeout=0.1)
        assert writer.failing
        assert not await writer.close(timeout=0.1)
    assert writer.pending == 1
    assert any("closed with 1 ops not written" in r.getMessage() for r in caplog.records)


async def test_close_without_run(store: FlakyStore) -> None:
    writer = TicketWriter(store)
    assert await writer.close()
    idle = TicketWriter(store)
    idle.submit(open_op("T-1"))
    assert not await idle.close(timeout=0.1)


async def test_writer_commits_each_change_at_once_below_busy_rate_and_lingers_above(store: FlakyStore) -> None:
    """Below ``busy_ops_s`` a change is written at once (the stream within milliseconds);
    a storm above it is batched for ``linger_s``. About 1.5 s."""
    writer = TicketWriter(store, linger_s=0.3, busy_ops_s=100.0)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(writer.run())
        for n in range(10):  # 20 ops/s
            started = asyncio.get_running_loop().time()
            writer.submit(open_op(f"Q-{n}"))
            assert await writer.drain(timeout=5)
            assert asyncio.get_running_loop().time() - started < 0.2, "written at once, no linger"
            await asyncio.sleep(0.05)
        assert all(len(batch) == 1 for batch in store.attempts)
        for n in range(800):  # a storm: 800 ops in about 0.8 s
            writer.submit(open_op(f"S-{n}"))
            if n % 10 == 9:
                await asyncio.sleep(0.01)
        assert await writer.drain(timeout=5)
        assert writer.rate > 100.0
        # the rate (averaged over about a second) passes 100 ops/s within about 0.1 s,
        # then batches are linger_s long
        storm = [len(b) for b in store.attempts[10:]]
        assert len(storm) <= 25 and max(storm) >= 100, storm
        await writer.close(timeout=5)
