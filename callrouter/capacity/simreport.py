"""``callrouter simulate SCENARIO``: run the simulator and print what it found.

The text report puts runs side by side (one column per overflow policy with
``--compare``); ``--json`` prints the same figures for machines.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from callrouter.acd.errors import ConfigFileError
from callrouter.acd.lines import POLICIES, OverflowPolicyName
from callrouter.capacity.scenario import Scenario, load_scenario
from callrouter.capacity.simulator import LineReport, SimResult, run_simulation


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _duration(seconds: float) -> str:
    m = round(seconds / 60)
    return f"{m // 60}h{m % 60:02d}m"


_ROWS: tuple[tuple[str, Any], ...] = (
    ("offered", lambda r: f"{r.offered}"),
    ("answered", lambda r: f"{r.answered} ({100 * r.answer_rate:.1f} %)"),
    ("service level", lambda r: f"{100 * r.service_level:.1f} % <= {r.target_s:g} s"),
    ("wait p50 / p90 / p99", lambda r: f"{r.wait_p50_s:.0f} / {r.wait_p90_s:.0f} / "
                                       f"{r.wait_p99_s:.0f} s"),
    ("abandoned", lambda r: f"{r.abandoned}"),
    ("transferred out", lambda r: f"{r.transferred_out}"),
    ("most waiting at once", lambda r: f"{r.peak_waiting}"),
    ("overflow seat-minutes", lambda r: f"{r.overflow_seat_minutes:.0f}"),
    ("overflow on (minutes)", lambda r: f"{r.overflow_active_minutes:.0f}"),
    ("overflow first on at", lambda r: _clock(r.overflow_first_on_s)),
    ("overflow activations", lambda r: f"{r.overflow_activations}"),
)


def format_text(scenario: Scenario, results: Sequence[SimResult], *, intervals: bool) -> str:
    first = results[0]
    out = [
        (f"scenario {first.scenario} (seed {first.seed}): {_duration(first.traffic_s)} of "
        f"traffic, {first.calls} callers, last one left at {_clock(first.simulated_s)}"),
    ]
    if scenario.description:
        out.append(f"  {scenario.description}")
    label_w = 24
    col_w = max(18, *(len(r.policy) + 2 for r in results))
    out.append("")
    out.append(" " * label_w + "".join(r.policy.rjust(col_w) for r in results))
    for line_id in first.lines:
        out.append(f"line {line_id}")
        reports: list[LineReport] = [r.lines[line_id] for r in results]
        for label, fmt in _ROWS:
            out.append(f"  {label:<{label_w - 2}}" + "".join(fmt(r).rjust(col_w) for r in reports))
        if intervals:
            out.append(f"  {'service level by quarter hour':<{label_w - 2}}")
            starts = sorted({iv.start_s for rep in reports for iv in rep.intervals})
            for start in starts:
                cells = []
                for rep in reports:
                    row = next((iv for iv in rep.intervals if iv.start_s == start), None)
                    if row is None or row.offered == 0:
                        cells.append("-".rjust(col_w))
                    else:
                        cells.append(f"{100 * row.answered_in_target / row.offered:.0f} % of "
                                     f"{row.offered}".rjust(col_w))
                out.append(f"    {_clock(start):<{label_w - 4}}" + "".join(cells))
    out.append(
        f"{'wall time':<{label_w}}" + "".join(f"{r.wall_s:.2f} s".rjust(col_w) for r in results)
    )
    out.append(
        f"{'events through the core':<{label_w}}"
        + "".join(f"{r.events}".rjust(col_w) for r in results)
    )
    return "\n".join(out) + "\n"


def format_json(results: Sequence[SimResult]) -> str:
    first = results[0]
    return json.dumps(
        {
            "scenario": first.scenario,
            "seed": first.seed,
            "runs": [r.as_dict() for r in results],
        },
        indent=2,
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="callrouter simulate",
        description="Run the ACD core on a virtual clock over a traffic scenario.",
    )
    p.add_argument("scenario", help="scenario file, e.g. queues/scenarios/storm-night.toml")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--compare",
        action="store_true",
        help="run every overflow policy on the same seeded traffic, side by side",
    )
    mode.add_argument(
        "--policy", choices=POLICIES, help="override every line's overflow policy"
    )
    p.add_argument("--seed", type=int, help="override the scenario's seed")
    p.add_argument("--lines", help="lines file instead of the one the scenario names")
    p.add_argument(
        "--duration", type=float, metavar="SECONDS", help="traffic window instead of the "
        "scenario's duration_s (callers still waiting are served to the end)"
    )
    p.add_argument(
        "--intervals", action="store_true", help="add service level per quarter hour"
    )
    return p


def simulate_main(argv: Sequence[str], stdout: TextIO | None = None,
                  stderr: TextIO | None = None) -> int:
    """Entry point of ``callrouter simulate``; returns the exit status."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    try:
        args = _parser().parse_args(list(argv))
    except SystemExit as exc:  # --help, or a usage error already printed
        return int(exc.code) if isinstance(exc.code, int) else 2
    if args.duration is not None and args.duration <= 0:
        print("callrouter simulate: --duration must be > 0", file=err)
        return 2
    try:
        scenario = load_scenario(args.scenario, lines_override=args.lines)
    except ConfigFileError as exc:
        print(str(exc), file=err)
        return 2
    policies: list[OverflowPolicyName | None]
    if args.compare:
        policies = list(POLICIES[::-1])  # predictive first
    else:
        policies = [args.policy]
    results = [
        run_simulation(scenario, policy=pol, seed=args.seed, duration_s=args.duration)
        for pol in policies
    ]
    if args.json:
        print(format_json(results), file=out)
    else:
        print(format_text(scenario, results, intervals=args.intervals), file=out, end="")
    return 0
