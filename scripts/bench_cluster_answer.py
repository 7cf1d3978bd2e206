"""Benchmark: what a trunk caller waits for through Kamailio and an engine driving two
Asterisk nodes (issue 11), versus the single-node engine path, in one run on one machine.

  single   trunk -> Asterisk (sip_bind) -> Stasis -> the engine (one ARI connection)
  cluster  trunk -> Kamailio (sip_bind + 16, dispatcher round robin) -> node1 | node2 ->
           Stasis -> the same engine code in cluster mode (one ARI connection per node)

Measured at the caller as bench_answer.py does (probe callers, RtpProbes): INVITE -> 200 OK
and 200 OK -> the first greeting audio above silence. The single Asterisk and the cluster
share the RTP range, so they run one after the other (single first), each with its own
engine (recording off on both: the cluster engine records nobody). No seat answers: every
caller hears the greeting, then hold music, and hangs up --hold s after its 200 OK.

    .venv/bin/python scripts/bench_cluster_answer.py [--rate 20] [--seconds 20] [--hold 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import BenchEngine, CpuSampler, fmt, machine, pct, stamp, unrecorded_lines

from callrouter.config import Settings, load_settings
from callrouter.provision import asterisk as prov
from callrouter.provision import cluster as cl
from callrouter.sim.leftovers import leftover_problems, pbx_resources
from callrouter.sim.rtp import RtpProbes
from callrouter.sim.trunk import SCENARIO_PROBE, CallSpec, run_calls, storm_specs


@dataclasses.dataclass
class Result:
    path: str
    calls: int
    failed: int
    invite_ms: list[float]
    greeting_ms: list[float]
    engine_cpu_ms: float
    leftovers: str


def measure(settings: Settings, engine: BenchEngine, specs: list[CallSpec], rate: float, local_ip: str,
            hold: float) -> tuple[int, int, list[float], list[float], float]:
    probes = RtpProbes(len(specs), local_ip, first_audio_only=True)
    try:
        calls = [dataclasses.replace(s, hold_s=hold, rtp_to=(local_ip, port)) for s, port in zip(specs, probes.ports)]
        cpu = CpuSampler(engine.proc.pid)  # type: ignore[union-attr]
        report = run_calls(settings, calls, rate, local_ip=local_ip, scenario=SCENARIO_PROBE)
        time.sleep(2.0)
        eng_ms = 1000 * (cpu.cpu_s() - cpu.c0) / max(1, len(report.calls))
    finally:
        probes.stop()
    greeting = []
    for index, t200 in sorted(report.answered_at.items()):
        heard = probes.first_audio_ns[index - 1]
        greeting.append(math.inf if heard is None else heard / 1e6 - t200 * 1000)
    return len(report.calls), report.failed, report.rtt_ms, greeting, eng_ms


def settle(resources: list[tuple[Settings, object | None]]) -> str:
    deadline = time.monotonic() + 20
    while True:
        problems = [p for s, t in resources for p in leftover_problems(pbx_resources(s, target=t))]
        if not problems or time.monotonic() > deadline:
            return "; ".join(problems) or "nothing of the engine's left"
        time.sleep(1)


def run_single(settings: Settings, specs: list[CallSpec], rate: float, hold: float) -> Result:
    prov.up(settings)
    tmp = Path(tempfile.mkdtemp(prefix="callrouter-bench-single-"))
    engine = BenchEngine(settings, tmp)
    engine.env["CALLROUTER_LINES"] = str(unrecorded_lines(settings.lines_path, tmp / "lines.toml"))
    engine.start()
    try:
        n, failed, invite, greeting, cpu = measure(settings, engine, specs, rate, settings.trunk_ips[0], hold)
        left = settle([(settings, None)])
    finally:
        engine.stop()
        prov.stop(prov.select_target(settings))
    return Result("single node", n, failed, invite, greeting, cpu, left)


def run_cluster(settings: Settings, specs: list[CallSpec], rate: float, hold: float) -> Result:
    proxy = str(ipaddress.ip_address(settings.sip_bind) + 16)
    trunk = str(ipaddress.ip_address(proxy) + 4)
    cset = dataclasses.replace(settings, sip_bind=proxy, trunk_ips=(trunk,), cluster_size=2, cluster_nodes=())
    cl.up(cset)
    plan = cl.plan(cset)
    tmp = Path(tempfile.mkdtemp(prefix="callrouter-bench-cluster-"))
    engine = BenchEngine(cset, tmp)
    engine.env.update({"CALLROUTER_LINES": str(unrecorded_lines(settings.lines_path, tmp / "lines.toml")),
                       "CALLROUTER_SIP_BIND": proxy, "CALLROUTER_TRUNK_IPS": trunk, "CALLROUTER_CLUSTER_SIZE": "2",
                       "CALLROUTER_CLUSTER_NODES": "", "CALLROUTER_CLUSTER_ENGINE": "1"})
    try:
        deadline = time.monotonic() + 15
        while {d["state"] for d in cl.dispatcher_state(plan)} != {"active"} and time.monotonic() < deadline:
            time.sleep(0.2)
        engine.start()
        while engine.log().count("event=reconciled") < 2 and time.monotonic() < deadline + 15:
            time.sleep(0.2)
        n, failed, invite, greeting, cpu = measure(cset, engine, specs, rate, trunk, hold)
        left = settle([(node.settings, node.target) for node in plan.nodes])
    finally:
        engine.stop()
        cl.down(cset)
    return Result("cluster (Kamailio + 2 nodes)", n, failed, invite, greeting, cpu, left)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--hold", type=float, default=3.0)
    args = ap.parse_args()
    if not 0 < args.rate <= 100 or not 0 < args.seconds <= 60 or not 0.5 <= args.hold <= 10:
        raise SystemExit("--rate in (0, 100], --seconds in (0, 60], --hold in [0.5, 10]")
    settings = load_settings()
    specs = storm_specs(settings, int(args.rate * args.seconds), args.hold, seed=int(args.rate))
    rows = [run_single(settings, specs, args.rate, args.hold), run_cluster(settings, specs, args.rate, args.hold)]
    out = [f"Machine: {machine()}; {stamp()}", "",
           (f"{args.rate:g} calls/s for {args.seconds:g} s per path, callers hang up {args.hold:g} s after 200 OK, "
            "no seat answers (greeting, then hold); recording off on both paths."), "",
           ("| path | calls | SIP failed | INVITE→200 p50 / p99 ms | 200→greeting p50 / p99 ms | no greeting "
            "| engine CPU ms/call | Asterisk afterwards |"), "|---|---:|---:|---|---|---:|---:|---|"]
    for r in rows:
        unheard = sum(1 for v in r.greeting_ms if math.isinf(v))
        out.append(f"| {r.path} | {r.calls} | {r.failed} | {fmt(pct(r.invite_ms, 50))} / {fmt(pct(r.invite_ms, 99))} "
                   f"| {fmt(pct(r.greeting_ms, 50))} / {fmt(pct(r.greeting_ms, 99))} | {unheard} "
                   f"| {r.engine_cpu_ms:.2f} | {r.leftovers} |")
    print("\n".join(out))
    return 0 if all(r.failed == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
