"""The staffing planner's pure parts: targets, loads, the search, what-if, the outputs."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callrouter.acd import erlang
from callrouter.acd.lines import load_lines
from callrouter.capacity.report import CSV_FIELDS, format_csv, format_json, format_text, render_svg
from callrouter.capacity.scenario import Draw, Scenario, SeatBehaviour, Stream, hourly_rates, load_scenario
from callrouter.capacity.staffing import (
    Figures,
    Goal,
    Load,
    Staffing,
    drop_streams,
    erlang_seats,
    evaluate,
    expanded_lines,
    expected_calls,
    overlay,
    period_loads,
    plan_staffing,
    scaled,
    scenario_staffing,
    what_if,
)

ROOT = Path(__file__).resolve().parents[2]
LINES = load_lines(ROOT / "queues" / "lines.toml")
TUESDAY = ROOT / "queues" / "scenarios" / "normal-tuesday.toml"
STORM = ROOT / "queues" / "scenarios" / "storm-night.toml"
HANDLE = Draw(100.0, "lognormal", 0.6)
PATIENT = Draw(1e7)  # nobody gives up


def stream(name: str, line: str, calls_per_hour: tuple[float, ...], *, priority: int = 3,
           handle: Draw = HANDLE, patience: Draw = PATIENT, transfer_to: str | None = None,
           share: float = 0.0) -> Stream:
    return Stream(name, line, "test", priority, hourly_rates(calls_per_hour), handle, patience,
                  transfer_to=transfer_to, transfer_probability=share)


def scenario(*streams: Stream, hours: int, ring: tuple[float, float] = (2.0, 4.0)) -> Scenario:
    return Scenario(name="test", description="", duration_s=hours * 3600.0, seed=1, lines=LINES, tick_s=1.0,
                    staffing={}, seats=SeatBehaviour(ring[0], ring[1], 0.0, 120.0), streams=streams, source="test")


# --- targets, figures, schedules ---------------------------------------------------------
def test_goals_come_from_lines_toml() -> None:
    goals = {line.id: Goal.of(line) for line in LINES.lines}
    assert (goals["110"].measure, goals["110"].level, goals["110"].target_s) == ("within_target", 0.9, 15)
    assert (goals["96345"].measure, goals["96345"].level) == ("connected", 0.95)
    assert goals["110"].label == "90 % answered within 15 s" and goals["96345"].label == "95 % connected"


def test_a_goal_judges_the_right_share() -> None:
    within, connected = Goal("110", "within_target", 0.9, 15), Goal("96345", "connected", 0.95, 15)
    f = Figures(offered=20, answered=19, in_target=17, abandoned=1, runs=2)
    assert within.value(f) == pytest.approx(0.85) and not within.met(f)
    assert connected.value(f) == pytest.approx(0.95) and connected.met(f)
    assert within.value(Figures()) is None and within.met(Figures())  # nobody called: nothing missed
    total = f + Figures(10, 10, 10, 0, 99.0, 1)
    assert (total.offered, total.in_target, total.longest_wait_s, total.runs) == (30, 27, 99.0, 3)
    assert total.per_run(total.abandoned) == pytest.approx(1 / 3)


def test_a_schedule_becomes_shifts_and_survives_json() -> None:
    staffing = Staffing(3600, {"110": (2, 2, 4, 4), "96345": (1, 3, 3, 1)}, (0, 0, 1, 0))
    assert staffing.shifts() == {"110": ((0.0, 2), (7200.0, 4)), "96345": ((0.0, 1), (3600.0, 3), (10800.0, 1)),
                                 "overflow": ((0.0, 0), (7200.0, 1), (10800.0, 0))}
    again = Staffing.from_dict(json.loads(json.dumps({"staffing": staffing.as_dict()})))
    assert again == staffing
    with pytest.raises(ValueError, match="one count per period"):
        Staffing(3600, {"110": (1, 2)}, (0,))
    with pytest.raises(ValueError, match="seat counts"):
        Staffing(3600, {"110": (-1,)}, (0,))
    with pytest.raises(ValueError, match="not a staffing schedule"):
        Staffing.from_dict({"period_s": 3600, "seats": {"110": [1.5]}, "pool": [0]})


def test_a_scenarios_own_shifts_read_per_period() -> None:
    tuesday = load_scenario(TUESDAY)
    staffing = scenario_staffing(tuesday)
    assert staffing.periods == 24
    assert staffing.seats["110"][:8] == (3, 3, 3, 3, 3, 3, 3, 4) and staffing.seats["110"][22] == 3
    assert staffing.pool[9] == 2 and staffing.pool[8] == 0 and staffing.pool[18] == 0


# --- traffic ---------------------------------------------------------------------------------
@given(st.lists(st.floats(min_value=0, max_value=500, allow_nan=False), min_size=1, max_size=30))
def test_expected_calls_of_a_step_curve_are_its_hourly_values(calls: list[float]) -> None:
    s = stream("s", "110", tuple(calls))
    for hour, n in enumerate(calls):
        assert expected_calls(s, hour * 3600.0, (hour + 1) * 3600.0) == pytest.approx(n, rel=1e-9, abs=1e-9)
    assert expected_calls(s, 0, len(calls) * 3600.0 + 999) == pytest.approx(sum(calls), rel=1e-9, abs=1e-9)


def test_expected_calls_of_a_slope_and_of_given_callers() -> None:
    ramp = dataclasses.replace(stream("s", "110", (1.0,)), rate_per_min=((0.0, 0.0), (600.0, 6.0)))
    assert expected_calls(ramp, 0, 600) == pytest.approx(30.0)  # 0 -> 6 calls/min over 10 min
    assert expected_calls(ramp, 300, 600) == pytest.approx(22.5)
    given_ = dataclasses.replace(ramp, callers=((1.0, 5.0, 9.0), (3599.0, 5.0, 9.0), (3600.0, 5.0, 9.0)))
    assert expected_calls(given_, 0, 3600) == 2.0


def test_period_loads_count_handed_over_callers_on_both_lines() -> None:
    s = scenario(stream("misrouted", "110", (60.0,), transfer_to="96345", share=0.5), hours=1, ring=(2.0, 2.0))
    loads = period_loads(s, 1)
    l110, l96345 = loads["110"][0], loads["96345"][0]
    assert (l110.calls, l96345.calls) == (pytest.approx(60.0), pytest.approx(30.0))
    # 110: half talk fully, half for the share before the hand-over; + wrap-up 20 s + ring 2 s
    assert l110.erlangs * 3600 == pytest.approx(30 * (100 + 22) + 30 * (30 + 22))
    assert l96345.erlangs * 3600 == pytest.approx(30 * (100 + 30 + 2))


def test_erlangs_first_guess() -> None:
    within = Goal("110", "within_target", 0.9, 15)
    load = Load(calls=120.0, erlangs=120 * 122 / 3600, patience_s=120.0)
    # the target is shortened by the ring delay: the seat is ringing while the caller waits
    assert erlang_seats(within, load, ring_s=4.0) == erlang.agents_needed(120 / 3600, 122, 11, 0.9)
    assert erlang_seats(within, load, ring_s=4.0) >= erlang_seats(within, load, ring_s=0.0)
    connected = [erlang_seats(Goal("96345", "connected", level, 15), load, 4.0) for level in (0.8, 0.95, 0.99)]
    assert connected == sorted(connected) and connected[0] >= 5  # more than the 4.1 erlangs
    assert erlang_seats(within, Load(0.0, 0.0, 0.0), 4.0) == 0


def test_overlay_moves_the_extra_callers_and_keeps_the_base_ones() -> None:
    day, storm = load_scenario(TUESDAY), load_scenario(STORM)
    both = overlay(day, storm, 21 * 3600)
    assert both.duration_s == 86400 and len(both.streams) == len(day.streams) + len(storm.streams)
    moved = next(s for s in both.streams if s.name == "storm-night: 110 flood reports")
    assert moved.rate_per_min[0][0] == 21 * 3600 and moved.rate_per_min[2] == (21 * 3600 + 1380, 25)
    fewer = drop_streams(both, ["storm-night: 110 evening", "storm-night: 96345 evening"])
    assert len(fewer.streams) == len(both.streams) - 2
    with pytest.raises(ValueError, match="no stream named nope"):
        drop_streams(both, ["nope"])
    later = overlay(day, storm, 23 * 3600)  # runs past midnight: the horizon grows
    assert later.duration_s == 23 * 3600 + storm.duration_s
    assert scaled(day, 1.5).streams[0].rate_per_min[0][1] == pytest.approx(1.5 * day.streams[0].rate_per_min[0][1])


def test_planning_seats_beyond_lines_toml() -> None:
    lines = expanded_lines(LINES, {"110": 12, "96345": 3}, 8)
    l110 = lines.line("110")
    assert len(l110.seats) == 12 and l110.seats[10].id == "110-extra-011"
    assert len(lines.line("96345").seats) == 10  # never fewer than configured
    assert [p.id for p in lines.pool[6:]] == ["pool-extra-007", "pool-extra-008"]
    assert lines.pool[7].lines == ("110", "96345")
    assert expanded_lines(LINES, {}, 0, with_pool=False).pool == ()


# --- the search ------------------------------------------------------------------------------
def two_lines(hours: tuple[float, ...], other: tuple[float, ...]) -> Scenario:
    return scenario(stream("110 calls", "110", hours, patience=Draw(120.0)),
                    stream("96345 calls", "96345", other, handle=Draw(150.0, "lognormal", 0.6),
                           patience=Draw(200.0), priority=5),
                    hours=len(hours))


@pytest.fixture(scope="module")
def small_plan() -> tuple[Scenario, object]:
    s = two_lines((20.0, 90.0, 40.0), (10.0, 50.0, 80.0))
    return s, plan_staffing(s, seeds=(1, 2), surge=0.0, jobs=1)


def test_the_plan_meets_every_target_and_one_seat_fewer_misses(small_plan: tuple[Scenario, object]) -> None:
    s, plan = small_plan
    assert plan.kind == "plan" and plan.periods == 3 and plan.pool == (0, 0, 0)  # type: ignore[attr-defined]
    staffing = plan.staffing()  # type: ignore[attr-defined]
    goals = plan.goals  # type: ignore[attr-defined]
    for lid, rows in plan.rows.items():  # type: ignore[attr-defined]
        assert all(goals[lid].met(r.predicted) for r in rows), lid
    busiest = {lid: max(staffing.seats[lid]) for lid in goals}
    assert busiest["110"] > min(staffing.seats["110"])  # the seats follow the traffic
    # the same seeds with one seat fewer in any one hour: some target of the day is missed
    for lid in goals:
        for p, n in enumerate(staffing.seats[lid]):
            if n <= 1:
                continue
            fewer = dict(staffing.seats)
            fewer[lid] = tuple(c - (i == p) for i, c in enumerate(staffing.seats[lid]))
            ev = evaluate(s, Staffing(3600, fewer, staffing.pool), (1, 2), with_pool=False)
            missed = [(k, i) for k, g in goals.items() for i, f in enumerate(ev.figures[k]) if not g.met(f)]
            assert missed, f"line {lid} hour {p}: {n - 1} seats meet every target too"


def test_the_pool_covers_the_surge_with_the_own_seats_as_planned() -> None:
    s = two_lines((60.0, 120.0), (40.0, 60.0))
    plan = plan_staffing(s, seeds=(1, 2), surge=0.3, jobs=1)
    assert sum(plan.pool) > 0
    rows = plan.rows
    own = plan_staffing(s, seeds=(1, 2), surge=0.0, jobs=1)
    assert plan.staffing().seats == own.staffing().seats  # the pool does not change the own seats
    for lid, goal in plan.goals.items():
        assert all(r.surge is not None and goal.met(r.surge) for r in rows[lid]), (lid, plan.notes)


def test_a_plan_says_when_it_needs_more_seats_than_lines_toml_has() -> None:
    s = scenario(stream("storm", "110", (400.0,), handle=Draw(100.0)), hours=1)
    plan = plan_staffing(s, seeds=(1,), surge=0.0, jobs=1)
    assert plan.rows["110"][0].seats > 10
    assert any("lines.toml lists 10" in note and "line 110" in note for note in plan.notes), plan.notes


def test_bad_plan_arguments() -> None:
    s = two_lines((10.0,), (10.0,))
    with pytest.raises(ValueError):
        plan_staffing(s, min_seats=5, max_seats=2)
    with pytest.raises(ValueError):
        plan_staffing(s, surge=-0.1)
    with pytest.raises(ValueError):
        plan_staffing(s, period_s=0)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seats=st.integers(1, 6), rate=st.sampled_from([20.0, 60.0, 120.0]), seed=st.integers(1, 10_000))
def test_more_seats_never_predict_a_lower_service_level_for_the_same_callers(seats: int, rate: float,
                                                                            seed: int) -> None:
    # one line, one kind of caller who never gives up, the same seats all day: a seat more
    # can only shorten every wait (first come, first served on identical seats). Not true in
    # general: more 110 seats put misrouted callers on 96345 sooner; a caller saved from
    # giving up takes a seat another would have had; who leaves at a shift change matters.
    s = scenario(stream("calls", "110", (rate, rate)), hours=2)

    def figures(n: int) -> tuple[Figures, ...]:
        return evaluate(s, Staffing.constant(2, {"110": n, "96345": 0}), (seed,), with_pool=False).figures["110"]
    fewer, more = figures(seats), figures(seats + 1)
    for a, b in zip(fewer, more, strict=True):
        assert b.in_target >= a.in_target and b.longest_wait_s <= a.longest_wait_s + 1e-9


# --- what-if -----------------------------------------------------------------------------------
def test_a_storm_on_top_of_a_normal_evening_changes_nothing_before_it_comes() -> None:
    day = dataclasses.replace(load_scenario(TUESDAY), duration_s=4 * 3600.0)
    day = dataclasses.replace(day, streams=tuple(
        dataclasses.replace(s, rate_per_min=tuple((t - 18 * 3600, r) for t, r in s.rate_per_min if t >= 18 * 3600))
        for s in day.streams))  # 18:00-22:00 as hours 0-3
    storm = drop_streams(overlay(day, load_scenario(STORM), 2 * 3600), ["storm-night: 110 evening",
                                                                        "storm-night: 96345 evening"])
    seats = Staffing.constant(4, {"110": 5, "96345": 4}, 2)
    calm, stormy = what_if(day, seats, seeds=(3,), jobs=1), what_if(storm, seats, seeds=(3,), jobs=1)
    assert calm.kind == stormy.kind == "what-if"
    for lid in ("110", "96345"):
        before = [r.predicted for r in calm.rows[lid][:2]]
        assert [r.predicted for r in stormy.rows[lid][:2]] == before  # the same callers until the storm
    hit, quiet = stormy.rows["110"][2].predicted, calm.rows["110"][2].predicted
    assert hit.offered > 3 * quiet.offered
    assert hit.service_level is not None and quiet.service_level is not None
    assert hit.service_level < quiet.service_level - 0.3
    assert hit.abandoned > quiet.abandoned and hit.longest_wait_s > quiet.longest_wait_s
    for rows in stormy.rows.values():
        for r in rows:
            assert r.predicted.answered + r.predicted.abandoned == r.predicted.offered


def test_what_if_needs_seats_for_every_line() -> None:
    with pytest.raises(ValueError, match="no seats for line"):
        what_if(two_lines((10.0,), (10.0,)), Staffing(3600, {"110": (1,)}, (0,)), seeds=(1,))


# --- outputs -------------------------------------------------------------------------------
def test_csv_json_and_text_are_complete(small_plan: tuple[Scenario, object]) -> None:
    _, plan = small_plan
    rows = list(csv.DictReader(io.StringIO(format_csv(plan))))  # type: ignore[arg-type]
    assert len(rows) == 6 and tuple(rows[0]) == CSV_FIELDS
    assert {r["line"] for r in rows} == {"110", "96345"} and rows[1]["start"] == "01:00"
    assert all(0 <= float(r["service_level"]) <= 1 and r["meets_target"] == "1" for r in rows)
    data = json.loads(format_json(plan))  # type: ignore[arg-type]
    assert data["kind"] == "plan" and data["goals"]["96345"]["measure"] == "connected"
    assert len(data["rows"]["110"]) == 3 and data["staffing"]["seats"]["110"] == [r.seats for r in plan.rows["110"]]  # type: ignore[attr-defined]
    assert Staffing.from_dict(data) == plan.staffing()  # type: ignore[attr-defined]
    text = format_text(plan)  # type: ignore[arg-type]
    assert "line 110: target 90 % answered within 15 s" in text and "simulated runs" in text
    # checked on other simulated days than the search used: new callers, other figures
    assert data["check_seeds"] == [1001, 1002] and "check" in data["rows"]["110"][0]
    assert [r.check for r in plan.rows["110"]] != [r.predicted for r in plan.rows["110"]]  # type: ignore[attr-defined]
    assert rows[0]["check_service_level"] and "new callers" in text


def test_the_chart_is_well_formed_svg_with_a_panel_per_line(small_plan: tuple[Scenario, object]) -> None:
    _, plan = small_plan
    hostile = dataclasses.replace(plan, scenario='<script>alert("x")</script> & more')  # type: ignore[type-var]
    svg = render_svg(hostile)
    root = ET.fromstring(svg.split("?>", 1)[1])
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == f"{ns}svg"
    assert not list(root.iter(f"{ns}script")) and "<script>" not in svg and "&lt;script&gt;" in svg
    panels = [g for g in root.iter(f"{ns}g") if g.get("data-line")]
    assert [g.get("data-line") for g in panels] == ["110", "96345"]
    for g in panels:
        bars = [r for r in g.iter(f"{ns}rect") if r.get("class") == "load"]
        assert len(bars) >= 3  # one per hour (and one in the legend)
        assert all(float(r.get("height", "0")) >= 0 for r in bars)
        assert [p for p in g.iter(f"{ns}path") if p.get("class") == "seats"]
        assert len([c for c in g.iter(f"{ns}circle")]) == 3  # the predicted level of each hour


def test_the_api_document_lists_the_published_files_with_their_types() -> None:
    from callrouter.api.openapi import OPENAPI
    from callrouter.api.staffing import FILES

    for path, (_, content_type) in FILES.items():
        responses = OPENAPI["paths"][path]["get"]["responses"]
        assert content_type in responses["200"]["content"] and "404" in responses and "403" in responses
