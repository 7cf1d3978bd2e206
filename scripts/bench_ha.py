"""Benchmark: several engines on one Asterisk (callrouter.ha).

1. Post-dial delay of the broadcast: 200 OK -> first greeting audio at the caller, one
   engine behind plain ``Stasis()`` versus two engines behind ``StasisBroadcast`` (the
   lease holder claims, a standby gets every CallBroadcast too), same Asterisk, same
   run, alternating rounds (scripts/bench_answer.py's probe callers and measure).
2. Take-over: N callers waiting in the leader's holding bridges, the leader killed with
   SIGKILL; seconds from the kill to the standby holding the lease (leader change) and to
   its reconcile having adopted every caller (``event=leading ... calls=N``). Repeated,
   the roles swapping (a fresh standby started each round).

    .venv/bin/python scripts/bench_ha.py [--rate 20] [--seconds 20] [--rounds 2]
        [--takeovers 5] [--waiting 10] [--ttl-ms 3000] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import secrets
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_answer import PathResult, run_path
from bench_common import BenchEngine, fmt, machine, pct, stamp, unrecorded_lines

from callrouter.config import Settings, load_settings
from callrouter.provision import asterisk as prov
from callrouter.sim.trunk import CallSpec, storm_specs


class HaEngine(BenchEngine):
    """A BenchEngine with its own application name; a standby is up once connected."""

    def __init__(self, settings: Settings, tmp: Path, app: str, app_filter: str, ttl_ms: int, api_port: int) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        super().__init__(settings, tmp, api_port=api_port)
        self.env.update({"CALLROUTER_ARI_APP": app, "CALLROUTER_HA_APP_FILTER": app_filter,
                         "CALLROUTER_HA_LEASE_TTL_MS": str(ttl_ms)})

    def start_standby(self) -> None:
        # BenchEngine.start waits for a reconcile, which only a leader does
        import subprocess

        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "callrouter.cli", "run"], stdout=log,
                                         stderr=subprocess.STDOUT, env=self.env, cwd=self.tmp)
        deadline = time.monotonic() + 30
        while "event=ari_connected" not in self.log():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"standby did not connect:\n{self.log()[-2000:]}")
            time.sleep(0.1)


def log_time(text: str, mark: str) -> float | None:
    for line in text.splitlines():
        if mark in line:
            m = re.search(r"ts=(\S+)Z", line)
            if m:
                return datetime.fromisoformat(m.group(1) + "+00:00").timestamp()
    return None


def shared_env(engines: list[BenchEngine], prefix: str, tmp: Path) -> None:
    for e in engines:
        e.env.update({"CALLROUTER_REDIS_PREFIX": prefix, "CALLROUTER_DB_URL": f"sqlite:///{tmp / 'tickets.sqlite3'}",
                      "CALLROUTER_LINES": str(unrecorded_lines(e.settings.lines_path, tmp / "lines.toml"))})


def post_dial(settings: Settings, ha_settings: Settings, tmp: Path, rate: float, seconds: float, hold: float,
              rounds: int, ttl_ms: int) -> list[PathResult]:
    rows: list[PathResult] = []
    for r in range(rounds):
        specs = storm_specs(settings, int(rate * seconds), hold, seed=r + 1)
        specs = [CallSpec(s.number, s.caller, hold) for s in specs]
        # one engine, plain Stasis
        prov.up(settings)
        single = BenchEngine(settings, tmp / f"single-{r}")
        (tmp / f"single-{r}").mkdir(exist_ok=True)
        single.env["CALLROUTER_LINES"] = str(unrecorded_lines(settings.lines_path, tmp / f"single-{r}" / "l.toml"))
        single.start()
        try:
            rows.append(dataclasses.replace(run_path(settings, single, specs, rate, "engine", hold), path="stasis"))
        finally:
            single.stop()
        # two engines, StasisBroadcast + claim
        prov.up(ha_settings)
        prefix = f"crbench-{secrets.token_hex(4)}"
        app = ha_settings.ha_app_filter[1:]
        leader = HaEngine(settings, tmp / f"leader-{r}", f"{app}a", ha_settings.ha_app_filter, ttl_ms, 8092)
        standby = HaEngine(settings, tmp / f"standby-{r}", f"{app}b", ha_settings.ha_app_filter, ttl_ms, 8093)
        shared_env([leader, standby], prefix, tmp / f"leader-{r}")
        leader.start()
        standby.start_standby()
        try:
            rows.append(dataclasses.replace(run_path(settings, leader, specs, rate, "engine", hold), path="broadcast"))
        finally:
            standby.stop()
            leader.stop()
        for row in rows[-2:]:
            print(f"round {r + 1} {row.path}: {row.calls} calls, {row.failed} failed, greeting p50 "
                  f"{fmt(pct(row.greeting_ms, 50))} p99 {fmt(pct(row.greeting_ms, 99))} ms", file=sys.stderr)
    return rows


def kill_leader(leader: BenchEngine, standby: BenchEngine, waiting: int) -> tuple[float, float, int]:
    """Once ``waiting`` callers wait at the leader: SIGKILL it; (kill -> lease taken s,
    kill -> every caller adopted s, callers the standby adopted) from the standby's log."""
    deadline = time.monotonic() + 20
    while leader.status()["lines"]["110"]["waiting"] < waiting:
        if time.monotonic() > deadline:
            raise SystemExit("callers did not all wait")
        time.sleep(0.1)
    time.sleep(0.8)  # the state saver writes the shared snapshot
    killed = time.time()
    assert leader.proc is not None
    leader.proc.send_signal(signal.SIGKILL)
    leader.proc.wait()
    deadline = time.monotonic() + 20
    while "event=leading" not in standby.log():
        if time.monotonic() > deadline:
            raise SystemExit(f"no take-over:\n{standby.log()[-2000:]}")
        time.sleep(0.05)
    taken, led = log_time(standby.log(), "event=lease_taken"), log_time(standby.log(), "event=leading")
    found = re.search(r"event=leading .*calls=(\d+)", standby.log())
    assert taken and led
    return taken - killed, led - killed, int(found.group(1)) if found else -1


