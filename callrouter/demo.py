"""The demo of the main job: a real Asterisk, the engine, simulated callers, a summary.

Brings up Asterisk (building the chroot on first run), runs the engine in this process,
places a traffic mix over the legacy numbers through the SIPp trunk, then prints what
the tickets say per line and per category, read back from the ticket database.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections import Counter, defaultdict
from datetime import UTC, datetime

from callrouter.calls import CallService
from callrouter.calls.engine import run_engine
from callrouter.config import Settings
from callrouter.provision import asterisk as prov
from callrouter.sim import trunk
from callrouter.tickets import TicketStore

log = logging.getLogger("callrouter.demo")


def summarise(rows: list[dict[str, object]]) -> str:
    by_line: dict[str, Counter[str]] = defaultdict(Counter)
    by_cat: Counter[tuple[str, str]] = Counter()
    for r in rows:
        line = str(r["line"])
        by_line[line]["calls"] += 1
        by_line[line][str(r["outcome"] or "open")] += 1
        by_cat[(line, str(r["category"]))] += 1
    out = ["", f"{len(rows)} tickets", "", "line    calls  outcomes"]
    for line in sorted(by_line):
        c = by_line[line]
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(c.items()) if k != "calls")
        out.append(f"{line:<7} {c['calls']:>5}  {outcomes}")
    out += ["", "line    category                  calls"]
    for (line, cat), n in sorted(by_cat.items(), key=lambda kv: (kv[0][0], -kv[1], kv[0][1])):
        out.append(f"{line:<7} {cat:<25} {n:>5}")
    return "\n".join(out)


async def _demo(settings: Settings, calls: int, rate: float, keep_running: bool) -> int:
    started = datetime.now(UTC)
    stop = asyncio.Event()
    result: dict[str, int] = {}

    async def traffic(service: CallService) -> None:
        await asyncio.wait_for(service.ari.connected.wait(), 20)
        print(f"engine connected; placing {calls} calls at {rate}/s over the legacy numbers", file=sys.stderr)
        report = await asyncio.to_thread(trunk.storm, settings, rate, calls, 2.0, 7)
        print(f"SIP: {len(report.calls) - report.failed} of {len(report.calls)} calls answered and completed; "
              f"INVITE->200 OK p50 {report.percentile(50)} ms, p99 {report.percentile(99)} ms", file=sys.stderr)
        result["failed"] = report.failed
        # the last hang-ups' StasisEnd events may still be on their way
        for _ in range(100):
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
        if keep_running:
            print(f"\nkept running: Asterisk on udp:{settings.sip_bind}:{settings.sip_port:d}, engine attached; "
                  "Ctrl-C to stop the engine", file=sys.stderr)
        else:
            stop.set()

    await run_engine(settings, stop, on_ready=lambda s: traffic(s))
    return 1 if result.get("failed", 1) else 0


def run_demo(settings: Settings, calls: int = 60, rate: float = 10.0, keep_running: bool = False) -> int:
    print("bringing up Asterisk (the first run builds a Debian sid chroot, about a minute)", file=sys.stderr)
    report = prov.up(settings)
    print(f"Asterisk up ({report.mode} {report.root}) in {report.seconds:.1f} s", file=sys.stderr)
    try:
        return asyncio.run(_demo(settings, calls, rate, keep_running))
    finally:
        if not keep_running:
            prov.stop(prov.select_target(settings))
            print("Asterisk stopped", file=sys.stderr)
