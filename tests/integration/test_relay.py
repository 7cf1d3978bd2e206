"""Outbox relay and consumer groups against a private redis-server and real databases."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis.asyncio import Redis

from callrouter.tickets import (
    AnswerTicket,
    CloseTicket,
    OpenTicket,
    SetSeat,
    TicketOp,
    TicketStore,
    TicketWriter,
)
from callrouter.tickets.consumer import GroupConsumer, StreamEvent
from callrouter.tickets.relay import OutboxRelay

from .servers import PrivateRedis

pytestmark = pytest.mark.integration

MakeStore = Callable[..., tuple[TicketStore, Any]]
T0 = datetime(2026, 11, 29, 5, 33, 1, tzinfo=UTC)
STREAM = "cr-test:tickets"

# The issue asks for a 30 s Redis outage; 5 s takes the same path (XADD fails, backoff
# grows to its cap, the outbox backlog grows, then drains) and keeps the suite short.
REDIS_OUTAGE_S = 5.0

_serial = itertools.count()


def call_ops(n: int, *, abandoned: bool = False) -> list[TicketOp]:
    """A call's ticket changes: open, answer, seat, close (or open, answer, abandon)."""
    tid = f"T{n:06d}-{next(_serial)}"
    at = T0 + timedelta(seconds=n)
    line = "110" if n % 2 else "96345"
    ops: list[TicketOp] = [
        OpenTicket(id=tid, dialled="110" if line == "110" else "12345", number=line,
                   caller="13800138000", caller_name="", line=line, category="police",
                   department="public security", priority=2, listed=True,
                   channel_id=f"chan-{tid}", arrived_at=at),
        AnswerTicket(tid, at + timedelta(milliseconds=30))]
    if abandoned:
        return [*ops, CloseTicket(tid, at + timedelta(seconds=4), "abandoned")]
    return [*ops, SetSeat(tid, "s110-01", at + timedelta(seconds=3)),
            CloseTicket(tid, at + timedelta(seconds=60), "completed")]


class Dedupe:
    """An idempotent consumer: remembers event ids, counts re-deliveries apart."""

    def __init__(self) -> None:
        self.events: dict[str, StreamEvent] = {}
        self.order: list[StreamEvent] = []
        self.duplicates = 0

    def __call__(self, event: StreamEvent) -> None:
        if event.event_id in self.events:
            self.duplicates += 1
            return
        self.events[event.event_id] = event
        self.order.append(event)


async def eventually(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def running(store: TicketStore, redis_url: str, *, consume: Dedupe | None = None,
                  **relay_options: Any) -> AsyncIterator[tuple[TicketWriter, OutboxRelay]]:
    """Writer, relay and (optionally) a consumer, as tasks of one task group."""
    writer = TicketWriter(store, retry_initial_s=0.05, retry_max_s=0.5)
    relay_options = {"poll_s": 0.02, "retry_initial_s": 0.05, "retry_max_s": 0.5,
                     "redis_timeout_s": 1.0, "lease_s": 5.0, **relay_options}
    relay = OutboxRelay(store, redis_url, STREAM, **relay_options)
    stop = asyncio.Event()
    redis = Redis.from_url(redis_url, decode_responses=True, socket_timeout=3,
                           socket_connect_timeout=1)
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(writer.run())
            tg.create_task(relay.run())
            if consume is not None:
                consumer = GroupConsumer(redis, STREAM, "dispatch", "c1", block_ms=100)
                tg.create_task(consumer.run(consume, stop, retry_max_s=0.3))
            try:
                yield writer, relay
            finally:
                stop.set()
                await writer.close(timeout=30)
                await relay.close()
    finally:
        await redis.aclose()


def outbox_ids(store: TicketStore) -> list[str]:
    return [r["event_id"] for r in store.outbox()]


async def test_relay_publishes_every_change_once_in_order(
        backend: str, make_store: MakeStore, private_redis: PrivateRedis) -> None:
    store, _ = make_store(backend)
    seen = Dedupe()
    gaps: list[float] = []

    async def ticker() -> None:  # the event loop must never stall on the relay
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.01)
            gaps.append(time.monotonic() - before)

    async with running(store, private_redis.url, consume=seen) as (writer, relay):
        tick = asyncio.create_task(ticker())
        for n in range(60):
            for op in call_ops(n, abandoned=n % 10 == 1):
                writer.submit(op)
            await asyncio.sleep(0.005)
        assert await writer.drain(timeout=30)
        assert await relay.drain(timeout=20)
        produced = outbox_ids(store)
        await eventually(lambda: len(seen.events) >= len(produced), 20, "every event")
        assert relay.sent == len(produced) and relay.metrics()["failing"] is False
        tick.cancel()
        await asyncio.gather(tick, return_exceptions=True)

    # 60 calls x 4 changes; the 6 abandoned ones (odd n: line 110) have no seat but a
    # callback request
    assert len(produced) == 60 * 4 - 6 + 6
    assert sum(e.kind == "callback_requested" for e in seen.order) == 6
    assert [e.event_id for e in seen.order] == produced  # one relay: written order
    assert seen.duplicates == 0
    rows = {r["event_id"]: r for r in store.outbox()}
    for event in seen.order:
        row = rows[event.event_id]
        assert (event.ticket_id, event.kind, event.at, event.seq, event.ticket) == \
            (row["ticket_id"], row["kind"], row["at"], row["seq"], row["ticket"])
        assert row["sent_at"] is not None
    assert store.outbox_backlog() == (0, None)
    # coarse (the machine may be busy): the relay's database work runs in threads
    assert max(gaps) < 1.0, f"event loop stalled {max(gaps):.3f} s"


