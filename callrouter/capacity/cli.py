"""``callrouter staffing plan|what-if``: the staffing planner on the command line.

Traffic from a scenario file (``--scenario``) or learned from the ticket history
(``--history``); a table on stdout (``--format text|csv|json``), the chart with
``--svg FILE``, and ``--publish`` writes both where the engine serves them to the
wallboard (``<home>/staffing/``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from datetime import date, datetime, timedelta, tzinfo
from pathlib import Path
from typing import TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from callrouter.acd.errors import ConfigFileError
from callrouter.acd.lines import load_lines
from callrouter.capacity.report import format_csv, format_json, format_text, render_svg
from callrouter.capacity.scenario import Scenario, load_scenario
from callrouter.capacity.staffing import (
    DEFAULT_SEEDS,
    DEFAULT_SURGE,
    MAX_SEATS,
    PERIOD_S,
    Staffing,
    StaffingReport,
    drop_streams,
    overlay,
    plan_staffing,
    scenario_staffing,
    what_if,
)
from callrouter.config import Settings

PUBLISHED_JSON = "plan.json"
PUBLISHED_SVG = "plan.svg"
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_SEATS = re.compile(r"([0-9]{2,15}|overflow)=([0-9]{1,3})")
_AT = re.compile(r"(?:(\d+)d)?([01]?\d|2[0-3]):([0-5]\d)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``callrouter staffing``."""
    sub = p.add_subparsers(dest="action", required=True)
    plan = sub.add_parser("plan", help="the fewest seats per hour per line and the overflow pool that meet "
                                       "each line's target (simulated on the real ACD core)")
    whatif = sub.add_parser("what-if", help="predicted service level, abandons and longest wait per hour for "
                                            "this traffic with these seats")
    for q in (plan, whatif):
        src = q.add_mutually_exclusive_group(required=True)
        src.add_argument("--scenario", metavar="FILE", help="traffic from a scenario file, e.g. "
                         "queues/scenarios/normal-tuesday.toml")
        src.add_argument("--history", action="store_true", help="traffic learned from the ticket database")
        q.add_argument("--weeks", type=int, default=4, help="--history: weeks of tickets to learn from (default 4)")
        q.add_argument("--day", default=None, help="--history: the day to plan, a weekday (tuesday) or a date "
                       "(2026-12-08); default tomorrow")
        q.add_argument("--days", type=int, default=1, help="--history: plan this many days from --day (7: a week)")
        q.add_argument("--until", default=None, help="--history: learn from the weeks before this date (default "
                       "today)")
        q.add_argument("--tz", default=None, help="--history: the county's time zone for hours of the day, e.g. "
                       "Asia/Shanghai (default: this machine's)")
        q.add_argument("--lines", metavar="FILE", help="lines file instead of the scenario's or the engine's")
        q.add_argument("--seeds", type=int, default=len(DEFAULT_SEEDS), help="simulated days per candidate, "
                       f"summed before judging (default {len(DEFAULT_SEEDS)})")
        q.add_argument("--jobs", type=int, default=None, help="worker processes simulating the seeds side by side "
                       "(default: one per core)")
        q.add_argument("--period", type=float, default=PERIOD_S, metavar="SECONDS",
                       help="length of a staffing period (default 3600: hourly seats)")
        q.add_argument("--format", choices=("text", "csv", "json"), default="text")
        q.add_argument("--svg", metavar="FILE", help="write the chart there")
        q.add_argument("--publish", action="store_true", help="write plan.json and plan.svg where the engine "
                       "serves them to the wallboard (<home>/staffing/)")
    plan.add_argument("--surge", type=float, default=DEFAULT_SURGE, help="size the overflow pool for this much "
                      f"more traffic than forecast (default {DEFAULT_SURGE}: +20 %%; 0: no pool)")
    plan.add_argument("--min-seats", type=int, default=1, help="never fewer own seats in a period (default 1)")
    plan.add_argument("--max-seats", type=int, default=MAX_SEATS, help=f"per line (default {MAX_SEATS})")
    whatif.add_argument("--add", action="append", default=[], metavar="FILE[@[Nd]HH:MM]",
                        help="more callers on top: a scenario starting at that time of the day (default 00:00), "
                        "e.g. queues/scenarios/storm-night.toml@21:00; repeatable")
    whatif.add_argument("--drop-stream", action="append", default=[], metavar="NAME",
                        help="leave out a traffic stream, e.g. the storm's own ordinary evening: \"storm-night: 110 evening\"; "
                        "repeatable")
    whatif.add_argument("--seats", default=None, help="the schedule: a plan's JSON file (--format json), or "
                        "constant counts like 110=4,96345=3,overflow=1; default: the scenario's [staffing]")


def _tz(name: str | None) -> tzinfo:
    if name is None:
        local = datetime.now().astimezone().tzinfo
        if local is None:
            raise ValueError("this machine has no local time zone: give --tz")
        return local
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"--tz {name!r}: unknown time zone") from exc


