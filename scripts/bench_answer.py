"""Benchmark: INVITE -> 200 OK through the engine versus a plain dialplan Answer().

Both paths run on the same Asterisk in the same run, alternating, so the machine's
load at the time affects both alike:
  engine  trunk 127.0.0.1 -> [from-trunk] -> Stasis -> the engine answers over ARI
  plain   bench trunk 127.0.0.3 -> [bench-plain] -> Answer() in dialplan
Each at 20 and 100 calls/s for 30 s (override with --rates / --seconds). Also times
`asterisk up`: warm (chroot present, Asterisk stopped), and with --cold a fresh chroot
built into a scratch directory.

    .venv/bin/python scripts/bench_answer.py [--cold] [--markdown docs/bench-answer.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import CpuSampler, asterisk_pid

from callrouter.config import load_settings
from callrouter.provision import asterisk as prov
from callrouter.sim.leftovers import leftover_problems, pbx_resources
from callrouter.sim.processes import end_process
from callrouter.sim.trunk import CallSpec, percentile, run_calls, storm_specs

BENCH_IP = "127.0.0.3"


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}: {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="20,100")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--hold", type=float, default=1.0)
    ap.add_argument("--cold", action="store_true", help="also time a cold `asterisk up` (builds a scratch chroot)")
    ap.add_argument("--markdown", help="write the result table to this file too")
    args = ap.parse_args()
    settings = dataclasses.replace(load_settings(), bench_trunk_ip=BENCH_IP)
    lines = [f"Machine: {machine()}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", ""]

    # ---- asterisk up: warm (chroot present, Asterisk stopped) and reload (running)
    target = prov.select_target(settings)
    prov.up(settings)  # make sure the chroot exists before timing the warm start
    prov.stop(target)
    warm = prov.up(settings).seconds
    reload_s = prov.up(settings).seconds
    up_rows = [("warm (chroot present, Asterisk stopped)", warm), ("already running (re-render + reload)", reload_s)]
    if args.cold:
        scratch = Path(tempfile.mkdtemp(prefix="callrouter-cold-", dir=str(settings.home)))
        cold_settings = dataclasses.replace(settings, asterisk_root=scratch / "root", sip_port=5070, http_port=8098)
        try:
            report = prov.up(cold_settings)
            up_rows.insert(0, (f"cold (debootstrap {report.built_chroot_s:.0f} s + start)", report.seconds))
        finally:
            prov.stop(prov.select_target(cold_settings))
            shutil.rmtree(scratch, ignore_errors=True)

    # ---- latency, engine vs plain dialplan
    tmp = Path(tempfile.mkdtemp(prefix="callrouter-bench-"))
    env = {**os.environ, "CALLROUTER_DB_URL": f"sqlite:///{tmp / 'tickets.sqlite3'}",
           "CALLROUTER_BENCH_TRUNK_IP": BENCH_IP, "CALLROUTER_LOG_LEVEL": "WARNING"}
    engine = subprocess.Popen([sys.executable, "-m", "callrouter.cli", "run"], env=env,
                              stdout=subprocess.DEVNULL, stderr=(tmp / "engine.log").open("wb"))
    rows = []
    try:
        time.sleep(2.0)
        for rate in [float(r) for r in args.rates.split(",")]:
            count = int(rate * args.seconds)
            specs = storm_specs(settings, count, args.hold, seed=int(rate))
            for path in ("plain", "engine"):
                local_ip = BENCH_IP if path == "plain" else "127.0.0.1"
                eng_cpu, ast_cpu = CpuSampler(engine.pid), CpuSampler(asterisk_pid(settings))
                report = run_calls(settings, [CallSpec(s.number, s.caller, s.hold_s) for s in specs], rate,
                                   local_ip=local_ip)
                time.sleep(args.hold + 2)  # the calls' ends are part of their cost
                n = max(1, len(report.calls))
                rows.append((rate, path, len(report.calls), report.failed, percentile(report.rtt_ms, 50),
                             percentile(report.rtt_ms, 99), max(report.rtt_ms) if report.rtt_ms else None,
                             1000 * (eng_cpu.cpu_s() - eng_cpu.c0) / n, 1000 * (ast_cpu.cpu_s() - ast_cpu.c0) / n))
                print(rows[-1], file=sys.stderr)
        # what Asterisk still holds once every caller is gone (the engine still running)
        deadline = time.monotonic() + 20
        while (left := leftover_problems(pbx_resources(settings))) and time.monotonic() < deadline:
            time.sleep(1)
        leftovers = pbx_resources(settings).summary()
    finally:
        if end_process(engine, wait_s=15.0).killed:
            print("the engine outlived SIGTERM by 15 s: killed", file=sys.stderr)

    lines += ["| `asterisk up` | seconds |", "|---|---:|"]
    lines += [f"| {name} | {secs:.2f} |" for name, secs in up_rows]
    lines += ["", ("| rate (calls/s) | path | calls | failed | p50 ms | p99 ms | max ms | p99 engine / plain "
              "| engine CPU ms/call | Asterisk CPU ms/call |"),
              "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    plain_p99 = {r[0]: r[5] for r in rows if r[1] == "plain"}
    for rate, path, n, failed, p50, p99, mx, eng_ms, ast_ms in rows:
        ratio = f"{p99 / plain_p99[rate]:.2f}x" if path == "engine" and p99 and plain_p99.get(rate) else ""
        lines.append(f"| {rate:.0f} | {path} | {n} | {failed} | {p50} | {p99} | {mx} | {ratio} | {eng_ms:.2f} "
                     f"| {ast_ms:.2f} |")
    lines += ["", "Asterisk afterwards: " + ", ".join(f"{k} {v}" for k, v in leftovers.items())
              + ("; problems: " + "; ".join(left) if left else "; nothing of the engine's left")]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0 if all(r[3] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
