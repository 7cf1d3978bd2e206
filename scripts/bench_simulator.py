#!/usr/bin/env python3
"""How fast the capacity simulator runs, and what it says about the storm.

Times one hour of simulated traffic from the storm-night scenario (20 quiet minutes,
then the flash-flood surge) under each overflow policy, a few times over, and prints
the figures for docs/BENCHMARKS.md: wall time per simulated hour, events through the
ACD core per second, and the service level of both policies on the whole storm.

    .venv/bin/python scripts/bench_simulator.py [--repeat 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

from callrouter.acd.lines import POLICIES
from callrouter.capacity.scenario import load_scenario
from callrouter.capacity.simulator import run_simulation

ROOT = Path(__file__).resolve().parents[1]

HOUR = 3600.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default=str(ROOT / "queues/scenarios/storm-night.toml"))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    scenario = load_scenario(args.scenario)

    timing: dict[str, dict[str, float]] = {}
    for policy in POLICIES[::-1]:
        walls, events, calls, simulated = [], 0, 0, 0.0
        for _ in range(args.repeat):
            r = run_simulation(scenario, policy=policy, duration_s=HOUR)
            walls.append(r.wall_s)
            events, calls, simulated = r.events, r.calls, r.simulated_s
        best, median = min(walls), statistics.median(walls)
        timing[policy] = {
            "simulated_s": simulated,
            "calls": calls,
            "events": events,
            "wall_best_s": round(best, 3),
            "wall_median_s": round(median, 3),
            "events_per_s": round(events / median),
            "speedup": round(simulated / median),
        }

    storm = {p: run_simulation(scenario, policy=p) for p in POLICIES[::-1]}
    figures = {
        "machine": f"{platform.python_implementation()} {platform.python_version()} "
        f"on {platform.machine()}",
        "one_hour": timing,
        "storm": {p: r.as_dict() for p, r in storm.items()},
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0

    print(f"simulator benchmark ({figures['machine']}), scenario {scenario.name}")
    print(f"\n1 hour of traffic (20 min quiet + 40 min storm), {args.repeat} runs each:")
    print(f"  {'policy':<16}{'calls':>7}{'events':>9}{'wall best':>11}{'median':>9}"
          f"{'events/s':>10}{'x real time':>13}")
    for name, t in timing.items():
        print(f"  {name:<16}{t['calls']:>7.0f}{t['events']:>9.0f}{t['wall_best_s']:>10.3f}s"
              f"{t['wall_median_s']:>8.3f}s{t['events_per_s']:>10.0f}{t['speedup']:>13.0f}")
    print(f"\nwhole storm ({scenario.duration_s / 60:.0f} min of traffic, seed {scenario.seed}):")
    print(f"  {'line':<7}{'policy':<16}{'offered':>8}{'SL<=15s':>9}{'answered':>10}"
          f"{'p90 wait':>10}{'abandoned':>11}{'ovf seat-min':>14}{'ovf first on':>14}")
    for line_id in storm["predictive"].lines:
        for name, r in storm.items():
            ln = r.lines[line_id]
            first = "-" if ln.overflow_first_on_s is None else f"{ln.overflow_first_on_s:.0f} s"
            print(f"  {line_id:<7}{name:<16}{ln.offered:>8}{100 * ln.service_level:>8.1f}%"
                  f"{100 * ln.answer_rate:>9.1f}%{ln.wait_p90_s:>9.0f}s{ln.abandoned:>11}"
                  f"{ln.overflow_seat_minutes:>14.0f}{first:>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