async def test_redis_outage_loses_nothing_and_delivers_exactly_once(
        make_store: MakeStore, private_redis: PrivateRedis) -> None:
    store, _ = make_store("sqlite")
    seen = Dedupe()
    produce = asyncio.Event()
    n_calls = itertools.count()

    async def producer(writer: TicketWriter) -> None:
        # ~20 calls/s worth of ticket changes while ``produce`` is set
        while True:
            await produce.wait()
            n = next(n_calls)
            for op in call_ops(n, abandoned=n % 7 == 0):
                writer.submit(op)
            await asyncio.sleep(0.05)

    async with running(store, private_redis.url, consume=seen) as (writer, relay):
        task = asyncio.create_task(producer(writer))
        produce.set()
        await asyncio.sleep(1.0)
        # The private Redis runs without persistence, so its restart empties the stream:
        # let the consumer catch up first (a production Redis keeps an AOF instead).
        produce.clear()
        assert await writer.drain(timeout=10)
        await eventually(lambda: len(seen.events) == len(outbox_ids(store)), 10, "catch-up")
        before = len(seen.events)

        private_redis.kill()
        produce.set()  # calls keep coming while Redis is away
        written_at_kill = writer.written
        await eventually(lambda: relay.failing, 5, "the relay to notice the outage")
        await asyncio.sleep(REDIS_OUTAGE_S)
        backlog, oldest = store.outbox_backlog()
        assert backlog > 0 and oldest is not None
        assert writer.written > written_at_kill  # tickets are still written
        assert len(seen.events) == before  # nothing can arrive meanwhile

        private_redis.start()  # same port, empty
        await asyncio.sleep(1.0)
        produce.clear()
        assert await writer.drain(timeout=10)
        produced = outbox_ids(store)
        await eventually(lambda: len(seen.events) == len(produced), 20, "the outbox to drain")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert not relay.failing

    consumed = [e.event_id for e in seen.order]
    assert len(consumed) == len(produced)  # counts compared exactly
    assert sorted(consumed) == sorted(produced)
    assert store.outbox_backlog()[0] == 0


async def _publish(store: TicketStore, redis_url: str, calls: int) -> list[str]:
    """``calls`` calls' changes written and relayed; the event ids in written order."""
    store.apply([op for n in range(calls) for op in call_ops(n)])
    relay = OutboxRelay(store, redis_url, STREAM, poll_s=0.01, redis_timeout_s=1, lease_s=5)
    task = asyncio.create_task(relay.run())
    await eventually(lambda: store.outbox_backlog()[0] == 0, 10, "relay")
    await relay.close()
    await task
    return outbox_ids(store)


class Crash(BaseException):
    """A consumer process dying mid-batch (not an error it handles)."""


async def test_a_crashed_consumers_pending_events_go_to_another(
        make_store: MakeStore, private_redis: PrivateRedis) -> None:
    store, _ = make_store("sqlite")
    produced = await _publish(store, private_redis.url, 5)  # 20 events
    redis = Redis.from_url(private_redis.url, decode_responses=True, socket_timeout=5)
    try:
        done_by_a: list[str] = []

        def dies_after_three(event: StreamEvent) -> None:
            if len(done_by_a) == 3:
                raise Crash
            done_by_a.append(event.event_id)

        a = GroupConsumer(redis, STREAM, "dispatch", "a", count=100, block_ms=10)
        await a.ensure_group()
        with pytest.raises(Crash):
            await a.step(dies_after_three)
        pending = await redis.xpending(STREAM, "dispatch")
        assert pending["pending"] == 17  # delivered to a, never acknowledged

        seen = Dedupe()
        b = GroupConsumer(redis, STREAM, "dispatch", "b", block_ms=10, idle_claim_ms=1500)
        assert await b.step(seen) == 0  # not idle long enough yet
        await asyncio.sleep(1.6)
        await b.run(seen, max_events=17)
        assert all(e.deliveries == 2 for e in seen.order)
        assert (await redis.xpending(STREAM, "dispatch"))["pending"] == 0
        assert done_by_a + [e.event_id for e in seen.order] == produced
    finally:
        await redis.aclose()


