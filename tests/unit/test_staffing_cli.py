"""``callrouter staffing plan|what-if``: options, outputs, publishing, errors."""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from callrouter.capacity.cli import PUBLISHED_JSON, PUBLISHED_SVG, staffing_main
from callrouter.cli import build_parser
from callrouter.config import Settings

ROOT = Path(__file__).resolve().parents[2]
LINES = ROOT / "queues" / "lines.toml"
STORM = ROOT / "queues" / "scenarios" / "storm-night.toml"

EVENING = f"""
[scenario]
name = "three-hours"
duration_s = 10800
seed = 1
lines = "{LINES}"

[staffing]
"110" = [[0, 2], [3600, 4], [7200, 3]]
"96345" = 2
overflow = 1

[[traffic]]
name = "110 calls"
line = "110"
category = "police"
priority = 1
calls_per_hour = [20, 60, 40]
handle_mean_s = 90
patience_mean_s = 120

[[traffic]]
name = "96345 calls"
line = "96345"
category = "public_service"
priority = 5
calls_per_hour = [10, 30, 20]
handle_mean_s = 150
patience_mean_s = 240
"""


@pytest.fixture
def evening(tmp_path: Path) -> Path:
    path = tmp_path / "evening.toml"
    path.write_text(EVENING)
    return path


def run(tmp_path: Path, *argv: str) -> tuple[int, str, str]:
    args = build_parser().parse_args(["staffing", *argv])
    out, err = io.StringIO(), io.StringIO()
    status = staffing_main(args, Settings(home=tmp_path / "home"), out, err)
    return status, out.getvalue(), err.getvalue()


def test_plan_prints_csv_writes_the_chart_and_publishes_for_the_wallboard(tmp_path: Path, evening: Path) -> None:
    svg = tmp_path / "chart.svg"
    status, out, err = run(tmp_path, "plan", "--scenario", str(evening), "--seeds", "1", "--jobs", "1",
                           "--format", "csv", "--svg", str(svg), "--publish")
    assert status == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["start"] for r in rows if r["line"] == "110"] == ["00:00", "01:00", "02:00"]
    seats = {r["line"]: [int(x["seats"]) for x in rows if x["line"] == r["line"]] for r in rows}
    assert seats["110"][1] > seats["110"][0]  # the busy hour gets more seats
    assert ET.fromstring(svg.read_text().split("?>", 1)[1]).tag.endswith("svg")
    published = tmp_path / "home" / "staffing"
    data = json.loads((published / PUBLISHED_JSON).read_text())
    assert data["kind"] == "plan" and data["staffing"]["seats"]["110"] == seats["110"]
    assert (published / PUBLISHED_SVG).read_text() == svg.read_text()
    assert oct((published / PUBLISHED_JSON).stat().st_mode & 0o777) == "0o644"
    assert "published to" in err
    assert not [p for p in published.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_what_if_with_a_storm_on_top_and_the_plans_seats(tmp_path: Path, evening: Path) -> None:
    status, out, _ = run(tmp_path, "plan", "--scenario", str(evening), "--seeds", "1", "--jobs", "1",
                         "--surge", "0", "--format", "json")
    assert status == 0
    plan = tmp_path / "plan.json"
    plan.write_text(out)
    status, out, err = run(tmp_path, "what-if", "--scenario", str(evening), "--seeds", "1", "--jobs", "1",
                           "--add", f"{STORM}@01:00", "--drop-stream", "storm-night: 110 evening",
                           "--seats", str(plan), "--format", "json")
    assert status == 0, err
    data = json.loads(out)
    assert data["kind"] == "what-if" and data["scenario"] == "three-hours + storm-night"
    assert data["staffing"]["seats"]["110"][:3] == json.loads(plan.read_text())["staffing"]["seats"]["110"]
    first, storm_hour = data["rows"]["110"][0], data["rows"]["110"][2]
    assert storm_hour["predicted"]["offered"] > 3 * first["predicted"]["offered"]
    assert storm_hour["predicted"]["abandoned"] > 0 and not storm_hour["meets_target"]
    # constant seats, and the scenario's own shifts by default
    status, out, _ = run(tmp_path, "what-if", "--scenario", str(evening), "--seeds", "1", "--jobs", "1",
                         "--seats", "110=5,96345=3,overflow=0", "--format", "text")
    assert status == 0 and "what-if: three-hours" in out and "line 96345: target 95 % connected" in out
    status, out, _ = run(tmp_path, "what-if", "--scenario", str(evening), "--seeds", "1", "--jobs", "1",
                         "--format", "json")
    assert json.loads(out)["staffing"]["seats"]["110"] == [2, 4, 3]


@pytest.mark.parametrize(("argv", "message"), [
    (["what-if", "--seats", "110=x"], "use LINE=SEATS pairs"),
    (["what-if", "--seats", "112=3"], "no line 112"),
    (["what-if", "--drop-stream", "nope"], "no stream named nope"),
    (["what-if", "--add", f"{STORM}@25:00"], "a time of day HH:MM"),
    (["plan", "--seeds", "0"], "--seeds must be 1 to 50"),
    (["plan", "--jobs", "0"], "--jobs must be 1 to 64"),
    (["plan", "--min-seats", "9", "--max-seats", "2"], "min_seats"),
])
def test_bad_options_exit_2_with_the_reason(tmp_path: Path, evening: Path, argv: list[str], message: str) -> None:
    status, _, err = run(tmp_path, argv[0], "--scenario", str(evening), *argv[1:])
    assert status == 2 and message in err, err


def test_a_broken_scenario_file_names_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(EVENING.replace("calls_per_hour = [20, 60, 40]", "calls_per_hour = [20, -60, 40]"))
    status, _, err = run(tmp_path, "plan", "--scenario", str(bad))
    assert status == 2 and f"{bad}:" in err and "calls_per_hour" in err


def test_history_needs_tickets(tmp_path: Path) -> None:
    # an empty ticket database: nothing to learn from, said plainly
    from callrouter.tickets.store import TicketStore

    with TicketStore(f"sqlite:///{tmp_path / 'home' / 'tickets.sqlite3'}") as store:
        store.create_schema()
    status, _, err = run(tmp_path, "plan", "--history", "--day", "tuesday", "--tz", "Asia/Shanghai")
    assert status == 2 and "no tickets between" in err
    status, _, err = run(tmp_path, "plan", "--history", "--tz", "Mars/Olympus")
    assert status == 2 and "unknown time zone" in err
    status, _, err = run(tmp_path, "plan", "--history", "--day", "someday")
    assert status == 2 and "a weekday (tuesday) or a date" in err
