"""Benchmark: what recording costs Asterisk. 20 callers on 110 (recorded: MixMonitor
through [callrouter-record]) against 20 callers on 96345 (not recorded), in the same run,
on the same Asterisk and engine, phases in the order 110, 96345, 96345, 110 so that a drift
of the machine's load weighs on both alike.

Each phase: 20 callers at 10/s, each sending a steady tone (G.711 RTP from SIPp, as a
phone sends audio all the time) and hanging up after --hold seconds. No seat is logged in
at first: the 20 wait (hold music); Asterisk's CPU is sampled for --window seconds. Then 10
seats of the line log in: 10 callers talk (bridged to a seat), 10 still wait; sampled
again. Reported per line: Asterisk CPU (% of one core), the engine's CPU, INVITE -> 200 OK
(the detour through the dialplan replaces the answer: p50/p99), and for 110 the kept
recordings (count, length against the call, bytes per minute).

    .venv/bin/python scripts/bench_recording.py [--calls 20] [--hold 50] [--window 15] [--markdown FILE]

Bounded: four phases of about a minute. Needs `callrouter asterisk up` first (with the
same CALLROUTER_* environment), a free API port (--api-port) and the seat endpoints.
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import SEATS_110, SEATS_96345, BenchEngine, CpuSampler, asterisk_pid, fmt, machine, rx, stamp

from callrouter.config import Settings, load_settings
from callrouter.sim.seats import SeatSpec, start_seats
from callrouter.sim.speech import PCAP_PLACEHOLDER, SPEAK_SCENARIO, write_pcap
from callrouter.sim.trunk import CallSpec, TrunkReport, run_calls, scenario_path
from callrouter.tickets import TicketStore

RATE_HZ = 8000
TONE_HZ = 440.0


def ulaw(sample: int) -> int:
    """G.711 mu-law of one 16-bit sample."""
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), 32635) + 0x84
    exponent = max(0, magnitude.bit_length() - 8)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def tone_scenario(settings: Settings, folder: Path, seconds: float) -> Path:
    """trunk-speak.xml offering G.711 only, playing a 440 Hz tone for ``seconds``."""
    frames = []
    for f in range(int(seconds * 50)):
        frames.append(bytes(ulaw(int(6000 * math.sin(2 * math.pi * TONE_HZ * (f * 160 + i) / RATE_HZ)))
                            for i in range(160)))
    pcap = folder / "tone.pcap"
    write_pcap(pcap, frames, pt=0, ts_step=160)
    text = scenario_path(settings, SPEAK_SCENARIO).read_text()
    for old, new in (("RTP/AVP 9 0 101", "RTP/AVP 0 101"), ("      a=rtpmap:9 G722/8000\n", ""),
                     (PCAP_PLACEHOLDER, str(pcap))):
        if old not in text:
            raise SystemExit(f"{SPEAK_SCENARIO}: {old!r} not found; the benchmark needs updating")
        text = text.replace(old, new)
    dest = folder / "tone-g711.xml"
    dest.write_text(text)
    return dest


@dataclass
class Phase:
    line: str
    waiting_cpu: float = 0.0
    talking_cpu: float = 0.0
    engine_cpu: float = 0.0
    rtt_ms: list[float] = field(default_factory=list)
    failed: int = 0


def channels(settings: Settings) -> int:
    out = rx(settings, "core show channels count")
    for line in out.splitlines():
        if "active channel" in line:
            return int(line.split()[0])
    return -1


def run_phase(settings: Settings, engine: BenchEngine, scenario: Path, line: str, args: argparse.Namespace) -> Phase:
    number, seats = ("110", SEATS_110) if line == "110" else ("12345", SEATS_96345)
    prefix = "1391" if line == "110" else "1392"
    specs = [CallSpec(number, f"{prefix}{i:07d}", args.hold) for i in range(args.calls)]
    phase = Phase(line)
    asterisk = CpuSampler(asterisk_pid(settings))
    assert engine.proc is not None
    own = CpuSampler(engine.proc.pid)
    out: list[TrunkReport] = []
    import threading

    caller = threading.Thread(target=lambda: out.append(run_calls(settings, specs, rate=10,
                                                                   scenario=str(scenario))), daemon=True)
    started = time.monotonic()
    caller.start()
    deadline = time.monotonic() + 30
    while engine.status()["lines"][line]["waiting"] < args.calls:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {engine.status()['lines'][line]['waiting']} of {args.calls} callers waiting")
        time.sleep(0.2)
    time.sleep(args.settle)  # greetings over: every caller in the holding bridge with music
    asterisk.reset()
    own.reset()
    time.sleep(args.window)
    phase.waiting_cpu = asterisk.percent()
    engine.login(*seats[: args.calls // 2])
    time.sleep(5.0)  # the seats ring and answer: half the callers talk, half still wait
    asterisk.reset()
    time.sleep(args.window)
    phase.talking_cpu = asterisk.percent()
    phase.engine_cpu = own.percent()
    if time.monotonic() - started > args.hold:
        print(f"warning: the {line} phase outlasted --hold; measurements may include hang-ups", file=sys.stderr)
    caller.join(timeout=args.hold + 60)
    engine.login(*seats[: args.calls // 2], action="logout")
    report = out[0] if out else None
    if report is not None:
        phase.rtt_ms = report.rtt_ms
        phase.failed = report.failed
    deadline = time.monotonic() + 30
    while channels(settings) > 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(2.0)
    return phase


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--hold", type=float, default=50.0, help="seconds each caller stays after the answer")
    ap.add_argument("--window", type=float, default=15.0, help="seconds of each CPU sample")
    ap.add_argument("--settle", type=float, default=10.0, help="seconds after the last caller waits")
    ap.add_argument("--api-port", type=int, default=8093)
    ap.add_argument("--markdown", help="also write the result table to this file")
    args = ap.parse_args()
    if args.hold < args.settle + 2 * args.window + 10:
        raise SystemExit("--hold must cover --settle, two windows and the seats' answer (about 10 s)")
    settings = load_settings()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            check=False, cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="callrouter-bench-recording-") as tmpdir:
        tmp = Path(tmpdir)
        engine = BenchEngine(settings, tmp, api_port=args.api_port, wrap_up_s=1, announce_interval_s=3600)
        store_dir = tmp / "recordings"
        engine.env["CALLROUTER_RECORDINGS_DIR"] = str(store_dir)
        scenario = tone_scenario(settings, tmp, args.hold + 10)
        seat_sims = start_seats(settings, [SeatSpec(s, answer_delay_s=0.2, talk_s=0)
                                           for s in SEATS_110[: args.calls // 2] + SEATS_96345[: args.calls // 2]])
        phases: list[Phase] = []
        try:
            engine.start()
            for line in ("110", "96345", "96345", "110"):
                phase = run_phase(settings, engine, scenario, line, args)
                print(f"{line}: waiting {phase.waiting_cpu:.1f} %, half talking {phase.talking_cpu:.1f} %, "
                      f"engine {phase.engine_cpu:.1f} %, failed {phase.failed}", flush=True)
                phases.append(phase)
            time.sleep(3.0)  # the last recordings kept
            store = TicketStore(engine.db_url)
            try:
                # this run's 110 callers only (the engine also files calls it finds in Asterisk's CEL record)
                rows = [r for r in store.list(limit=10_000) if r["caller"].startswith("1391")]
            finally:
                store.close()
        finally:
            engine.stop()
            seat_sims.stop()

    kept = [r for r in rows if (r.get("recording") or {}).get("sha256")]
    gaps = [r["recording"]["duration_s"] - (_t(r["ended_at"]) - _t(r["answered_at"])) for r in kept]
    mb_per_min = statistics.mean(r["recording"]["size"] / r["recording"]["duration_s"] * 60 / 1e6
                                 for r in kept) if kept else 0.0
    command = (f".venv/bin/python scripts/bench_recording.py --calls {args.calls} --hold {args.hold:g} "
               f"--window {args.window:g}")
    header = (f"| {args.calls} callers on | recorded | Asterisk CPU, all waiting | Asterisk CPU, half talking "
              "| engine CPU | INVITE->200 p50 / p99 ms | failed calls |")
    lines = [f"Machine: {machine()}; {stamp()}; commit {commit}", f"Command: {command}", "", header,
             "|---|---|---|---|---|---|---|"]
    for line in ("110", "96345"):
        mine = [p for p in phases if p.line == line]
        rtt = [x for p in mine for x in p.rtt_ms]
        lines.append(f"| {line} | {'yes' if line == '110' else 'no'} "
                     f"| {statistics.mean(p.waiting_cpu for p in mine):.1f} % "
                     f"| {statistics.mean(p.talking_cpu for p in mine):.1f} % "
                     f"| {statistics.mean(p.engine_cpu for p in mine):.1f} % "
                     f"| {fmt(_pct(rtt, 50))} / {fmt(_pct(rtt, 99))} | {sum(p.failed for p in mine)} |")
    rec, plain = ([p for p in phases if p.line == ln] for ln in ("110", "96345"))

    def per_caller(attr: str) -> float:
        return float(statistics.mean(getattr(p, attr) for p in rec) - statistics.mean(getattr(p, attr) for p in plain)) \
            / args.calls
    cost = (f"Recording costs Asterisk about {per_caller('waiting_cpu'):.3f} % of a core per waiting caller and "
            f"{per_caller('talking_cpu'):.3f} % per caller with half of them talking.")
    files = (f"Recordings kept: {len(kept)} of {len(rows)} 110 calls; length minus answer->hang-up: mean "
             f"{statistics.mean(gaps) if gaps else 0:+.2f} s, worst {max(map(abs, gaps), default=0):.2f} s; "
             f"{mb_per_min:.2f} MB per minute of call.")
    lines += ["", cost, files]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0


def _t(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value).timestamp()


def _pct(values: list[float], p: float) -> float | None:
    from bench_common import pct

    return pct(values, p)


if __name__ == "__main__":
    sys.exit(main())
