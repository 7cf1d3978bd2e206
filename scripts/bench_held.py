"""Benchmark: how many callers the engine can hold at once, judged by the AUDIO.

SIP success says little here (DESIGN.md, "Held callers: the physical limit here"): the
hold audio breaks long before any call fails. So a few probe calls
(sip-sim/scenarios/probe-call.xml) put their SDP address on Python UDP sockets, which
timestamp every hold-music RTP packet in the kernel (SO_TIMESTAMPNS, so this process's
own scheduling does not count), and the gaps between packets are the figure: 20 ms is
clean; > 40 ms is an audible dropout.

Per step (default 200, 400, 600, 800, 1000 callers held; Asterisk restarted and a fresh
engine started for each; no seat logged in, so everyone waits):
  1. the probes call line 110 and sit in a holding bridge (after the 17 s greeting)
  2. N - probes plain SIPp callers arrive at --rate calls/s (numbers from the plan)
     and wait: each plays the greeting, then joins a sharded holding bridge
  3. "ramp": from the first arrival until the last caller joined
     "rest": --rest seconds with all N held
  4. callers leave by themselves (in arrival order), then the probes
Reported per step: SIP failures, probe packet gaps (max, p99, share > 40 ms, lost),
engine and Asterisk CPU % (of one core) and RSS.

    .venv/bin/python scripts/bench_held.py [--steps 200,400,600,800,1000] [--rate 50] [--rest 20]
"""

from __future__ import annotations

import argparse
import base64
import csv
import dataclasses
import itertools
import json
import selectors
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from bench_common import BenchEngine, CpuSampler, asterisk_pid, fmt, machine, pct, rx, stamp

from callrouter.config import load_settings
from callrouter.provision import asterisk as prov
from callrouter.sim.trunk import (
    CallSpec,
    TrunkReport,
    free_udp_port,
    run_calls,
    scenario_path,
    sipp_binary,
    storm_specs,
)

BENCH_IP = "127.0.0.3"
GREETING_S = 17.0  # greeting-110/96345.wav; callers join the holding bridge after it
PROBE_NUMBERS = ["110", "122", "110", "122"]
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


class RtpProbes:
    """UDP sockets on loopback recording (kernel receive time ns, RTP seq) per packet."""

    def __init__(self, count: int, host: str = "127.0.0.1") -> None:
        self.socks = []
        self.packets: list[list[tuple[int, int]]] = [[] for _ in range(count)]
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.bind((host, 0))
            s.setblocking(False)
            self.socks.append(s)
        self.ports = [s.getsockname()[1] for s in self.socks]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        for i, s in enumerate(self.socks):
            sel.register(s, selectors.EVENT_READ, i)
        space = socket.CMSG_SPACE(16)
        while not self._stop.is_set():
            for key, _ in sel.select(timeout=0.2):
                s, i = key.fileobj, key.data
                while True:
                    try:
                        data, anc, _flags, _addr = s.recvmsg(2048, space)  # type: ignore[union-attr]
                    except BlockingIOError:
                        break
                    ns = time.time_ns()
                    for level, kind, payload in anc:
                        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                            sec, nsec = struct.unpack("qq", payload[:16])
                            ns = sec * 1_000_000_000 + nsec
                    if len(data) >= 12:
                        self.packets[i].append((ns, struct.unpack("!H", data[2:4])[0]))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for s in self.socks:
            s.close()

    def gaps(self, t0: float, t1: float) -> tuple[list[float], int, int]:
        """Gaps (ms) between consecutive packets whose later packet arrived in [t0, t1];
        also packets received in the window and RTP sequence numbers missing."""
        out: list[float] = []
        received = lost = 0
        lo, hi = int(t0 * 1e9), int(t1 * 1e9)
        for pkts in self.packets:
            for (a, sa), (b, sb) in itertools.pairwise(pkts):
                if lo <= b <= hi:
                    out.append((b - a) / 1e6)
                    received += 1
                    step = (sb - sa) % 65536
                    if 1 < step < 1000:  # a jump of thousands is a new RTP stream (source change)
                        lost += step - 1
        return out, received, lost


