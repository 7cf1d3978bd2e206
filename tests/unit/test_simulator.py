"""The capacity simulator: determinism, the storm scenario, scenario errors, the CLI."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from callrouter.acd import ConfigFileError
from callrouter.capacity.scenario import load_scenario
from callrouter.capacity.simulator import SimResult, run_simulation
from callrouter.simulate import simulate_main

ROOT = Path(__file__).resolve().parents[2]
STORM = ROOT / "queues" / "scenarios" / "storm-night.toml"
LINES = ROOT / "queues" / "lines.toml"


def scenario_text(
    *,
    rate: str = "2.0",
    duration: float = 1800,
    staffing: str = '"110" = 10\n"96345" = 10\noverflow = 6',
    extra: str = "",
) -> str:
    return f"""
[scenario]
name = "quiet"
duration_s = {duration}
seed = 7
lines = "{LINES}"

[staffing]
{staffing}

[seats]
ring_delay_min_s = 1
ring_delay_max_s = 3

[[traffic]]
name = "calls"
line = "110"
priority = 3
rate_per_min = {rate}
handle_mean_s = 60
patience_mean_s = 600
{extra}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.toml"
    path.write_text(text)
    return path


def comparable(result: SimResult) -> dict[str, object]:
    data = result.as_dict()
    data.pop("wall_s")
    return data


@pytest.fixture(scope="module")
def storm() -> dict[str, SimResult]:
    scenario = load_scenario(STORM)
    return {
        policy: run_simulation(scenario, policy=policy)
        for policy in ("predictive", "wait_threshold")
    }


def test_same_seed_same_result_other_seed_other_result(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, scenario_text(rate="6.0")))
    first = run_simulation(scenario)
    assert comparable(run_simulation(scenario)) == comparable(first)
    assert comparable(run_simulation(scenario, seed=8)) != comparable(first)
    assert first.calls > 100


def test_quiet_evening_is_answered_within_target(tmp_path: Path) -> None:
    result = run_simulation(load_scenario(write(tmp_path, scenario_text())))
    line = result.lines["110"]
    assert line.offered == result.calls
    assert line.answered == line.offered
    assert line.service_level == 1.0
    assert line.wait_p99_s <= 3.0  # the ring delay only
    assert line.overflow_seat_minutes == 0
    # the simulator's tally and the core's own counters agree
    assert result.core_counters["110"]["answered"] == line.answered
    assert result.core_counters["110"]["answered_in_target"] == line.answered_in_target


def test_too_few_seats_make_callers_wait_and_abandon(tmp_path: Path) -> None:
    text = scenario_text(rate="6.0", staffing='"110" = 2\n"96345" = 0\noverflow = 0')
    result = run_simulation(load_scenario(write(tmp_path, text)))
    line = result.lines["110"]
    assert line.abandoned > 0
    assert line.service_level < 0.5
    assert line.answered + line.abandoned == line.offered
    assert result.core_counters["110"]["abandoned"] == line.abandoned


def test_storm_policies_see_the_same_callers(storm: dict[str, SimResult]) -> None:
    predictive, threshold = storm["predictive"], storm["wait_threshold"]
    assert predictive.calls == threshold.calls > 1000
    assert predictive.lines["110"].offered == threshold.lines["110"].offered
    for result in storm.values():
        for line_id, line in result.lines.items():
            assert line.answered + line.abandoned == line.offered, line_id
            counters = result.core_counters[line_id]
            assert (counters["offered"], counters["answered"], counters["abandoned"]) == (
                line.offered, line.answered, line.abandoned
            )


def test_predictive_overflow_activates_in_the_storm_before_the_threshold(
    storm: dict[str, SimResult],
) -> None:
    predictive, threshold = storm["predictive"], storm["wait_threshold"]
    surge_starts = 1200  # the flood reports begin 20 minutes in
    first_110 = predictive.lines["110"].overflow_first_on_s
    assert first_110 is not None and surge_starts < first_110 < surge_starts + 120
    baseline = threshold.lines["110"].overflow_first_on_s
    assert baseline is not None and first_110 < baseline
    # 96345: the predictive policy brings the pool in as the spill-over builds, the
    # threshold policy only once callers are already late
    first_96345 = predictive.lines["96345"].overflow_first_on_s
    late_96345 = threshold.lines["96345"].overflow_first_on_s
    assert first_96345 is not None and late_96345 is not None
    assert first_96345 < late_96345
    assert predictive.lines["96345"].service_level > threshold.lines["96345"].service_level
    # and every activation ended with the storm (hysteresis, then calm)
    for result in storm.values():
        assert result.lines["110"].overflow_activations >= 1


