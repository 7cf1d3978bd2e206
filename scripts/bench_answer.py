"""Benchmark: what a trunk caller waits for, through the engine versus plain dialplan.

Since 692a01b the dialplan answers every trunk caller itself (`Answer(,i)` in
[callrouter-engine]) before Stasis(): INVITE -> 200 OK is Asterisk's alone on both paths.
The engine's work shows in what the caller waits for next, 200 OK -> the first audio of
the line's greeting. Both paths run on the same Asterisk in the same run, plain first at
each rate, so the machine's load at the time affects both alike:
  engine  trunk 127.0.0.1 -> [from-trunk] -> Answer(,i) -> Stasis -> the engine plays
          sound:callrouter/greeting-<line> over ARI after StasisStart
  plain   bench trunk 127.0.0.3 dialling 'G<line>' -> [bench-plain]: Answer(,i) ->
          Playback(callrouter/greeting-<line>): the same file, the same answer, no engine
          (<line>: the line the number plan gives the number the engine's caller dials)
Both measured the same way, at the caller: every caller is a probe caller
(sip-sim/scenarios/probe-call.xml) whose SDP sends the far end's RTP to a UDP socket of
this process (callrouter.sim.rtp.RtpProbes, kernel receive stamps), and SIPp logs when it
took the 200 OK (gettimeofday: the same clock). First audio = the first G.711 packet above
silence; the prompts start with 250 ms of silence, on both paths alike (the first RTP
packet of any kind is reported too). A caller hangs up --hold s after its 200 OK: one that
heard nothing by then counts as "no greeting", and as slower than all in the percentiles.

Each rate for --seconds (default 20 and 100 calls/s, 30 s each: 600 and 3,000 callers per
path). The engine runs the shipped lines file with recording off (the plain path records
nobody; --recording keeps the file's policy: line 110's callers go through MixMonitor in
the dialplan before their greeting). Also times `asterisk up`: warm (chroot present,
Asterisk stopped), and with --cold a fresh chroot built into a scratch directory.
Addresses, ports and home come from the CALLROUTER_* settings, as everywhere.

    .venv/bin/python scripts/bench_answer.py [--rates 20,100] [--seconds 30] [--hold 3]
        [--cold] [--recording] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import BenchEngine, CpuSampler, asterisk_pid, fmt, machine, pct, per_call, stamp, unrecorded_lines

from callrouter.config import Settings, load_settings
from callrouter.numberplan import load_plan
from callrouter.provision import asterisk as prov
from callrouter.sim.leftovers import leftover_problems, pbx_resources
from callrouter.sim.rtp import RtpProbes
from callrouter.sim.trunk import SCENARIO_PROBE, CallSpec, run_calls, storm_specs

BENCH_IP = "127.0.0.3"
PATHS = ("plain", "engine")
# bounds on the load one run may put on the machine
MAX_RATE, MAX_SECONDS, MAX_HOLD = 200.0, 120.0, 10.0


@dataclasses.dataclass
class PathResult:
    rate: float
    path: str
    calls: int
    failed: int
    invite_ms: list[float]  # INVITE -> 200 OK per answered caller
    greeting_ms: list[float]  # 200 OK -> first audio above silence; inf: none before hang-up
    packet_ms: list[float]  # 200 OK -> first RTP packet of any kind; inf: none
    engine_cpu_ms: float  # per call, over the path's window (the engine runs on both paths)
    asterisk_cpu_ms: float

    @property
    def unheard(self) -> int:
        return sum(1 for v in self.greeting_ms if math.isinf(v))


ARI_NOTES: list[str] = []  # the engine path's ARI requests and events per call, by rate


def run_path(settings: Settings, engine: BenchEngine, specs: list[CallSpec], rate: float, path: str,
             hold: float) -> PathResult:
    local_ip = BENCH_IP if path == "plain" else "127.0.0.1"
    probes = RtpProbes(len(specs), local_ip, first_audio_only=True)
    try:
        calls = [dataclasses.replace(s, hold_s=hold, rtp_to=(local_ip, port)) for s, port in zip(specs, probes.ports)]
        counts0 = engine.ari_counts()
        eng_cpu, ast_cpu = CpuSampler(engine.proc.pid), CpuSampler(asterisk_pid(settings))  # type: ignore[union-attr]
        report = run_calls(engine.settings, calls, rate, local_ip=local_ip, scenario=SCENARIO_PROBE)
        time.sleep(2.0)  # the calls' ends are part of their cost
        n = max(1, len(report.calls))
        eng_ms = 1000 * (eng_cpu.cpu_s() - eng_cpu.c0) / n
        ast_ms = 1000 * (ast_cpu.cpu_s() - ast_cpu.c0) / n
        if path == "engine":
            ARI_NOTES.append(f"{rate:g}/s: {per_call(counts0, engine.ari_counts(), len(report.calls))}")
    finally:
        probes.stop()
    greeting: list[float] = []
    packet: list[float] = []
    for index, t200 in sorted(report.answered_at.items()):
        heard, first = probes.first_audio_ns[index - 1], probes.first_packet_ns[index - 1]
        greeting.append(math.inf if heard is None else heard / 1e6 - t200 * 1000)
        packet.append(math.inf if first is None else first / 1e6 - t200 * 1000)
    return PathResult(rate, path, len(report.calls), report.failed, report.rtt_ms, greeting, packet, eng_ms, ast_ms)


def dialled(path: str, number: str, line_of: dict[str, str]) -> str:
    """The engine's caller dials the number; the plain one 'G' + the number's line."""
    return number if path == "engine" else f"G{line_of[number]}"


def ms(values: list[float], p: float, hold_s: float) -> str:
    v = pct(values, p)
    if v is None:
        return "-"
    return f"> {hold_s * 1000:.0f}" if math.isinf(v) else f"{v:.0f}"


def table(rows: list[PathResult], hold_s: float) -> list[str]:
    out = [("| rate (calls/s) | path | calls | SIP failed | INVITE→200 p50 / p99 / max ms "
            "| 200→greeting audio p50 / p99 / max ms | no greeting | p99 greeting engine / plain "
            "| 200→first RTP packet p50 / p99 ms | engine CPU ms/call | Asterisk CPU ms/call |"),
           "|---:|---|---:|---:|---|---|---:|---:|---|---:|---:|"]
    plain_p99 = {r.rate: pct(r.greeting_ms, 99) for r in rows if r.path == "plain"}
    for r in rows:
        ratio = ""
        p99, base = pct(r.greeting_ms, 99), plain_p99.get(r.rate)
        if r.path == "engine" and p99 is not None and base and not math.isinf(p99) and not math.isinf(base):
            ratio = f"{p99 / base:.2f}x"
        out.append(f"| {r.rate:.0f} | {r.path} | {r.calls} | {r.failed} "
                   f"| {fmt(pct(r.invite_ms, 50))} / {fmt(pct(r.invite_ms, 99))} / "
                   f"{fmt(max(r.invite_ms) if r.invite_ms else None)} "
                   f"| {ms(r.greeting_ms, 50, hold_s)} / {ms(r.greeting_ms, 99, hold_s)} / "
                   f"{ms(r.greeting_ms, 100, hold_s)} | {r.unheard} | {ratio} "
                   f"| {ms(r.packet_ms, 50, hold_s)} / {ms(r.packet_ms, 99, hold_s)} "
                   f"| {r.engine_cpu_ms:.2f} | {r.asterisk_cpu_ms:.2f} |")
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="20,100")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--hold", type=float, default=3.0,
                    help="a caller hangs up this long after its 200 OK (no greeting by then: 'no greeting')")
    ap.add_argument("--cold", action="store_true", help="also time a cold `asterisk up` (builds a scratch chroot)")
    ap.add_argument("--recording", action="store_true",
                    help="keep the lines file's recording policy (default: nobody recorded, as on the plain path)")
    ap.add_argument("--markdown", help="write the result table to this file too")
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    if not all(0 < r <= MAX_RATE for r in rates) or not 0 < args.seconds <= MAX_SECONDS \
            or not 0.5 <= args.hold <= MAX_HOLD:
        raise SystemExit(f"rates in (0, {MAX_RATE:.0f}], --seconds in (0, {MAX_SECONDS:.0f}], "
                         f"--hold in [0.5, {MAX_HOLD:.0f}]")
    settings = dataclasses.replace(load_settings(), bench_trunk_ip=BENCH_IP)
    plan = load_plan(settings.numberplan_path)
    lines = [f"Machine: {machine()}; {stamp()}", ""]

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

    # ---- engine versus plain dialplan: INVITE -> 200 OK and 200 OK -> greeting
    tmp = Path(tempfile.mkdtemp(prefix="callrouter-bench-answer-"))
    engine = BenchEngine(settings, tmp)
    if not args.recording:
        engine.env["CALLROUTER_LINES"] = str(unrecorded_lines(settings.lines_path, tmp / "lines.toml"))
    engine.start()
    rows: list[PathResult] = []
    try:
        for rate in rates:
            specs = storm_specs(settings, int(rate * args.seconds), args.hold, seed=int(rate))
            line_of = {s.number: plan.route(s.number).line for s in specs}
            for path in PATHS:
                path_specs = [CallSpec(dialled(path, s.number, line_of), s.caller, args.hold) for s in specs]
                rows.append(run_path(settings, engine, path_specs, rate, path, args.hold))
                r = rows[-1]
                print(f"{r.rate:.0f}/s {r.path}: {r.calls} calls, {r.failed} failed, {r.unheard} no greeting, "
                      f"INVITE->200 p99 {fmt(pct(r.invite_ms, 99))} ms, greeting p50 {ms(r.greeting_ms, 50, args.hold)}"
                      f" p99 {ms(r.greeting_ms, 99, args.hold)} ms", file=sys.stderr)
        # what Asterisk still holds once every caller is gone (the engine still running)
        deadline = time.monotonic() + 20
        while (left := leftover_problems(pbx_resources(settings))) and time.monotonic() < deadline:
            time.sleep(1)
        leftovers = pbx_resources(settings).summary()
        warnings = sum(1 for ln in engine.log().splitlines() if "level=warning" in ln or "level=error" in ln)
    finally:
        engine.stop()

    lines += ["| `asterisk up` | seconds |", "|---|---:|"]
    lines += [f"| {name} | {secs:.2f} |" for name, secs in up_rows]
    lines += ["", (f"Callers hang up {args.hold:g} s after their 200 OK; engine: the shipped lines file, "
                   f"{'recording as configured' if args.recording else 'recording off (the plain path records nobody)'}"
                   "; greeting audio = first G.711 packet above silence (both prompts open with 250 ms of "
                   "silence); CPU per call over each path's window."), ""]
    lines += table(rows, args.hold)
    lines += ["", *ARI_NOTES]
    lines += ["", "Asterisk afterwards: " + ", ".join(f"{k} {v}" for k, v in leftovers.items())
              + ("; problems: " + "; ".join(left) if left else "; nothing of the engine's left")
              + f"; engine warnings/errors logged: {warnings} (log {engine.log_path})"]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0 if all(r.failed == 0 and r.unheard == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
