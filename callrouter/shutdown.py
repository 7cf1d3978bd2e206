"""Bounded shutdown: every step has its own timeout, and the process ends regardless.

SIGTERM must end the engine within seconds in every state: Asterisk saturated or gone,
Redis or the database down or hanging, clients connected. Seen here once: an engine
logged ``engine_stopping`` and stayed alive, idle, for 15 minutes, ignoring a second
SIGTERM. Whatever blocks (a database call hanging in a worker thread, which also holds
up the interpreter's exit as it joins the default executor; aiohttp waiting up to 60 s
for open WebSockets; a Redis close on a dead socket), three things bound it:

- ``step``: each shutdown step runs for at most its timeout (and never past the overall
  deadline); what it abandoned is logged (``event=shutdown_step_abandoned step=...
  pending=...``) and the next step runs;
- ``Watchdog``: a daemon thread armed at the first signal ends the process with
  ``os._exit`` at a hard deadline, even with the event loop blocked (logged first);
- ``Signals``: the first SIGTERM/SIGINT starts the orderly stop; a second one exits at
  once (``event=shutdown_forced``).

What is abandoned is never lost for good: unwritten ticket changes are in the spool
file when the database is away, unsent outbox rows are sent by the next engine's relay,
callers stay in Asterisk and are adopted by the next engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("callrouter.engine")

# SIGTERM -> exit, at most (the bound the tests and benchmarks check is 10 s)
HARD_DEADLINE_S = 9.0
# the orderly steps finish by then, leaving the rest for the interpreter's own exit
SOFT_DEADLINE_S = 7.0
EXIT_ABANDONED = 70  # os._exit status when the watchdog or a second signal ended the process


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):  # exiting anyway
            handler.flush()
    with contextlib.suppress(Exception):
        sys.stderr.flush()


def hard_exit(code: int, event: str, **fields: object) -> None:
    """Log, flush and end the process now (no cleanup, no thread joins)."""
    detail = " ".join(f"{k}={v}" for k, v in fields.items())
    log.error("event=%s %s", event, detail)
    _flush_logs()
    os._exit(code)


class Watchdog:
    """Ends the process at a deadline unless disarmed first; runs in a daemon thread, so a
    blocked event loop or a hung worker thread cannot hold it up."""

    def __init__(self, deadline_s: float = HARD_DEADLINE_S) -> None:
        self.deadline_s = deadline_s
        self._disarmed = threading.Event()
        self._thread: threading.Thread | None = None
        self.armed_at: float | None = None

    def arm(self, what: Callable[[], str] = lambda: "") -> None:
        if self._thread is not None:
            return
        self.armed_at = time.monotonic()

        def watch() -> None:
            if not self._disarmed.wait(self.deadline_s):
                try:
                    pending = what()
                except Exception as exc:  # noqa: BLE001 - exiting anyway
                    pending = repr(exc)
                hard_exit(EXIT_ABANDONED, "shutdown_watchdog_exit", after_s=f"{self.deadline_s:.1f}",
                          pending=pending or "-", threads=",".join(t.name for t in threading.enumerate()))
        self._thread = threading.Thread(target=watch, name="shutdown-watchdog", daemon=True)
        self._thread.start()

    def disarm(self) -> None:
        self._disarmed.set()

    def remaining(self, soft_s: float = SOFT_DEADLINE_S) -> float:
        """Seconds left before the soft deadline (the whole budget before arming)."""
        if self.armed_at is None:
            return soft_s
        return max(0.0, soft_s - (time.monotonic() - self.armed_at))


class Signals:
    """SIGTERM/SIGINT: the first sets ``stop`` and arms the watchdog; the second exits now."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stop: asyncio.Event, watchdog: Watchdog,
                 pending: Callable[[], str] = lambda: "") -> None:
        self.loop = loop
        self.stop = stop
        self.watchdog = watchdog
        self.pending = pending
        self.received = 0

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self._on_signal, sig)

    def remove(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.remove_signal_handler(sig)

    def _on_signal(self, sig: int) -> None:
        self.received += 1
        if self.received == 1:
            log.info("event=signal_received signal=%s: stopping (a second one exits at once)",
                     signal.Signals(sig).name)
            self.watchdog.arm(self.pending)
            self.stop.set()
            return
        hard_exit(EXIT_ABANDONED, "shutdown_forced", signal=signal.Signals(sig).name, pending=self.pending() or "-")


async def step(name: str, work: Awaitable[Any], timeout: float, pending: Callable[[], object] = lambda: "") -> bool:
    """Run one shutdown step for at most ``timeout`` seconds; True if it completed.

    On timeout the step's task is cancelled and NOT waited for (a task stuck in a worker
    thread or swallowing the cancellation must not hold up the next step), and what it
    left undone is logged. A step that raises is logged and counts as done.
    """
    task = asyncio.ensure_future(work)
    started = time.monotonic()
    done, _ = await asyncio.wait({task}, timeout=max(0.0, timeout))
    if not done:
        task.cancel()
        log.warning("event=shutdown_step_abandoned step=%s timeout_s=%.1f pending=%s", name, timeout,
                    pending() or "-")
        return False
    exc = task.exception()
    if exc is not None:
        log.warning("event=shutdown_step_failed step=%s error=%r", name, exc)
    else:
        log.debug("event=shutdown_step_done step=%s took_s=%.3f", name, time.monotonic() - started)
    return True


def run_bounded(main: Awaitable[Any], executor_timeout_s: float = 1.0, watchdog: Watchdog | None = None) -> None:
    """``asyncio.run`` without its unbounded end: the loop's default executor (threads of
    ``asyncio.to_thread``) is given ``executor_timeout_s``; a thread still stuck then (a
    database call that hangs) would hold up the interpreter's exit forever, so the
    process ends with ``os._exit`` instead, logged."""
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main)
    finally:
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=0.5))
            loop.run_until_complete(loop.shutdown_asyncgens())
            stuck = _executor_stuck(loop, executor_timeout_s)
        finally:
            asyncio.set_event_loop(None)
            loop.close()
        if watchdog is not None:
            watchdog.disarm()
    if stuck:
        hard_exit(0, "shutdown_step_abandoned step=executor", pending=f"threads={stuck}")


def _executor_stuck(loop: asyncio.AbstractEventLoop, timeout_s: float) -> int:
    """Shut the loop's default executor down; the number of worker threads still busy after
    ``timeout_s`` (0 when all ended)."""
    executor = getattr(loop, "_default_executor", None)
    if executor is None:
        return 0
    executor.shutdown(wait=False, cancel_futures=True)
    threads = list(getattr(executor, "_threads", ()))
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return sum(1 for t in threads if t.is_alive())
