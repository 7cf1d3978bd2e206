"""Benchmark: what Asterisk holds after callers who give up.

N callers (default 1,000) dial the lines at a steady rate and hang up after a short
random time, most of them during the greeting, some just as the greeting ends and they
join a holding bridge (the race that once leaked a bridge per caller). No seat answers.
Then, once every ticket is closed and the engine has had a few idle seconds, the script
asks ARI what remains: bridges, holding bridges, channels (Announcer/ARI_MOH ones apart).
Peak figures are sampled every second during the run.

    .venv/bin/python scripts/bench_abandon.py [--calls 1000] [--rate 20] [--markdown FILE]

Uses the Asterisk of the current settings (export CALLROUTER_HOME etc. for an isolated one).
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import NUMBERS_110, NUMBERS_96345, BenchEngine, asterisk_pid, machine, stamp

from callrouter.config import load_settings
from callrouter.sim.leftovers import PbxResources, leftover_problems, pbx_resources
from callrouter.sim.trunk import CallSpec, TrunkReport, run_calls

GREETING_S = 17.0  # greeting-110/96345.wav: callers join the holding bridge after it


def closed_tickets(db: Path) -> tuple[int, int]:
    try:
        with sqlite3.connect(db) as conn:
            total, closed = conn.execute("SELECT count(*), count(ended_at) FROM tickets").fetchone()
            return int(total), int(closed)
    except sqlite3.Error:
        return 0, 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=8)
    ap.add_argument("--markdown", help="append the result table to this file")
    args = ap.parse_args()
    settings = load_settings()
    asterisk_pid(settings)
    rng = random.Random(args.seed)
    numbers = NUMBERS_110 + NUMBERS_96345
    # most give up during the greeting; a third right around its end (joining the bridge)
    specs = [CallSpec(rng.choice(numbers), f"139{i:08d}",
                      rng.uniform(0.2, 5.0) if rng.random() < 0.66 else rng.uniform(GREETING_S - 1.0, GREETING_S + 1.5))
             for i in range(args.calls)]
    tmp = Path(tempfile.mkdtemp(prefix="callrouter-bench-abandon-"))
    engine = BenchEngine(settings, tmp)
    before = pbx_resources(settings)
    peak: dict[str, int] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(1.0):
            try:
                for key, value in pbx_resources(settings).summary().items():
                    peak[key] = max(peak.get(key, 0), value)
            except OSError:
                pass

    out: list[TrunkReport] = []
    sampler = threading.Thread(target=sample, daemon=True)
    try:
        engine.start()
        sampler.start()
        started = time.monotonic()
        out.append(run_calls(settings, specs, rate=args.rate))
        deadline = time.monotonic() + 120
        # every ticket closed: ours, and any the engine imports from Asterisk's record of
        # calls no engine saw (earlier runs' callers held by the dialplan)
        while time.monotonic() < deadline:
            total, closed = closed_tickets(tmp / "tickets.sqlite3")
            if total >= args.calls and closed == total:
                break
            time.sleep(0.5)
        time.sleep(4.0)  # surplus holding bridges go after 2 s empty
        elapsed = time.monotonic() - started
        after = pbx_resources(settings)
        set_aside = engine.log().count("event=hold_bridge_set_aside")
        gone = engine.log().count("event=hold_join_caller_gone")
    finally:
        done.set()
        engine.stop()
    total, closed = closed_tickets(tmp / "tickets.sqlite3")
    report = out[0]
    problems = leftover_problems(after)

    def row(name: str, res: PbxResources | dict[str, int]) -> str:
        s = res.summary() if isinstance(res, PbxResources) else res
        return (f"| {name} | {s.get('callrouter_bridges', 0)} | {s.get('holding_bridges', 0)} | "
                f"{s.get('announcer_channels', 0)} | {s.get('other_channels', 0)} |")

    lines = [f"### Callers who give up: what Asterisk holds ({stamp()})", "",
             f"Machine: {machine()}", "",
             (f"{args.calls} callers at {args.rate:.0f}/s, no seat answering; two thirds hang up 0.2-5 s after "
             f"answer (during the greeting), a third {GREETING_S - 1:.0f}-{GREETING_S + 1.5:.1f} s (as they join "
             f"a holding bridge). SIPp: {report.answered} answered, {report.failed} not completed; "
             f"tickets {closed}/{total} closed; run {elapsed:.0f} s; bridges set aside: {set_aside}; joins that found the caller gone: {gone}."), "",
             "| when | callrouter bridges | holding bridges | Announcer/ARI_MOH channels | other channels |",
             "|---|---|---|---|---|", row("before", before), row("peak (1 s samples)", peak), row("after", after), "",
             "Leftovers beyond the rule (one empty spare holding bridge per line at rest): "
             + ("none" if not problems else "; ".join(problems)), ""]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with open(args.markdown, "a") as fh:
            fh.write(text + "\n")
    return 0 if not problems and total >= args.calls and closed == total else 1


if __name__ == "__main__":
    raise SystemExit(main())
