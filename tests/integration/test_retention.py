"""Bounded growth: the dispatch stream is trimmed, a group behind the trim point is
reported, sent outbox rows are purged after their retention (never unsent ones); the
writer wakes the relay. Real SQLite, PostgreSQL and a private redis-server."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy import update

from callrouter.api.feed import relay_metrics_text
from callrouter.tickets import TicketStore, TicketWriter
from callrouter.tickets.consumer import GroupConsumer, StreamEvent, groups_behind
from callrouter.tickets.models import OutboxEvent
from callrouter.tickets.relay import OutboxRelay

from .servers import PrivateRedis
from .test_relay import STREAM, MakeStore, call_ops, eventually

pytestmark = pytest.mark.integration

# Redis trims approximately (~) by whole radix-tree nodes of this many entries: a small
# node makes the bound tight enough to assert
NODE = 10


@asynccontextmanager
async def redis_client(url: str) -> AsyncIterator[Redis]:
    redis = Redis.from_url(url, decode_responses=True, socket_timeout=5, socket_connect_timeout=2)
    try:
        await redis.config_set("stream-node-max-entries", NODE)
        yield redis
    finally:
        await redis.aclose()


@asynccontextmanager
async def relaying(store: TicketStore, redis_url: str, **options: Any) -> AsyncIterator[OutboxRelay]:
    options = {"poll_s": 0.02, "redis_timeout_s": 1.0, "lease_s": 5.0, **options}
    relay = OutboxRelay(store, redis_url, STREAM, **options)
    task = asyncio.create_task(relay.run())
    try:
        yield relay
    finally:
        await relay.close()
        await task


def publish_calls(store: TicketStore, first: int, calls: int) -> int:
    """``calls`` calls' ticket changes written to the outbox; how many events."""
    ops = [op for n in range(first, first + calls) for op in call_ops(n)]
    store.apply(ops)
    return len(ops)


async def sent_all(store: TicketStore) -> None:
    await eventually(lambda: store.outbox_backlog()[0] == 0, 15, "the outbox to be sent")


async def test_age_retention_trims_the_stream_to_what_is_recent(
        make_store: MakeStore, private_redis: PrivateRedis) -> None:
    store, _ = make_store("sqlite")
    async with redis_client(private_redis.url) as redis, \
            relaying(store, private_redis.url, retention_s=2.0, housekeeping_s=0.2) as relay:
        last = 0
        for round_ in range(3):
            last = publish_calls(store, round_ * 100, 25)
            await sent_all(store)
            await asyncio.sleep(2.5)  # older than the retention before the next round
        # the previous rounds are past the retention: trimmed on XADD or by housekeeping
        # (an idle stream too), all but at most one partly-old node
        await eventually(lambda: relay.sent == 3 * last, 5, "every event sent")
        length = await redis.xlen(STREAM)
        assert length <= NODE, f"{length} entries kept, all older than the retention"
        info = await redis.xinfo_stream(STREAM)
        assert info["entries-added"] == 3 * last
        # what is within the retention is kept
        publish_calls(store, 900, 25)
        await sent_all(store)
        await asyncio.sleep(0.5)  # housekeeping rounds run meanwhile
        assert last <= await redis.xlen(STREAM) <= last + NODE


async def test_length_cap_trims_on_every_add(make_store: MakeStore, private_redis: PrivateRedis) -> None:
    store, _ = make_store("sqlite")
    async with redis_client(private_redis.url) as redis, \
            relaying(store, private_redis.url, maxlen=50, batch_max=20) as relay:
        events = publish_calls(store, 0, 60)
        await sent_all(store)
        await eventually(lambda: relay.sent == events == 240, 5, "every event sent")
        length = await redis.xlen(STREAM)
        assert 50 <= length <= 50 + NODE


async def test_a_group_behind_the_trim_point_is_reported_with_what_it_missed(
        make_store: MakeStore, private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture) -> None:
    store, _ = make_store("sqlite")
    async with redis_client(private_redis.url) as redis:
        slow = GroupConsumer(redis, STREAM, "slow", "s1", block_ms=10)
        fast = GroupConsumer(redis, STREAM, "fast", "f1", block_ms=10)
        await slow.ensure_group()
        await fast.ensure_group()
        got_slow: list[StreamEvent] = []
        got_fast: list[StreamEvent] = []
        async with relaying(store, private_redis.url, maxlen=40, batch_max=20,
                            housekeeping_s=0.1) as relay:
            publish_calls(store, 0, 5)  # 20 events
            await sent_all(store)
            assert await slow.step(got_slow.append, limit=5) == 5
            while await fast.step(got_fast.append):
                pass
            for round_ in range(4):  # 80 more: the first ones are trimmed; fast keeps up
                publish_calls(store, 100 * (round_ + 1), 5)
                await sent_all(store)
                while await fast.step(got_fast.append):
                    pass
            info = await redis.xinfo_stream(STREAM)
            trimmed = info["entries-added"] - info["length"]
            assert trimmed > 5
            # the next housekeeping round reports the slow group, with what it missed
            await eventually(lambda: [(g.group, g.missed) for g in relay.groups_behind]
                             == [("slow", trimmed - 5)], 5, "the relay to report the slow group")
            text = relay_metrics_text(relay.metrics())
            assert "callrouter_stream_groups_behind 1\n" in text
            assert f'callrouter_stream_events_missed{{group="slow"}} {trimmed - 5}\n' in text
        assert await groups_behind(redis, STREAM, "fast") == []
        # the slow consumer itself says so before it carries on after the gap
        with caplog.at_level(logging.WARNING, logger="callrouter.tickets.consumer"):
            while await slow.step(got_slow.append):
                pass
        assert slow.missed == trimmed - 5
        assert [b.missed for b in slow.behind] == [trimmed - 5]
        assert any("event=consumer_behind_trim" in r.getMessage() and f"missed={trimmed - 5}"
                   in r.getMessage() for r in caplog.records)
        # what it read plus what it missed is everything that was added
        assert len(got_slow) + slow.missed == info["entries-added"] == len(got_fast)
        assert await groups_behind(redis, STREAM, "slow") == []  # past the gap now


