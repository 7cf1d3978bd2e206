"""The simulator's shifts, hourly rates, replayed callers and skipped Ticks (issue 13)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from callrouter.acd import ConfigFileError
from callrouter.acd.core import Acd
from callrouter.acd.events import CallArrived, OfferAnswered, SeatLogin, SeatRegistered
from callrouter.acd.lines import load_lines
from callrouter.acd.model import STAFFED, SeatState
from callrouter.capacity.scenario import Stream, hourly_rates, load_scenario
from callrouter.capacity.simulator import SimResult, run_simulation

ROOT = Path(__file__).resolve().parents[2]
STORM = ROOT / "queues" / "scenarios" / "storm-night.toml"
TUESDAY = ROOT / "queues" / "scenarios" / "normal-tuesday.toml"
LINES = ROOT / "queues" / "lines.toml"


def outcomes(result: SimResult) -> dict[str, object]:
    """Everything a run found, but the cost of finding it."""
    data = result.as_dict()
    for key in ("wall_s", "events"):
        data.pop(key)
    return data


def test_skipping_idle_ticks_changes_no_figure_of_the_storm() -> None:
    scenario = load_scenario(STORM)
    for policy in ("predictive", "wait_threshold"):
        sparse = run_simulation(scenario, policy=policy, duration_s=3600)
        dense = run_simulation(scenario, policy=policy, duration_s=3600, every_tick=True)
        assert outcomes(sparse) == outcomes(dense), policy
        assert sparse.events < dense.events


def test_skipping_idle_ticks_on_a_day_with_shifts_changes_no_figure() -> None:
    # the pool is staffed only in office hours: its seats log in and out while the
    # overflow policy has state; every call and seat figure must match ticking always
    scenario = dataclasses.replace(load_scenario(TUESDAY), duration_s=6 * 3600)
    scenario = dataclasses.replace(scenario, shifts={**scenario.shifts, "overflow": ((0.0, 0), (3600.0, 2),
                                                                                    (10800.0, 0))})
    sparse = run_simulation(scenario, interval_s=3600)
    dense = run_simulation(scenario, interval_s=3600, every_tick=True)
    assert outcomes(sparse) == outcomes(dense)
    assert sparse.events < dense.events / 2


def test_a_line_without_pool_seats_keeps_its_calls_when_ticks_are_skipped() -> None:
    # no pool seat may serve any line: overflow on/off moves nothing, so its minutes are
    # not followed between events; every call figure is the same
    base = load_scenario(TUESDAY)
    scenario = dataclasses.replace(base, duration_s=4 * 3600, lines=dataclasses.replace(base.lines, pool=()),
                                   shifts={k: v for k, v in base.shifts.items() if k != "overflow"})
    sparse = run_simulation(scenario, interval_s=3600)
    dense = run_simulation(scenario, interval_s=3600, every_tick=True)
    for line_id in ("110", "96345"):
        a, b = sparse.lines[line_id], dense.lines[line_id]
        assert (a.offered, a.answered, a.answered_in_target, a.abandoned, a.intervals) == (
            b.offered, b.answered, b.answered_in_target, b.abandoned, b.intervals)
    assert sparse.events < dense.events / 4


def test_staffed_is_every_state_but_logged_out_and_paused() -> None:
    # the core counts staffed seats by identity on every Tick: keep the two in step
    assert set(SeatState) - STAFFED == {SeatState.LOGGED_OUT, SeatState.PAUSED}


def test_tick_due_says_when_a_tick_can_matter() -> None:
    acd = Acd(load_lines(LINES))
    assert acd.tick_due() == math.inf
    acd.handle(SeatRegistered("s110-01", True), 0.0)
    acd.handle(SeatLogin("s110-01"), 0.0)
    acd.handle(CallArrived("c1", "110", 3, 0.0), 0.0)  # offered at once: rings until 10 s
    assert acd.tick_due() == 10.0
    acd.handle(CallArrived("c2", "110", 3, 1.0), 1.0)  # waits on a line the pool serves
    assert acd.tick_due() == -math.inf
    acd.handle(OfferAnswered("c1", "s110-01"), 3.0)
    assert acd.tick_due() == -math.inf


def test_shifts_log_seats_in_and_out_and_intervals_follow_the_hour() -> None:
    scenario = dataclasses.replace(
        load_scenario(TUESDAY), duration_s=3 * 3600,
        # one 110 seat for an hour of evening traffic, then eight, then one again
        streams=(Stream("calls", "110", "police", 3, hourly_rates((150.0, 150.0, 150.0)),
                        load_scenario(STORM).streams[0].handle, load_scenario(STORM).streams[0].patience),),
        shifts={"110": ((0.0, 1), (3600.0, 8), (7200.0, 1)), "96345": ((0.0, 0),), "overflow": ((0.0, 0),)})
    result = run_simulation(scenario, interval_s=3600)
    first, second, third = result.lines["110"].intervals
    assert [iv.start_s for iv in (first, second, third)] == [0.0, 3600.0, 7200.0]
    assert second.answered_in_target / second.offered > 0.85  # eight seats keep up
    for short in (first, third):  # one seat cannot: callers wait long and give up
        assert short.answered_in_target / short.offered < 0.5
        assert short.abandoned > 10 and short.longest_wait_s > 100
    for iv in (first, second, third):
        assert iv.answered + iv.abandoned == iv.offered


def test_replayed_callers_are_the_ones_given() -> None:
    storm = load_scenario(STORM)
    callers = ((0.0, 30.0, 600.0), (1.0, 30.0, 600.0), (2.0, 30.0, 600.0), (100.0, 5.0, 600.0))
    stream = dataclasses.replace(storm.streams[0], rate_per_min=(), callers=callers)
    scenario = dataclasses.replace(storm, streams=(stream,), duration_s=200, shifts={"110": ((0.0, 2),)},
                                   staffing={"96345": 0, "overflow": 0})
    result = run_simulation(scenario, interval_s=3600)
    line = result.lines["110"]
    assert result.calls == line.offered == line.answered == 4
    # two seats, three callers at once: the third waits for a seat to finish and wrap up
    assert line.intervals[0].longest_wait_s > 30 + 20


def test_calls_per_hour_and_shift_lists_in_the_toml_format(tmp_path: Path) -> None:
    good = load_scenario(TUESDAY)
    assert good.shifts["110"][0] == (0.0, 3) and good.shift("110", 10) == good.shifts["110"]
    assert good.shift("nope", 7) == ((0.0, 7),)
    police = next(s for s in good.streams if s.name == "110 police")
    assert police.rate_per_min[:3] == ((0.0, 10 / 60), (3600.0, 10 / 60), (3600.0, 7 / 60))
    text = f"""
