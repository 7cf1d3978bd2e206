"""The outbox relay: publishes outbox rows to the dispatch stream ``<prefix>:tickets``.

:meth:`TicketStore.apply` writes an ``outbox`` row in the transaction of every ticket
change; this task claims unsent rows (a lease, so two engines on one database never take
the same row: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL), XADDs each to the Redis stream
and marks them sent only after XADD succeeded. While Redis (or the database) is away it
backs off, exponentially up to a cap, and drops nothing: the rows wait in the outbox.

Delivery is at least once: a relay that dies between XADD and marking the rows sent, or
a pipeline that fails half-way, sends some events again. Consumers dedupe by
``event_id`` (docs/DISPATCH.md). ``listeners`` are called with every row once it is on
the stream (the API's live feed forwards dispatch orders' changes from there, whichever
process wrote them). Database work runs in threads (``asyncio.to_thread``);
Redis calls are async with timeouts, so the event loop is never blocked.

Bounded growth: with ``maxlen`` every XADD trims the stream to about that many entries
(``MAXLEN ~``); with ``retention_s`` the relay trims entries older than that
(``MINID ~``, on XADD when no ``maxlen`` is set, and every ``housekeeping_s`` so an idle
stream is trimmed too). The same housekeeping round finds consumer groups that fell
behind the trim point (:func:`~callrouter.tickets.consumer.groups_behind`, logged and in
``metrics()``) and deletes outbox rows sent more than ``outbox_retention_s`` ago, in
small batches (one short transaction each). ``wake()`` (the ticket writer after a
commit) starts a round at once; ``poll_s`` is then only the fallback for rows written by
other engines on the same database.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from callrouter.tasks import wait_any

from .consumer import GroupBehind, groups_behind
from .store import OutboxRow, TicketStore

log = logging.getLogger("callrouter.tickets.relay")

STREAM_SUFFIX: Final = ":tickets"


def stream_name(prefix: str) -> str:
    """The dispatch stream of a Redis key prefix: ``callrouter`` -> ``callrouter:tickets``."""
    return prefix + STREAM_SUFFIX


def stream_fields(row: OutboxRow) -> dict[str, str]:
    """The stream entry of an outbox row (the event schema of docs/DISPATCH.md)."""
    return {
        "event_id": row["event_id"],
        "ticket_id": row["ticket_id"],
        "kind": row["kind"],
        "at": row["at"],
        "seq": str(row["seq"]),
        "ticket": json.dumps(row["ticket"], ensure_ascii=False, separators=(",", ":")),
    }


class OutboxRelay:
    """Owns publishing the outbox of ``store`` to ``stream`` on ``redis_url``.

    ``run()`` as a task of the engine (until ``close()``); ``metrics()`` for status.
    """

    def __init__(self, store: TicketStore, redis_url: str, stream: str = "callrouter:tickets",
                 *, batch_max: int = 200, poll_s: float = 0.05, lease_s: float = 30.0,
                 retry_initial_s: float = 0.1, retry_max_s: float = 2.0,
                 redis_timeout_s: float = 5.0, maxlen: int | None = None,
                 retention_s: float | None = None, outbox_retention_s: float | None = None,
                 housekeeping_s: float = 30.0, purge_batch: int = 500,
                 owner: str | None = None) -> None:
        if batch_max < 1:
            raise ValueError(f"batch_max must be >= 1, got {batch_max}")
        if not 0 < retry_initial_s <= retry_max_s:
            raise ValueError("need 0 < retry_initial_s <= retry_max_s")
        if lease_s <= 2 * redis_timeout_s:
            # a claim must outlive a hanging XADD, or another relay could send the rows too
            raise ValueError("lease_s must be more than twice redis_timeout_s")
        self._store = store
        self.stream = stream
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._batch_max = batch_max
        self._poll_s = poll_s
        self._lease_s = lease_s
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._maxlen = maxlen or None  # 0: no length cap
        self._retention_ms = int(retention_s * 1000) if retention_s else None
        self._outbox_retention_s = outbox_retention_s or None
        self._housekeeping_s = housekeeping_s
        self._purge_batch = purge_batch
        self._next_housekeeping = 0.0  # monotonic; the first round runs at start
        self._clock_offset_ms = 0  # Redis TIME - our clock: MINID is in Redis's time
        self._wake = asyncio.Event()
        self.groups_behind: list[GroupBehind] = []  # at the last housekeeping round
        # called (on the event loop) with every row once it is on the stream; a listener
        # that raises is logged and costs no other listener or row
        self.listeners: list[Callable[[OutboxRow], None]] = []
        self.purged = 0  # sent outbox rows deleted since start
        # our own backoff decides when to try again: no hidden retries inside redis-py
        self._redis: Redis = Redis.from_url(
            redis_url, decode_responses=True, socket_timeout=redis_timeout_s,
            socket_connect_timeout=redis_timeout_s, retry=Retry(NoBackoff(), 0))
        self._stop = asyncio.Event()
        self._running = False
        self._run_done = asyncio.Event()
        self._unmarked: list[str] = []  # published, not yet marked sent (database away)
        self._sent = 0
        self._failures = 0
        self._lag_s = 0.0
        self._failing_since: float | None = None
        self._streak = 0  # failed attempts in a row
        self._last_error: str | None = None

    # --- metrics ------------------------------------------------------------------------
    @property
    def sent(self) -> int:
        """Events published and marked sent since start."""
        return self._sent

    @property
    def lag_s(self) -> float:
        """Age of the oldest unsent event at the last claim (0 when the outbox was empty)."""
        return self._lag_s

    @property
    def failing(self) -> bool:
        return self._failing_since is not None

    def metrics(self) -> dict[str, Any]:
        return {"sent": self._sent, "lag_s": round(self._lag_s, 3),
                "failures": self._failures, "failing": self.failing,
                "last_error": self._last_error, "stream": self.stream, "owner": self.owner,
                "purged": self.purged,
                "groups_behind": [g.to_json() for g in self.groups_behind]}

    def wake(self) -> None:
        """New rows were committed: publish now rather than at the next poll."""
        self._wake.set()

    # --- the loop -----------------------------------------------------------------------
    async def run(self) -> None:
        """Publish until ``close()``; every failure is retried after a capped backoff."""
        if self._running:
            raise RuntimeError("OutboxRelay.run() is already running")
        self._running = True
        self._run_done.clear()
        try:
            await self._loop()
        finally:
            self._running = False
            self._run_done.set()

    async def _loop(self) -> None:
        delay = self._retry_initial_s
        while not self._stop.is_set():
            try:
                busy = await self._step()
            except Exception as exc:  # noqa: BLE001 - logged in _failed, retried
                self._failed(exc, delay)
                if await self._stopped_within(delay):
                    break
                delay = min(delay * 2, self._retry_max_s)
                continue
            if self._failing_since is not None:
                log.warning("event=relay_recovered after_s=%.1f",
                            time.monotonic() - self._failing_since)
                self._failing_since = None
                self._last_error = None
            delay = self._retry_initial_s
            if time.monotonic() >= self._next_housekeeping:
                await self._housekeep()
            if not busy and await self._stopped_within(self._poll_s, wakeable=True):
                break

    async def _step(self) -> bool:
        """One claim-publish-mark round; True if there may be more to send at once."""
        self._wake.clear()  # rows committed from now on wake the next round
        if self._unmarked:
            await self._mark(self._unmarked)
        rows = await asyncio.to_thread(self._store.claim_outbox, self.owner,
                                       self._batch_max, self._lease_s)
        if not rows:
            self._lag_s = 0.0
            return False
        oldest = datetime.fromisoformat(rows[0]["created_at"])
        self._lag_s = max(0.0, (datetime.now(UTC) - oldest).total_seconds())
        minid = self._minid() if self._maxlen is None else None
        async with self._redis.pipeline(transaction=False) as pipe:
            for row in rows:
                if self._maxlen is not None:
                    pipe.xadd(self.stream, stream_fields(row),  # type: ignore[arg-type]
                              maxlen=self._maxlen, approximate=True)
                elif minid is not None:
                    pipe.xadd(self.stream, stream_fields(row),  # type: ignore[arg-type]
                              minid=minid, approximate=True)
                else:
                    pipe.xadd(self.stream, stream_fields(row))  # type: ignore[arg-type]
            await pipe.execute()
        # Published. If marking fails now, remember the ids and mark them before claiming
        # again, rather than re-claiming and sending them twice.
        self._unmarked = [row["event_id"] for row in rows]
        self._tell(rows)
        await self._mark(self._unmarked)
        return len(rows) >= self._batch_max

    def _tell(self, rows: list[OutboxRow]) -> None:
        for listener in self.listeners:
            for row in rows:
                try:
                    listener(row)
                except Exception:  # a listener's bug must not stop publishing
                    log.exception("event=relay_listener_failed kind=%s event_id=%s", row.get("kind"),
                                  row.get("event_id"))

    async def _mark(self, event_ids: list[str]) -> None:
        marked = await asyncio.to_thread(self._store.mark_sent, self.owner, event_ids)
        if marked != len(event_ids):
            # our lease ran out and another relay took them: it sends them again
            log.warning("event=relay_lease_lost published=%d marked=%d", len(event_ids), marked)
        self._sent += len(event_ids)
        self._unmarked = []

    def _failed(self, exc: BaseException, delay: float) -> None:
        self._failures += 1
        first_line = (str(exc).splitlines() or [""])[0]
        self._last_error = f"{type(exc).__name__}: {first_line}"
        first = self._failing_since is None
        if first:
            self._failing_since = time.monotonic()
            self._streak = 0
        self._streak += 1
        # every failure while Redis is away would flood the log: the first, then every 10th
        level = logging.WARNING if self._streak % 10 == 1 else logging.DEBUG
        log.log(level, "event=relay_failed stream=%s attempt=%d retry_in_s=%.3g unmarked=%d "
                "error=%r", self.stream, self._streak, delay, len(self._unmarked),
                self._last_error, exc_info=first and not isinstance(exc, RedisError | OSError))

    async def _stopped_within(self, seconds: float, *, wakeable: bool = False) -> bool:
        if not wakeable:
            try:
                await asyncio.wait_for(self._stop.wait(), seconds)
            except TimeoutError:
                return False
            return True
        await wait_any(self._stop, self._wake, seconds)
        return self._stop.is_set()

    # --- bounded growth -----------------------------------------------------------------
    def _minid(self) -> str | None:
        """Entries older than this id are past the retention (Redis's clock)."""
        if self._retention_ms is None:
            return None
        now_ms = int(time.time() * 1000) + self._clock_offset_ms
        return str(max(0, now_ms - self._retention_ms))

    async def _housekeep(self) -> None:
        """Trim the stream by age, report groups behind the trim point, purge the outbox.

        Failures are logged and retried next round; publishing goes on meanwhile.
        """
        self._next_housekeeping = time.monotonic() + self._housekeeping_s
        try:
            if self._retention_ms is not None:
                secs, micros = await self._redis.time()
                self._clock_offset_ms = int(secs) * 1000 + int(micros) // 1000 - int(time.time() * 1000)
                await self._redis.xtrim(self.stream, minid=self._minid(), approximate=True)
            if self._retention_ms is not None or self._maxlen is not None:
                behind = await groups_behind(self._redis, self.stream)
                known = {(g.group, g.last_delivered_id) for g in self.groups_behind}
                for g in behind:
                    if (g.group, g.last_delivered_id) not in known:
                        log.warning("event=stream_group_behind_trim stream=%s group=%s missed=%s "
                                    "last_delivered_id=%s first_entry_id=%s", self.stream, g.group,
                                    "unknown" if g.missed is None else g.missed,
                                    g.last_delivered_id, g.first_entry_id)
                self.groups_behind = behind
        except (RedisError, OSError) as exc:
            log.warning("event=relay_housekeeping_failed part=stream error=%r", exc)
        if self._outbox_retention_s is None:
            return
        cutoff = datetime.now(UTC) - timedelta(seconds=self._outbox_retention_s)
        try:
            # a bounded amount per round; the next round goes on where this one stopped
            for _ in range(20):
                n = await asyncio.to_thread(self._store.purge_sent, cutoff, self._purge_batch)
                self.purged += n
                if n < self._purge_batch or self._stop.is_set():
                    break
                await asyncio.sleep(0.01)  # let the writer's transaction in between
        except Exception as exc:  # noqa: BLE001 - the database is away: next round
            log.warning("event=relay_housekeeping_failed part=outbox error=%r", exc)

    # --- shutdown -----------------------------------------------------------------------
    async def drain(self, timeout: float) -> bool:
        """Wait (while ``run()`` works) until the outbox is empty; False after ``timeout``.

        For shutdown, after the writer is drained: the last calls' events go out now
        rather than at the next start.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                unsent, _ = await asyncio.to_thread(self._store.outbox_backlog)
            except Exception as exc:  # noqa: BLE001 - the database is away: nothing to wait for
                log.warning("event=relay_drain_failed error=%r", exc)
                return False
            if unsent == 0:
                return True
            if time.monotonic() >= deadline or not self._running:
                return False
            await asyncio.sleep(min(self._poll_s, 0.05))

    async def close(self) -> None:
        """Stop ``run()`` (at its next wait), wait for it, give back our claims and close
        the Redis connections. What is unsent stays in the outbox for the next relay."""
        self._stop.set()
        if self._running:
            await self._run_done.wait()
        try:
            await asyncio.to_thread(self._store.release_claims, self.owner)
        except Exception as exc:  # noqa: BLE001 - the lease expires by itself
            log.warning("event=relay_release_failed error=%r", exc)
        await self._redis.aclose()
