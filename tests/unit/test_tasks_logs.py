"""TaskOwner (per-call background tasks) and the logfmt log lines."""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from types import TracebackType

import pytest

from callrouter.logs import LogfmtFormatter, q
from callrouter.tasks import TaskOwner, stopped_within


# --- TaskOwner -------------------------------------------------------------------------
async def test_failing_task_is_logged_and_counted_without_affecting_others(
        caplog: pytest.LogCaptureFixture) -> None:
    owner = TaskOwner("calls")
    release = asyncio.Event()

    async def boom() -> None:
        raise RuntimeError("ARI 500 on answer")

    async def other() -> str:
        await release.wait()
        return "held"

    with caplog.at_level(logging.ERROR, logger="callrouter.tasks"):
        failing = owner.spawn(boom(), name="arrive:c1")
        survivor = owner.spawn(other(), name="arrive:c2")
        await asyncio.wait({failing})
        await asyncio.sleep(0)  # done callbacks run on the next loop turn
        assert owner.failures == 1
        assert not survivor.done()  # a sibling's failure cancels nothing
        assert len(owner) == 1
        release.set()
        assert await survivor == "held"

    await asyncio.sleep(0)
    assert len(owner) == 0
    assert owner.failures == 1
    (record,) = [r for r in caplog.records if r.name == "callrouter.tasks"]
    assert record.getMessage().startswith("event=task_failed owner=calls task=arrive:c1 error=RuntimeError(")
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError


async def test_shutdown_lets_quick_tasks_finish_and_cancels_stragglers() -> None:
    owner = TaskOwner("calls")
    finished: list[str] = []
    cancelled: list[str] = []

    async def work(name: str, seconds: float) -> None:
        try:
            await asyncio.sleep(seconds)
            finished.append(name)
        except asyncio.CancelledError:
            cancelled.append(name)
            raise

    quick = owner.spawn(work("quick", 0), name="quick")
    slow = owner.spawn(work("slow", 3600), name="slow")
    await owner.shutdown(timeout=0.05)
    assert finished == ["quick"] and quick.done() and not quick.cancelled()
    assert cancelled == ["slow"] and slow.cancelled()
    assert len(owner) == 0
    assert owner.failures == 0  # cancelling at shutdown is not a failure


async def test_shutdown_with_nothing_running() -> None:
    owner = TaskOwner("idle")
    await owner.shutdown(timeout=0.01)
    assert len(owner) == 0


# --- stopped_within (the writer's commit gap, the backoffs) -----------------------------
async def test_stopped_within_times_out_false_and_wakes_true_at_once() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await stopped_within(stop, 0.05) is False
    assert loop.time() - started >= 0.04
    loop.call_later(0.02, stop.set)
    started = loop.time()
    assert await stopped_within(stop, 5.0) is True
    assert loop.time() - started < 1.0  # woken by stop, not the 5 s timeout
    assert await stopped_within(stop, 5.0) is True  # already set: no wait at all
    assert not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]  # no task left behind


# --- logs ------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "expected"), [
    ("abc", "abc"),
    ("05786119119", "05786119119"),
    (42, "42"),
    (None, "None"),
    ("", '""'),
    ("a b", '"a b"'),
    ("a=b", '"a=b"'),
    ('say "hi"', '"say \\"hi\\""'),
    ("line1\nline2", '"line1\\nline2"'),
    ('back\\slash "q"', '"back\\\\slash \\"q\\""'),
    ("+86 578 6999998", '"+86 578 6999998"'),
])
def test_q(value: object, expected: str) -> None:
    assert q(value) == expected


def test_q_output_is_one_token() -> None:
    for value in ("", "x y", 'a"b', "a\nb", "k=v w"):
        quoted = q(value)
        assert "\n" not in quoted
        assert quoted.startswith('"') and quoted.endswith('"')


ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]


def record(msg: str, *args: object, exc_info: ExcInfo | None = None) -> logging.LogRecord:
    rec = logging.LogRecord("callrouter.calls", logging.WARNING, __file__, 1, msg, args, exc_info)
    rec.created = 1795844632.15
    rec.msecs = 150.0
    return rec


def test_formatter_line_shape() -> None:
    line = LogfmtFormatter().format(record("event=call_arrived ticket=%s caller=%s", "T1", q("a b")))
    assert line == ('ts=2026-11-28T05:43:52.150Z level=warning logger=callrouter.calls '
                    'event=call_arrived ticket=T1 caller="a b"')
    value = r'(?:"(?:[^"\\]|\\.)*"|[^\s"]+)'
    assert re.fullmatch(rf"ts=\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{{3}}Z level=\w+ logger=\S+ event=\w+( \w+={value})*",
                        line)


def test_formatter_appends_the_traceback() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        info = sys.exc_info()
    text = LogfmtFormatter().format(record("event=task_failed", exc_info=info))
    first, *rest = text.splitlines()
    assert first.endswith("level=warning logger=callrouter.calls event=task_failed")
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "ValueError: bad"