def age_sent(store: TicketStore, event_ids: list[str], sent_at: datetime) -> None:
    with store.engine.begin() as conn:
        conn.execute(update(OutboxEvent).where(OutboxEvent.event_id.in_(event_ids)).values(sent_at=sent_at))


async def test_purge_deletes_only_sent_rows_older_than_the_retention(
        backend: str, make_store: MakeStore, private_redis: PrivateRedis) -> None:
    store, _ = make_store(backend)
    now = datetime.now(UTC)
    publish_calls(store, 0, 10)  # 40 events
    # 30 sent: 17 of them two hours ago, 13 just now; 10 never sent (5 of them claimed)
    rows = store.claim_outbox("test", 30, lease_s=60)
    ids = [r["event_id"] for r in rows]
    assert store.mark_sent("test", ids) == 30
    old, recent = ids[:17], ids[17:]
    age_sent(store, old, now - timedelta(hours=2))
    claimed = [r["event_id"] for r in store.claim_outbox("other", 5, lease_s=60)]
    unsent = [r["event_id"] for r in store.outbox(unsent_only=True)]
    assert len(unsent) == 10 and set(claimed) <= set(unsent)
    assert store.outbox_counts() == (30, 10)
    # unsent rows written long ago are never purged, whatever their age
    with store.engine.begin() as conn:
        conn.execute(update(OutboxEvent).where(OutboxEvent.event_id.in_(unsent))
                     .values(created_at=now - timedelta(days=30), at=now - timedelta(days=30)))

    # store level: small batches, each its own transaction
    assert store.purge_sent(now - timedelta(hours=1), limit=7) == 7
    assert store.outbox_counts() == (23, 10)

    # the relay's housekeeping purges the rest in batches and nothing else; meanwhile it
    # publishes the unsent rows (once the other relay gave back its claims): recent, kept
    store.release_claims("other")
    async with relaying(store, private_redis.url, outbox_retention_s=3600, purge_batch=4,
                        housekeeping_s=0.2) as relay:
        await eventually(lambda: relay.purged == 10, 10, "the old sent rows purged")
        await sent_all(store)
        await asyncio.sleep(0.5)  # more housekeeping rounds: nothing else goes
        assert relay.purged == 10
    left = {r["event_id"] for r in store.outbox()}
    assert not left & set(old)
    assert set(recent) | set(unsent) == left
    assert store.outbox_counts() == (30 - 17 + 10, 0)


async def test_purge_never_touches_unsent_rows(backend: str, make_store: MakeStore) -> None:
    store, _ = make_store(backend)
    publish_calls(store, 0, 5)
    assert store.purge_sent(datetime.now(UTC) + timedelta(days=365), limit=1000) == 0
    assert store.outbox_counts() == (0, 20)


async def test_the_writer_wakes_the_relay_without_waiting_for_its_poll(
        make_store: MakeStore, private_redis: PrivateRedis) -> None:
    store, _ = make_store("sqlite")
    async with relaying(store, private_redis.url, poll_s=30.0) as relay:
        writer = TicketWriter(store)  # the store's commit hook wakes the relay
        task = asyncio.create_task(writer.run())
        try:
            await asyncio.sleep(0.3)  # the relay is idle in its 30 s poll now
            started = time.monotonic()
            for op in call_ops(1):
                writer.submit(op)
            assert await writer.drain(timeout=10)
            await eventually(lambda: relay.sent == 4, 10, "the woken relay to publish")
            assert time.monotonic() - started < 10  # far below the 30 s poll
        finally:
            await writer.close(timeout=10)
            await task


async def test_seq_keeps_increasing_after_everything_old_was_purged(backend: str, make_store: MakeStore) -> None:
    # SQLite hands out max(seq) + 1: were the table emptied, seq would start again at 1
    # and consumers keeping the highest seq per ticket would drop the newer events
    store, _ = make_store(backend)
    publish_calls(store, 0, 5)
    ids = [r["event_id"] for r in store.claim_outbox("test", 100, lease_s=60)]
    assert store.mark_sent("test", ids) == 20
    newest = max(r["seq"] for r in store.outbox())
    age_sent(store, ids, datetime.now(UTC) - timedelta(days=2))
    assert store.purge_sent(datetime.now(UTC), limit=1000) == 19
    assert [r["seq"] for r in store.outbox()] == [newest]
    publish_calls(store, 100, 1)
    assert min(r["seq"] for r in store.outbox(unsent_only=True)) > newest
