"""The demo of the main job: a real Asterisk, the engine, simulated seats and callers.

Brings up Asterisk (building the chroot on first run), runs the engine in this process,
registers simulated softphones for four seats of each line and logs them in, places a
traffic mix over the legacy numbers through the SIPp trunk (most callers wait for a
seat; some lose patience and hang up), then prints what the tickets say per line and per
category, read back from the ticket database. Simulated agents finish their wrap-up a
second after each call, as a quick agent would.
"""

from __future__ import annotations

import asyncio
import logging
import random
import statistics
import sys
import threading
from collections import Counter, defaultdict
from datetime import UTC, datetime
from typing import Any

from callrouter.acd import SeatLogin, WrapUpDone
from callrouter.calls import CallService
from callrouter.calls.engine import run_engine
from callrouter.config import Settings
from callrouter.provision import asterisk as prov
from callrouter.sim import trunk
from callrouter.sim.seats import SeatSpec, start_seats
from callrouter.tickets import TicketStore

log = logging.getLogger("callrouter.demo")

DEMO_SEATS = [f"s110-{i:02d}" for i in range(1, 5)] + [f"s96345-{i:02d}" for i in range(1, 5)]


def _wait_s(row: dict[str, Any]) -> float | None:
    if not row.get("seat_answered_at"):
        return None
    return (datetime.fromisoformat(str(row["seat_answered_at"])) - datetime.fromisoformat(str(row["arrived_at"]))
            ).total_seconds()


def summarise(rows: list[dict[str, Any]]) -> str:
    by_line: dict[str, Counter[str]] = defaultdict(Counter)
    waits: dict[str, list[float]] = defaultdict(list)
    by_cat: Counter[tuple[str, str]] = Counter()
    for r in rows:
        line = str(r["line"])
        by_line[line]["calls"] += 1
        by_line[line][str(r["outcome"] or "open")] += 1
        by_cat[(line, str(r["category"]))] += 1
        wait = _wait_s(r)
        if wait is not None:
            waits[line].append(wait)
    out = ["", f"{len(rows)} tickets", "", "line    calls  answered  in 15 s  wait p50   outcomes"]
    for line in sorted(by_line):
        c = by_line[line]
        w = waits[line]
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(c.items()) if k != "calls")
        within = sum(1 for x in w if x <= 15)
        p50 = f"{statistics.median(w):.1f} s" if w else "-"
        out.append(f"{line:<7} {c['calls']:>5}  {len(w):>8}  {within:>7}  {p50:>8}   {outcomes}")
    out += ["", "line    category                  calls"]
    for (line, cat), n in sorted(by_cat.items(), key=lambda kv: (kv[0][0], -kv[1], kv[0][1])):
        out.append(f"{line:<7} {cat:<25} {n:>5}")
    return "\n".join(out)


def traffic_specs(settings: Settings, calls: int, seed: int = 7) -> list[trunk.CallSpec]:
    """Callers who wait for a seat (the seat ends the call), a few who give up after 4 s."""
    rng = random.Random(seed)
    specs = trunk.storm_specs(settings, calls, -1, seed)
    return [trunk.CallSpec(s.number, s.caller, 4.0 if rng.random() < 0.15 else -1) for s in specs]


async def _demo(settings: Settings, calls: int, rate: float, keep_running: bool) -> int:
    started = datetime.now(UTC)
    stop = asyncio.Event()
    result: dict[str, int] = {}

    def quick_agents(service: CallService) -> None:
        def on_event(kind: str, data: dict[str, Any]) -> None:
            if kind == "call_ended" and data.get("seat"):
                asyncio.get_running_loop().call_later(1.0, service.feed, WrapUpDone(str(data["seat"])))
        service.listeners.append(on_event)

    async def traffic(service: CallService) -> None:
        await asyncio.wait_for(service.ari.connected.wait(), 20)
        quick_agents(service)
        seats = await asyncio.to_thread(start_seats, settings, [
            SeatSpec(s, answer_delay_s=1.0, talk_s=4.0) for s in DEMO_SEATS], seed=3)
        try:
            for seat in DEMO_SEATS:
                service.feed(SeatLogin(seat))
            print(f"engine connected; {len(DEMO_SEATS)} simulated seats registered and logged in; placing {calls} "
                  f"calls at {rate}/s over the legacy numbers", file=sys.stderr)
            report = await asyncio.to_thread(trunk.run_calls, settings, traffic_specs(settings, calls), rate)
            print(f"SIP: {len(report.calls) - report.failed} of {len(report.calls)} calls answered and completed; "
                  f"INVITE->200 OK p50 {report.percentile(50)} ms, p99 {report.percentile(99)} ms", file=sys.stderr)
            result["failed"] = report.failed
            for _ in range(100):  # the last hang-ups' events may still be on their way
                if not service.calls:
                    break
                await asyncio.sleep(0.1)
            if not await service.writer.drain(15):
                print("warning: tickets still pending", file=sys.stderr)
            store = TicketStore(settings.database_url)
            try:
                rows = await asyncio.to_thread(store.list, 100_000)
            finally:
                await asyncio.to_thread(store.close)
            mine = [r for r in rows if datetime.fromisoformat(str(r["arrived_at"])) >= started]
            print(summarise(mine))
        finally:
            if not keep_running:
                await asyncio.to_thread(seats.stop)
        if keep_running:
            print(f"\nkept running: Asterisk on udp:{settings.sip_bind}:{settings.sip_port}, engine API "
                  f"{settings.api_url}, simulated seats registered; Ctrl-C stops", file=sys.stderr)
        else:
            stop.set()

    await run_engine(settings, stop, on_ready=traffic, watch_exit=False)  # Asterisk is stopped after it
    return 1 if result.get("failed", 1) else 0


def run_demo(settings: Settings, calls: int = 60, rate: float = 10.0, keep_running: bool = False) -> int:
    print("bringing up Asterisk (the first run builds a Debian sid chroot, about a minute)", file=sys.stderr)
    report = prov.up(settings)
    print(f"Asterisk up ({report.mode} {report.root}) in {report.seconds:.1f} s", file=sys.stderr)
    # an Asterisk that crashes is started again (the engine reconnects to it by itself)
    watching = threading.Event()
    watcher = threading.Thread(target=prov.watch, args=(settings, watching), name="asterisk-watch", daemon=True)
    watcher.start()
    try:
        return asyncio.run(_demo(settings, calls, rate, keep_running))
    finally:
        watching.set()
        watcher.join(timeout=5)
        if not keep_running:
            prov.stop(prov.select_target(settings))
            print("Asterisk stopped", file=sys.stderr)
