"""Reading the dispatch stream with a consumer group (``callrouter tickets consume``).

Each round: first the messages this consumer left pending in an earlier life (its own
history), then messages other consumers left pending longer than ``idle_claim_ms``
(XAUTOCLAIM: a crashed consumer's messages are re-delivered), then new ones
(XREADGROUP ``>``). A message is acknowledged once the handler returned; a handler that
raises leaves it pending, to be claimed again after ``idle_claim_ms``. A message delivered
more than ``max_deliveries`` times, or one that is not a valid event, is copied to the
dead-letter stream ``<stream>:dead`` and acknowledged, so one poison event never stalls
the group.

The engine trims the stream to a retention (docs/DISPATCH.md). A group that falls behind
the trim point would silently skip what was trimmed (XREADGROUP just carries on after
the gap), so before reading new messages the consumer compares its group's position with
the stream's first entry (:func:`groups_behind`) and reports, as a warning and in
``missed``, how many events it never saw.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

log = logging.getLogger("callrouter.tickets.consumer")

DEAD_SUFFIX = ":dead"


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One ticket event as read from the stream."""

    stream_id: str
    event_id: str
    ticket_id: str
    kind: str
    at: str
    seq: int
    ticket: dict[str, Any]
    deliveries: int  # 1 on first delivery

    def to_json(self) -> dict[str, Any]:
        return {"stream_id": self.stream_id, "event_id": self.event_id,
                "ticket_id": self.ticket_id, "kind": self.kind, "at": self.at,
                "seq": self.seq, "deliveries": self.deliveries, "ticket": self.ticket}


def parse_event(stream_id: str, fields: dict[str, str], deliveries: int = 1) -> StreamEvent:
    """The event in a stream entry; ValueError if it is not one."""
    try:
        ticket = json.loads(fields["ticket"])
        if not isinstance(ticket, dict):
            raise TypeError("ticket is not a JSON object")
        return StreamEvent(stream_id=stream_id, event_id=fields["event_id"],
                           ticket_id=fields["ticket_id"], kind=fields["kind"],
                           at=fields["at"], seq=int(fields.get("seq", "0")), ticket=ticket,
                           deliveries=deliveries)
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a ticket event: {exc!r}") from exc


Handler = Callable[[StreamEvent], Awaitable[None] | None]