def run_probe_calls(settings, numbers: list[str], ports: list[int], hold_s: float, out: list[dict]) -> None:  # type: ignore[no-untyped-def]
    """A few probe callers in one SIPp run (probe-call.xml: RTP to our sockets)."""
    tmp = Path(tempfile.mkdtemp(prefix="callrouter-probe-"))
    inf = tmp / "probes.csv"
    with inf.open("w", newline="") as fh:
        fh.write("SEQUENTIAL\n")
        w = csv.writer(fh, delimiter=";", lineterminator="\n")
        for i, (number, port) in enumerate(zip(numbers, ports)):
            w.writerow([number, f"1399000{i:04d}", int(hold_s * 1000), "127.0.0.1", port])
    logs = tmp / "results.log"
    cmd = [sipp_binary(), f"{settings.sip_bind}:{settings.sip_port}", "-sf", str(scenario_path(settings, "probe-call.xml")),
           "-inf", str(inf), "-m", str(len(numbers)), "-r", "10", "-l", "100", "-i", "127.0.0.1", "-bind_local",
           "-ci", "127.0.0.1", "-p", str(free_udp_port("127.0.0.1")), "-t", "u1", "-nostdin", "-trace_logs",
           "-log_file", str(logs), "-timeout", f"{int(hold_s + 60)}s", "-timeout_error", "-aa"]
    proc = subprocess.run(cmd, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False,
                          timeout=hold_s + 90)
    outcomes = {}
    if logs.exists():
        for line in logs.read_text(errors="replace").splitlines():
            parts = line.strip().split(";")
            if len(parts) >= 5 and parts[0].endswith("RESULT"):
                outcomes[int(parts[1])] = parts[4]
    ok = sum(1 for i in range(1, len(numbers) + 1) if outcomes.get(i) in ("completed", "completed_by_far_end"))
    out.append({"ok": ok, "failed": len(numbers) - ok, "exit": proc.returncode, "stderr": proc.stderr[-500:]})


