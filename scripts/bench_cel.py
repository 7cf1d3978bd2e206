"""Benchmark: what Asterisk's record of every call (CEL to a JSON file) costs.

1. Asterisk's CPU time for N trunk calls held by the dialplan (no engine connected),
   CEL on versus off, alternating in the same run (``module reload cel`` between), with
   INVITE->200 OK percentiles.
2. The engine's side: reading a CEL file of 20,000 calls (a trunk channel, a seat leg
   and an announcer each: 180,000 records), as the importer does every 30 s.

    .venv/bin/python scripts/bench_cel.py [--calls 400] [--rate 40] [--rounds 2]

Uses the Asterisk of the current settings (CALLROUTER_* environment); stop the engine
first, or the calls go to it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from callrouter.calls.unseen import TrunkCall, fold, parse_records
from callrouter.config import load_settings
from callrouter.provision import asterisk as prov
from callrouter.sim.trunk import CallSpec, percentile, run_calls


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def asterisk_side(calls: int, rate: float, rounds: int) -> None:
    settings = load_settings()
    target = prov.select_target(settings)
    pid = prov.pid(target)
    if pid is None:
        raise SystemExit("Asterisk is not running: callrouter asterisk up")
    conf = target.host_path(f"{target.paths.etc_dir}/cel.conf")
    original = conf.read_text()
    print(f"| CEL | Asterisk CPU for {calls} calls | per call | INVITE->200 p50 | p99 | ok |")
    print("|---|---|---|---|---|---|")
    try:
        for _ in range(rounds):
            for enabled in (True, False):
                conf.write_text(original.replace("enable = yes", f"enable = {'yes' if enabled else 'no'}"))
                prov.rx(target, "module reload cel")
                before = _cpu_s(pid)
                report = run_calls(settings, [CallSpec("119", f"139{i:08d}", 1.0) for i in range(calls)], rate=rate)
                used = _cpu_s(pid) - before
                rtt = sorted(report.rtt_ms)
                print(f"| {'on' if enabled else 'off'} | {used:.2f} s | {used / calls * 1000:.2f} ms | "
                      f"{percentile(rtt, 50)} ms | {percentile(rtt, 99)} ms | {sum(c.ok for c in report.calls)} |",
                      flush=True)
    finally:
        conf.write_text(original)
        prov.rx(target, "module reload cel")


def engine_side(n_calls: int = 20_000) -> None:
    lines = []
    t0 = 1796085206.0
    for i in range(n_calls):
        for uid, context in ((f"{t0 + i}.{i}", "from-trunk"), (f"leg-{i}", "default"), (f"ann-{i}", "default")):
            for kind in ("CHAN_START", "ANSWER", "CHAN_END"):
                lines.append(json.dumps({"eventtype": kind, "eventtime": f"{t0 + i:.6f}", "uniqueid": uid,
                                         "context": context, "exten": "119", "channame": "PJSIP/trunk-1",
                                         "appname": "", "num": "13911112222", "name": ""}, separators=(",", ":")))
    text = "\n".join(lines) + "\n"
    started = time.perf_counter()
    events, _ = parse_records(text, follow=set())
    calls: dict[str, TrunkCall] = {}
    fold(events, calls)
    took = time.perf_counter() - started
    print(f"engine: {len(lines)} records ({len(text) / 1e6:.1f} MB) of {n_calls} calls read in {took:.2f} s "
          f"({took / n_calls * 1000:.3f} ms per call)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--rate", type=float, default=40.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    engine_side()
    asterisk_side(args.calls, args.rate, args.rounds)


if __name__ == "__main__":
    main()
