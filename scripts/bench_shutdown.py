"""Benchmark: SIGTERM to exit of the engine, in the states that once kept it alive.

Each try starts a real `callrouter run` engine, brings it into one state (the same states
as tests/e2e/test_shutdown.py, which asserts the 10 s bound), sends SIGTERM and times the
exit. Per state: p50 and worst, and which shutdown steps were abandoned.

    .venv/bin/python scripts/bench_shutdown.py [--tries-per-state 3] [--states idle,calls_in_progress]
        [--markdown FILE]

Uses the Asterisk of the current settings (export CALLROUTER_HOME etc. for an isolated
one); needs root (the Asterisk chroot), SIPp and PostgreSQL's server binaries.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_common import asterisk_pid, machine, pct, stamp

from callrouter.config import load_settings
from callrouter.sim.processes import end_process
from tests.e2e.conftest import EngineFactory
from tests.e2e.test_shutdown import STATES, engine_in_state

BOUND_S = 10.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tries-per-state", type=int, default=3)
    ap.add_argument("--states", default=",".join(STATES))
    ap.add_argument("--markdown", help="append the result table to this file")
    args = ap.parse_args()
    settings = load_settings()
    asterisk_pid(settings)
    states = [s for s in args.states.split(",") if s]
    unknown = set(states) - set(STATES)
    if unknown:
        raise SystemExit(f"unknown states {sorted(unknown)}: use {','.join(STATES)}")
    times: dict[str, list[float]] = {s: [] for s in states}
    killed: Counter[str] = Counter()
    abandoned: dict[str, Counter[str]] = {s: Counter() for s in states}
    exits: dict[str, Counter[str]] = {s: Counter() for s in states}
    for attempt in range(args.tries_per_state):
        for state in states:
            factory = EngineFactory(settings, Path(tempfile.mkdtemp(prefix=f"callrouter-bench-shutdown-{state}-")))
            try:
                with engine_in_state(state, factory) as engine:
                    ended = end_process(engine.proc, wait_s=30.0)
                log = engine.log()
            finally:
                for other in factory.started:
                    end_process(other.proc, wait_s=15.0)
            times[state].append(ended.seconds)
            killed[state] += ended.killed
            exits[state][str(ended.returncode)] += 1
            for step in re.findall(r"event=shutdown_step_abandoned step=(\w+)", log):
                abandoned[state][step] += 1
            if "event=shutdown_watchdog_exit" in log:
                abandoned[state]["(watchdog)"] += 1
            print(f"try {attempt + 1} {state}: {ended.seconds:.2f} s exit={ended.returncode}"
                  f"{' KILLED' if ended.killed else ''}", file=sys.stderr)
    rows = []
    for state in states:
        t = times[state]
        steps = ", ".join(f"{k} ×{v}" for k, v in sorted(abandoned[state].items())) or "none"
        rows.append(f"| {state} | {len(t)} | {pct(t, 50):.2f} | {max(t):.2f} | {killed[state]} | "
                    f"{', '.join(f'{k}×{v}' for k, v in sorted(exits[state].items()))} | {steps} |")
    everything = [x for t in times.values() for x in t]
    lines = [f"### SIGTERM to exit ({stamp()})", "", f"Machine: {machine()}", "",
             (f"{len(everything)} tries, {args.tries_per_state} per state; worst of all: {max(everything):.2f} s "
             f"(bound {BOUND_S:.0f} s); SIGKILL needed: {sum(killed.values())}."), "",
             "| state | tries | p50 s | worst s | killed | exit codes | steps abandoned (count) |",
             "|---|---:|---:|---:|---:|---|---|", *rows, ""]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with open(args.markdown, "a") as fh:
            fh.write(text + "\n")
    return 0 if max(everything) <= BOUND_S and not sum(killed.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
