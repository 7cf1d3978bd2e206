"""Simulated trunk helpers: percentiles of INVITE->200 times and the storm's call mix."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from callrouter.config import Settings
from callrouter.numberplan import load_plan
from callrouter.sim.trunk import (
    UNLISTED_SAMPLES,
    CallResult,
    CallSpec,
    TrunkReport,
    _wait_sipp,
    percentile,
    read_results,
    storm_specs,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "state", data_dir=REPO)


@pytest.fixture(scope="module")
def plan_numbers() -> set[str]:
    return {e.number for e in load_plan(REPO / "queues" / "numberplan.csv").entries}


# --- percentile ----------------------------------------------------------------------
def test_percentile_of_nothing_is_none() -> None:
    assert percentile([], 50) is None


def test_percentile_of_one_value() -> None:
    assert percentile([12.3456], 0) == percentile([12.3456], 50) == percentile([12.3456], 100) == 12.35


def test_percentile_extremes_and_order() -> None:
    values = [30.0, 10.0, 20.0, 50.0, 40.0]
    assert percentile(values, 0) == 10.0
    assert percentile(values, 100) == 50.0
    assert percentile(values, 150) == 50.0  # clamped, never an IndexError
    got = [v for p in range(0, 101, 5) if (v := percentile(values, p)) is not None]
    assert len(got) == 21
    assert got == sorted(got)  # monotone in p
    assert set(got) <= set(values)  # a sample, never an interpolation


def test_percentile_does_not_reorder_its_input() -> None:
    values = [3.0, 1.0, 2.0]
    percentile(values, 50)
    assert values == [3.0, 1.0, 2.0]


def test_percentile_is_nearest_rank() -> None:
    ten = [float(i) for i in range(1, 11)]
    assert [percentile(ten, p) for p in (10, 50, 90)] == [1.0, 5.0, 9.0]
    hundred = [float(i) for i in range(1, 101)]
    assert [percentile(hundred, p) for p in (50, 90, 99)] == [50.0, 90.0, 99.0]


def test_report_json() -> None:
    report = TrunkReport(
        calls=[CallResult(1, "110", "13800000001", "completed"),
               CallResult(2, "96345", "13800000002", "rejected_503"),
               CallResult(3, "12399", "13800000003", "failed")],
        rtt_ms=[20.0, 10.0], elapsed_s=1.234, sipp_exit=1)
    data = report.to_json()
    assert (data["calls"], data["ok"], data["failed"], data["answered"]) == (3, 1, 2, 1)
    assert data["invite_to_200_ms"]["max"] == 20.0
    assert data["elapsed_s"] == 1.23


# --- storm_specs ---------------------------------------------------------------------
def test_storm_is_deterministic_for_a_seed(settings: Settings) -> None:
    first = storm_specs(settings, 200, 2.0, seed=7)
    assert storm_specs(settings, 200, 2.0, seed=7) == first
    assert storm_specs(settings, 200, 2.0, seed=8) != first
    assert len(first) == 200
    assert all(isinstance(s, CallSpec) and s.hold_s == 2.0 for s in first)


def test_storm_numbers_come_from_the_plan_or_the_unlisted_samples(settings: Settings,
                                                                  plan_numbers: set[str]) -> None:
    specs = storm_specs(settings, 500, 1.0, seed=3, unlisted_share=0.2)
    numbers = [s.number for s in specs]
    assert set(numbers) <= plan_numbers | set(UNLISTED_SAMPLES)
    assert any(n in UNLISTED_SAMPLES for n in numbers)
    assert any(n in plan_numbers for n in numbers)
    for spec in specs:
        assert spec.caller.startswith("13") and spec.caller.isdigit() and len(spec.caller) == 11


def test_storm_unlisted_share_bounds(settings: Settings, plan_numbers: set[str]) -> None:
    listed_only = storm_specs(settings, 200, 1.0, seed=1, unlisted_share=0.0)
    assert {s.number for s in listed_only} <= plan_numbers
    unlisted_only = storm_specs(settings, 50, 1.0, seed=1, unlisted_share=1.0)
    assert {s.number for s in unlisted_only} <= set(UNLISTED_SAMPLES)


def test_unlisted_samples_route_as_unlisted() -> None:
    # the storm's "unlisted" calls must really be numbers the plan does not know
    plan = load_plan(REPO / "queues" / "numberplan.csv")
    assert [n for n in UNLISTED_SAMPLES if plan.route(n).listed] == []


def test_free_media_ports_are_free_aligned_and_never_handed_out_twice() -> None:
    import socket

    from callrouter.sim.trunk import SIPP_MEDIA_PORTS, bind_failed, free_media_port, free_udp_port

    bases = [free_media_port("127.0.0.1") for _ in range(20)]
    ports = [b + i for b in bases for i in range(SIPP_MEDIA_PORTS)]
    assert len(set(ports)) == len(ports), "no port handed out twice"
    assert all(b % 2 == 0 for b in bases)
    singles = {free_udp_port("127.0.0.1") for _ in range(20)}
    assert not singles & set(ports)
    held = []
    try:
        for port in ports:  # every port of every block binds
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            held.append(s)
            s.bind(("127.0.0.1", port))
    finally:
        for s in held:
            s.close()
    assert bind_failed("Unable to bind video RTP socket (IP=127.0.0.1, port=57853), errno = 98 (Address already in use)")
    assert not bind_failed("REGISTER timed out")


def test_sipp_wait_ends_the_process_when_cancelled_and_kills_it_at_the_timeout() -> None:
    code = "import sys, time; sys.stderr.write('started'); sys.stderr.flush(); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    began = time.monotonic()
    assert _wait_sipp(proc, 60, cancel) == "started"
    assert time.monotonic() - began < 10
    assert proc.returncode is not None and proc.returncode != 0  # terminated, not finished

    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    with pytest.raises(subprocess.TimeoutExpired):
        _wait_sipp(proc, 0.5, None)  # subprocess.run's timeout: killed, then raised
    assert proc.returncode is not None

    done = subprocess.Popen([sys.executable, "-c", "import sys; sys.stderr.write('bye')"], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    assert _wait_sipp(done, 30, threading.Event()) == "bye"
    assert done.returncode == 0


# --- the scenario's log --------------------------------------------------------------
def test_read_results_last_outcome_and_200_times() -> None:
    log = """ANSWERED_AT;1;1796114991.000000;179738.000000
RESULT;1;110;1390001;answered
RESULT;1;110;1390001;completed
2026-12-01 08:00:00.000000 RESULT;2;12345;1390002;rejected_503
ANSWERED_AT;3;1796114992.000000;5000
RESULT;3;96345;1390003;answered
ANSWERED_AT;4;17961
RESULT;x;1;2;completed
"""  # the last two: cut short, not a call number (ignored)
    outcomes, answered_at = read_results(log)
    assert outcomes == {1: "completed", 2: "rejected_503", 3: "answered"}
    assert answered_at == {1: pytest.approx(1796114991.179738), 3: pytest.approx(1796114992.005)}
    assert read_results("") == ({}, {})
