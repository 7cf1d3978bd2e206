"""Benchmark: a soak. An ordinary day's call mix for an hour; does anything grow?

Traffic at --rate calls/s (default 5) for --minutes (default 60) through the SIPp trunk,
26 SIPp seats answering, talking and hanging up, some transferring (*9 and REFER); a
fifth of the callers give up while waiting, a tenth during the greeting (the mix:
callrouter/sim/soak.py). A benchmark engine of its own (own ticket SQLite file, Redis
prefix and state) runs with short retentions, so that trimming and purging reach their
steady state within the run: the stream keeps --stream-retention s of events, sent
outbox rows are purged after --outbox-retention s.

Figures sampled every --sample-every s, from the outside: engine and Asterisk RSS,
threads and open files (/proc), Asterisk bridges and channels (ARI), Redis used_memory
(the whole server: others' keys count too) and the stream's length and memory, outbox
rows sent/unsent, tickets open. Printed as a markdown table (start, after warm-up, end of
traffic, after the last calls closed) with INVITE->200 p99 (SIPp rtd) of the first and
last five minutes, ready for docs/BENCHMARKS.md.

    .venv/bin/python scripts/bench_soak.py --minutes 60 --rate 5 [--markdown FILE] [--json FILE]

Uses the Asterisk of the current settings (export CALLROUTER_HOME etc. for an isolated
one; `callrouter asterisk up` first). Ends what it starts: seats, SIPp trunk and engine
(SIGTERM, then SIGKILL), also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sqlite3
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import BenchEngine, asterisk_pid, machine, stamp

from callrouter.config import load_settings
from callrouter.sim.soak import SOAK_LINES, Sample, Sampler, SoakMix, SoakResult, run_soak, soak_specs
from callrouter.tickets.relay import stream_name


def free_tcp_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def outcomes(db: Path, since: str) -> dict[str, int]:
    """Tickets by outcome; those that arrived before ``since`` (calls an earlier engine left
    in Asterisk's CEL, imported by this one) counted apart."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT coalesce(outcome, 'open'), count(*) FROM tickets WHERE arrived_at >= ? GROUP BY 1",
                            (since,)).fetchall()
        out = {str(k): int(v) for k, v in rows}
        out["imported_earlier_calls"] = int(conn.execute("SELECT count(*) FROM tickets WHERE arrived_at < ?",
                                                         (since,)).fetchone()[0])
        out["seat_answered"] = int(conn.execute("SELECT count(seat_answered_at) FROM tickets").fetchone()[0])
        try:
            out["transferred"] = int(conn.execute(
                "SELECT count(*) FROM tickets WHERE transfers IS NOT NULL AND transfers NOT IN ('', '[]', 'null')"
            ).fetchone()[0])
        except sqlite3.Error:
            pass
    return out


def pick(samples: list[Sample], t_s: float) -> Sample:
    """The first sample at or after ``t_s`` (else the last)."""
    return next((s for s in samples if s.t_s >= t_s), samples[-1])


