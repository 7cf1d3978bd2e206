#!/usr/bin/env python3
"""Benchmark: the staffing planner. How long it takes, and its forecast against reality.

1. Run time: ``plan_staffing`` for queues/scenarios/normal-tuesday.toml (a day, both
   lines, hourly seats and the overflow pool for +20 %), and for that day repeated over a
   week (168 hourly periods), with the default seeds (2 simulated days per candidate, one
   worker process per core) and with one; best and median of --repeat runs, simulated
   days and events through the ACD core.
2. Forecast against reality: a compressed day on the real Asterisk
   (callrouter/sim/staffing_check.py): --periods "hours" of --period s on 96345, seats
   planned for 80 % answered within 4 s, SIPp callers as a Poisson stream, SIPp seats
   logged in and out at every boundary as planned. Per period and for the day: measured
   (tickets), the simulator on the run's own callers (replay), the plan's forecast (mean
   and standard deviation over 40 simulated days the search never saw).

    .venv/bin/python scripts/bench_staffing.py [--repeat 3] [--skip-real] [--period 120] [--json FILE]

Part 2 uses the Asterisk of the current settings (export CALLROUTER_HOME etc. for an
isolated one; `callrouter asterisk up` first) and an engine of its own (own ticket file,
state, Redis prefix, API port), ended with SIGTERM (then SIGKILL) whatever happens.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import BenchEngine, machine, stamp

from callrouter.acd.lines import load_lines
from callrouter.capacity.scenario import Scenario, load_scenario
from callrouter.capacity.staffing import Figures, plan_staffing
from callrouter.config import load_settings
from callrouter.sim.staffing_check import Profile, draw_arrivals, replay, run_real, seed_spread

ROOT = Path(__file__).resolve().parents[1]
SEATS = tuple(f"s96345-{i:02d}" for i in range(1, 11))


def week(day: Scenario) -> Scenario:
    """The day's traffic seven times over (streams renamed per day: draws of their own)."""
    streams = tuple(dataclasses.replace(s, name=f"{s.name} d{d + 1}",
                                        rate_per_min=tuple((t + d * 86400.0, r) for t, r in s.rate_per_min))
                    for d in range(7) for s in day.streams)
    return dataclasses.replace(day, name=f"{day.name} x7", duration_s=7 * 86400.0, streams=streams, shifts={})


def timing(scenario: Scenario, seeds: tuple[int, ...], repeat: int) -> dict[str, Any]:
    walls, plan = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        plan = plan_staffing(scenario, seeds=seeds)
        walls.append(time.perf_counter() - started)
    assert plan is not None
    return {"periods": plan.periods, "seeds": len(seeds), "wall_best_s": round(min(walls), 2),
            "wall_median_s": round(statistics.median(walls), 2), "simulated_runs": plan.simulations,
            "events": plan.events, "seat_hours": {lid: sum(r.seats for r in rows) for lid, rows in plan.rows.items()},
            "pool_seat_hours": sum(plan.pool), "notes": list(plan.notes)}


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def real(args: argparse.Namespace) -> dict[str, Any]:
    settings = load_settings()
    per_minute = (14.0, 24.0, 28.0, 20.0, 12.0, 8.0)[: args.periods]
    profile = Profile(line="96345", number="96345", priority=5, period_s=args.period,
                      calls=tuple(r * args.period / 60 for r in per_minute), talk_s=8.0, answer_s=1.0)
    with tempfile.TemporaryDirectory(prefix="bench-staffing-") as tmpdir:
        tmp = Path(tmpdir)
        text = settings.lines_path.read_text()
        for key, value in (("wrap_up_s", 2), ("target_s", 4)):
            text = re.sub(rf"(?m)^({key}\s*=\s*)[0-9.]+", rf"\g<1>{value}", text)
        text = text.replace('staffing_measure = "connected"', 'staffing_measure = "within_target"')
        text = text.replace("staffing_level = 0.95", "staffing_level = 0.80")
        lines_path = tmp / "lines.toml"
        lines_path.write_text(text)
        lines = load_lines(lines_path)
        plan = plan_staffing(profile.scenario(lines), period_s=profile.period_s, seeds=(1, 2, 3, 4), surge=0.0,
                             max_seats=len(SEATS))
        counts = plan.staffing().seats["96345"]
        spread = seed_spread(profile, lines, plan.staffing(), range(100, 140))
        engine = BenchEngine(settings, tmp, api_port=args.api_port)
        engine.env["CALLROUTER_LINES"] = str(lines_path)
        engine.start()
        try:
            arrivals = draw_arrivals(profile, args.seed)
            run = run_real(engine.settings, lambda m, p, b: engine.api(m, p), engine.db_url, profile, counts,
                           arrivals, SEATS, seed=args.seed)
        finally:
            engine.stop()
        measured = run.figures(4, profile.period_s, len(counts))
        replayed = replay(profile, lines, run)

    def share(f: Figures) -> float | None:
        return None if not f.offered else round(f.in_target / f.offered, 4)
    rows = [{"period": p, "seats": counts[p], "callers": m.offered, "measured": share(m), "replayed": share(r),
             "search": share(x.predicted), "forecast": share(x.check) if x.check is not None else None}
            for p, (m, r, x) in enumerate(zip(measured, replayed, plan.rows["96345"], strict=True))]
    waits = [c.wait_s for c in run.calls if c.wait_s is not None]
    return {"profile": dataclasses.asdict(profile), "seats": list(counts), "rows": rows,
            "day": {"callers": sum(m.offered for m in measured), "measured": share(sum(measured, Figures())),
                    "replayed": share(sum(replayed, Figures())),
                    "forecast_mean": round(statistics.fmean(spread), 4), "forecast_sd": round(statistics.stdev(spread), 4),
                    "forecast_days": len(spread)},
            "wait_p50_s": round(statistics.median(waits), 2) if waits else None,
            "trunk_failed": run.trunk.failed if run.trunk else None,
            "shift_lateness_max_s": round(max(run.late_shifts_s, default=0.0), 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-real", action="store_true", help="only the planner's run time (no Asterisk)")
    ap.add_argument("--skip-week", action="store_true")
    ap.add_argument("--period", type=float, default=120.0, help="seconds per compressed hour (part 2)")
    ap.add_argument("--periods", type=int, default=6, choices=range(1, 7), metavar="1-6")
    ap.add_argument("--seed", type=int, default=11, help="the real run's callers")
    ap.add_argument("--api-port", type=int, default=8097)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    out: dict[str, Any] = {"machine": machine(), "when": stamp(), "commit": commit()}
    day = load_scenario(ROOT / "queues" / "scenarios" / "normal-tuesday.toml")
    out["day"] = {"default": timing(day, (1, 2), args.repeat), "one_seed": timing(day, (1,), args.repeat)}
    print(f"planner, a day ({day.name}): {json.dumps(out['day'], indent=1)}", flush=True)
    if not args.skip_week:
        out["week"] = {"default": timing(week(day), (1, 2), 1)}
        print(f"planner, a week: {json.dumps(out['week'], indent=1)}", flush=True)
    if not args.skip_real:
        out["real"] = real(args)
        print(f"forecast against reality: {json.dumps(out['real'], indent=1)}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
