"""Benchmark: how many callers can be held at once, judged by the AUDIO, through three paths.

SIP success says little here (DESIGN.md, "Held callers: the physical limit here"): the
hold audio breaks long before any call fails. So a few probe calls
(sip-sim/scenarios/probe-call.xml) put their SDP address on Python UDP sockets
(callrouter.sim.rtp.RtpProbes), which timestamp every hold-music RTP packet in the kernel
(SO_TIMESTAMPNS, so this process's own scheduling does not count), and the gaps between
packets are the figure: 20 ms is clean; > 40 ms is an audible dropout.

Three paths, the same callers, probes and measurements (--paths, in that order at every
step, each with an Asterisk restarted for it):
  callrouter  trunk 127.0.0.1 -> Stasis -> the engine: answer, the line's 17 s greeting,
              then a sharded holding bridge (40 callers each, bridge MOH)
  app_queue   bench trunk 127.0.0.3 dialling 'Q<number>' -> Answer() -> Queue(bench-<line>)
              whose members are not registered (no free member: everyone waits with the
              queue's music on hold)
  moh         bench trunk 127.0.0.3 -> [bench-plain]: Answer() -> MusicOnHold(default)
              (one music stream per caller)

Per step (default 800 ... 1800 callers held; no seat logged in, so everyone waits):
  1. the probes call (line 110/122) and are held (callrouter: after the greeting)
  2. N - probes plain SIPp callers arrive at --rate calls/s (numbers from the plan)
  3. "ramp": from the first arrival until all N are held (callrouter: in the holding
     bridges, asked of GET /bridges; app_queue: channels in Queue(); moh: channels in
     MusicOnHold(), asked of GET /channels; both requests are made on every path)
     "rest": --rest seconds with all N held
  4. callers leave by themselves (in arrival order), then the probes
The engine runs the shipped lines file with recording off (the baselines record nobody;
--recording keeps the file's policy: line 110 records every caller, wait included).
Reported per step and path: SIP failures, INVITE->200 OK p50/p99 of the plain callers,
probe packet gaps (max, p99, share > 40 ms, lost), engine and Asterisk CPU % (of one core)
and RSS. "clean": no SIP failure, all N held, no probe gap above --clean-ms in either phase.

    .venv/bin/python scripts/bench_held.py [--steps 800,1000,1200,1400,1600,1800]
        [--paths callrouter,app_queue,moh] [--rate 50] [--rest 20]
"""

from __future__ import annotations

import argparse
import base64
import csv
import dataclasses
import json
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from bench_common import BenchEngine, CpuSampler, asterisk_pid, fmt, machine, pct, rx, stamp, unrecorded_lines

from callrouter.config import load_settings
from callrouter.provision import asterisk as prov
from callrouter.sim.rtp import RtpProbes
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


