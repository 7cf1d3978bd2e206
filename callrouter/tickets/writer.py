"""Ticket writes beside the call flow: the call path submits, a background loop writes.

``submit()`` only appends to an in-memory queue, so a slow or absent database delays
records, never a call. ``run()`` writes what is queued in batches, one transaction each,
in submission order; when the database fails it retries with exponential backoff until
it succeeds. Nothing is dropped. Without a spool, the queue grows in memory while the
database is away. With ``spool_path``, the first failed write moves the failed batch and
everything queued to a durable local spool (:mod:`~callrouter.tickets.spool`), and every
op submitted after it is appended there too (fsync'd per batch), so an engine that dies
during the outage loses nothing: the next writer on the same file writes the spool first.
When the database is back the spool is written in order, then emptied, then new ops go
the direct way again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Awaitable, Sequence
from typing import TypeVar

from callrouter.tasks import Backoff, stopped_within

from .models import TICKET_OPS, TicketOp
from .spool import Spool
from .store import TicketStore

log = logging.getLogger("callrouter.tickets")
_T = TypeVar("_T")
_RATE_TAU_S = 1.0  # the arrival rate that decides lingering is averaged over about this


class TicketWriter:
    """Owns the queue of ticket ops between the engine and a :class:`TicketStore`.

    Use from one event loop: ``submit()`` from the call path, ``run()`` as a task of the
    engine's task group, ``drain()``/``close()`` at shutdown.
    """

    def __init__(self, store: TicketStore, *, batch_max: int = 200,
                 retry_initial_s: float = 0.5, retry_max_s: float = 10.0,
                 linger_s: float = 0.0, busy_ops_s: float = 100.0, min_gap_s: float = 0.0,
                 spool_path: str | os.PathLike[str] | None = None) -> None:
        if batch_max < 1:
            raise ValueError(f"batch_max must be >= 1, got {batch_max}")
        self._store = store
        self._batch_max = batch_max
        # Under load (ops arriving faster than busy_ops_s, averaged over about a second),
        # wait linger_s after the first op for more to come: in a storm, fewer and larger
        # transactions cost the engine's process far less CPU (and GIL) per ticket. Below
        # that a change is written at once, so it reaches the stream within milliseconds.
        self._linger_s = linger_s
        self._busy_ops_s = busy_ops_s
        # Below that, commits start at least min_gap_s apart: a change after a quiet spell
        # is written at once, one right behind a commit waits out the gap with the others
        # that come meanwhile (each transaction costs the engine's process CPU).
        self._min_gap_s = min_gap_s
        self._last_commit = -math.inf  # monotonic, when the last write began
        self._rate = 0.0  # ops/s, exponentially weighted (time constant _RATE_TAU_S)
        self._rate_at = time.monotonic()
        self._rate_count = 0  # ops submitted when _rate was last updated
        # the database away: every attempt logged, retried after a capped backoff
        self._backoff = Backoff("ticket_write", initial_s=retry_initial_s, max_s=retry_max_s, logger=log)
        # None is the wake-up that close() sends to a run() waiting for work
        self._queue: asyncio.Queue[TicketOp | None] = asyncio.Queue()
        # the batch being written; kept until written, so a cancelled run() loses nothing
        self._inflight: list[TicketOp] = []
        self._submitted = 0
        self._written = 0
        self._progress = asyncio.Condition()
        self._stop = asyncio.Event()
        self._closing = False
        self._running = False
        self._run_done = asyncio.Event()
        self._wakeup = asyncio.Event()  # set by submit(): new ops while spooling
        self._spool = Spool(spool_path) if spool_path is not None else None
        # the spool's ops in memory (the file is the durable copy) and how many are written
        self._spool_ops: list[TicketOp] = []
        self._spool_done = 0
        if self._spool is not None:
            # read at construction (small, local) so that pending and drain() count them
            self._spool_ops = self._spool.load()
            self._submitted += len(self._spool_ops)
            if self._spool_ops:
                log.warning("ticket spool %s holds %d ops from an earlier run: writing them "
                            "first", self._spool.path, len(self._spool_ops))

    # --- the call path ------------------------------------------------------------------
    def submit(self, op: TicketOp) -> None:
        """Queue ``op`` for writing. Never blocks, never raises."""
        try:
            if not isinstance(op, TICKET_OPS):
                # would fail in the database and be retried forever, holding up the rest
                log.error("not a ticket op, ignored: %r", op)
                return
            if self._closing:
                log.error("ticket op submitted after the writer was closed, not written: %r",
                          op)
            self._queue.put_nowait(op)
            self._submitted += 1
            self._wakeup.set()
        except Exception:  # never let record keeping break a call
            log.exception("could not queue ticket op %r", op)

    # --- state --------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Ops submitted and not yet written (including the batch being written)."""
        return self._submitted - self._written

    @property
    def written(self) -> int:
        """Ops written (committed) since start."""
        return self._written

    @property
    def spooled(self) -> int:
        """Ops in the durable spool not yet written (0 without a spool)."""
        return len(self._spool_ops) - self._spool_done

    @property
    def retries(self) -> int:
        """Failed write attempts since start."""
        return self._backoff.failures

    @property
    def failing(self) -> bool:
        """True while the current batch keeps failing (the database is away)."""
        return self._backoff.failing

    @property
    def last_error(self) -> str | None:
        """The error of the last failed attempt, while failing."""
        return self._backoff.last_error

    @property
    def rate(self) -> float:
        """Ops submitted per second, averaged over about the last second (at the last batch)."""
        return self._rate

    # --- the background loop ------------------------------------------------------------
    async def run(self) -> None:
        """Write queued ops until ``close()``; retries a failing batch forever."""
        if self._running:
            raise RuntimeError("TicketWriter.run() is already running")
        self._running = True
        self._run_done.clear()
        try:
            while not self._stop.is_set():
                if self._spool_ops:
                    await self._write_spool()
                    continue
                if not self._inflight:
                    batch = await self._next_batch()
                    if not batch:
                        continue
                    self._inflight = batch
                await self._write_inflight()
        finally:
            self._running = False
            self._run_done.set()

    async def _next_batch(self) -> list[TicketOp]:
        """Wait for work, then take everything queued, up to ``batch_max``."""
        first = await self._queue.get()
        batch = [] if first is None else [first]
        if first is not None and not self._closing:
            if self._busy():
                await stopped_within(self._stop, self._linger_s)
            else:
                gap = self._last_commit + self._min_gap_s - time.monotonic()
                if gap > 0:
                    await stopped_within(self._stop, gap)
        self._last_commit = time.monotonic()
        while len(batch) < self._batch_max:
            try:
                op = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            if op is not None:
                batch.append(op)
        return batch

    def _busy(self) -> bool:
        """Ops arrive faster than ``busy_ops_s`` (so lingering pays); updates the rate."""
        if self._linger_s <= 0:
            return False
        now = time.monotonic()
        dt = max(now - self._rate_at, 1e-6)
        arrived = self._submitted - self._rate_count
        # an exponentially weighted rate: a burst of a few ops adds a few ops/s, not
        # thousands, so one change now and then is still written at once
        alpha = 1.0 - math.exp(-dt / _RATE_TAU_S)
        self._rate = (1.0 - alpha) * self._rate + alpha * arrived / dt
        self._rate_at, self._rate_count = now, self._submitted
        return self._rate >= self._busy_ops_s

    async def _write_inflight(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self._store.apply, self._inflight)
            except Exception as exc:  # noqa: BLE001 - logged by the backoff; retried forever
                delay = self._failed(exc, len(self._inflight))
                if self._spool is not None:
                    # from now on ops go to the durable spool until it is written
                    batch, self._inflight = self._inflight, []
                    await self._to_spool(batch)
                    return
                if await stopped_within(self._stop, delay):
                    return  # closed while failing: keep the batch for a later run()
                continue
            self._backoff.succeeded()
            written = len(self._inflight)
            self._inflight = []
            await self._count_written(written)
            return

    def _failed(self, exc: Exception, batch: int) -> float:
        where = f" spool={self._spool.path}" if self._spool is not None else ""
        return self._backoff.failed(exc, f"batch={batch} pending={self.pending}{where}")

    async def _count_written(self, count: int) -> None:
        self._written += count
        async with self._progress:
            self._progress.notify_all()

    # --- the spool (only with spool_path) -------------------------------------------------
    def _take_queued(self) -> list[TicketOp]:
        """Every op still queued, taken off the queue in order (the stop marker dropped)."""
        taken: list[TicketOp] = []
        while True:
            try:
                op = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return taken
            if op is not None:
                taken.append(op)

    async def _to_spool(self, ops: Sequence[TicketOp]) -> None:
        """Append ``ops`` and everything queued to the spool, durably, in order."""
        batch = [*ops, *self._take_queued()]
        if not batch or self._spool is None:
            return
        self._spool_ops.extend(batch)
        try:
            await asyncio.to_thread(self._spool.append, batch)
        except OSError:
            # still written from memory when the database returns, just not crash-proof
            log.exception("could not append %d ticket ops to the spool %s; kept in memory",
                          len(batch), self._spool.path)

    async def _write_spool(self) -> None:
        """Write the spool in order, spooling new ops meanwhile; empty it once written."""
        if self._spool is None:
            return
        while True:
            await self._to_spool(())
            if self._spool_done >= len(self._spool_ops):
                try:
                    await asyncio.to_thread(self._spool.clear)
                except OSError:
                    # replayed again at the next start: harmless, every op is idempotent
                    log.exception("could not empty the ticket spool %s", self._spool.path)
                log.info("ticket spool %s written (%d ops)", self._spool.path,
                         len(self._spool_ops))
                self._spool_ops = []
                self._spool_done = 0
                return
            if self._stop.is_set():
                return  # everything is in the spool: the next writer writes it
            chunk = self._spool_ops[self._spool_done:self._spool_done + self._batch_max]
            try:
                await self._while_spooling(asyncio.to_thread(self._store.apply, chunk))
            except Exception as exc:  # noqa: BLE001 - logged by the backoff; retried forever
                delay = self._failed(exc, len(chunk))
                await self._while_spooling(stopped_within(self._stop, delay))
                continue
            self._backoff.succeeded()
            self._spool_done += len(chunk)
            await self._count_written(len(chunk))

    async def _while_spooling(self, work: Awaitable[_T]) -> _T:
        """Await ``work`` while appending newly submitted ops to the spool."""
        job = asyncio.ensure_future(work)
        try:
            while not job.done():
                self._wakeup.clear()
                if self._queue.empty():
                    woken = asyncio.ensure_future(self._wakeup.wait())
                    try:
                        await asyncio.wait({job, woken}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        woken.cancel()
                        await asyncio.gather(woken, return_exceptions=True)
                await self._to_spool(())
            return job.result()
        finally:
            if not job.done():
                job.cancel()  # run() cancelled; a database call in its thread runs on

    # --- shutdown -----------------------------------------------------------------------
    async def drain(self, timeout: float | None) -> bool:
        """Wait until everything submitted so far is written; False on timeout."""
        target = self._submitted
        if self._written >= target:
            return True
        try:
            async with asyncio.timeout(timeout), self._progress:
                await self._progress.wait_for(lambda: self._written >= target)
        except TimeoutError:
            return False
        return True

    def keep_unwritten(self) -> int:
        """Shutdown gave up waiting (a database that hangs): put the ops not yet written
        (the stuck batch and the queue) in the spool file now, synchronously, so the next
        writer writes them. Every op is idempotent: a stuck batch that commits after all
        is harmless when replayed. Returns how many ops were kept (0 without a spool)."""
        if self._spool is None:
            return 0
        batch = [*self._inflight, *self._take_queued()]
        if batch:
            self._spool.append(batch)
        return len(batch)

    async def close(self, timeout: float | None = None) -> bool:
        """Drain (up to ``timeout``), then stop ``run()``. True if nothing is left unwritten.

        Ops still unwritten after a timeout are reported in the log and counted by
        ``pending``; a closed writer does not write again.
        """
        self._closing = True
        await asyncio.sleep(0)  # let a run() task created just now start
        if self._running or timeout is not None:
            await self.drain(timeout)
        self._stop.set()
        self._queue.put_nowait(None)  # wake a run() waiting for work
        if self._running:
            await self._run_done.wait()
        if self._spool is not None and self.pending:
            batch, self._inflight = self._inflight, []
            await self._to_spool(batch)
            log.error("ticket writer closed with %d ops not written, kept in the spool %s: "
                      "written at the next start (last error: %s)", self.pending,
                      self._spool.path, self.last_error)
            return False
        if self.pending:
            log.error("ticket writer closed with %d ops not written (last error: %s)",
                      self.pending, self.last_error)
            return False
        return True
