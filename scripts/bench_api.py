"""Benchmark: API latency and event fan-out with 50 wallboards connected during a call storm.

An engine subprocess (own DB, state, spool, Redis prefix, lines file with a short wrap-up;
the API port of the settings) with a supervisor token from `callrouter tokens create`.
--clients WebSocket clients (aiohttp) connect to /api/events, split over --procs worker
processes so one client process's event loop is not the bottleneck being measured. Simulated
seats (half on each line) answer after 1 s and talk 3 s; SIPp places --rate calls/s for
--duration s (numbers drawn from the plan, `storm_specs`), each caller hanging up --hold s
after the engine answers (most wait in the queue and abandon: the storm keeps the
engine busy with queue, seat and call events). Meanwhile one client issues
GET /api/status, GET /api/calls and GET /api/tickets?limit=50 back to back (at most
--max-requests rounds), one request at a time.

Reported, wall clock on one machine:
  API       per endpoint: round trip (request sent -> body read) p50/p99/max
  fan-out   for every event message every client receives: receive time - the message's
            `at` (engine time.time() when the event was published) p50/p99/max,
            and messages per client (min/max: every client should see every event)
  engine    CPU % of one core over the load window, peak RSS

    .venv/bin/python scripts/bench_api.py [--clients 50] [--rate 20] [--duration 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
from bench_common import SEATS_110, SEATS_96345, BenchEngine, CpuSampler, asterisk_pid, fmt, machine, pct, rx, stamp

from callrouter.config import load_settings
from callrouter.sim.seats import SeatSpec, start_seats
from callrouter.sim.trunk import TrunkReport, run_calls, storm_specs


async def _ws_clients(url: str, n: int, ready: Any, stop: Any, out: Any) -> None:
    lat: list[float] = []
    counts = [0] * n
    types: dict[str, int] = {}
    connected = 0
    errors: list[str] = []

    async with aiohttp.ClientSession() as session:
        async def one(i: int) -> None:
            nonlocal connected
            try:
                async with session.ws_connect(url, heartbeat=None, max_msg_size=0) as ws:
                    connected += 1
                    async for msg in ws:
                        now = time.time()
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            break
                        m = json.loads(msg.data)
                        if m.get("type") == "status":
                            continue
                        counts[i] += 1
                        lat.append((now - float(m["at"])) * 1000)
                        if i == 0:
                            types[m["type"]] = types.get(m["type"], 0) + 1
            except (TimeoutError, aiohttp.ClientError) as exc:
                errors.append(repr(exc))

        tasks = [asyncio.create_task(one(i)) for i in range(n)]
        deadline = time.monotonic() + 20
        while connected < n and time.monotonic() < deadline and not errors:
            await asyncio.sleep(0.05)
        ready.set()
        while not stop.is_set():  # bounded by the parent, which sets stop
            await asyncio.sleep(0.1)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    out.put({"lat": lat, "counts": counts, "types": types, "connected": connected, "errors": errors[:3]})


def ws_worker(url: str, n: int, ready: Any, stop: Any, out: Any) -> None:
    asyncio.run(_ws_clients(url, n, ready, stop, out))


async def api_loop(base: str, token: str, until: float, max_rounds: int, sampler: CpuSampler) -> dict[str, list[float]]:
    paths = ["/api/status", "/api/calls", "/api/tickets?limit=50"]
    lat: dict[str, list[float]] = {p: [] for p in paths}
    fails: dict[str, int] = {p: 0 for p in paths}
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        for _ in range(max_rounds):
            if time.monotonic() > until:
                break
            for p in paths:
                t0 = time.perf_counter()
                async with session.get(base + p) as resp:
                    await resp.read()
                    ok = resp.status == 200
                dt = (time.perf_counter() - t0) * 1000
                if ok:
                    lat[p].append(dt)
                else:
                    fails[p] += 1
            sampler.rss_mb()
    if any(fails.values()):
        print(f"API failures: {fails}", file=sys.stderr)
    return lat


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--procs", type=int, default=5, help="worker processes the WebSocket clients are split over")
    ap.add_argument("--seats", type=int, default=10, help="simulated seats, half on each line (2-20)")
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--hold", type=float, default=8.0, help="caller hangs up this long after the engine answers")
    ap.add_argument("--max-requests", type=int, default=5000, help="bound on API request rounds")
    args = ap.parse_args()
    settings = load_settings()
    asterisk_pid(settings)  # our Asterisk must be up
    tmp = Path(tempfile.mkdtemp(prefix="callrouter-bench-api-"))
    engine = BenchEngine(settings, tmp, api_port=settings.api_port, wrap_up_s=0.5)
    engine.env["CALLROUTER_SPOOL_FILE"] = str(tmp / "tickets-spool.jsonl")
    engine.start()
    tok = subprocess.run([sys.executable, "-m", "callrouter.cli", "tokens", "create", "--role", "supervisor",
                          "--name", "bench_api"], env=engine.env, capture_output=True, text=True, check=True)
    token = json.loads(tok.stdout)["token"]
    base = settings.api_url
    ws_url = base.replace("http://", "ws://") + f"/api/events?token={token}"
    sampler = CpuSampler(engine.proc.pid)  # type: ignore[union-attr]
    seats = None
    workers: list[mp.Process] = []
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    out = ctx.Queue()
    calls_thread: threading.Thread | None = None
    report: list[TrunkReport] = []
    results: list[dict[str, Any]] = []
    n_seats = max(2, min(20, args.seats))
    seat_names = SEATS_110[: n_seats // 2] + SEATS_96345[: n_seats - n_seats // 2]
    count = int(args.rate * args.duration)
    try:
        seats = start_seats(settings, [SeatSpec(s, answer_delay_s=1.0, talk_s=3.0) for s in seat_names], seed=5)
        engine.login(*seat_names)
        per = [args.clients // args.procs + (1 if i < args.clients % args.procs else 0) for i in range(args.procs)]
        readies = []
        for n in per:
            if n == 0:
                continue
            ready = ctx.Event()
            w = ctx.Process(target=ws_worker, args=(ws_url, n, ready, stop, out), daemon=True)
            w.start()
            workers.append(w)
            readies.append(ready)
        for r in readies:
            r.wait(30)
        time.sleep(1.0)
        specs = storm_specs(settings, count, args.hold, seed=9)
        calls_thread = threading.Thread(target=lambda: report.append(run_calls(settings, specs, rate=args.rate)),
                                        daemon=True)
        sampler.reset()
        t_load = time.monotonic()
        calls_thread.start()
        until = t_load + args.duration
        api = asyncio.run(api_loop(base, token, until, args.max_requests, sampler))
        cpu = sampler.percent()
        calls_thread.join(timeout=args.hold + 60)
        time.sleep(2.0)  # let the last events reach every client
        stop.set()
        for _ in workers:
            results.append(out.get(timeout=60))
        final = engine.status()
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=10)
            if w.is_alive():
                w.kill()
        if seats is not None:
            seats.stop()
        engine.stop()
        rx(settings, "channel request hangup all")  # our Asterisk only
        if calls_thread is not None:
            calls_thread.join(timeout=30)

    lat = [x for r in results for x in r["lat"]]
    counts = [c for r in results for c in r["counts"]]
    connected = sum(r["connected"] for r in results)
    errs = [e for r in results for e in r["errors"]]
    types: dict[str, int] = results[0]["types"] if results else {}
    calls = report[0].calls if report else []
    ok = sum(1 for c in calls if c.ok)
    print(f"\nAPI and event fan-out: {connected} of {args.clients} WebSocket clients on /api/events "
          f"({len(workers)} client processes); {count} calls at {args.rate:g}/s over {args.duration:g} s "
          f"(SIPp, plan numbers, caller hangs up {args.hold:g} s after answer); {len(seat_names)} seats "
          f"(answer 1 s, talk 3 s, wrap-up 0.5 s); {stamp()}; {machine()}\n")
    print("| measured | n | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|")
    for path, values in api.items():
        if values:
            print(f"| GET {path} | {len(values)} | {fmt(pct(values, 50))} | {fmt(pct(values, 99))} "
                  f"| {fmt(max(values))} |")
    if lat:
        print(f"| event fan-out: engine `at` → received, all {connected} clients | {len(lat)} | "
              f"{fmt(pct(lat, 50))} | {fmt(pct(lat, 99))} | {fmt(max(lat))} |")
    print()
    print(f"messages per client: min {min(counts) if counts else 0}, max {max(counts) if counts else 0} "
          f"(over the run: {', '.join(f'{k} {v}' for k, v in sorted(types.items(), key=lambda kv: -kv[1]))})")
    print(f"engine: CPU {cpu:.0f} % of one core over the load window, "
          f"peak RSS {sampler.peak_rss_mb:.0f} MB")
    print(f"SIPp: {ok} of {len(calls)} calls completed cleanly; engine counters at the end: "
          f"{json.dumps(final.get('engine', {}))[:300]}")
    if errs:
        print(f"client errors: {errs}")
    print(f"engine log {engine.log_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