async def test_an_event_failing_too_often_goes_to_the_dead_letter_stream(
        make_store: MakeStore, private_redis: PrivateRedis) -> None:
    store, _ = make_store("sqlite")
    produced = await _publish(store, private_redis.url, 2)  # 8 events
    poison = produced[5]
    redis = Redis.from_url(private_redis.url, decode_responses=True, socket_timeout=5)
    try:
        attempts: list[int] = []
        seen = Dedupe()

        def handle(event: StreamEvent) -> None:
            if event.event_id == poison:
                attempts.append(event.deliveries)
                raise RuntimeError("the department's system rejects it")
            seen(event)

        consumer = GroupConsumer(redis, STREAM, "dispatch", "c", block_ms=10,
                                 idle_claim_ms=0, max_deliveries=3)
        await consumer.ensure_group()
        deadline = time.monotonic() + 10
        while consumer.dead == 0:
            assert time.monotonic() < deadline, "never dead-lettered"
            await consumer.step(handle)

        assert attempts == [1, 2, 3]
        assert sorted(seen.events) == sorted(set(produced) - {poison})
        dead = await redis.xrange(f"{STREAM}:dead")
        assert len(dead) == 1
        fields = dead[0][1]
        assert (fields["event_id"], fields["dead_group"], fields["dead_deliveries"]) == \
            (poison, "dispatch", "4")
        assert (await redis.xpending(STREAM, "dispatch"))["pending"] == 0
    finally:
        await redis.aclose()


async def test_two_relays_on_one_postgresql_database_never_send_a_row_twice(
        make_store: MakeStore, private_redis: PrivateRedis) -> None:
    store, database = make_store("postgresql")
    other = TicketStore(database.url)
    # rows written by a third process: both relays claim them (a relay's own store hands
    # it the rows it writes, which the other never sees)
    writing = TicketStore(database.url)
    relays = [OutboxRelay(s, private_redis.url, STREAM, batch_max=15, poll_s=0.005,
                          redis_timeout_s=1, lease_s=5) for s in (store, other)]
    try:
        async with asyncio.TaskGroup() as tg:
            for relay in relays:
                tg.create_task(relay.run())
            for start in range(0, 400, 20):  # 1600 events in 20 transactions
                batch = [op for n in range(start, start + 20) for op in call_ops(n)]
                await asyncio.to_thread(writing.apply, batch)
            await eventually(lambda: store.outbox_backlog()[0] == 0, 30, "both relays")
            for relay in relays:
                await relay.close()
    finally:
        other.close()
        writing.close()

    redis = Redis.from_url(private_redis.url, decode_responses=True)
    try:
        entries = await redis.xrange(STREAM)
    finally:
        await redis.aclose()
    sent = [fields["event_id"] for _id, fields in entries]
    assert len(sent) == len(set(sent)) == 1600
    assert set(sent) == set(outbox_ids(store))
    assert relays[0].sent + relays[1].sent == 1600
    assert relays[0].sent > 0 and relays[1].sent > 0, [r.sent for r in relays]


def test_consume_command_prints_and_acknowledges(tmp_path: Any, make_store: MakeStore,
                                                 private_redis: PrivateRedis) -> None:
    store, _ = make_store("sqlite")
    produced = asyncio.run(_publish(store, private_redis.url, 3))  # 12 events
    env = {**os.environ, "CALLROUTER_HOME": str(tmp_path), "CALLROUTER_REDIS_URL":
           private_redis.url, "CALLROUTER_REDIS_PREFIX": STREAM.removesuffix(":tickets")}
    command = [sys.executable, "-m", "callrouter.cli", "tickets", "consume", "--group",
               "fire-dispatch", "--consumer", "w1", "--max-events"]
    first = subprocess.run([*command, "5"], env=env, capture_output=True, text=True,
                           timeout=30, check=True)
    rest = subprocess.run([*command, "7"], env=env, capture_output=True, text=True,
                          timeout=30, check=True)
    events = [json.loads(line) for line in (first.stdout + rest.stdout).splitlines()]
    assert [e["event_id"] for e in events] == produced
    assert events[0]["kind"] == "opened" and events[0]["ticket"]["id"] == events[0]["ticket_id"]
    assert {"stream_id", "at", "seq", "deliveries"} <= events[0].keys()


