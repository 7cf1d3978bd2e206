"""Benchmark: dispatch latency (seat becomes ready -> originate sent) with ~300 callers waiting.

An engine subprocess (own DB, state, Redis prefix, API port; log level DEBUG for the
`event=originate_sent` point in callrouter/calls/service.py) and N+300 SIPp callers on
line 96345 who wait (hold --hold s, or until the engine ends their call). Once all of
them wait, a few simulated seats are logged in; each answers after 0.2 s, talks 1 s
(fixed) and hangs up, so it becomes ready again again and again while ~300 wait. After
--seconds the seats are logged out and everything ends.

Measured three ways, per dispatch:
  engine   offered_at -> at of `event=originate_sent`: from the ACD step that made the
           seat ready (the seat's call ended; wrap-up 0) to the originate request handed
           to the ARI client (microseconds, wall clock, same process)
  log      `event=seat_state state=ready` log line (ms resolution) -> originate_sent
  e2e      SIPp seat: the seat's BYE answered (200 OK) -> next INVITE arrives at that seat
           (includes Asterisk's hangup, the ARI event, the engine, the originate and the
           PJSIP INVITE); with wrap-up > 0, wrap-up is subtracted
With --wrap-up 0,2 the wrap-up 2 s run also shows the Tick (0.5 s) granularity of
wrap-up expiry.

    .venv/bin/python scripts/bench_dispatch.py [--waiting 300] [--seats 3] [--seconds 45]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import re
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from bench_common import NUMBERS_96345, SEATS_96345, BenchEngine, CpuSampler, asterisk_pid, fmt, machine, pct, stamp

from callrouter.config import load_settings
from callrouter.provision import asterisk as prov
from callrouter.sim.seats import SeatSpec, start_seats
from callrouter.sim.trunk import CallSpec, TrunkReport, run_calls

LINE_RE = re.compile(r"^ts=(\S+) .*?event=(\w+) (.*)$")


def ts_of(value: str) -> float:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def kv(rest: str) -> dict[str, str]:
    return dict(p.split("=", 1) for p in rest.split() if "=" in p)


def run_once(settings, wrap_up: float, args: argparse.Namespace) -> dict:  # type: ignore[no-untyped-def]
    tmp = Path(tempfile.mkdtemp(prefix="callrouter-bench-dispatch-"))
    # long calm and a high threshold: keep overflow and ageing out of the way; the pool
    # is never registered anyway, so it is never offered
    engine = BenchEngine(settings, tmp, log_level="DEBUG", wrap_up_s=wrap_up)
    engine.start()
    seats_names = SEATS_96345[: args.seats]
    n = args.waiting + int(args.seats * args.seconds / 1.4 / 2)  # about args.waiting on average
    specs = [CallSpec(NUMBERS_96345[i % len(NUMBERS_96345)], f"1390{i:07d}", args.hold) for i in range(n)]
    out: list[TrunkReport] = []
    trunk = threading.Thread(target=lambda: out.append(run_calls(engine.settings, specs, rate=args.rate)))
    seats = None
    try:
        trunk.start()
        deadline = time.monotonic() + n / args.rate + 30
        waiting = 0
        while time.monotonic() < deadline:
            waiting = engine.status()["lines"]["96345"]["waiting"]
            if waiting >= n:
                break
            time.sleep(0.5)
        print(f"wrap-up {wrap_up}: {waiting} waiting, logging in {len(seats_names)} seats", file=sys.stderr)
        seats = start_seats(engine.settings, [SeatSpec(s, answer_delay_s=0.2, talk_s=1.0, talk_dist="fixed")
                                              for s in seats_names], seed=7)
        eng_cpu, ast_cpu = CpuSampler(engine.proc.pid), CpuSampler(asterisk_pid(settings))  # type: ignore[union-attr]
        t0 = time.time()
        engine.login(*seats_names)
        time.sleep(args.seconds)
        t1 = time.time()
        engine_cpu, asterisk_cpu, rss = eng_cpu.percent(), ast_cpu.percent(), eng_cpu.rss_mb()
        waiting_end = engine.status()["lines"]["96345"]["waiting"]
        engine.login(*seats_names, action="logout")
        time.sleep(3)  # the last calls end
        seat_results = seats.stop()
        seats = None
    finally:
        if seats is not None:
            seats.stop()
        trunk.join(timeout=args.hold + n / args.rate + 120)
        engine.stop()
    log = engine.log()

    ready: dict[str, list[float]] = {}
    ended: dict[str, list[float]] = {}
    engine_ms, log_ms, expiry_ms = [], [], []
    for line in log.splitlines():
        m = LINE_RE.match(line)
        if not m:
            continue
        at, event, rest = ts_of(m.group(1)), m.group(2), kv(m.group(3))
        if event == "seat_state" and rest.get("state") == "ready":
            ready.setdefault(rest["seat"], []).append(at)
        elif event == "call_ended" and rest.get("seat", "-") != "-":
            ended.setdefault(rest["seat"], []).append(at)
        elif event == "originate_sent":
            sent, offered, seat = float(rest["at"]), float(rest["offered_at"]), rest["seat"]
            if not t0 + 1 <= offered <= t1:  # the first offers after login are not "becomes ready"
                continue
            engine_ms.append(1000 * (sent - offered))
            before = [r for r in ready.get(seat, []) if r <= sent + 0.001]
            if before:
                log_ms.append(1000 * (sent - before[-1]))
            ends = [e for e in ended.get(seat, []) if e <= sent]
            if wrap_up > 0 and ends:
                expiry_ms.append(1000 * (sent - (ends[-1] + wrap_up)))
    e2e_ms = []
    for res in seat_results:
        calls = [c for c in res.calls if c.offered_at]
        for prev, nxt in itertools.pairwise(calls):
            if prev.outcome == "completed" and prev.ended_at and t0 + 1 <= nxt.offered_at <= t1:
                e2e_ms.append(1000 * (nxt.offered_at - prev.ended_at - wrap_up))
    report = out[0] if out else None
    return {
        "wrap_up": wrap_up, "callers": n, "waiting_start": waiting, "waiting_end": waiting_end,
        "dispatches": len(engine_ms), "engine": engine_ms, "log": log_ms, "expiry": expiry_ms, "e2e": e2e_ms,
        "engine_cpu": engine_cpu, "asterisk_cpu": asterisk_cpu, "rss": rss,
        "sip_failed": report.failed if report else None, "answered_by_seats": sum(r.completed for r in seat_results),
        "log_dir": str(tmp),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--waiting", type=int, default=300)
    ap.add_argument("--seats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=45.0)
    ap.add_argument("--rate", type=float, default=40.0, help="caller arrival rate while filling the queue")
    ap.add_argument("--hold", type=float, default=90.0, help="callers hang up after this if no seat took them")
    ap.add_argument("--wrap-up", default="0", help="comma list of wrap_up_s values, one run each")
    ap.add_argument("--markdown", help="write the table to this file too")
    args = ap.parse_args()
    settings = dataclasses.replace(load_settings(), bench_trunk_ip="127.0.0.3")
    # a fresh Asterisk with callrouter's own configuration (tests may have re-rendered it)
    prov.stop(prov.select_target(settings))
    prov.up(settings)
    head = f"Machine: {machine()}; {stamp()}"
    runs = []
    for w in args.wrap_up.split(","):
        r = run_once(settings, float(w), args)
        runs.append(r)
        print({k: (v if not isinstance(v, list) else (len(v), pct(v, 50), pct(v, 99))) for k, v in r.items()},
              file=sys.stderr)

    lines = [head, "", (f"{args.seats} sim seats on line 96345 (answer 0.2 s, talk 1 s), callers held "
             f"{args.waiting}+ (see waiting), {args.seconds:.0f} s per run; times in ms"), "",
             "| wrap-up s | waiting start/end | dispatches | measured | p50 | p90 | p99 | max |",
             "|---:|---|---:|---|---:|---:|---:|---:|"]
    names = {"engine": "engine: ready (ACD step) -> originate sent",
             "log": "engine log: `seat_state ready` line (ms) -> originate sent",
             "expiry": "wrap-up expiry (call end + wrap-up) -> originate sent",
             "e2e": "SIPp seat: its BYE answered -> next INVITE (minus wrap-up)"}
    for r in runs:
        for key, label in names.items():
            vals = r[key]
            if not vals:
                continue
            lines.append(f"| {r['wrap_up']:.0f} | {r['waiting_start']}/{r['waiting_end']} | {len(vals)} | {label} | "
                         f"{fmt(pct(vals, 50), 2)} | {fmt(pct(vals, 90), 2)} | {fmt(pct(vals, 99), 2)} | "
                         f"{fmt(max(vals), 2)} |")
    lines += ["", "| wrap-up s | engine CPU % | engine RSS MB | Asterisk CPU % | SIP failures | calls answered by seats |",
              "|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        lines.append(f"| {r['wrap_up']:.0f} | {r['engine_cpu']:.1f} | {r['rss']:.0f} | {r['asterisk_cpu']:.1f} | "
                     f"{r['sip_failed']} | {r['answered_by_seats']} |")
    text = "\n".join(lines)
    print(text)
    for r in runs:
        print(f"logs: {r['log_dir']}", file=sys.stderr)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
