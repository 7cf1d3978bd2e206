"""Benchmark: the same surge through callrouter and through Asterisk's own app_queue.

One run, one Asterisk, one after the other, the same callers and the same seats:
  callrouter  trunk 127.0.0.1 -> [from-trunk] -> Stasis -> the engine (ACD, holding
              bridges, originate to the seat, mixing bridge)
  app_queue   bench trunk 127.0.0.3, dialled 'Q<number>' -> [bench-queue]: the number
              plan routes to queue bench-110 / bench-96345 (rendered only in bench mode
              by callrouter/provision/render.py from the same lines file: the line's 10
              seats at penalty 0, the overflow seats allowed on the line at penalty 1,
              ring timeout and wrap-up as in the lines file, strategy leastrecent)
Both: the shipped lines.toml with wrap-up 1 s, overflow calm 5 s and wait threshold 5 s
(as the e2e surge test) and nobody recorded (app_queue's path records nobody; --recording
keeps the file's policy); --callers callers within --within s on ten legacy numbers of both
lines; each caller hangs up --patience s after being answered if no seat took them
(an abandon); all 26 seats (20 + 6 overflow) are SIPp softphones answering after
--answer-delay s and talking an exponential time of mean --talk s (same GSL seed for
both runs, seats restarted between the runs).

Time to answer = caller's arrival -> a seat answered: from the tickets for callrouter
(arrived_at -> seat_answered_at), from queue_log for app_queue (a BENCHANSWER line the
member's Gosub writes with the caller's arrival time and the answer time, ms).

    .venv/bin/python scripts/bench_queue.py [--callers 300] [--within 15] [--patience 60]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from bench_common import (
    POOL,
    SEATS_110,
    SEATS_96345,
    BenchEngine,
    CpuSampler,
    asterisk_pid,
    fast_lines,
    fmt,
    machine,
    pct,
    per_call,
    rx,
    stamp,
    unrecorded_lines,
)

from callrouter.config import load_settings
from callrouter.provision import asterisk as prov
from callrouter.sim.seats import SeatSpec, start_seats
from callrouter.sim.trunk import CallSpec, run_calls
from callrouter.tickets import TicketStore

BENCH_IP = "127.0.0.3"
NUMBERS = ["110", "119", "120", "122", "12345", "12315", "95598", "96345", "12333", "12369"]
LINE_OF = {"110": "110", "119": "110", "120": "110", "122": "110"}
QUEUE_LOG = Path("var/log/asterisk/queue_log")


def _ts(value: object) -> float:
    return datetime.fromisoformat(str(value)).timestamp()


def seat_specs(args: argparse.Namespace) -> list[SeatSpec]:
    return [SeatSpec(s, answer_delay_s=args.answer_delay, talk_s=args.talk, talk_dist="exponential")
            for s in SEATS_110 + SEATS_96345 + POOL]


def summarise(name: str, waits: dict[str, list[float]], abandoned: dict[str, int], offered: dict[str, int],
              sip_failed: int, cpu: tuple[float | None, float], seconds: float, by_pool: int) -> dict:
    return {"path": name, "waits": waits, "abandoned": abandoned, "offered": offered, "sip_failed": sip_failed,
            "engine_cpu": cpu[0], "asterisk_cpu": cpu[1], "seconds": seconds, "by_pool": by_pool}


def run_callrouter(settings, lines: Path, specs: list[CallSpec], args: argparse.Namespace,  # type: ignore[no-untyped-def]
                   speech: int = 0) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="callrouter-bench-queue-cr-"))
    engine = BenchEngine(settings, tmp)
    engine.env["CALLROUTER_LINES"] = str(lines)
    if speech:
        # the same surge with up to `speech` waiting callers transcribed (vosk, the packaged
        # Korean model): what transcription costs the call path
        from bench_speech import korean_model
        engine.env.update({"CALLROUTER_SPEECH_MODEL": str(korean_model()),
                           "CALLROUTER_SPEECH_MAX_CONCURRENT": str(speech)})
    seats = None
    try:
        engine.start()
        if speech:
            deadline = time.monotonic() + 90
            while "event=speech_ready" not in engine.log():
                if time.monotonic() > deadline:
                    raise SystemExit(f"speech never became ready; log {engine.log_path}")
                time.sleep(0.5)
        seats = start_seats(engine.settings, seat_specs(args), seed=args.seed)
        engine.login(*SEATS_110, *SEATS_96345, *POOL)
        scenario = {}
        if speech:
            # every caller says a sentence once answered (G.722 from a pcap), as in bench_speech
            from callrouter.sim.speech import speak_scenario, speech_pcap
            pcap = tmp / "surge-speech.pcap"
            speech_pcap(engine.settings, "화재 신고 구급차 수도 수리 민원", pcap, speed=150, lead_s=2.0, tail_s=1.0)
            scenario = {"scenario": str(speak_scenario(engine.settings, pcap, tmp))}
        counts0 = engine.ari_counts()
        eng, ast = CpuSampler(engine.proc.pid), CpuSampler(asterisk_pid(settings))  # type: ignore[union-attr]
        t0 = time.monotonic()
        report = run_calls(engine.settings, specs, rate=len(specs) / args.within, **scenario)
        seconds = time.monotonic() - t0
        cpu = (eng.percent(), ast.percent())
        time.sleep(3)  # the last tickets are written
        counts1 = engine.ari_counts()
    finally:
        if seats is not None:
            seats.stop()
        engine.stop()
    store = TicketStore(engine.db_url)
    try:
        rows = store.list(limit=100_000)
    finally:
        store.close()
    waits: dict[str, list[float]] = {"110": [], "96345": []}
    abandoned = {"110": 0, "96345": 0}
    offered = {"110": 0, "96345": 0}
    by_pool = 0
    for r in rows:
        line = str(r["line"])
        offered[line] += 1
        if r["seat_answered_at"]:
            waits[line].append(_ts(r["seat_answered_at"]) - _ts(r["arrived_at"]))
            by_pool += str(r["seat"]).startswith("ovf-")
        else:
            abandoned[line] += 1
    transcribed = sum(1 for r in rows if r.get("transcript"))
    print(f"callrouter: {len(rows)} tickets ({transcribed} with a transcript), logs {tmp}", file=sys.stderr)
    name = f"callrouter + speech (limit {speech}, {transcribed} transcribed)" if speech else "callrouter"
    answered = sum(len(w) for w in waits.values())
    print(f"{name}: {per_call(counts0, counts1, answered)} (per answered call)", file=sys.stderr)
    return summarise(name, waits, abandoned, offered, report.failed, cpu, seconds, by_pool)


def run_app_queue(settings, specs: list[CallSpec], args: argparse.Namespace) -> dict:  # type: ignore[no-untyped-def]
    qlog = Path(settings.chroot) / QUEUE_LOG
    offset = qlog.stat().st_size if qlog.exists() else 0
    seats = start_seats(settings, seat_specs(args), seed=args.seed)
    try:
        ast = CpuSampler(asterisk_pid(settings))
        t0 = time.monotonic()
        qspecs = [CallSpec("Q" + s.number, s.caller, s.hold_s) for s in specs]
        report = run_calls(settings, qspecs, rate=len(specs) / args.within, local_ip=BENCH_IP)
        seconds = time.monotonic() - t0
        cpu = (None, ast.percent())
        time.sleep(2)
    finally:
        seats.stop()
    text = qlog.read_bytes()[offset:].decode(errors="replace") if qlog.exists() else ""
    waits: dict[str, list[float]] = {"110": [], "96345": []}
    abandoned = {"110": 0, "96345": 0}
    offered = {"110": 0, "96345": 0}
    by_pool = 0
    for line in text.splitlines():
        f = line.split("|")
        if len(f) < 5 or not f[2].startswith("bench-"):
            continue
        q, event = f[2].removeprefix("bench-"), f[4]
        if event == "ENTERQUEUE":
            offered[q] += 1
        elif event == "BENCHANSWER" and len(f) >= 7:
            waits[q].append(float(f[6]) - float(f[5]))
            by_pool += "ovf-" in f[3]
        elif event in ("ABANDON", "EXITWITHTIMEOUT", "EXITEMPTY"):
            abandoned[q] += 1
    print(f"app_queue: {sum(offered.values())} ENTERQUEUE lines in {qlog}", file=sys.stderr)
    return summarise("app_queue", waits, abandoned, offered, report.failed, cpu, seconds, by_pool)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--callers", type=int, default=300)
    ap.add_argument("--within", type=float, default=15.0, help="seconds over which the callers arrive")
    ap.add_argument("--patience", type=float, default=60.0, help="a caller no seat took hangs up after this")
    ap.add_argument("--answer-delay", type=float, default=1.0)
    ap.add_argument("--talk", type=float, default=6.0, help="mean talk time (exponential)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--order", default="callrouter,app_queue",
                    help="paths in order: callrouter, app_queue, speechN (callrouter transcribing up to N callers)")
    ap.add_argument("--recording", action="store_true",
                    help="keep the lines file's recording policy (default: nobody recorded, as on app_queue's path)")
    ap.add_argument("--markdown")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="callrouter-bench-queue-"))
    base = load_settings()
    # app_queue's path records nobody: neither does the engine's, unless --recording
    src = base.lines_path if args.recording else unrecorded_lines(base.lines_path, tmp / "unrecorded.toml")
    lines = fast_lines(src, tmp / "lines.toml", wrap_up_s=1, calm_s=5, wait_threshold_s=5)
    settings = dataclasses.replace(base, bench_trunk_ip=BENCH_IP, lines=lines)
    # restart: app_stack is loaded only in bench mode, and queues.conf takes this lines file
    prov.stop(prov.select_target(settings))
    prov.up(settings)
    print(rx(settings, "queue show bench-110").splitlines()[:3], file=sys.stderr)
    head = f"Machine: {machine()}; {stamp()}"
    specs = [CallSpec(NUMBERS[i % len(NUMBERS)], f"1371{i:07d}", args.patience) for i in range(args.callers)]
    results = []
    for path in args.order.split(","):
        if path == "callrouter" or path.startswith("speech"):
            results.append(run_callrouter(settings, lines, specs, args, speech=int(path.removeprefix("speech") or 0)
                                          if path != "callrouter" else 0))
        else:
            results.append(run_app_queue(settings, specs, args))
        r = results[-1]
        print({k: v if k != "waits" else {ln: (len(w), pct(w, 50), pct(w, 90)) for ln, w in v.items()}
               for k, v in r.items()}, file=sys.stderr)
        time.sleep(3)
    out = [head, "",
           (f"{args.callers} callers within {args.within:.0f} s on 10 numbers of both lines; patience "
           f"{args.patience:.0f} s; 26 SIPp seats answer after {args.answer_delay:g} s, talk exp. mean "
           f"{args.talk:g} s (seed {args.seed}); wrap-up 1 s; ring timeout 10/15 s; "
           f"{'recording as in the lines file' if args.recording else 'nobody recorded'}. Time to answer = "
           "arrival -> seat answered, s."), "",
           ("| path | line | callers | answered | abandoned | TTA p50 | TTA p90 | answered <= 15 s "
           "| SIP failed | overflow-seat answers | Asterisk CPU % | engine CPU % | run s "
           "| CPU ms per answered call (Asterisk + engine) |"),
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        for line in ("110", "96345", "all"):
            w = r["waits"]["110"] + r["waits"]["96345"] if line == "all" else r["waits"][line]
            n = sum(r["offered"].values()) if line == "all" else r["offered"][line]
            ab = sum(r["abandoned"].values()) if line == "all" else r["abandoned"][line]
            sl = 100 * sum(1 for x in w if x <= 15) / n if n else 0
            cpu_ms = 10 * (r['asterisk_cpu'] + (r['engine_cpu'] or 0)) * r['seconds'] / max(1, len(w))
            extra = (f"{r['sip_failed']} | {r['by_pool']} | {r['asterisk_cpu']:.0f} | {fmt(r['engine_cpu'], 0)} | "
                     f"{r['seconds']:.0f} | {cpu_ms:.1f}") if line == "all" else " | | | | |"
            out.append(f"| {r['path']} | {line} | {n} | {len(w)} | {ab} | {fmt(pct(w, 50))} | {fmt(pct(w, 90))} | "
                       f"{sl:.0f} % | {extra} |")
    text = "\n".join(out)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
