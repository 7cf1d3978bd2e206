"""The outbox relay: publishes outbox rows to the dispatch stream ``<prefix>:tickets``.

:meth:`TicketStore.apply` writes an ``outbox`` row in the transaction of every ticket
change; this task claims unsent rows (a lease, so two engines on one database never take
the same row: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL), XADDs each to the Redis stream
and marks them sent only after XADD succeeded. While Redis (or the database) is away it
backs off, exponentially up to a cap, and drops nothing: the rows wait in the outbox.

Delivery is at least once: a relay that dies between XADD and marking the rows sent, or
a pipeline that fails half-way, sends some events again. Consumers dedupe by
``event_id`` (docs/DISPATCH.md). Database work runs in threads (``asyncio.to_thread``);
Redis calls are async with timeouts, so the event loop is never blocked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Final

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

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
        self._maxlen = maxlen
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
                "last_error": self._last_error, "stream": self.stream, "owner": self.owner}

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
            if not busy and await self._stopped_within(self._poll_s):
                break

    async def _step(self) -> bool:
        """One claim-publish-mark round; True if there may be more to send at once."""
        if self._unmarked:
            await self._mark(self._unmarked)
        rows = await asyncio.to_thread(self._store.claim_outbox, self.owner,
                                       self._batch_max, self._lease_s)
        if not rows:
            self._lag_s = 0.0
            return False
        oldest = datetime.fromisoformat(rows[0]["created_at"])
        self._lag_s = max(0.0, (datetime.now(UTC) - oldest).total_seconds())
        async with self._redis.pipeline(transaction=False) as pipe:
            for row in rows:
                if self._maxlen is None:
                    pipe.xadd(self.stream, stream_fields(row))  # type: ignore[arg-type]
                else:
                    pipe.xadd(self.stream, stream_fields(row),  # type: ignore[arg-type]
                              maxlen=self._maxlen, approximate=True)
            await pipe.execute()
        # Published. If marking fails now, remember the ids and mark them before claiming
        # again, rather than re-claiming and sending them twice.
        self._unmarked = [row["event_id"] for row in rows]
        await self._mark(self._unmarked)
        return len(rows) >= self._batch_max

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

    async def _stopped_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            return False
        return True

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
            await asyncio.sleep(self._poll_s)

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
