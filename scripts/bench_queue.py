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
lines; all 26 seats (20 + 6 overflow) are SIPp softphones answering after --answer-delay s
and talking an exponential time of mean --talk s (same GSL seed for both runs, seats
restarted between the runs); the seat ends the call after its talk time.

The callers' patience runs only while they wait (callrouter.sim.patience): each SIPp caller
waits for the far end's BYE (at most --max-call s from the first INVITE); --patience s after
its channel was created, a caller whose channel is not in a bridge with a seat's channel
(Asterisk's view: ARI GET /channels and /bridges, the same requests on both paths) is hung
up through ARI (an abandon), a caller with a seat is left to its conversation. The keeper's
own requests and their wall time are reported (its cost to Asterisk, the same on both paths).
Until 5b814e5 (the runs up to 2026-12-01 14:38 UTC) each caller hung up --patience s after its
200 OK whether a seat had it or not, so an answer in its last seconds was a call of those
seconds.

Time to answer = caller's arrival -> a seat answered: from the tickets for callrouter
(arrived_at -> seat_answered_at), from queue_log for app_queue (a BENCHANSWER line the
member's Gosub writes with the caller's arrival time and the answer time, ms).

Besides the time to answer of the ANSWERED callers (survivor-biased: a path that loses its
long waiters as abandons shows a shorter median), the report gives figures over all OFFERED
callers (callrouter.capacity.outcomes): time until answered or gave up, the share of the
offered answered within 15/30/60/120 s (and its Kaplan-Meier estimate, abandons censored),
the wait by which half the offered were answered, answers in a caller's last 2 s of
patience; against app_queue, per line, the first N answered of each path (N the smaller
answered count) and app_queue's largest lead in the share answered within t; 96345 by the
dialled number's priority; answers per seat group and line.

    .venv/bin/python scripts/bench_queue.py [--callers 300] [--within 15] [--patience 60] [--max-call 600] [--json RUN.json]
    .venv/bin/python scripts/bench_queue.py --report RUN.json    # the report of a saved run again
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
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

from callrouter.capacity.outcomes import (
    THRESHOLDS_S,
    Outcome,
    fair_figures,
    late_answers,
    matched,
    share_answered_within,
    worst_gap,
)
from callrouter.config import load_settings
from callrouter.numberplan import load_plan
from callrouter.provision import asterisk as prov
from callrouter.sim.patience import PatienceKeeper, unconnected_answers
from callrouter.sim.seats import SeatSpec, start_seats
from callrouter.sim.trunk import CallSpec, run_calls
from callrouter.tickets import TicketStore

BENCH_IP = "127.0.0.3"
CALLER_PREFIX = "1371"  # the bench's caller ids: 1371nnnnnnn
NUMBERS = ["110", "119", "120", "122", "12345", "12315", "95598", "96345", "12333", "12369"]
LINE_OF = {"110": "110", "119": "110", "120": "110", "122": "110"}
QUEUE_LOG = Path("var/log/asterisk/queue_log")


def _ts(value: object) -> float:
    return datetime.fromisoformat(str(value)).timestamp()


def seat_specs(args: argparse.Namespace) -> list[SeatSpec]:
    return [SeatSpec(s, answer_delay_s=args.answer_delay, talk_s=args.talk, talk_dist="exponential")
            for s in SEATS_110 + SEATS_96345 + POOL]


def summarise(name: str, waits: dict[str, list[float]], abandoned: dict[str, int], offered: dict[str, int],
              sip_failed: int, cpu: tuple[float | None, float], seconds: float, by_pool: int,
              callers: list[dict], keeper: dict | None = None) -> dict:
    """``callers``: one dict per offered caller (line, wait_s = arrival -> answered or gave up,
    answered, seat): the figures over offered callers are computed from them. ``keeper``:
    what the patience keeper did and cost (None: the old fixed-hold callers)."""
    return {"path": name, "waits": waits, "abandoned": abandoned, "offered": offered, "sip_failed": sip_failed,
            "engine_cpu": cpu[0], "asterisk_cpu": cpu[1], "seconds": seconds, "by_pool": by_pool,
            "callers": callers, "keeper": keeper}


def start_keeper(settings, specs: list[CallSpec], args: argparse.Namespace) -> PatienceKeeper:  # type: ignore[no-untyped-def]
    """The callers' patience from now (the first INVITE goes out at once, the last after
    --within s): the same keeper, with the same requests, on both paths."""
    t0 = time.time()
    keeper = PatienceKeeper(settings.ari_url, settings.ari_user, settings.ari_password, patience_s=args.patience,
                            seats=SEATS_110 + SEATS_96345 + POOL, caller_prefix=CALLER_PREFIX,
                            first_deadline=t0 + args.patience, last_deadline=t0 + args.within + args.patience + 2)
    keeper.start()
    return keeper


def end_keeper(keeper: PatienceKeeper, name: str) -> dict:
    keeper.stop()
    keeper.join(15)
    s = keeper.summary()
    print(f"{name}: patience keeper kept {s['kept']}, hung up {s['hung_up']} (gone {s['gone']}, failed "
          f"{s['failed']}), late p50 {s['late_p50_s']} max {s['late_max_s']} s; {s['requests']} requests "
          f"({s['listings']} listings, {s['bridge_reads']} bridge reads, {s['lookups']} lookups), wall "
          f"{s['request_wall_s']:.3f} s, own CPU {s['cpu_s']:.3f} s; errors {s['errors'][:3]}", file=sys.stderr)
    return s


def call_timeout(args: argparse.Namespace) -> float:
    """SIPp's bound on the whole run: callers wait for the far end's BYE, at most --max-call s."""
    return args.within + args.max_call


def outcomes(r: dict, line: str) -> list[Outcome]:
    """The path's offered callers on ``line`` ("all": both lines); a caller who gave up at an
    unknown time (no end on the ticket, no wait in queue_log) as never answered (inf)."""
    return [Outcome(math.inf if c["wait_s"] is None else c["wait_s"], c["answered"]) for c in r["callers"]
            if line == "all" or c["line"] == line]


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
        keeper = start_keeper(settings, specs, args)
        try:
            report = run_calls(engine.settings, specs, rate=len(specs) / args.within, timeout_s=call_timeout(args),
                               **scenario)
        finally:
            kept = end_keeper(keeper, "callrouter")
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
    callers = ticket_callers(rows)
    waits, abandoned, offered, by_pool = tally(callers)
    transcribed = sum(1 for r in rows if r.get("transcript"))
    print(f"callrouter: {len(rows)} tickets ({transcribed} with a transcript), logs {tmp}", file=sys.stderr)
    name = f"callrouter + speech (limit {speech}, {transcribed} transcribed)" if speech else "callrouter"
    answered = sum(len(w) for w in waits.values())
    print(f"{name}: {per_call(counts0, counts1, answered)} (per answered call)", file=sys.stderr)
    return summarise(name, waits, abandoned, offered, report.failed, cpu, seconds, by_pool, callers, kept)


def run_app_queue(settings, specs: list[CallSpec], args: argparse.Namespace) -> dict:  # type: ignore[no-untyped-def]
    qlog = Path(settings.chroot) / QUEUE_LOG
    offset = qlog.stat().st_size if qlog.exists() else 0
    seats = start_seats(settings, seat_specs(args), seed=args.seed)
    try:
        ast = CpuSampler(asterisk_pid(settings))
        t0 = time.monotonic()
        qspecs = [CallSpec("Q" + s.number, s.caller, s.hold_s) for s in specs]
        keeper = start_keeper(settings, specs, args)
        try:
            report = run_calls(settings, qspecs, rate=len(specs) / args.within, local_ip=BENCH_IP,
                               timeout_s=call_timeout(args))
        finally:
            kept = end_keeper(keeper, "app_queue")
        seconds = time.monotonic() - t0
        cpu = (None, ast.percent())
        time.sleep(2)
    finally:
        seats.stop()
    text = qlog.read_bytes()[offset:].decode(errors="replace") if qlog.exists() else ""
    # ENTERQUEUE carries the caller id: the number it dialled and that number's priority
    plan = load_plan(settings.numberplan_path)
    dialled = {s.caller: {"number": s.number, "priority": plan.route(s.number).priority} for s in specs}
    callers = queue_log_callers(text, dialled)
    waits, abandoned, offered, by_pool = tally(callers)
    unknown = sum(1 for c in callers if c.get("wait_s") is None)
    print(f"app_queue: {sum(offered.values())} ENTERQUEUE lines in {qlog} ({unknown} without an outcome time)",
          file=sys.stderr)
    return summarise("app_queue", waits, abandoned, offered, report.failed, cpu, seconds, by_pool, callers, kept)


def ticket_callers(rows: list[dict]) -> list[dict]:
    """callrouter's offered callers from its tickets (one per caller)."""
    callers: list[dict] = []
    for r in rows:
        c = {"line": str(r["line"]), "number": str(r["number"]), "priority": r["priority"],
             "arrived": _ts(r["arrived_at"]), "channel": str(r.get("channel_id") or "")}
        if r["seat_answered_at"]:
            # talk: the seat answered -> the call ended (the caller's or the seat's hang-up)
            talk = _ts(r["ended_at"]) - _ts(r["seat_answered_at"]) if r["ended_at"] else None
            c.update(wait_s=_ts(r["seat_answered_at"]) - _ts(r["arrived_at"]), answered=True, seat=str(r["seat"]),
                     talk_s=talk)
        else:
            # gave up: arrival -> the caller's hang-up
            c.update(wait_s=_ts(r["ended_at"]) - _ts(r["arrived_at"]) if r["ended_at"] else None, answered=False,
                     seat=None)
        callers.append(c)
    return callers


def queue_log_callers(text: str, dialled: dict[str, dict]) -> list[dict]:
    """app_queue's offered callers from its queue_log lines (``dialled``: caller id -> the
    number it dialled and that number's priority)."""
    callers: dict[str, dict] = {}  # queue_log's call id (the caller's UNIQUEID) -> the caller
    for line in text.splitlines():
        f = line.split("|")
        if len(f) < 5 or not f[2].startswith("bench-"):
            continue
        q, event = f[2].removeprefix("bench-"), f[4]
        c = callers.setdefault(f[1], {"line": q, "channel": f[1], "wait_s": None, "answered": False, "seat": None,
                                      "arrived": float(f[0])})
        if event == "ENTERQUEUE":
            c.update(arrived=float(f[0]), **dialled.get(f[6] if len(f) > 6 else "", {}))
        elif event == "BENCHANSWER" and len(f) >= 7:
            c.update(wait_s=float(f[6]) - float(f[5]), answered=True, seat=_member(f[3]), arrived=float(f[5]))
        elif event in ("COMPLETEAGENT", "COMPLETECALLER") and len(f) > 6:
            # holdtime|calltime|origposition: calltime = whole seconds talking to the member
            with contextlib.suppress(ValueError):
                c["talk_s"] = float(f[6])
        elif event in ("ABANDON", "EXITWITHTIMEOUT", "EXITEMPTY"):
            # position|origposition|waittime: whole seconds in the queue (the caller answered
            # in the dialplan just before Queue(), as the engine's callers are)
            c.update(wait_s=float(f[7]) if len(f) > 7 and f[7].isdigit() else None, answered=False, seat=None)
    return list(callers.values())


def tally(callers: list[dict]) -> tuple[dict[str, list[float]], dict[str, int], dict[str, int], int]:
    """Per line: the answered callers' waits, abandons, offered; answers by overflow seats."""
    waits: dict[str, list[float]] = {"110": [], "96345": []}
    abandoned = {"110": 0, "96345": 0}
    offered = {"110": 0, "96345": 0}
    for c in callers:
        offered[c["line"]] += 1
        if c["answered"]:
            waits[c["line"]].append(c["wait_s"])
        else:
            abandoned[c["line"]] += 1
    return waits, abandoned, offered, sum(1 for c in callers if c["answered"] and str(c["seat"]).startswith("ovf-"))


def as_lived(r: dict) -> dict:
    """The path's figures with a seat's answer the caller never heard (the keeper found it
    still unbridged at its patience and hung it up) counted as the abandon it was; runs
    without the keeper as they are."""
    if not r.get("keeper"):
        return r
    callers = unconnected_answers(r["callers"], r["keeper"]["decisions"])
    waits, abandoned, offered, by_pool = tally(callers)
    return {**r, "callers": callers, "waits": waits, "abandoned": abandoned, "offered": offered, "by_pool": by_pool,
            "unconnected": sum(1 for c in callers if c.get("unconnected_seat"))}


def _member(channel: str) -> str:
    """'PJSIP/s96345-01-0000002a' -> 's96345-01'."""
    return channel.removeprefix("PJSIP/").rsplit("-", 1)[0]


def _p(share: float | None) -> str:
    # + 1e-9: a Kaplan-Meier product equal to the plain share prints the same
    return "-" if share is None else f"{100 * share + 1e-9:.0f} %"


def fair_tables(results: list[dict], patience: float, waiting_model: bool = True) -> list[str]:
    """The figures over OFFERED callers (callrouter.capacity.outcomes) and, against app_queue's
    path, the matched comparison per line."""
    ts = " / ".join(f"{t:g}" for t in THRESHOLDS_S)
    last = ("the callers give up only while waiting: such an answer is a whole call" if waiting_model else
            "the bench's callers hang up --patience s after their 200 OK, talking to a seat or not: such an "
            "answer is a call of under 2 s")
    out = ["", ("Over all offered callers (not survivor-biased): time until answered or gave up; share of the "
           "offered answered within t (Kaplan-Meier with abandons censored in brackets); the wait by which half "
           f"of the offered were answered; answers in the caller's last 2 s of patience ({last})."), "",
           (f"| path | line | offered | answered | abandoned | to outcome p50 / p90 s | answered within {ts} s "
           "of offered | (Kaplan-Meier) | half the offered answered by s | answered in the last 2 s |"),
           "|---|---|---:|---:|---:|---|---|---|---:|---:|"]
    for r in results:
        for line in ("110", "96345", "all"):
            f = fair_figures(outcomes(r, line))
            out.append(f"| {r['path']} | {line} | {f.offered} | {f.answered} | {f.abandoned} | "
                       f"{fmt(f.to_outcome_p50)} / {fmt(f.to_outcome_p90)} | "
                       f"{' / '.join(_p(f.share_within[t]) for t in THRESHOLDS_S)} | "
                       f"({' / '.join(_p(f.km_within[t]) for t in THRESHOLDS_S)}) | {fmt(f.offered_wait_p50)} | "
                       f"{late_answers(outcomes(r, line), patience - 2)} |")
    base = next((r for r in results if r["path"] == "app_queue"), None)
    others = [r for r in results if r is not base]
    if base is None or not others:
        return out
    out += ["", ("Matched answered counts: per line, the first N answered callers of each path by wait, N = the "
            "smaller path's answered count; the largest lead of app_queue over the path in the share of the "
            "offered answered within t (0: the path is nowhere behind)."), "",
            ("| path | line | N | mean wait s (path / app_queue) | median wait s (path / app_queue) "
            "| app_queue's largest lead | at t s |"),
            "|---|---|---:|---|---|---:|---:|"]
    for r in others:
        for line in ("110", "96345", "all"):
            a, b = outcomes(r, line), outcomes(base, line)
            m, g = matched(a, b), worst_gap(a, b)
            out.append(f"| {r['path']} | {line} | {m.n} | {fmt(m.mean_s[0])} / {fmt(m.mean_s[1])} | "
                       f"{fmt(m.median_s[0])} / {fmt(m.median_s[1])} | {100 * g.points:.1f} pp | "
                       f"{fmt(g.at_s)} |")
    return out


CURVE_S = (10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 45.0, 50.0, 55.0, 57.0, 58.0, 59.0, 60.0, 61.0)


def curve_table(results: list[dict]) -> list[str]:
    """Each line's share of the offered answered within t over many t: "not slower" is one
    curve at or above the other everywhere."""
    out = ["", "Share of each line's offered callers answered within t s:", "",
           "| path | line | " + " | ".join(f"{t:g}" for t in CURVE_S) + " |",
           "|---|---|" + "---:|" * len(CURVE_S)]
    for line in ("110", "96345"):
        for r in results:
            o = outcomes(r, line)
            out.append(f"| {r['path']} | {line} | " + " | ".join(_p(share_answered_within(o, t)) for t in CURVE_S)
                       + " |")
    return out


def priority_table(results: list[dict]) -> list[str]:
    """96345's callers by the number plan's priority of the number they dialled."""
    out = ["", "96345's callers by the number plan's priority of the number they dialled (1 = most urgent):", "",
           ("| path | priority | offered | answered | abandoned | answered wait p50 s | answered within 15 / 30 / 60 s "
           "of offered | half the offered answered by s |"), "|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in results:
        for prio in sorted({c.get("priority") for c in r["callers"] if c["line"] == "96345"} - {None}):
            o = [Outcome(math.inf if c["wait_s"] is None else c["wait_s"], c["answered"]) for c in r["callers"]
                 if c["line"] == "96345" and c.get("priority") == prio]
            f = fair_figures(o, (15.0, 30.0, 60.0))
            out.append(f"| {r['path']} | {prio} | {f.offered} | {f.answered} | {f.abandoned} | "
                       f"{fmt(pct([x.wait_s for x in o if x.answered], 50))} | "
                       f"{' / '.join(_p(v) for v in f.share_within.values())} | {fmt(f.offered_wait_p50)} |")
    return out


def seat_table(results: list[dict]) -> list[str]:
    """Answers per seat and line: who took which line's callers."""
    out = ["", ("Answers per seat group and line (own seats, shared pool ovf-01..04, 96345-only pool ovf-05..06); "
           "the answered calls' talk (seat answered -> call ended: tickets; app_queue: queue_log's whole-second "
           "call time), its sum and the calls with under 2 s of it:"), "",
           ("| path | line | s110-* | s96345-* | ovf-01..04 | ovf-05..06 | talk s, sum | talk s, mean "
            "| calls with talk < 2 s |"), "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    groups = (("s110-",), ("s96345-",), ("ovf-01", "ovf-02", "ovf-03", "ovf-04"), ("ovf-05", "ovf-06"))
    for r in results:
        for line in ("110", "96345"):
            answered = [c for c in r["callers"] if c["answered"] and c["line"] == line]
            seats = [str(c["seat"]) for c in answered]
            counts = [sum(1 for s in seats if s.startswith(g)) for g in groups]
            talks = [float(c["talk_s"]) for c in answered if c.get("talk_s") is not None]
            talk = (f"{sum(talks):.0f} | {sum(talks) / len(talks):.1f} | {sum(1 for t in talks if t < 2)}"
                    if talks else "- | - | -")
            out.append(f"| {r['path']} | {line} | " + " | ".join(str(n) for n in counts) + f" | {talk} |")
    return out


def keeper_table(results: list[dict]) -> list[str]:
    """What the patience keeper did on each path and what its ARI requests cost."""
    rows = [r for r in results if r.get("keeper")]
    if not rows:
        return []
    out = ["", ("The callers' patience (callrouter.sim.patience): at each caller's deadline (channel created + "
           "patience), kept (bridged with a seat) or hung up through ARI (still waiting), and of those hung up the "
           "ones a seat had answered a moment before without the caller yet bridged to it (counted above as the "
           "abandons they were); callers whose channel had ended before their deadline; how late after the "
           "deadline the keeper decided; its ARI requests (GET /channels listings, GET /bridges, GET "
           "/channels/{id} look-ups, DELETE) and their summed wall time, an upper bound of the Asterisk CPU they "
           "cost; the keeper's own CPU (not in either path's figures)."), "",
           ("| path | kept (with a seat) | hung up | of them a seat had answered | gone before | late p50 / max s "
           "| requests (list / bridges / look-ups / DELETE) | request wall ms | per answered call ms "
           "| share of the path's Asterisk CPU | keeper CPU ms |"),
           "|---|---:|---:|---:|---:|---|---|---:|---:|---:|---:|"]
    for r in rows:
        k = r["keeper"]
        answered = max(1, sum(len(w) for w in r["waits"].values()))
        ast_ms = 10 * r["asterisk_cpu"] * r["seconds"]  # % of a core x s -> ms
        out.append(f"| {r['path']} | {k['kept']} | {k['hung_up']} | {r.get('unconnected', 0)} | {k['gone']} | "
                   f"{fmt(k['late_p50_s'], 2)} / "
                   f"{fmt(k['late_max_s'], 2)} | {k['requests']} ({k['listings']} / {k['bridge_reads']} / "
                   f"{k['lookups']} / {k['hangups']}) | {1000 * k['request_wall_s']:.0f} | "
                   f"{1000 * k['request_wall_s'] / answered:.2f} | "
                   f"{100 * 1000 * k['request_wall_s'] / ast_ms if ast_ms else 0:.1f} % | {1000 * k['cpu_s']:.0f} |")
    return out


def render(results: list[dict], args: argparse.Namespace, head: str) -> str:
    """The report: the per-line table (time to answer of the answered callers, CPU), then the
    figures over offered callers, 96345 by priority, answers per seat group."""
    waiting_model = getattr(args, "caller_model", "waiting") == "waiting"
    results = [as_lived(r) for r in results]
    patience = (f"patience {args.patience:.0f} s while waiting (a caller with a seat stays until the seat ends the "
                "call)" if waiting_model else
                f"patience {args.patience:.0f} s from the 200 OK (the old model: the caller hangs up then, with a "
                "seat or not)")
    out = [head, "",
           (f"{args.callers} callers within {args.within:.0f} s on 10 numbers of both lines; {patience}; "
           f"26 SIPp seats answer after {args.answer_delay:g} s, talk exp. mean "
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
    out += (fair_tables(results, args.patience, waiting_model) + curve_table(results) + priority_table(results)
            + seat_table(results)
            + keeper_table(results))
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--callers", type=int, default=300)
    ap.add_argument("--within", type=float, default=15.0, help="seconds over which the callers arrive")
    ap.add_argument("--patience", type=float, default=60.0,
                    help="a caller still waiting (not bridged with a seat) this long after arriving hangs up")
    ap.add_argument("--max-call", type=float, default=600.0,
                    help="SIPp's bound: every caller has ended this long after the last INVITE")
    ap.add_argument("--answer-delay", type=float, default=1.0)
    ap.add_argument("--talk", type=float, default=6.0, help="mean talk time (exponential)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--order", default="callrouter,app_queue",
                    help="paths in order: callrouter, app_queue, speechN (callrouter transcribing up to N callers)")
    ap.add_argument("--recording", action="store_true",
                    help="keep the lines file's recording policy (default: nobody recorded, as on app_queue's path)")
    ap.add_argument("--markdown")
    ap.add_argument("--json", help="write the run here: every path's figures and per-caller outcomes")
    ap.add_argument("--report", metavar="JSON", help="run nothing: print the report of a run saved with --json")
    args = ap.parse_args()
    args.caller_model = "waiting"
    if args.report:
        source = args.report
        saved = json.loads(Path(source).read_text())
        # runs saved before the keeper: callers hung up --patience s after their 200 OK
        args = argparse.Namespace(**{**vars(args), "caller_model": "fixed hold", **saved["args"]})
        print(render(saved["results"], args, saved["head"] + f" (re-rendered from {source})"))
        return 0
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
    # hold -1: each caller waits for the far end's BYE; the keeper plays its patience
    specs = [CallSpec(NUMBERS[i % len(NUMBERS)], f"{CALLER_PREFIX}{i:07d}", -1) for i in range(args.callers)]
    results = []
    for path in args.order.split(","):
        if path == "callrouter" or path.startswith("speech"):
            results.append(run_callrouter(settings, lines, specs, args, speech=int(path.removeprefix("speech") or 0)
                                          if path != "callrouter" else 0))
        else:
            results.append(run_app_queue(settings, specs, args))
        r = results[-1]
        print({k: v if k != "waits" else {ln: (len(w), pct(w, 50), pct(w, 90)) for ln, w in v.items()}
               for k, v in r.items() if k != "callers"}, file=sys.stderr)
        time.sleep(3)
    text = render(results, args, head)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"head": head, "args": vars(args), "results": results}, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
