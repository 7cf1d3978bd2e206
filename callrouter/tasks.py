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

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Let running tasks finish for up to ``timeout`` seconds, then cancel the rest."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def poll_loop(name: str, step: Callable[[], Awaitable[float]], stop: asyncio.Event,
                    wake: asyncio.Event | None = None, *, retry_initial_s: float = 0.1,
                    retry_max_s: float = 5.0) -> None:
    """Run ``step`` until ``stop`` is set. ``step`` returns how long to wait before the next
    round (0: at once); ``wake`` (set by whoever has new work) cuts the wait short. A step
    that raises is logged (the first failure of a streak with its traceback, then every
    10th) and retried after a backoff doubling from ``retry_initial_s`` up to ``retry_max_s``.
    """
    delay = retry_initial_s
    streak = 0
    while not stop.is_set():
        if wake is not None:
            wake.clear()  # work signalled from now on starts the next round early
        try:
            wait = await step()
        except Exception as exc:  # logged, retried after the backoff
            streak += 1
            if streak % 10 == 1:
                log.warning("event=loop_failed loop=%s attempt=%d retry_in_s=%.3g error=%r", name, streak, delay,
                            exc, exc_info=streak == 1)
            wait = delay
            delay = min(delay * 2, retry_max_s)
        else:
            if streak:
                log.warning("event=loop_recovered loop=%s after_attempts=%d", name, streak)
            streak = 0
            delay = retry_initial_s
        if wait > 0:
            await wait_any(stop, wake, wait)


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