async def test_listeners_get_every_published_row_and_a_failing_one_stops_nothing(
        make_store: MakeStore, private_redis: PrivateRedis) -> None:
    store, _ = make_store("sqlite")
    heard: list[dict[str, Any]] = []

    def broken(row: dict[str, Any]) -> None:
        raise RuntimeError("a listener's bug")

    async with running(store, private_redis.url) as (writer, relay):
        relay.listeners += [broken, heard.append]
        for n in range(3):
            for op in call_ops(n):
                writer.submit(op)
        assert await writer.drain(timeout=10)
        assert await relay.drain(timeout=10)
        await eventually(lambda: len(heard) == 12, 5, "every row to the listener")
    rows = store.outbox()
    assert [r["event_id"] for r in heard] == [r["event_id"] for r in rows]
    assert all(r["sent_at"] is not None for r in rows), "published and marked in spite of the broken listener"
    assert heard[0]["kind"] == "opened" and heard[0]["ticket"]["caller"] == "13800138000"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_commits_in_this_process_are_published_without_a_claim_round_and_idle_costs_one_poll(
        backend: str, make_store: MakeStore, private_redis: PrivateRedis) -> None:
    """The store hands the relay the rows it claimed for it in the writer's transaction:
    a change reaches the stream at once with no claim; idle, the relay only claims once per
    poll_s (rows from other processes). About 3 s."""
    store, _ = make_store(backend)
    claims: list[float] = []
    claim = store.claim_outbox

    def counted(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        claims.append(time.monotonic())
        return claim(*args, **kwargs)

    store.claim_outbox = counted  # type: ignore[method-assign]
    async with running(store, private_redis.url, poll_s=1.0) as (writer, relay):
        await eventually(lambda: len(claims) >= 1, 5, "the first claim at start")
        await asyncio.sleep(0.1)
        before = len(claims)
        for n in range(5):
            for op in call_ops(n):
                writer.submit(op)
            await asyncio.sleep(0.05)
        await eventually(lambda: relay.sent == 20, 5, "every change published")
        assert len(claims) - before <= 1, "handed rows need no claim (one safety poll at most)"
        idle_from = len(claims)
        await asyncio.sleep(2.1)
        assert 1 <= len(claims) - idle_from <= 3, "idle: one claim a second, nothing else"
        # rows written by another process (no hand-off) wait for the safety poll
        other = TicketStore(store.engine.url.render_as_string(hide_password=False))
        try:
            await asyncio.to_thread(other.apply, call_ops(99))
            await eventually(lambda: relay.sent == 24, 3, "the safety poll to find them")
        finally:
            other.close()
    assert all(r["sent_at"] is not None for r in store.outbox())


async def test_deferred_marks_publish_at_once_and_mark_many_wakes_in_one_transaction(
        make_store: MakeStore, private_redis: PrivateRedis) -> None:
    """With mark_delay_s the rows are on the stream at once and marked sent together
    (one transaction for several wake-ups); close() marks what is left. About 2 s."""
    store, _ = make_store("sqlite")
    marks: list[int] = []
    mark = store.mark_sent

    def counted(owner: str, event_ids: Any) -> int:
        marks.append(len(event_ids))
        return mark(owner, event_ids)

    store.mark_sent = counted  # type: ignore[method-assign]
    async with running(store, private_redis.url, poll_s=1.0, mark_delay_s=0.6) as (writer, relay):
        heard: list[dict[str, Any]] = []
        relay.listeners.append(heard.append)
        for n in range(3):
            for op in call_ops(n):
                writer.submit(op)
            await asyncio.sleep(0.1)
        await eventually(lambda: len(heard) == 12, 3, "every change on the stream")
        assert store.outbox_backlog()[0] > 0 or marks, "published before marked"
        await eventually(lambda: store.outbox_backlog()[0] == 0, 3, "the deferred mark")
        assert len(marks) <= 2 and sum(marks) == 12, marks
        for op in call_ops(7):
            writer.submit(op)
        await eventually(lambda: len(heard) == 16, 3, "the last call's changes on the stream")
    assert store.outbox_backlog()[0] == 0, "close() marked what was published"
    assert relay.sent == 16
