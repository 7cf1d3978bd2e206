"""Owned background tasks: every task the engine starts is tracked, its failure logged.

asyncio.TaskGroup cancels every sibling when one task fails, which is right for the
engine's long-lived loops but wrong for per-call work: one call's failed ARI request
must never hang up the other callers. ``TaskOwner`` keeps per-call tasks referenced
(so they are not garbage-collected mid-flight), logs each exception with its name, and
cancels and awaits whatever is left at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

log = logging.getLogger("callrouter.tasks")


class TaskOwner:
    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[Any]] = set()
        self.failures = 0

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.failures += 1
            log.error("event=task_failed owner=%s task=%s error=%r", self.name, task.get_name(), exc,
                      exc_info=exc)

    def __len__(self) -> int:
        return len(self._tasks)

    def cancel_all(self) -> None:
        """Cancel every task now (each ends at its next await)."""
        for task in list(self._tasks):
            task.cancel()

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Let running tasks finish for up to ``timeout`` seconds, then cancel the rest."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class Backoff:
    """A failure streak's waits and its log lines, shared by every retrying loop.

    ``failed(exc)`` counts a failure and returns how long to wait before trying again
    (doubling from ``initial_s`` up to ``max_s``); ``succeeded()`` ends a streak. The first
    failure of a streak is logged with its traceback (unless its type is in ``quiet``, e.g.
    a refused connection), then every 10th at WARNING and the rest at DEBUG, so an outage
    does not flood the log: ``event=<name>_failed`` and ``event=<name>_recovered``.
    """

    def __init__(self, name: str, *, initial_s: float = 0.1, max_s: float = 5.0,
                 logger: logging.Logger | None = None,
                 quiet: tuple[type[BaseException], ...] = ()) -> None:
        if not 0 < initial_s <= max_s:
            raise ValueError("need 0 < initial_s <= max_s")
        self.name = name
        self.initial_s = initial_s
        self.max_s = max_s
        self._log = logger or log
        self._quiet = quiet
        self.delay = initial_s  # the wait after the next failure
        self.streak = 0  # failures in a row
        self.failures = 0  # since start
        self.failing_since: float | None = None  # monotonic, while failing
        self.last_error: str | None = None  # while failing

    @property
    def failing(self) -> bool:
        return self.failing_since is not None

    def failed(self, exc: BaseException, context: str = "") -> float:
        """Count ``exc``; the seconds to wait before the next attempt. ``context`` (say
        ``batch=3``) goes into the log line."""
        wait = self.delay
        self.delay = min(self.delay * 2, self.max_s)
        self.streak += 1
        self.failures += 1
        first_line = (str(exc).splitlines() or [""])[0]
        self.last_error = f"{type(exc).__name__}: {first_line}"
        if self.failing_since is None:
            self.failing_since = time.monotonic()
        level = logging.WARNING if self.streak % 10 == 1 else logging.DEBUG
        self._log.log(level, "event=%s_failed attempt=%d retry_in_s=%.3g%s error=%r", self.name, self.streak, wait,
                      f" {context}" if context else "", self.last_error,
                      exc_info=self.streak == 1 and not isinstance(exc, self._quiet))
        return wait

    def succeeded(self) -> None:
        """An attempt worked: the streak (if any) is over, the next failure waits ``initial_s``."""
        if self.failing_since is not None:
            self._log.warning("event=%s_recovered after_attempts=%d after_s=%.1f", self.name, self.streak,
                              time.monotonic() - self.failing_since)
        self.failing_since = None
        self.last_error = None
        self.streak = 0
        self.delay = self.initial_s


async def poll_loop(name: str, step: Callable[[], Awaitable[float]], stop: asyncio.Event,
                    wake: asyncio.Event | None = None, *, retry_initial_s: float = 0.1,
                    retry_max_s: float = 5.0, backoff: Backoff | None = None) -> None:
    """Run ``step`` until ``stop`` is set. ``step`` returns how long to wait before the next
    round (0: at once); ``wake`` (set by whoever has new work) cuts the wait short. A step
    that raises is logged and retried after ``backoff`` (by default one named
    ``loop_<name>`` doubling from ``retry_initial_s`` up to ``retry_max_s``); the owner
    passes its own to read its figures (failing, last error).
    """
    backoff = backoff or Backoff(f"loop_{name}", initial_s=retry_initial_s, max_s=retry_max_s)
    while not stop.is_set():
        if wake is not None:
            wake.clear()  # work signalled from now on starts the next round early
        try:
            wait = await step()
        except Exception as exc:  # noqa: BLE001 - logged by the backoff, retried after it
            wait = backoff.failed(exc)
            if await stopped_within(stop, wait):
                return
            continue  # a wake-up does not cut a backoff short
        backoff.succeeded()
        if wait > 0:
            await wait_any(stop, wake, wait)


async def stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` or until ``stop`` is set; True if it was."""
    if stop.is_set():
        return True
    try:
        # a timeout around the wait itself: no task per call (wait_for made one), which
        # the ticket writer paid at every commit it spaced out
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        return stop.is_set()
    return True


async def wait_any(stop: asyncio.Event, wake: asyncio.Event | None, seconds: float) -> None:
    """Sleep ``seconds`` or until ``stop`` (or ``wake``, when given) is set."""
    waits = {asyncio.ensure_future(stop.wait())}
    if wake is not None:
        waits.add(asyncio.ensure_future(wake.wait()))
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
