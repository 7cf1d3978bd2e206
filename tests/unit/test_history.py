"""Unit tests of callrouter.api.history: per-minute samples of waiting and service level."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from callrouter.api.history import LineHistory, sampler

T0 = 1_764_547_200  # a whole minute (2025-12-01T00:00:00Z)


def line(waiting: int, offered: int = 0, answered: int = 0, abandoned: int = 0, in_target: int = 0) -> dict[str, Any]:
    return {"waiting": waiting, "service": {"offered": offered, "answered": answered, "abandoned": abandoned,
                                            "answered_in_target": in_target, "service_level": 0.5}}


def test_minutes_keep_the_most_waiting_and_the_counts_of_that_minute() -> None:
    h = LineHistory()
    h.observe(T0 + 1, {"110": line(0, 10, 8, 1, 7)})  # the baseline: counts from here on
    h.observe(T0 + 20, {"110": line(3, 13, 8, 1, 7)})
    h.observe(T0 + 40, {"110": line(1, 13, 10, 2, 8)})
    h.observe(T0 + 61, {"110": line(0, 13, 11, 2, 9)})
    got = h.samples(T0 + 61, 60)["110"]
    assert [m["at"] for m in got] == [T0, T0 + 60]
    first, second = got
    assert first["waiting"] == 3
    assert (first["offered"], first["answered"], first["abandoned"], first["answered_in_target"]) == (3, 2, 1, 1)
    assert first["service_level"] == pytest.approx(1 / 3, abs=1e-4)
    assert second["waiting"] == 0 and second["answered"] == 1 and second["service_level"] == 1.0


def test_a_minute_without_finished_callers_has_no_service_level() -> None:
    h = LineHistory()
    h.observe(T0, {"96345": line(2, 5)})
    h.observe(T0 + 30, {"96345": line(4, 7)})
    (only,) = h.samples(T0 + 30, 60)["96345"]
    assert only["service_level"] is None and only["offered"] == 2 and only["waiting"] == 4


def test_the_window_and_the_bound() -> None:
    h = LineHistory(keep_minutes=90)
    for minute in range(200):
        h.observe(T0 + minute * 60, {"110": line(minute % 7)})
    assert len(h.samples(T0 + 199 * 60, 60)["110"]) == 60
    assert h.samples(T0 + 199 * 60, 60)["110"][-1]["at"] == T0 + 199 * 60
    assert len(h.samples(T0 + 199 * 60, 1440)["110"]) == 90  # never more than kept


def test_a_reset_counter_and_a_clock_going_back_do_not_make_negative_counts() -> None:
    h = LineHistory()
    h.observe(T0, {"110": line(0, 50, 40, 5, 30)})
    h.observe(T0 + 10, {"110": line(0, 2, 1, 0, 1)})  # counters reset (line reconfigured)
    h.observe(T0 - 120, {"110": line(9, 3, 1, 0, 1)})  # clock stepped back: ignored
    (only,) = h.samples(T0 + 10, 60)["110"]
    assert only["offered"] == 2 and only["answered"] == 1 and only["waiting"] == 0


def test_bad_values_count_as_zero() -> None:
    h = LineHistory()
    h.observe(T0, {"110": {"waiting": "many", "service": None}})
    h.observe(T0 + 5, {"110": {"waiting": True, "service": {"offered": -3}}})
    assert h.samples(T0 + 5, 60)["110"][0]["waiting"] == 0


async def test_sampler_observes_until_cancelled_and_survives_a_failing_snapshot() -> None:
    h = LineHistory()
    calls = 0

    def snap() -> tuple[float, dict[str, Any]]:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("boom")
        return T0 + calls, {"110": line(calls)}

    task = asyncio.create_task(sampler(h, snap, every_s=0.01))
    while calls < 4:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert h.samples(T0 + 5, 60)["110"][0]["waiting"] >= 3