def test_scenario_errors_name_file_and_line(tmp_path: Path) -> None:
    text = scenario_text(
        rate="[[0, 1], [600, -2]]",
        staffing='"110" = 12\n"112" = 1',
        extra='transfer_to = "12345"\ntransfer_probability = 0.1\ncolour = "red"',
    )
    path = write(tmp_path, text)
    lines = text.splitlines()

    def at(needle: str) -> int:
        return next(i for i, ln in enumerate(lines) if needle in ln) + 1

    with pytest.raises(ConfigFileError) as info:
        load_scenario(path)
    assert info.value.problems == [
        (f"{path}:{at('rate_per_min')}: traffic[1].rate_per_min: must be a number or a list "
        "of [time_s, calls_per_minute] pairs, both >= 0"),
        (f"{path}:{at('colour')}: traffic[1].colour: unknown key; expected one of "
        "calls_per_hour, category, escalate, handle_distribution, handle_mean_s, handle_sigma, line, name, "
        "patience_distribution, patience_mean_s, patience_sigma, priority, rate_per_min, "
        "transfer_probability, transfer_to"),
    ]
    # once the stream itself is sound, lines and staffing are checked against lines.toml
    path = write(tmp_path, text.replace("[[0, 1], [600, -2]]", "1.0").replace(
        'colour = "red"', ""))
    lines = path.read_text().splitlines()
    with pytest.raises(ConfigFileError) as info:
        load_scenario(path)
    staff_110, staff_112 = at('"110" = 12'), at('"112" = 1')
    assert info.value.problems == [
        f"{path}:{staff_110}: staffing.110: 12 seats staffed but only 10 configured",
        f"{path}:{staff_112}: staffing.112: not a line of {LINES} nor 'overflow'",
        (f"{path}:{at('transfer_to')}: traffic[1].transfer_to: unknown line '12345'; "
        f"{LINES} has 110, 96345"),
    ]


def test_scenario_missing_keys_and_syntax(tmp_path: Path) -> None:
    path = write(tmp_path, scenario_text().replace("seed = 7\n", ""))
    with pytest.raises(ConfigFileError, match=r"scenario.toml:2: scenario.seed: missing"):
        load_scenario(path)
    path = write(tmp_path, scenario_text().replace("priority = 3", "priority = "))
    with pytest.raises(ConfigFileError, match=r"scenario.toml:\d+: TOML syntax"):
        load_scenario(path)


def test_simulate_main_compare_text_and_json(tmp_path: Path) -> None:
    path = write(tmp_path, scenario_text(rate="4.0"))
    out, err = io.StringIO(), io.StringIO()
    assert simulate_main([str(path), "--compare", "--intervals"], out, err) == 0
    text = out.getvalue()
    assert "predictive" in text and "wait_threshold" in text
    assert "service level" in text and "overflow seat-minutes" in text and "wall time" in text

    out = io.StringIO()
    assert simulate_main([str(path), "--json", "--policy", "wait_threshold"], out, err) == 0
    data = json.loads(out.getvalue())
    assert [run["policy"] for run in data["runs"]] == ["wait_threshold"]
    line = data["runs"][0]["lines"]["110"]
    for key in ("offered", "answered", "service_level", "wait_p50_s", "wait_p90_s",
                "wait_p99_s", "abandoned", "overflow_seat_minutes"):
        assert key in line
    assert data["runs"][0]["wall_s"] >= 0


def test_simulate_main_reports_errors_with_exit_status(tmp_path: Path) -> None:
    path = write(tmp_path, scenario_text(rate="-1"))
    out, err = io.StringIO(), io.StringIO()
    assert simulate_main([str(path)], out, err) == 2
    assert f"{path}:" in err.getvalue() and "rate_per_min" in err.getvalue()
    assert simulate_main([str(path), "--duration", "0"], out, err) == 2
    assert simulate_main(["--no-such-flag"], out, io.StringIO()) == 2


def test_shipped_storm_scenario_is_valid() -> None:
    scenario = load_scenario(STORM)
    assert scenario.name == "storm-night"
    assert {s.line for s in scenario.streams} == {"110", "96345"}
    peak = max(r for s in scenario.streams if s.line == "110" for _, r in s.rate_per_min)
    assert peak >= 20  # a surge of hundreds of calls within minutes