def table(result: SoakResult, warm_t: float, mix: SoakMix, args: argparse.Namespace, ticket_outcomes: dict[str, int],
          set_aside: int) -> str:
    s = result.samples
    start, end_traffic, after = s[0], pick(s, result.traffic_s), s[-1]
    warm = pick(s, warm_t)
    cols = [("start", start), (f"{warm.t_s / 60:.0f} min", warm), (f"end of traffic ({end_traffic.t_s / 60:.0f} min)",
                                                                   end_traffic), ("calls closed", after)]

    def row(name: str, get: object, digits: int = 0) -> str:
        vals = [get(x) for _, x in cols]  # type: ignore[operator]
        cells = [f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in vals]
        growth = vals[2] - vals[1]
        g = f"{growth:+.{digits}f}" if isinstance(growth, float) else f"{growth:+d}"
        return f"| {name} | " + " | ".join(cells) + f" | {g} |"

    rep = result.report
    placed = len(result.specs)
    lines = [
        f"### Soak: {args.minutes:g} min at {mix.rate:g} calls/s ({stamp()})", "",
        f"Machine: {machine()}", "",
        (f"Mix: {mix.describe()}. Engine retentions: stream {args.stream_retention} s, outbox {args.outbox_retention} s, "
        f"housekeeping every {args.housekeeping} s."), "",
        f"Calls placed {placed}; SIPp: {rep.answered if rep else '-'} answered by the engine, "
        f"{rep.failed if rep else '-'} not completed (sipp exit {rep.sipp_exit if rep else '-'}); tickets: "
        + ", ".join(f"{k} {v}" for k, v in sorted(ticket_outcomes.items()))
        + f"; holding bridges set aside (engine log): {set_aside}.", "",
        *([f"**Run stopped early: {result.aborted}.** Figures are the last samples before that.", ""]
          if result.aborted else []),
        "| figure | " + " | ".join(c for c, _ in cols) + " | growth (end - warm) |",
        "|---|" + "---:|" * (len(cols) + 1),
        row("engine RSS MB", lambda x: x.engine.rss_mb, 1),
        row("engine threads", lambda x: x.engine.threads),
        row("engine open files", lambda x: x.engine.fds),
        row("Asterisk RSS MB", lambda x: x.asterisk.rss_mb, 1),
        row("Asterisk threads", lambda x: x.asterisk.threads),
        row("Asterisk open files", lambda x: x.asterisk.fds),
        row("Asterisk bridges (callrouter)", lambda x: x.pbx["callrouter_bridges"]),
        row("holding bridges", lambda x: x.pbx["holding_bridges"]),
        row("Asterisk channels (all)", lambda x: x.pbx["channels"]),
        row("Announcer/ARI_MOH channels", lambda x: x.pbx["announcer_channels"]),
        row("Redis used_memory MB (whole server)", lambda x: x.redis_used_mb, 1),
        row("stream length", lambda x: x.stream_len),
        row("stream memory MB", lambda x: x.stream_mb, 2),
        row("outbox rows sent (kept)", lambda x: x.outbox_sent),
        row("outbox rows unsent", lambda x: x.outbox_unsent),
        row("tickets", lambda x: x.tickets),
        row("tickets open", lambda x: x.open_tickets),
        "",
        (f"INVITE->200 p99 (SIPp rtd): first {args.window:g} s {result.rtt_p99(True, args.window)} ms, "
        f"last {args.window:g} s {result.rtt_p99(False, args.window)} ms."),
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=60.0, help="minutes of traffic (default 60)")
    ap.add_argument("--rate", type=float, default=5.0, help="calls per second (default 5)")
    ap.add_argument("--sample-every", type=float, default=60.0, help="seconds between samples")
    ap.add_argument("--stream-retention", type=int, default=300, help="engine's stream_retention_s")
    ap.add_argument("--outbox-retention", type=int, default=300, help="engine's outbox_retention_s")
    ap.add_argument("--housekeeping", type=int, default=30, help="engine's housekeeping_s")
    ap.add_argument("--window", type=float, default=300.0, help="seconds at start and end for the p99")
    ap.add_argument("--talk", type=float, default=4.0, help="seats' mean talk time, s")
    ap.add_argument("--settle", type=float, default=180.0, help="after the trunk is done, wait up to this for "
                    "every ticket to close")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--markdown", help="write the table to this file too")
    ap.add_argument("--json", help="write every sample to this file")
    args = ap.parse_args()

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # unwinds through the finally blocks below

    signal.signal(signal.SIGTERM, on_term)
    settings = load_settings()
    ast_pid = asterisk_pid(settings)
    mix = SoakMix(rate=args.rate, talk_s=args.talk)
    specs = soak_specs(mix, args.minutes * 60, seed=args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="callrouter-bench-soak-"))
    engine = BenchEngine(settings, tmp, api_port=free_tcp_port(settings.api_bind),
                         wrap_up_s=SOAK_LINES["wrap_up_s"], calm_s=SOAK_LINES["calm_s"],
                         wait_threshold_s=SOAK_LINES["wait_threshold_s"])
    engine.env.update({"CALLROUTER_STREAM_RETENTION_S": str(args.stream_retention),
                       "CALLROUTER_OUTBOX_RETENTION_S": str(args.outbox_retention),
                       "CALLROUTER_HOUSEKEEPING_S": str(args.housekeeping),
                       "CALLROUTER_SPOOL_FILE": str(tmp / "tickets-spool.jsonl")})
    sampler: Sampler | None = None
    since = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")  # as SQLite stores arrived_at
    print(f"soak: {len(specs)} calls over {args.minutes:g} min; engine log {engine.log_path}", file=sys.stderr)
    try:
        engine.start()
        assert engine.proc is not None
        sampler = Sampler(engine.settings, engine.proc.pid, ast_pid, engine.db_url, settings.redis_url,
                          stream_name(engine.env["CALLROUTER_REDIS_PREFIX"]))

        def show(s: Sample) -> None:
            print(json.dumps(s.row()), file=sys.stderr, flush=True)

        result = run_soak(engine.settings, sampler, specs, mix, sample_every_s=args.sample_every, seed=args.seed,
                          settle_s=args.settle,
                          login=lambda seats: engine.login(*seats), on_sample=show)
    finally:
        if sampler is not None:
            sampler.close()
        engine.stop()  # SIGTERM, SIGKILL after 30 s
    warm_t = min(result.traffic_s / 2, args.stream_retention + args.outbox_retention / 2 + 2 * args.housekeeping)
    if result.report is not None and result.report.failed:
        print(f"SIPp: {result.report.failed} calls not completed; last errors:", *result.report.errors[-8:],
              sep="\n  ", file=sys.stderr)
    text = table(result, warm_t, mix, args, outcomes(tmp / "tickets.sqlite3", since), engine.log().count("hold_bridge_set_aside"))
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"samples": [s.row() for s in result.samples], "seats": result.seats,
                                               "trunk": result.report.to_json() if result.report else None}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
