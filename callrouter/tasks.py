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
from collections.abc import Coroutine
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