def held_in_bridges(settings) -> int:  # type: ignore[no-untyped-def]
    """Channels in the engine's holding bridges, asked of ARI (GET /bridges)."""
    auth = base64.b64encode(f"{settings.ari_user}:{settings.ari_password}".encode()).decode()
    req = urllib.request.Request(f"{settings.ari_url}/bridges", headers={"Authorization": f"Basic {auth}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        bridges = json.loads(resp.read())
    return sum(len(b.get("channels", [])) for b in bridges if "-hold-" in b.get("id", ""))


def one_step(settings, n: int, args: argparse.Namespace) -> dict:  # type: ignore[no-untyped-def]
    if args.restart_asterisk:
        prov.stop(prov.select_target(settings))
        prov.up(settings)
    tmp = Path(tempfile.mkdtemp(prefix=f"callrouter-bench-held-{n}-"))
    engine = BenchEngine(settings, tmp)
    engine.start()
    probes = RtpProbes(args.probes)
    plain_n = n - args.probes
    ramp_s = plain_n / args.rate
    hold = ramp_s + GREETING_S + 10 + args.rest + 5
    probe_out: list[dict] = []
    probe_hold = GREETING_S + 3 + hold + ramp_s + 10
    pt = threading.Thread(target=run_probe_calls, args=(engine.settings, (PROBE_NUMBERS * args.probes)[: args.probes],
                                                        probes.ports, probe_hold, probe_out))
    plain_out: list[TrunkReport] = []
    specs = [CallSpec(s.number, s.caller, hold) for s in storm_specs(settings, plain_n, hold, seed=n)]
    tt = threading.Thread(target=lambda: plain_out.append(run_calls(engine.settings, specs, args.rate)))
    eng, ast = CpuSampler(engine.proc.pid), CpuSampler(asterisk_pid(settings))  # type: ignore[union-attr]
    res: dict = {"n": n, "rate": args.rate}
    try:
        pt.start()
        time.sleep(GREETING_S + 3)  # probes greeted and in their holding bridge
        base0 = time.time()
        time.sleep(5)
        res["base"] = probes.gaps(base0, time.time())
        ramp0 = time.time()
        eng.reset()
        ast.reset()
        tt.start()
        # every caller held in a bridge (greeting done), or give up after a bound
        deadline = time.monotonic() + ramp_s + GREETING_S + 40
        joined = 0
        while time.monotonic() < deadline:
            joined = held_in_bridges(settings)
            if joined >= n:
                break
            time.sleep(1.0)
        ramp1 = time.time()
        res["joined"] = joined
        res["ramp_s"] = ramp1 - ramp0
        res["ramp_cpu"] = (eng.percent(), ast.percent())
        res["ramp"] = probes.gaps(ramp0, ramp1)
        time.sleep(2)
        rest0 = time.time()
        eng.reset()
        ast.reset()
        rss_peak = ast_rss = 0.0
        while time.time() < rest0 + args.rest:
            time.sleep(1)
            rss_peak = max(rss_peak, eng.rss_mb())
            ast_rss = max(ast_rss, ast.rss_mb())
        rest1 = time.time()
        res["rest_cpu"] = (eng.percent(), ast.percent())
        res["rss"] = (rss_peak, ast_rss)
        res["rest"] = probes.gaps(rest0, rest1)
        res["held_end_of_rest"] = held_in_bridges(settings)
        res["channels"] = rx(settings, "core show channels count").strip().splitlines()[:1]
    finally:
        if tt.ident is not None:
            tt.join(timeout=hold + ramp_s + 150)
        if pt.ident is not None:
            pt.join(timeout=probe_hold + 120)
        probes.stop()
        engine.stop()
    rep = plain_out[0] if plain_out else None
    res["sip_failed"] = (rep.failed if rep else plain_n) + (probe_out[0]["failed"] if probe_out else args.probes)
    res["sip_calls"] = n
    res["invite_p99"] = rep.percentile(99) if rep else None
    log = engine.log()
    res["warnings"] = sum(1 for ln in log.splitlines() if "level=warning" in ln or "level=error" in ln)
    res["log_dir"] = str(tmp)
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", default="200,400,600,800,1000")
    ap.add_argument("--rate", type=float, default=50.0, help="arrival rate of the held callers (calls/s)")
    ap.add_argument("--rest", type=float, default=20.0, help="seconds measured with all callers held")
    ap.add_argument("--probes", type=int, default=4)
    ap.add_argument("--no-restart", dest="restart_asterisk", action="store_false")
    ap.add_argument("--markdown")
    args = ap.parse_args()
    settings = dataclasses.replace(load_settings(), bench_trunk_ip=BENCH_IP)
    head = f"Machine: {machine()}; {stamp()}"
    rows = []
    for n in [int(s) for s in args.steps.split(",")]:
        r = one_step(settings, n, args)
        rows.append(r)
        print({k: v for k, v in r.items() if k not in ("base", "ramp", "rest")}, file=sys.stderr)

    def g(t: tuple[list[float], int, int]) -> str:
        gaps, _received, lost = t
        share = 100 * sum(1 for x in gaps if x > 40) / len(gaps) if gaps else 0
        return f"{fmt(max(gaps) if gaps else None, 0)} / {fmt(pct(gaps, 99), 0)} / {share:.2f} % / {lost}"

    lines = [head, "",
             (f"Callers arrive at {args.rate:.0f}/s, hear the 17 s greeting, then wait in 40-caller holding bridges "
             f"with bridge MOH; {args.probes} RTP probe calls on line 110. Gaps: max ms / p99 ms / share > 40 ms / "
             "RTP packets lost. CPU in % of one core (2 cores = 200 %)."), "",
             ("| held | SIP failed | in bridges | probe gaps, probes alone | while callers join | "
             "all held (rest) | engine CPU join / rest | engine RSS MB | Asterisk CPU join / rest | Asterisk RSS MB |"
             " engine warnings |"),
             "|---:|---:|---:|---|---|---|---|---:|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['n']} | {r['sip_failed']} | {r['joined']} | {g(r['base'])} | {g(r['ramp'])} | "
                     f"{g(r['rest'])} | {r['ramp_cpu'][0]:.0f} / {r['rest_cpu'][0]:.0f} | {r['rss'][0]:.0f} | "
                     f"{r['ramp_cpu'][1]:.0f} / {r['rest_cpu'][1]:.0f} | {r['rss'][1]:.0f} | {r['warnings']} |")
    text = "\n".join(lines)
    print(text)
    for r in rows:
        print(f"logs: {r['log_dir']}", file=sys.stderr)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
