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

  cluster, two engines  the same cluster with ``ha_app_filter``: every node offers each
           call by StasisBroadcast to two engines (each connected to both nodes); the
           lease holder claims it. Then ``--takeovers`` rounds: ``--waiting`` callers
           held on both nodes, the leader killed with SIGKILL, seconds until the standby
           holds the lease and has adopted every caller of both nodes.

    .venv/bin/python scripts/bench_cluster_answer.py [--rate 20] [--seconds 20] [--hold 3]
        [--takeovers 3] [--waiting 10]
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import math
import statistics
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


def cluster_of(settings: Settings) -> tuple[Settings, str, dict[str, str]]:
    """The bench's cluster: its settings, the trunk's source address, the engines' env."""
    proxy = str(ipaddress.ip_address(settings.sip_bind) + 16)
    trunk = str(ipaddress.ip_address(proxy) + 4)
    cset = dataclasses.replace(settings, sip_bind=proxy, trunk_ips=(trunk,), cluster_size=2, cluster_nodes=())
    env = {"CALLROUTER_SIP_BIND": proxy, "CALLROUTER_TRUNK_IPS": trunk, "CALLROUTER_CLUSTER_SIZE": "2",
           "CALLROUTER_CLUSTER_NODES": "", "CALLROUTER_CLUSTER_ENGINE": "1"}
    return cset, trunk, env


def nodes_active(cset: Settings) -> None:
    plan = cl.plan(cset)
    deadline = time.monotonic() + 15
    while {d["state"] for d in cl.dispatcher_state(plan)} != {"active"} and time.monotonic() < deadline:
        time.sleep(0.2)


def run_cluster(settings: Settings, specs: list[CallSpec], rate: float, hold: float) -> Result:
    cset, trunk, env = cluster_of(settings)
    cl.up(cset)
    plan = cl.plan(cset)
    tmp = Path(tempfile.mkdtemp(prefix="callrouter-bench-cluster-"))
    engine = BenchEngine(cset, tmp)
    engine.env.update({"CALLROUTER_LINES": str(unrecorded_lines(settings.lines_path, tmp / "lines.toml")), **env})
    try:
        nodes_active(cset)
        deadline = time.monotonic() + 15
        engine.start()
        while engine.log().count("event=reconciled") < 2 and time.monotonic() < deadline + 15:
            time.sleep(0.2)
        n, failed, invite, greeting, cpu = measure(cset, engine, specs, rate, trunk, hold)
        left = settle([(node.settings, node.target) for node in plan.nodes])
    finally:
        engine.stop()
        cl.down(cset)
    return Result("cluster (Kamailio + 2 nodes)", n, failed, invite, greeting, cpu, left)


def run_cluster_ha(settings: Settings, specs: list[CallSpec], rate: float, hold: float, takeovers: int,
                   waiting: int, ttl_ms: int = 3000) -> tuple[Result, list[tuple[float, float, int]]]:
    """Two engines across both nodes: the post-dial delay with the broadcast, then
    ``takeovers`` rounds of kill -9 of the leader with ``waiting`` callers held."""
    import secrets
    import threading

    from bench_ha import HaEngine, kill_leader, shared_env

    cset, trunk, env = cluster_of(settings)
    app_filter = f"^crbench-cha-{secrets.token_hex(2)}-"
    cset = dataclasses.replace(cset, ha_app_filter=app_filter, ha_lease_ttl_ms=ttl_ms)
    cl.up(cset)
    plan = cl.plan(cset)
    tmp = Path(tempfile.mkdtemp(prefix="callrouter-bench-cluster-ha-"))
    prefix = f"crbench-{secrets.token_hex(4)}"
    port = 8094
    engines: list[HaEngine] = []

    def fresh(tag: str) -> HaEngine:
        nonlocal port
        port += 1
        e = HaEngine(cset, tmp / tag, f"{app_filter[1:]}{tag}", app_filter, ttl_ms, port)
        shared_env([e], prefix, tmp)
        e.env.update(env)
        engines.append(e)
        return e

    takes: list[tuple[float, float, int]] = []
    try:
        nodes_active(cset)
        leader = fresh("r0")
        leader.start()  # returns once it leads (its take-over reconcile is the first)
        standby = fresh("r1")
        standby.start_standby()
        n, failed, invite, greeting, cpu = measure(cset, leader, specs, rate, trunk, hold)
        left = settle([(node.settings, node.target) for node in plan.nodes])
        for i in range(takeovers):
            if i:
                standby = fresh(f"r{i + 1}")
                standby.start_standby()
                time.sleep(ttl_ms / 1000)
            # callers who wait for a seat that never comes; Kamailio spreads them over both nodes
            calls = [CallSpec("110", f"1396{i:02d}{k:05d}", 12.0) for k in range(waiting)]
            thread = threading.Thread(target=run_calls, args=(cset, calls), kwargs={"rate": 20, "local_ip": trunk},
                                      daemon=True)
            thread.start()
            takes.append(kill_leader(leader, standby, waiting))
            print(f"cluster take-over {i + 1}: lease {takes[-1][0]:.2f} s, callers of both nodes adopted "
                  f"{takes[-1][1]:.2f} s, {takes[-1][2]} of {waiting}", file=sys.stderr)
            thread.join(timeout=60)
            leader = standby
    finally:
        for e in engines:
            e.stop()
        cl.down(cset)
    return Result("cluster, two engines (broadcast + claim)", n, failed, invite, greeting, cpu, left), takes


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--hold", type=float, default=3.0)
    ap.add_argument("--takeovers", type=int, default=3)
    ap.add_argument("--waiting", type=int, default=10)
    args = ap.parse_args()
    if not 0 < args.rate <= 100 or not 0 < args.seconds <= 60 or not 0.5 <= args.hold <= 10 \
            or not 0 <= args.takeovers <= 10 or not 0 < args.waiting <= 100:
        raise SystemExit("--rate in (0, 100], --seconds in (0, 60], --hold in [0.5, 10], --takeovers in [0, 10], "
                         "--waiting in (0, 100]")
    settings = load_settings()
    specs = storm_specs(settings, int(args.rate * args.seconds), args.hold, seed=int(args.rate))
    rows = [run_single(settings, specs, args.rate, args.hold), run_cluster(settings, specs, args.rate, args.hold)]
    ha_row, takes = run_cluster_ha(settings, specs, args.rate, args.hold, args.takeovers, args.waiting)
    rows.append(ha_row)
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
    if takes:
        lease, adopt = [t[0] for t in takes], [t[1] for t in takes]
        out += ["", (f"Take-over across both nodes (ttl 3000 ms, {args.waiting} callers held on the two nodes, "
                     f"kill -9 of the leader), {len(takes)} rounds: kill → lease taken min {min(lease):.2f} / "
                     f"median {statistics.median(lease):.2f} / max {max(lease):.2f} s; kill → every caller adopted "
                     f"min {min(adopt):.2f} / median {statistics.median(adopt):.2f} / max {max(adopt):.2f} s; "
                     f"adopted per round {[t[2] for t in takes]}")]
    print("\n".join(out))
    return 0 if all(r.failed == 0 for r in rows) and all(t[2] == args.waiting for t in takes) else 1


if __name__ == "__main__":
    sys.exit(main())