def _day(text: str | None, today: date) -> date:
    if text is None:
        return today + timedelta(days=1)
    if text.lower() in WEEKDAYS:
        ahead = (WEEKDAYS.index(text.lower()) - today.weekday()) % 7 or 7
        return today + timedelta(days=ahead)
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"--day {text!r}: a weekday (tuesday) or a date (2026-12-08)") from exc


def _traffic(args: argparse.Namespace, settings: Settings, err: TextIO) -> Scenario:
    if args.scenario:
        return load_scenario(args.scenario, lines_override=args.lines)
    tz = _tz(args.tz)
    today = datetime.now(tz).date()
    until = date.fromisoformat(args.until) if args.until else today
    day = _day(args.day, until)
    lines = load_lines(args.lines or settings.lines_path)
    # the database parts only when learning from it
    from callrouter.capacity.history import learn_scenario, read_rows
    from callrouter.tickets.store import TicketStore

    with TicketStore(settings.database_url) as store:
        start = datetime(until.year, until.month, until.day, tzinfo=tz) - timedelta(weeks=args.weeks)
        end = datetime(until.year, until.month, until.day, tzinfo=tz)
        learned = learn_scenario(read_rows(store, start, end), lines, day=day, until=until, tz=tz, weeks=args.weeks,
                                 days=args.days)
    print(f"learned from {learned.tickets} tickets, {learned.window[0].isoformat()} to {learned.window[1].isoformat()}",
          file=err)
    for note in learned.notes:
        print(f"note: {note}", file=err)
    return learned.scenario


def _seats(text: str | None, scenario: Scenario, period_s: float) -> Staffing:
    if text is None:
        return scenario_staffing(scenario, period_s)
    path = Path(text)
    if path.suffix == ".json" or path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"--seats {text}: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"--seats {text}: not a plan (a JSON object with 'staffing')")
        return Staffing.from_dict(data)
    counts: dict[str, int] = {}
    for part in text.split(","):
        m = _SEATS.fullmatch(part.strip())
        if m is None:
            raise ValueError(f"--seats {text!r}: use LINE=SEATS pairs, e.g. 110=4,96345=3,overflow=1")
        counts[m.group(1)] = int(m.group(2))
    periods = max(1, round(scenario.duration_s / period_s + 0.4999))
    pool = counts.pop("overflow", 0)
    unknown = set(counts) - set(scenario.lines.line_ids)
    if unknown:
        raise ValueError(f"--seats: no line {', '.join(sorted(unknown))} in {scenario.lines.source}")
    return Staffing.constant(periods, {ln: counts.get(ln, 0) for ln in scenario.lines.line_ids}, pool, period_s)


def _at(text: str) -> float:
    m = _AT.fullmatch(text)
    if m is None:
        raise ValueError(f"{text!r}: a time of day HH:MM, or 2d21:00 for the second day")
    return (int(m.group(1) or 1) - 1) * 86400 + int(m.group(2)) * 3600 + int(m.group(3)) * 60


def _publish(report: StaffingReport, svg: str, directory: Path) -> None:
    """Write plan.json and plan.svg, each replaced in one rename (the engine may be reading)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in ((PUBLISHED_JSON, format_json(report)), (PUBLISHED_SVG, svg)):
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, directory / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def staffing_main(args: argparse.Namespace, settings: Settings, out: TextIO | None = None,
                  err: TextIO | None = None) -> int:
    """``callrouter staffing ...``; the exit status."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    if not 1 <= args.seeds <= 50:
        print("callrouter staffing: --seeds must be 1 to 50", file=err)
        return 2
    if args.jobs is not None and not 1 <= args.jobs <= 64:
        print("callrouter staffing: --jobs must be 1 to 64", file=err)
        return 2
    seeds = tuple(range(1, args.seeds + 1))
    try:
        scenario = _traffic(args, settings, err)
        if args.action == "plan":
            report = plan_staffing(scenario, period_s=args.period, seeds=seeds, surge=args.surge,
                                   min_seats=args.min_seats, max_seats=args.max_seats, jobs=args.jobs)
        else:
            for spec in args.add:
                path, _, when = spec.partition("@")
                scenario = overlay(scenario, load_scenario(path, lines_override=args.lines),
                                   _at(when) if when else 0.0)
            scenario = drop_streams(scenario, args.drop_stream)
            report = what_if(scenario, _seats(args.seats, scenario, args.period), seeds=seeds, jobs=args.jobs)
    except ConfigFileError as exc:
        print(str(exc), file=err)
        return 2
    except (ValueError, OSError) as exc:
        print(f"callrouter staffing: {exc}", file=err)
        return 2
    svg = render_svg(report)
    text = {"text": format_text, "csv": format_csv, "json": format_json}[args.format](report)
    out.write(text if text.endswith("\n") else text + "\n")
    if args.svg:
        Path(args.svg).write_text(svg, encoding="utf-8")
    if args.publish:
        _publish(report, svg, settings.staffing_path)
        print(f"published to {settings.staffing_path} (the wallboard's chart)", file=err)
    return 0

