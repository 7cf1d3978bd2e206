"""Ticket writes beside the call flow: the call path submits, a background loop writes.

``submit()`` only appends to an in-memory queue, so a slow or absent database delays
records, never a call. ``run()`` writes what is queued in batches, one transaction each,
in submission order; when the database fails it retries the same batch with exponential
backoff until it succeeds. Nothing is dropped; while the database is away the queue
simply grows in memory.
"""

from __future__ import annotations

import asyncio
import logging
import time

from .models import TICKET_OPS, TicketOp
from .store import TicketStore

log = logging.getLogger("callrouter.tickets")


class TicketWriter:
    """Owns the queue of ticket ops between the engine and a :class:`TicketStore`.

    Use from one event loop: ``submit()`` from the call path, ``run()`` as a task of the
    engine's task group, ``drain()``/``close()`` at shutdown.
    """

    def __init__(self, store: TicketStore, *, batch_max: int = 200,
                 retry_initial_s: float = 0.5, retry_max_s: float = 10.0,
                 linger_s: float = 0.0) -> None:
        if batch_max < 1:
            raise ValueError(f"batch_max must be >= 1, got {batch_max}")
        if not 0 < retry_initial_s <= retry_max_s:
            raise ValueError("need 0 < retry_initial_s <= retry_max_s")
        self._store = store
        self._batch_max = batch_max
        # Wait this long after the first op for more to come: in a storm, fewer and larger
        # transactions cost the engine's process far less CPU (and GIL) per ticket.
        self._linger_s = linger_s
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        # None is the wake-up that close() sends to a run() waiting for work
        self._queue: asyncio.Queue[TicketOp | None] = asyncio.Queue()
        # the batch being written; kept until written, so a cancelled run() loses nothing
        self._inflight: list[TicketOp] = []
        self._submitted = 0
        self._written = 0
        self._retries = 0
        self._failing_since: float | None = None
        self._last_error: str | None = None
        self._progress = asyncio.Condition()
        self._stop = asyncio.Event()
        self._closing = False
        self._running = False
        self._run_done = asyncio.Event()

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
    def retries(self) -> int:
        """Failed write attempts since start."""
        return self._retries

    @property
    def failing(self) -> bool:
        """True while the current batch keeps failing (the database is away)."""
        return self._failing_since is not None

    @property
    def last_error(self) -> str | None:
        """The error of the last failed attempt, while failing."""
        return self._last_error

    # --- the background loop ------------------------------------------------------------
    async def run(self) -> None:
        """Write queued ops until ``close()``; retries a failing batch forever."""
        if self._running:
            raise RuntimeError("TicketWriter.run() is already running")
        self._running = True
        self._run_done.clear()
        try:
            while not self._stop.is_set():
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
        if first is not None and self._linger_s > 0 and not self._closing:
            await self._stopped_within(self._linger_s)
        while len(batch) < self._batch_max:
            try:
                op = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            if op is not None:
                batch.append(op)
        return batch

    async def _write_inflight(self) -> None:
        delay = self._retry_initial_s
        attempt = 0
        while True:
            try:
                await asyncio.to_thread(self._store.apply, self._inflight)
            except Exception as exc:
                attempt += 1
                self._retries += 1
                first_line = (str(exc).splitlines() or [""])[0]
                self._last_error = f"{type(exc).__name__}: {first_line}"
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                log.warning("ticket write failed (attempt %d; %d ops in batch, %d pending), "
                            "retrying in %.3g s: %s", attempt, len(self._inflight),
                            self.pending, delay, self._last_error,
                            exc_info=attempt == 1)
                if await self._stopped_within(delay):
                    return  # closed while failing: keep the batch for a later run()
                delay = min(delay * 2, self._retry_max_s)
                continue
            if self._failing_since is not None:
                log.warning("ticket writes recovered after %d failed attempts (%.1f s)",
                            attempt, time.monotonic() - self._failing_since)
                self._failing_since = None
                self._last_error = None
            self._written += len(self._inflight)
            self._inflight = []
            async with self._progress:
                self._progress.notify_all()
            return

    async def _stopped_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            return False
        return True

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
        if self.pending:
            log.error("ticket writer closed with %d ops not written (last error: %s)",
                      self.pending, self._last_error)
            return False
        return True
