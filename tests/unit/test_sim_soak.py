"""The soak's traffic mix and figures (no Asterisk: the parts that are pure)."""

from __future__ import annotations

import os

import pytest

from callrouter.sim.soak import (
    ALL_SEATS,
    NUMBERS_110,
    SoakError,
    SoakMix,
    SoakResult,
    proc_figures,
    soak_seats,
    soak_specs,
)
from callrouter.sim.trunk import TrunkReport


def test_specs_follow_the_mix() -> None:
    mix = SoakMix(rate=5.0)
    specs = soak_specs(mix, 600, seed=3)
    assert len(specs) == 3000
    greeting = sum(1 for s in specs if s.hold_s < 12.5)
    impatient = sum(1 for s in specs if 12.5 <= s.hold_s <= 25.0)
    patient = sum(1 for s in specs if s.hold_s == mix.patience_s)
    # greeting 0.5-12 s; impatient 5-25 s (those under 12.5 s counted with the greeting)
    assert greeting + impatient + patient == 3000
    assert 0.7 * 3000 * 0.95 < patient < 0.7 * 3000 * 1.05
    assert 0.40 * 3000 * 0.9 < sum(1 for s in specs if s.number in NUMBERS_110) < 0.40 * 3000 * 1.1
    assert len({s.caller for s in specs}) == 3000
    assert soak_specs(mix, 600, seed=3) == specs  # repeatable


def test_seats_include_both_transfer_kinds() -> None:
    seats = soak_seats(SoakMix())
    assert [s.seat for s in seats] == list(ALL_SEATS) and len(seats) == 26
    assert {s.mode for s in seats} == {"answer", "transfer", "refer"}


def test_proc_figures_of_a_live_and_a_gone_process() -> None:
    me = proc_figures(os.getpid())
    assert me.rss_mb > 0 and me.threads >= 1 and me.fds >= 3
    with pytest.raises(SoakError, match="gone"):
        proc_figures(2**22 + 12345, "Asterisk")


def test_p99_of_the_first_and_last_window() -> None:
    # 100 calls answered over 100 s: the first 10 s fast, the last 10 s slow
    rtts = [5.0] * 10 + [20.0] * 80 + [90.0] * 10
    report = TrunkReport(calls=[], rtt_ms=rtts, elapsed_s=100, sipp_exit=0,
                         rtt_samples=[(float(i), r) for i, r in enumerate(rtts)])
    result = SoakResult(specs=[], report=report, seats=[], placing_s=100.0)
    assert result.rtt_p99(True, 10) == 5.0
    assert result.rtt_p99(False, 10) == 90.0
    assert result.rtt_p99(True, 1000) == 90.0  # a window longer than the run: all of it
