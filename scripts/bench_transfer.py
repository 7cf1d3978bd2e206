"""Benchmark: transfer latency, seat's action -> caller in the target line's queue.

An engine subprocess (own DB, state, Redis prefix, lines file; the API port of the
settings) and a few simulated 110 seats that answer after 0.2 s and never hang up. SIPp
callers dial 110 and wait. For each of --transfers calls, one at a time: pick a 110 call
a seat is talking to and POST /api/calls/<id>/transfer {"to": "96345"} (the seat's
action, as a seat's client or `callrouter calls transfer` sends it). No 96345 seat is
logged in, so every transferred caller stays queued on 96345.

Per transfer, wall clock on one machine:
  queued   request sent -> `event=transfer_queued` (the caller has joined a holding
           bridge of 96345: ARI's addChannel returned; log line, ms resolution)
  accepted request sent -> `event=call_transferred` (the engine took the transfer: ACD
           updated, ticket op queued; the API answers right after)
  api      the API round trip (request sent -> response read)

At the end every caller is hung up (on OUR Asterisk only) and the engine stopped.

    .venv/bin/python scripts/bench_transfer.py [--transfers 50] [--seats 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from bench_common import SEATS_110, BenchEngine, asterisk_pid, fmt, machine, pct, rx, stamp

from callrouter.ari import AriClient, AriError
from callrouter.calls.holding import HOLD_RE
from callrouter.config import Settings, load_settings
from callrouter.sim.seats import SeatSpec, start_seats
from callrouter.sim.trunk import CallSpec, TrunkReport, run_calls

LINE_RE = re.compile(r"^ts=(\S+) .*?event=(transfer_queued|call_transferred) ticket=(\S+)")


def ts_of(value: str) -> float:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def post_json(engine: BenchEngine, path: str, body: dict[str, object]) -> tuple[int, object]:
    req = urllib.request.Request(f"{engine.settings.api_url}{path}", data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {engine.settings.secret('api_token')}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


async def drop_empty_holding_bridges(settings: Settings) -> list[str]:
    """Remove empty `callrouter-<line>-hold-<n>` bridges before the engine starts.

    The engine's reconcile removes them too, but (2026-11-29) leaves their ids in
    HoldingBridges._ready, so the next join to that line skips creating the bridge and
    addChannel fails with 404: the transferred caller would reach no queue.
    """
    ari = AriClient(settings.ari_url, settings.ari_user, settings.ari_password, "callrouter-bench")
    await ari.open()
    removed = []
    try:
        for bridge in await ari.list_bridges():
            if HOLD_RE.match(bridge.id) and not bridge.channels:
                try:
                    await ari.destroy_bridge(bridge.id)
                    removed.append(bridge.id)
                except AriError:
                    pass
    finally:
        await ari.close()
    return removed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--transfers", type=int, default=50)
    ap.add_argument("--seats", type=int, default=4, help="110 seats answering (1-10)")
    ap.add_argument("--rate", type=float, default=2.0, help="calls/s placed on 110")
    ap.add_argument("--talk-first", type=float, default=1.0,
                    help="seconds a call has been seen talking before its seat transfers it")
    args = ap.parse_args()
    settings = load_settings()
    asterisk_pid(settings)  # our Asterisk must be up
    removed = asyncio.run(drop_empty_holding_bridges(settings))
    if removed:
        print(f"removed empty holding bridges left by an earlier engine: {', '.join(removed)}", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix="callrouter-bench-transfer-"))
    engine = BenchEngine(settings, tmp, api_port=settings.api_port, wrap_up_s=0.5)
    engine.start()
    seats = None
    calls_thread: threading.Thread | None = None
    report: list[TrunkReport] = []
    sent: dict[str, float] = {}  # ticket -> request sent (wall clock)
    api_ms: list[float] = []
    first_talking: dict[str, float] = {}  # ticket -> first seen talking (monotonic)
    placed_by = time.monotonic()
    try:
        seat_names = SEATS_110[: max(1, min(10, args.seats))]
        seats = start_seats(settings, [SeatSpec(s, answer_delay_s=0.2, talk_s=0) for s in seat_names])
        engine.login(*seat_names)
        n_calls = args.transfers + len(seat_names)
        specs = [CallSpec("110", f"1394{i:07d}", -1) for i in range(n_calls)]
        calls_thread = threading.Thread(target=lambda: report.append(run_calls(settings, specs, rate=args.rate)),
                                        daemon=True)
        calls_thread.start()
        placed_by = time.monotonic() + n_calls / args.rate + 2
        deadline = time.monotonic() + 60 + n_calls / args.rate
        while len(sent) < args.transfers:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {len(sent)} transfers in time\n{engine.log()[-3000:]}")
            status, calls = engine.api("GET", "/api/calls")
            now = time.monotonic()
            for c in calls or [] if status == 200 else []:
                if c["line"] == "110" and c["phase"] == "talking":
                    first_talking.setdefault(c["ticket"], now)
            # a seat transfers after talking a moment (not in the instant the call connects)
            talking = [c for c in calls or [] if c["ticket"] in first_talking and c["ticket"] not in sent
                       and c["line"] == "110" and now - first_talking[c["ticket"]] >= args.talk_first]
            if not talking:
                time.sleep(0.05)
                continue
            call = talking[0]
            t0 = time.time()
            code, body = post_json(engine, f"/api/calls/{call['call_id']}/transfer", {"to": "96345", "reason": "bench"})
            t1 = time.time()
            if code != 200:
                print(f"transfer refused: {code} {body}", file=sys.stderr)
                continue
            sent[call["ticket"]] = t0
            api_ms.append((t1 - t0) * 1000)
            # one at a time: wait for this caller to reach the 96345 queue
            wait_until = time.monotonic() + 10
            while f"event=transfer_queued ticket={call['ticket']}" not in engine.log():
                if time.monotonic() > wait_until:
                    raise SystemExit(f"no transfer_queued for {call['ticket']}\n{engine.log()[-3000:]}")
                time.sleep(0.02)
            time.sleep(0.1)
        waiting = engine.status()["lines"]["96345"]["waiting"]
        logged: dict[tuple[str, str], float] = {}
        for line in engine.log().splitlines():
            m = LINE_RE.match(line)
            if m:
                logged[(m.group(2), m.group(3))] = ts_of(m.group(1))
        queued = [(logged[("transfer_queued", t)] - t0) * 1000 for t, t0 in sent.items()]
        accepted = [(logged[("call_transferred", t)] - t0) * 1000 for t, t0 in sent.items()]
    finally:
        if seats is not None:
            seats.stop()
        engine.stop()
        # let SIPp place every call first, or later ones are held by the dialplan
        time.sleep(max(0.0, placed_by - time.monotonic()))
        rx(settings, "channel request hangup all")  # our Asterisk only: end the queued callers
        if calls_thread is not None:
            calls_thread.join(timeout=60)

    failed = sum(1 for c in report[0].calls if not c.ok) if report else None
    rows = [("request sent → caller in the 96345 holding bridge (`transfer_queued`)", queued),
            ("request sent → engine took the transfer (`call_transferred`)", accepted),
            ("API round trip (POST /api/calls/<id>/transfer)", api_ms)]
    print(f"\nTransfer latency, 110 → 96345, {len(sent)} transfers one at a time, {len(seat_names)} 110 seats "
          f"talking, no 96345 seat (callers stay queued: {waiting} waiting at the end); "
          f"{stamp()}; {machine()}\n")
    print("| measured | n | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|")
    for name, values in rows:
        print(f"| {name} | {len(values)} | {fmt(pct(values, 50))} | {fmt(pct(values, 99))} | {fmt(max(values))} |")
    print(f"\nSIPp callers not completed cleanly after the final hang-up: {failed}; engine log {engine.log_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