@dataclass(frozen=True, slots=True)
class Batch:
    """A handler of every event of one read at once (a list, in stream order); they are
    acknowledged together once it returned, and all stay pending if it raises. For a
    consumer whose work is cheaper in one transaction than in many (the dispatcher)."""

    handle: Callable[[list[StreamEvent]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class GroupBehind:
    """A consumer group whose unread events were trimmed away."""

    group: str
    last_delivered_id: str
    first_entry_id: str
    missed: int | None  # trimmed events it never read; None when Redis cannot tell

    def to_json(self) -> dict[str, Any]:
        return {"group": self.group, "last_delivered_id": self.last_delivered_id,
                "first_entry_id": self.first_entry_id, "missed": self.missed}


def _id_key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


async def groups_behind(redis: Redis, stream: str,
                        group: str | None = None) -> list[GroupBehind]:
    """The groups of ``stream`` (or just ``group``) that fell behind its trim point.

    A group is behind when entries it never read were trimmed: its last-delivered id is
    older than the stream's first entry, and (Redis >= 7, ``entries-read``) fewer events
    were read than were trimmed (``entries-added - length``). Two commands, O(groups).
    """
    try:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.xinfo_stream(stream)
            pipe.xinfo_groups(stream)
            info, groups = await pipe.execute()
    except ResponseError as exc:
        if "no such key" in str(exc).lower():
            return []
        raise
    first = info.get("first-entry")
    if not first:
        return []  # empty stream: nothing kept, nothing to compare with
    first_id = str(first[0])
    trimmed = int(info.get("entries-added", 0)) - int(info.get("length", 0))
    if trimmed <= 0:
        return []  # nothing was ever trimmed (or deleted)
    out: list[GroupBehind] = []
    for g in groups:
        name = str(g["name"])
        if group is not None and name != group:
            continue
        last = str(g.get("last-delivered-id") or "0-0")
        if _id_key(last) >= _id_key(first_id):
            continue
        read = g.get("entries-read")
        if read is None and last == "0-0":
            read = 0  # a group that never read anything
        missed = None if read is None else trimmed - int(read)
        if missed is not None and missed <= 0:
            continue  # it read everything up to the trim point
        out.append(GroupBehind(name, last, first_id, missed))
    return out


class GroupConsumer:
    """Consumer ``consumer`` of group ``group`` on ``stream``.

    ``redis`` must decode responses (``decode_responses=True``) and have a socket timeout
    longer than ``block_ms``.
    """

    def __init__(self, redis: Redis, stream: str, group: str, consumer: str, *,
                 count: int = 100, block_ms: int = 1000, idle_claim_ms: int = 30_000,
                 max_deliveries: int = 5, dead_stream: str | None = None) -> None:
        if count < 1 or max_deliveries < 1 or idle_claim_ms < 0 or block_ms < 0:
            raise ValueError("need count >= 1, max_deliveries >= 1, idle_claim_ms >= 0, "
                             "block_ms >= 0")
        self.redis = redis
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.dead_stream = dead_stream or stream + DEAD_SUFFIX
        self._count = count
        self._block_ms = block_ms
        self._idle_claim_ms = idle_claim_ms
        self._max_deliveries = max_deliveries
        self._history_done = False
        self._claim_cursor = "0-0"
        self.handled = 0
        self.dead = 0
        self.missed = 0  # events trimmed from the stream before this group read them
        self.behind: list[GroupBehind] = []  # every time the group was found behind

    async def ensure_group(self) -> None:
        """Create the group at the start of the stream (and the stream) if missing."""
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def step(self, handle: Handler | Batch, limit: int | None = None) -> int:
        """One round (see the module doc), reading at most ``limit`` events (default
        ``count`` per read); the number of events handled and acked."""
        budget = self._count if limit is None else max(0, min(limit, self._count))
        done = 0
        if not self._history_done and budget > 0:
            # what this consumer name was given before and never acked (a restart)
            reply = await self.redis.xreadgroup(self.group, self.consumer, {self.stream: "0"},
                                                count=budget)
            entries = _entries(reply)
            if len(entries) < budget:
                self._history_done = True
            budget -= len(entries)
            done += await self._process(entries, handle, check_deliveries=True)
        if budget > 0:
            reply = await self.redis.xautoclaim(self.stream, self.group, self.consumer,
                                                self._idle_claim_ms, self._claim_cursor,
                                                count=budget)
            self._claim_cursor = str(reply[0])
            claimed = [(str(i), dict(f)) for i, f in reply[1] if f is not None]
            budget -= len(claimed)
            done += await self._process(claimed, handle, check_deliveries=True)
        if budget > 0:
            await self._check_behind()
            reply = await self.redis.xreadgroup(self.group, self.consumer, {self.stream: ">"},
                                                count=budget,
                                                block=self._block_ms if done == 0 else None)
            done += await self._process(_entries(reply), handle, check_deliveries=False)
        return done

    async def run(self, handle: Handler | Batch, stop: asyncio.Event | None = None,
                  max_events: int | None = None, retry_max_s: float = 5.0) -> int:
        """Consume until ``stop`` is set or ``max_events`` were handled; Redis errors are
        logged and retried with a capped backoff. Returns the number handled."""
        stop = stop or asyncio.Event()
        delay = 0.1
        grouped = False
        while not stop.is_set() and (max_events is None or self.handled < max_events):
            try:
                if not grouped:
                    await self.ensure_group()
                    grouped = True
                left = None if max_events is None else max_events - self.handled
                await self.step(handle, left)
                delay = 0.1
            except RedisError as exc:
                if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                    # Redis restarted without persistence (or the group was deleted)
                    grouped = False
                    self._claim_cursor = "0-0"
                log.warning("event=consumer_redis_error retry_in_s=%.2g error=%r", delay, exc)
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    pass
                delay = min(delay * 2, retry_max_s)
        return self.handled

    async def _check_behind(self) -> None:
        # before XREADGROUP '>' carries the group past the gap, where it can no longer be seen
        for behind in await groups_behind(self.redis, self.stream, self.group):
            self.behind.append(behind)
            self.missed += behind.missed or 0
            log.warning("event=consumer_behind_trim stream=%s group=%s missed=%s "
                        "last_delivered_id=%s first_entry_id=%s: these events were trimmed "
                        "(stream retention) before this group read them; recover them from "
                        "the ticket API", self.stream, self.group,
                        "unknown" if behind.missed is None else behind.missed,
                        behind.last_delivered_id, behind.first_entry_id)

    async def _process(self, entries: list[tuple[str, dict[str, str]]], handle: Handler | Batch, *,
                       check_deliveries: bool) -> int:
        events: list[StreamEvent] = []
        for stream_id, fields in entries:
            deliveries = await self._deliveries(stream_id) if check_deliveries else 1
            if deliveries > self._max_deliveries:
                await self._dead_letter(stream_id, fields, deliveries,
                                        f"delivered {deliveries} times")
                continue
            try:
                events.append(parse_event(stream_id, fields, deliveries))
            except ValueError as exc:
                await self._dead_letter(stream_id, fields, deliveries, str(exc))
        if isinstance(handle, Batch):
            return await self._process_batch(events, handle)
        done = 0
        for event in events:
            try:
                result = handle(event)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:  # noqa: BLE001 - left pending: retried, then dead-lettered
                log.warning("event=consumer_handler_failed stream_id=%s event_id=%s "
                            "deliveries=%d error=%r", event.stream_id, event.event_id, event.deliveries, exc)
                continue
            await self.redis.xack(self.stream, self.group, event.stream_id)
            self.handled += 1
            done += 1
        return done

    async def _process_batch(self, events: list[StreamEvent], handle: Batch) -> int:
        if not events:
            return 0
        try:
            await handle.handle(events)
        except Exception as exc:  # noqa: BLE001 - left pending: retried, then dead-lettered
            log.warning("event=consumer_handler_failed stream_ids=%s..%s events=%d error=%r",
                        events[0].stream_id, events[-1].stream_id, len(events), exc)
            return 0
        await self.redis.xack(self.stream, self.group, *(e.stream_id for e in events))
        self.handled += len(events)
        return len(events)

    async def _deliveries(self, stream_id: str) -> int:
        rows = await self.redis.xpending_range(self.stream, self.group, min=stream_id,
                                               max=stream_id, count=1)
        if not rows:
            return 1
        return int(rows[0]["times_delivered"])

    async def _dead_letter(self, stream_id: str, fields: dict[str, str], deliveries: int,
                           reason: str) -> None:
        dead = {**fields, "dead_stream_id": stream_id, "dead_group": self.group,
                "dead_deliveries": str(deliveries), "dead_reason": reason}
        await self.redis.xadd(self.dead_stream, dead)  # type: ignore[arg-type]
        await self.redis.xack(self.stream, self.group, stream_id)
        self.dead += 1
        log.error("event=consumer_dead_letter stream_id=%s dead_stream=%s deliveries=%d "
                  "reason=%r", stream_id, self.dead_stream, deliveries, reason)


def _entries(reply: Any) -> list[tuple[str, dict[str, str]]]:
    """XREADGROUP's reply ``[[stream, [(id, fields), ...]]]`` as [(id, fields)]."""
    out: list[tuple[str, dict[str, str]]] = []
    for _name, messages in reply or []:
        for stream_id, fields in messages:
            if fields is not None:  # a deleted entry still pending
                out.append((str(stream_id), dict(fields)))
    return out