def takeovers(settings: Settings, ha_settings: Settings, tmp: Path, n: int, waiting: int,
              ttl_ms: int) -> list[tuple[float, float, int]]:
    """(kill -> lease taken s, kill -> every caller adopted s, callers adopted) per round."""
    from callrouter.sim.trunk import run_calls

    prov.up(ha_settings)
    prefix = f"crbench-{secrets.token_hex(4)}"
    app = ha_settings.ha_app_filter[1:]
    out: list[tuple[float, float, int]] = []
    port = 8094
    engines: list[HaEngine] = []

    def fresh(tag: str) -> HaEngine:
        nonlocal port
        port += 1
        e = HaEngine(settings, tmp / f"ha-{tag}", f"{app}{tag}", ha_settings.ha_app_filter, ttl_ms, port)
        shared_env([e], prefix, tmp)
        engines.append(e)
        return e

    import threading
    leader = fresh("r0")
    leader.start()
    try:
        for i in range(n):
            standby = fresh(f"r{i + 1}")
            standby.start_standby()
            time.sleep(ttl_ms / 1000)
            # callers who wait for a seat that never comes (none logged in); each hangs up
            # after a while, well after the take-over
            specs = [CallSpec("110", f"1395{i:02d}{k:05d}", 12.0) for k in range(waiting)]
            thread = threading.Thread(target=run_calls, args=(settings, specs), kwargs={"rate": 20}, daemon=True)
            thread.start()
            taken_s, led_s, adopted = kill_leader(leader, standby, waiting)
            out.append((taken_s, led_s, adopted))
            print(f"take-over {i + 1}: lease {taken_s:.2f} s, callers adopted {led_s:.2f} s, "
                  f"{adopted} of {waiting}", file=sys.stderr)
            thread.join(timeout=60)
            leader = standby
    finally:
        for e in engines:
            e.stop()
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--hold", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--takeovers", type=int, default=5)
    ap.add_argument("--waiting", type=int, default=10)
    ap.add_argument("--ttl-ms", type=int, default=3000)
    ap.add_argument("--markdown")
    args = ap.parse_args()
    if not (0 < args.rate <= 100 and 0 < args.seconds <= 60 and 0 < args.waiting <= 100):
        raise SystemExit("--rate in (0, 100], --seconds in (0, 60], --waiting in (0, 100]")
    settings = load_settings()
    ha_settings = dataclasses.replace(settings, ha_app_filter=f"^crbench-ha-{secrets.token_hex(2)}-",
                                      ha_lease_ttl_ms=args.ttl_ms)
    tmp = Path(tempfile.mkdtemp(prefix="callrouter-bench-ha-"))
    lines = [f"Machine: {machine()}; {stamp()}", ""]
    try:
        rows = post_dial(settings, ha_settings, tmp, args.rate, args.seconds, args.hold, args.rounds, args.ttl_ms)
        takes = takeovers(settings, ha_settings, tmp, args.takeovers, args.waiting, args.ttl_ms) \
            if args.takeovers else []
    finally:
        prov.up(settings)  # the dialplan back to one engine
    lines += [(f"Post-dial delay, {args.rate:g} calls/s for {args.seconds:g} s per round, {args.rounds} rounds "
              "alternating; callers hang up 3 s after 200 OK; recording off."), "",
              ("| round | path | calls | failed | INVITE→200 p50 / p99 ms | 200→greeting p50 / p99 / max ms "
              "| engine CPU ms/call | Asterisk CPU ms/call |"), "|---:|---|---:|---:|---|---|---:|---:|"]
    for i, r in enumerate(rows):
        lines.append(f"| {i // 2 + 1} | {r.path} | {r.calls} | {r.failed} | {fmt(pct(r.invite_ms, 50))} / "
                     f"{fmt(pct(r.invite_ms, 99))} | {fmt(pct(r.greeting_ms, 50))} / {fmt(pct(r.greeting_ms, 99))} / "
                     f"{fmt(max(r.greeting_ms) if r.greeting_ms else None)} | {r.engine_cpu_ms:.2f} "
                     f"| {r.asterisk_cpu_ms:.2f} |")
    for path in ("stasis", "broadcast"):
        allg = [g for r in rows if r.path == path for g in r.greeting_ms]
        lines.append(f"\n{path}, all rounds: 200→greeting p50 {fmt(pct(allg, 50))} ms, p99 {fmt(pct(allg, 99))} ms")
    if takes:
        lease = [t[0] for t in takes]
        adopt = [t[1] for t in takes]
        lines += ["", (f"Take-over (ttl {args.ttl_ms} ms, {args.waiting} callers waiting, kill -9 of the leader), "
                  f"{len(takes)} rounds:"),
                  (f"kill → lease taken: min {min(lease):.2f} / median {statistics.median(lease):.2f} / "
                  f"max {max(lease):.2f} s"),
                  (f"kill → every caller adopted: min {min(adopt):.2f} / median {statistics.median(adopt):.2f} / "
                  f"max {max(adopt):.2f} s; adopted per round: {[t[2] for t in takes]}")]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0 if all(r.failed == 0 for r in rows) and all(t[2] == args.waiting for t in takes) else 1


if __name__ == "__main__":
    sys.exit(main())
