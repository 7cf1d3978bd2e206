"""Bounded shutdown helpers: a step never waits past its timeout; the process ends regardless."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time

import pytest

from callrouter.shutdown import EXIT_ABANDONED, step


def test_a_step_that_finishes_is_done() -> None:
    async def main() -> bool:
        return await step("quick", asyncio.sleep(0.01), 1.0)
    assert asyncio.run(main()) is True


def test_a_stuck_step_is_abandoned_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def stubborn() -> None:
        while True:  # swallows cancellation, as a careless cleanup might
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                continue

    async def main() -> tuple[bool, float]:
        started = time.monotonic()
        task = asyncio.ensure_future(stubborn())
        done = await step("stuck", task, 0.2, lambda: "tickets=3")
        elapsed = time.monotonic() - started
        return done, elapsed

    with caplog.at_level(logging.WARNING, logger="callrouter.engine"):
        loop = asyncio.new_event_loop()
        try:
            done, elapsed = loop.run_until_complete(main())
        finally:
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.close()
    assert done is False
    assert elapsed < 5.0  # not waiting for the task that ignores its cancellation
    assert "event=shutdown_step_abandoned step=stuck timeout_s=0.2 pending=tickets=3" in caplog.text


def test_a_failing_step_is_logged_and_counts_as_done(caplog: pytest.LogCaptureFixture) -> None:
    async def boom() -> None:
        raise OSError("disk full")

    with caplog.at_level(logging.WARNING, logger="callrouter.engine"):
        assert asyncio.run(step("state_save", boom(), 1.0)) is True
    assert "event=shutdown_step_failed step=state_save" in caplog.text


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False)


def test_the_watchdog_ends_a_process_that_a_thread_keeps_alive() -> None:
    proc = _run("import threading, logging, sys\n"
                "logging.basicConfig(stream=sys.stderr)\n"
                "from callrouter.shutdown import Watchdog\n"
                "Watchdog(0.3).arm(lambda: 'tickets=1')\n"
                "threading.Thread(target=threading.Event().wait).start()  # non-daemon, never ends\n")
    assert proc.returncode == EXIT_ABANDONED, proc.stderr
    assert "event=shutdown_watchdog_exit" in proc.stderr and "pending=tickets=1" in proc.stderr


def test_run_bounded_does_not_wait_for_a_worker_thread_that_hangs() -> None:
    # asyncio.run would join this thread at exit, forever (a database call that hangs)
    proc = _run("import asyncio, threading, logging, sys\n"
                "logging.basicConfig(stream=sys.stderr)\n"
                "from callrouter.shutdown import run_bounded\n"
                "async def main():\n"
                "    asyncio.get_running_loop().run_in_executor(None, threading.Event().wait)\n"
                "    await asyncio.sleep(0.05)\n"
                "run_bounded(main(), executor_timeout_s=0.2)\n")
    assert proc.returncode == 0, proc.stderr
    assert "event=shutdown_step_abandoned step=executor" in proc.stderr