[scenario]
name = "bad"
duration_s = 3600
seed = 1
lines = "{LINES}"

[staffing]
"110" = [[10, 2], [5, 3]]
"96345" = [[0, -1]]

[[traffic]]
name = "calls"
line = "110"
priority = 3
calls_per_hour = [1, "x"]
handle_mean_s = 60
patience_mean_s = 60

[[traffic]]
name = "both"
line = "110"
priority = 3
calls_per_hour = [1]
rate_per_min = 2
handle_mean_s = 60
patience_mean_s = 60
"""
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigFileError) as info:
        load_scenario(path)
    problems = "\n".join(info.value.problems)
    assert "staffing.110: the first shift starts at 0 and times increase" in problems
    assert "staffing.96345: a number of seats (0-1000) or a list of [from_s, seats] pairs" in problems
    assert "traffic[1].calls_per_hour: a list of 1 to 168 numbers" in problems
    assert "traffic[2].rate_per_min: give rate_per_min or calls_per_hour, not both" in problems


def test_hourly_rates_is_a_step_curve() -> None:
    assert hourly_rates((60.0, 0.0)) == ((0.0, 1.0), (3600.0, 1.0), (3600.0, 0.0), (7200.0, 0.0), (7200.0, 0.0))
    assert hourly_rates((30.0,), start_s=600.0, hour_s=60.0) == ((600.0, 30.0), (660.0, 30.0), (660.0, 0.0))


def test_interval_length_must_be_positive() -> None:
    with pytest.raises(ValueError):
        run_simulation(load_scenario(STORM), interval_s=0)


def test_at_a_shift_change_the_free_seat_leaves_and_the_busy_one_finishes_its_call() -> None:
    storm = load_scenario(STORM)
    # two seats; one long call from t=0; at t=100 one seat leaves: the free one (s110-01 or
    # s110-02, whichever is idle), never the one talking; the talking seat then serves
    # the caller who arrives at 200 once its call and wrap-up are done
    stream = dataclasses.replace(storm.streams[0], rate_per_min=(),
                                 callers=((0.0, 1000.0, 1e7), (200.0, 30.0, 1e7)))
    scenario = dataclasses.replace(storm, streams=(stream,), duration_s=300,
                                   shifts={"110": ((0.0, 2), (100.0, 1))}, staffing={"96345": 0, "overflow": 0})
    line = run_simulation(scenario, interval_s=3600).lines["110"]
    # the second caller waits for the first call (1000 s talk after a 2-6 s ring) and the wrap-up
    assert line.answered == 2 and line.intervals[0].longest_wait_s > 800
    # had the talking seat been logged out instead, the second caller would have been answered at once