def run_probe_calls(settings, numbers: list[str], ports: list[int], hold_s: float, out: list[dict],  # type: ignore[no-untyped-def]
                    local_ip: str = "127.0.0.1") -> None:
    """A few probe callers in one SIPp run (probe-call.xml: RTP to our sockets on 127.0.0.1)."""
    tmp = Path(tempfile.mkdtemp(prefix="callrouter-probe-"))
    inf = tmp / "probes.csv"
    with inf.open("w", newline="") as fh:
        fh.write("SEQUENTIAL\n")
        w = csv.writer(fh, delimiter=";", lineterminator="\n")
        for i, (number, port) in enumerate(zip(numbers, ports)):
            caller = f"1399000{i:04d}"
            w.writerow([number, caller, int(hold_s * 1000), caller, 0, "127.0.0.1", port])
    logs = tmp / "results.log"
    cmd = [sipp_binary(), f"{settings.sip_bind}:{settings.sip_port}", "-sf", str(scenario_path(settings, "probe-call.xml")),
           "-inf", str(inf), "-m", str(len(numbers)), "-r", "10", "-l", "100", "-i", local_ip, "-bind_local",
           "-ci", local_ip, "-p", str(free_udp_port(local_ip)), "-t", "u1", "-nostdin", "-trace_logs",
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


PATHS = ("callrouter", "app_queue", "moh")


def dialled(path: str, number: str) -> str:
    """What a caller of ``path`` dials: app_queue's callers 'Q' + the number (digits only:
    [bench-queue] matches _X!), the others the number as the carrier delivers it."""
    if path == "app_queue":
        return "Q" + "".join(ch for ch in number if ch.isdigit())
    return number


def held_now(settings, path: str) -> int:  # type: ignore[no-untyped-def]
    """Callers held right now on ``path`` (-1: Asterisk did not answer). The same two ARI requests on every path (the
    probing costs Asterisk the same): GET /bridges (callrouter: channels in the engine's
    holding bridges) and GET /channels (app_queue: channels in Queue(); moh: in MusicOnHold())."""
    auth = base64.b64encode(f"{settings.ari_user}:{settings.ari_password}".encode()).decode()

    def get(what: str) -> list[dict]:
        req = urllib.request.Request(f"{settings.ari_url}/{what}", headers={"Authorization": f"Basic {auth}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]

    try:
        bridges, channels = get("bridges"), get("channels")
    except OSError as exc:  # an HTTP request refused or reset under load: unknown this time
        print(f"held_now: {exc!r}", file=sys.stderr)
        return -1
    if path == "callrouter":
        return sum(len(b.get("channels", [])) for b in bridges if "-hold-" in b.get("id", ""))
    app = {"app_queue": "Queue", "moh": "MusicOnHold"}[path]
    return sum(1 for c in channels if (c.get("dialplan") or {}).get("app_name") == app)


def one_step(settings, n: int, path: str, args: argparse.Namespace) -> dict:  # type: ignore[no-untyped-def]
    if args.restart_asterisk:
        prov.stop(prov.select_target(settings))
        prov.up(settings)
    tmp = Path(tempfile.mkdtemp(prefix=f"callrouter-bench-held-{path}-{n}-"))
    engine = BenchEngine(settings, tmp) if path == "callrouter" else None
    if engine is not None and not args.recording:
        engine.env["CALLROUTER_LINES"] = str(unrecorded_lines(settings.lines_path, tmp / "lines.toml"))
    if engine is not None:
        engine.start()
    run_settings = engine.settings if engine is not None else settings
    local_ip = "127.0.0.1" if path == "callrouter" else BENCH_IP
    probes = RtpProbes(args.probes)
    plain_n = n - args.probes
    ramp_s = plain_n / args.rate
    hold = ramp_s + GREETING_S + 10 + args.rest + 5
    probe_out: list[dict] = []
    probe_hold = GREETING_S + 3 + hold + ramp_s + 10
    probe_numbers = [dialled(path, x) for x in (PROBE_NUMBERS * args.probes)[: args.probes]]
    pt = threading.Thread(target=run_probe_calls, args=(run_settings, probe_numbers, probes.ports, probe_hold,
                                                        probe_out, local_ip))
    plain_out: list[TrunkReport] = []
    specs = [CallSpec(dialled(path, s.number), s.caller, hold) for s in storm_specs(settings, plain_n, hold, seed=n)]
    tt = threading.Thread(target=lambda: plain_out.append(run_calls(run_settings, specs, args.rate, local_ip=local_ip)))
    eng = CpuSampler(engine.proc.pid) if engine is not None and engine.proc is not None else None
    ast = CpuSampler(asterisk_pid(settings))
    res: dict = {"n": n, "path": path, "rate": args.rate}
    try:
        pt.start()
        time.sleep(GREETING_S + 3)  # probes answered (callrouter: greeted) and held
        base0 = time.time()
        time.sleep(5)
        res["base"] = probes.gaps(base0, time.time())
        ramp0 = time.time()
        for s in (eng, ast):
            if s is not None:
                s.reset()
        tt.start()
        # every caller held (callrouter: greeting done), or give up after a bound
        deadline = time.monotonic() + ramp_s + GREETING_S + 40
        joined = 0
        while time.monotonic() < deadline:
            joined = max(joined, held_now(settings, path))  # -1 (no answer) keeps the last count
            if joined >= n:
                break
            time.sleep(1.0)
        ramp1 = time.time()
        res["joined"] = joined
        res["ramp_s"] = ramp1 - ramp0
        res["ramp_cpu"] = (eng.percent() if eng else None, ast.percent())
        res["ramp"] = probes.gaps(ramp0, ramp1)
        time.sleep(2)
        rest0 = time.time()
        for s in (eng, ast):
            if s is not None:
                s.reset()
        rss_peak = ast_rss = 0.0
        while time.time() < rest0 + args.rest:
            time.sleep(1)
            rss_peak = max(rss_peak, eng.rss_mb() if eng else 0.0)
            ast_rss = max(ast_rss, ast.rss_mb())
        rest1 = time.time()
        res["rest_cpu"] = (eng.percent() if eng else None, ast.percent())
        res["rss"] = (rss_peak if eng else None, ast_rss)
        res["rest"] = probes.gaps(rest0, rest1)
        res["held_end_of_rest"] = held_now(settings, path)
        res["channels"] = rx(settings, "core show channels count").strip().splitlines()[:1]
    finally:
        if tt.ident is not None:
            tt.join(timeout=hold + ramp_s + 150)
        if pt.ident is not None:
            pt.join(timeout=probe_hold + 120)
        probes.stop()
        if engine is not None:
            engine.stop()
    rep = plain_out[0] if plain_out else None
    res["sip_failed"] = (rep.failed if rep else plain_n) + (probe_out[0]["failed"] if probe_out else args.probes)
    res["sip_calls"] = n
    res["invite_p50"] = rep.percentile(50) if rep else None
    res["invite_p99"] = rep.percentile(99) if rep else None
    log = engine.log() if engine is not None else ""
    res["warnings"] = sum(1 for ln in log.splitlines() if "level=warning" in ln or "level=error" in ln)
    res["log_dir"] = str(tmp)
    return res


def max_gap(t: tuple[list[float], int, int]) -> float:
    return max(t[0]) if t[0] else 0.0


def clean(r: dict, clean_ms: float) -> bool:
    return (r["sip_failed"] == 0 and r["joined"] >= r["n"] and max_gap(r["ramp"]) <= clean_ms
            and max_gap(r["rest"]) <= clean_ms)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", default="800,1000,1200,1400,1600,1800")
    ap.add_argument("--paths", default=",".join(PATHS), help=f"in this order at every step: {', '.join(PATHS)}")
    ap.add_argument("--rate", type=float, default=50.0, help="arrival rate of the held callers (calls/s)")
    ap.add_argument("--rest", type=float, default=20.0, help="seconds measured with all callers held")
    ap.add_argument("--probes", type=int, default=4)
    ap.add_argument("--clean-ms", type=float, default=60.0, help="largest probe gap a clean step may show")
    ap.add_argument("--recording", action="store_true",
                    help="keep the lines file's recording policy (default: nobody recorded, as on the baselines)")
    ap.add_argument("--no-restart", dest="restart_asterisk", action="store_false")
    ap.add_argument("--markdown")
    args = ap.parse_args()
    paths = args.paths.split(",")
    if not paths or any(p not in PATHS for p in paths):
        raise SystemExit(f"--paths: some of {', '.join(PATHS)}")
    settings = dataclasses.replace(load_settings(), bench_trunk_ip=BENCH_IP)
    head = f"Machine: {machine()}; {stamp()}"
    rows = []
    for n in [int(s) for s in args.steps.split(",")]:
        for path in paths:
            r = one_step(settings, n, path, args)
            rows.append(r)
            print({k: v for k, v in r.items() if k not in ("base", "ramp", "rest")}, file=sys.stderr)

    def g(t: tuple[list[float], int, int]) -> str:
        gaps, _received, lost = t
        share = 100 * sum(1 for x in gaps if x > 40) / len(gaps) if gaps else 0
        return f"{fmt(max(gaps) if gaps else None, 0)} / {fmt(pct(gaps, 99), 0)} / {share:.2f} % / {lost}"

    def cpu(pair: tuple[float | None, float | None]) -> str:
        return f"{fmt(pair[0], 0)} / {fmt(pair[1], 0)}"

    lines = [head, "",
             (f"Callers arrive at {args.rate:.0f}/s and are held: callrouter (17 s greeting, then 40-caller holding "
              "bridges with bridge MOH), app_queue (Queue() with no free member, queue music on hold), moh (dialplan "
              f"MusicOnHold()); {args.probes} RTP probe calls per path. Gaps: max ms / p99 ms / share > 40 ms / "
              "RTP packets lost. CPU in % of one core (2 cores = 200 %). INVITE->200 OK of the plain callers, ms. "
              f"clean: no SIP failure, all held, no probe gap > {args.clean_ms:.0f} ms. Engine: the shipped lines "
              f"file, {'recording as configured' if args.recording else 'recording off (the baselines record nobody)'}."),
             "",
             ("| held | path | SIP failed | held at end of ramp | INVITE->200 p50 / p99 | probe gaps, probes alone | "
              "while callers join | all held (rest) | engine CPU join / rest | Asterisk CPU join / rest | "
              "engine / Asterisk RSS MB | clean | engine warnings |"),
             "|---:|---|---:|---:|---|---|---|---|---|---|---|---|---:|"]
    for r in rows:
        lines.append(f"| {r['n']} | {r['path']} | {r['sip_failed']} | {r['joined']} | {fmt(r['invite_p50'], 0)} / "
                     f"{fmt(r['invite_p99'], 0)} | {g(r['base'])} | {g(r['ramp'])} | {g(r['rest'])} | "
                     f"{cpu((r['ramp_cpu'][0], r['rest_cpu'][0]))} | {cpu((r['ramp_cpu'][1], r['rest_cpu'][1]))} | "
                     f"{fmt(r['rss'][0], 0)} / {fmt(r['rss'][1], 0)} | {'yes' if clean(r, args.clean_ms) else 'no'} | "
                     f"{r['warnings']} |")
    lines.append("")
    for path in paths:
        ok = [r["n"] for r in rows if r["path"] == path and clean(r, args.clean_ms)]
        bad = [r["n"] for r in rows if r["path"] == path and not clean(r, args.clean_ms)]
        lines.append(f"- {path}: clean at {', '.join(map(str, ok)) or 'no step'}; "
                     f"not clean at {', '.join(map(str, bad)) or 'no step'}")
    text = "\n".join(lines)
    print(text)
    for r in rows:
        print(f"logs: {r['log_dir']}", file=sys.stderr)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
