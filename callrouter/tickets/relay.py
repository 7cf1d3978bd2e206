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
small batches (one short transaction each). Every commit of outbox rows in this process
(``TicketStore.on_outbox_commit``: the ticket writer, the API's intake and dispatch
requests, an in-process dispatcher) wakes the relay, which starts a round at once; idle,
it does nothing but a slow safety poll every ``poll_s`` (1 s) for rows written by other
processes on the same database (a separate dispatcher, another engine, the CLI).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from callrouter.tasks import Backoff, poll_loop

from .consumer import GroupBehind, groups_behind
from .store import OutboxRow, TicketStore

log = logging.getLogger("callrouter.tickets.relay")

STREAM_SUFFIX: Final = ":tickets"
# rows handed by the store kept in memory at most (more wait in the database for a claim)
_HANDED_MAX: Final = 5000


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
                 *, batch_max: int = 200, poll_s: float = 1.0, lease_s: float = 30.0,
                 retry_initial_s: float = 0.1, retry_max_s: float = 2.0,
                 redis_timeout_s: float = 5.0, maxlen: int | None = None,
                 retention_s: float | None = None, outbox_retention_s: float | None = None,
                 housekeeping_s: float = 30.0, purge_batch: int = 500,
                 owner: str | None = None, mark_delay_s: float = 0.0) -> None:
        if batch_max < 1:
            raise ValueError(f"batch_max must be >= 1, got {batch_max}")
        if lease_s <= 2 * redis_timeout_s:
            # a claim must outlive a hanging XADD, or another relay could send the rows too
            raise ValueError("lease_s must be more than twice redis_timeout_s")
        self._store = store
        self.stream = stream
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._batch_max = batch_max
        self._poll_s = poll_s
        self._lease_s = lease_s
        # Redis or the database away: logged, retried after a capped backoff
        self._backoff = Backoff("relay", initial_s=retry_initial_s, max_s=retry_max_s, logger=log,
                                quiet=(RedisError, OSError))
        self._maxlen = maxlen or None  # 0: no length cap
        self._retention_ms = int(retention_s * 1000) if retention_s else None
        self._outbox_retention_s = outbox_retention_s or None
        self._housekeeping_s = housekeeping_s
        self._purge_batch = purge_batch
        self._next_housekeeping = 0.0  # monotonic; the first round runs at start
        self._clock_offset_ms = 0  # Redis TIME - our clock: MINID is in Redis's time
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None  # run()'s, for wake_threadsafe()
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
        # mark published rows sent at most this long after the first of them (one
        # transaction for many wakes; a relay that dies meanwhile sends them again once
        # their lease ran out, as with a failed mark)
        self._mark_delay_s = mark_delay_s
        self._mark_due: float | None = None  # monotonic
        # claimed for us (by a claim round, or handed by the store on commit), not yet
        # published: kept here to retry, never claimed again while our lease runs
        self._claimed: list[OutboxRow] = []
        self._claim_now = True  # claim at the next round (rows written without a claim)
        self._behind = False  # handed rows were dropped: claims take our own rows again
        self._published_order: deque[str] = deque(maxlen=_HANDED_MAX)
        self._published: set[str] = set()
        self._in_doubt: set[str] = set()  # event ids of a pipeline that failed: on the stream?
        self._next_claim = 0.0  # monotonic: the safety poll's next claim
        self._sent = 0
        self._lag_s = 0.0

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
        return self._backoff.failing

    def metrics(self) -> dict[str, Any]:
        return {"sent": self._sent, "lag_s": round(self._lag_s, 3),
                "failures": self._backoff.failures, "failing": self.failing,
                "last_error": self._backoff.last_error, "stream": self.stream, "owner": self.owner,
                "purged": self.purged,
                "groups_behind": [g.to_json() for g in self.groups_behind]}

    def wake(self) -> None:
        """New rows were committed: claim and publish now rather than at the next poll.
        From the event loop's thread; other threads use :meth:`wake_threadsafe`."""
        self._claim_now = True
        self._wake.set()

    def wake_threadsafe(self, owner: str | None = None, handed: list[OutboxRow] | None = None) -> None:
        """The store's commit hook (``TicketStore.on_outbox_commit``, in the worker thread
        that committed): ``handed`` are rows the store claimed for us
        (``outbox_claimer``), published without a claim round; rows written without a
        claim (dispatch order changes), or for another relay on the same store, make the
        next round claim. Before ``run()``
        started, or after it ended, a no-op."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._take, handed if owner == self.owner and handed else [])
            except RuntimeError:  # the loop closed meanwhile
                pass

    def _take(self, handed: list[OutboxRow]) -> None:
        if handed and (self._behind or len(self._claimed) >= _HANDED_MAX or self.failing):
            # Redis is away (or we are far behind): the rows stay claimed for us in the
            # database; until a claim has caught up with them (taking our own claims
            # again) no handed row may overtake them
            self._behind = True
        elif handed:
            self._claimed.extend(row for row in handed if row["event_id"] not in self._published)
        self._claim_now = self._claim_now or not handed or self._behind
        self._wake.set()

    # --- the loop -----------------------------------------------------------------------
    async def run(self) -> None:
        """Publish until ``close()``; every failure is retried after a capped backoff."""
        if self._running:
            raise RuntimeError("OutboxRelay.run() is already running")
        self._running = True
        self._run_done.clear()
        self._loop = asyncio.get_running_loop()
        # every commit of outbox rows in this process (the ticket writer, the API's
        # intake and dispatch requests) wakes us; other processes' rows wait for poll_s
        self._store.on_outbox_commit.append(self.wake_threadsafe)
        if self._store.outbox_claimer is None:
            self._store.outbox_claimer = (self.owner, self._lease_s)
        try:
            await poll_loop("relay", self._round, self._stop, self._wake, backoff=self._backoff)
        finally:
            if self._store.outbox_claimer == (self.owner, self._lease_s):
                self._store.outbox_claimer = None
            self._store.on_outbox_commit.remove(self.wake_threadsafe)
            self._running = False
            self._loop = None
            self._run_done.set()

    async def _round(self) -> float:
        """One round: publish what is claimable (then housekeeping when due); how long to
        wait for the next: at once while there is more, else until woken or ``poll_s``."""
        busy = await self._step()
        if time.monotonic() >= self._next_housekeeping:
            await self._housekeep()
        wait = 0.0 if busy else self._poll_s
        if self._unmarked and self._mark_due is not None:
            wait = min(wait, max(0.0, self._mark_due - time.monotonic()))
        return wait

    async def _step(self) -> bool:
        """One claim-publish-mark round; True if there may be more to send at once.

        Rows the store handed us need no claim: a claim runs when woken without rows,
        after a full claim, and every ``poll_s`` as the safety poll for other processes'
        rows (and our own handed rows dropped while Redis was away, once their lease ran
        out)."""
        await self._mark_when_due()
        more = False
        if self._claim_now or time.monotonic() >= self._next_claim:
            self._claim_now = False
            self._next_claim = time.monotonic() + self._poll_s
            behind = self._behind
            claimed = await asyncio.to_thread(self._store.claim_outbox, self.owner, self._batch_max,
                                              self._lease_s, retake_own=behind)
            more = self._claim_now = len(claimed) >= self._batch_max
            if behind and not more:
                self._behind = False  # caught up: rows handed from now on are newer
            if claimed:
                # a row handed to us may come again from a claim of our own rows
                known = {row["event_id"] for row in self._claimed} | self._published
                self._claimed.extend(row for row in claimed if row["event_id"] not in known)
                self._claimed.sort(key=lambda row: row["seq"])
        if not self._claimed:
            self._lag_s = 0.0
            return more
        if self._in_doubt:
            await self._drop_published()
            if not self._claimed:
                return more
        rows = self._claimed[:self._batch_max]
        oldest = datetime.fromisoformat(rows[0]["created_at"])
        self._lag_s = max(0.0, (datetime.now(UTC) - oldest).total_seconds())
        minid = self._minid() if self._maxlen is None else None
        # a request cut off part-way (Redis stopped under it) may have added some rows
        self._in_doubt = {row["event_id"] for row in rows}
        if len(rows) == 1:
            # the usual wake-up (one commit of one change): a plain XADD costs the event
            # loop about half of what a pipeline of one does
            await self._xadd(self._redis, rows[0], minid)
        else:
            async with self._redis.pipeline(transaction=False) as pipe:
                for row in rows:
                    self._xadd(pipe, row, minid)
                await pipe.execute()
        self._in_doubt = set()
        # Published. If marking fails now, remember the ids and mark them before claiming
        # again, rather than re-claiming and sending them twice.
        del self._claimed[:len(rows)]
        self._published_rows(rows)
        await self._mark_when_due()
        return more or bool(self._claimed)

    def _xadd(self, target: Any, row: OutboxRow, minid: str | None) -> Any:
        """XADD ``row`` on ``target`` (the client: an awaitable; a pipeline: queued),
        trimmed by length or, without one, by age."""
        if self._maxlen is not None:
            return target.xadd(self.stream, stream_fields(row), maxlen=self._maxlen, approximate=True)
        if minid is not None:
            return target.xadd(self.stream, stream_fields(row), minid=minid, approximate=True)
        return target.xadd(self.stream, stream_fields(row))

    async def _drop_published(self) -> None:
        """After a failed pipeline: the rows of it that reached the stream anyway are
        marked sent (and told to the listeners), not sent again."""
        entries = await self._redis.xrevrange(self.stream, count=len(self._in_doubt) + 1000)
        arrived = {str(fields.get("event_id")) for _id, fields in entries or [] if fields} & self._in_doubt
        self._in_doubt = set()
        if not arrived:
            return
        rows = [row for row in self._claimed if row["event_id"] in arrived]
        self._claimed = [row for row in self._claimed if row["event_id"] not in arrived]
        log.warning("event=relay_partly_published rows=%d: not sent again", len(rows))
        self._published_rows(rows)
        await self._mark_when_due()

    def _published_rows(self, rows: list[OutboxRow]) -> None:
        """``rows`` are on the stream: to be marked sent (if marking fails, they are marked
        before the next claim rather than claimed and sent again); listeners told."""
        ids = [row["event_id"] for row in rows]
        self._unmarked.extend(ids)
        if self._mark_due is None:
            self._mark_due = time.monotonic() + self._mark_delay_s
        self._remember_published(ids)
        self._tell(rows)

    async def _mark_when_due(self, *, now: bool = False) -> None:
        if not self._unmarked:
            return
        due = self._mark_due is None or time.monotonic() >= self._mark_due
        if now or due or len(self._unmarked) >= self._batch_max:
            await self._mark(list(self._unmarked))

    def _remember_published(self, event_ids: list[str]) -> None:
        """Recently published ids: a row handed late, or claimed again, is not sent twice."""
        for event_id in event_ids:
            if len(self._published_order) == self._published_order.maxlen:
                self._published.discard(self._published_order[0])
            self._published_order.append(event_id)
            self._published.add(event_id)

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
        del self._unmarked[:len(event_ids)]  # the ids published meanwhile stay
        self._mark_due = time.monotonic() + self._mark_delay_s if self._unmarked else None

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
        self._claimed = []  # given back below
        try:
            await self._mark_when_due(now=True)  # published: not to be sent again
        except Exception as exc:  # noqa: BLE001 - sent again by the next relay (at least once)
            log.warning("event=relay_mark_failed error=%r", exc)
        try:
            await asyncio.to_thread(self._store.release_claims, self.owner)
        except Exception as exc:  # noqa: BLE001 - the lease expires by itself
            log.warning("event=relay_release_failed error=%r", exc)
        await self._redis.aclose()
