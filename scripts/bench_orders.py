#!/usr/bin/env python3
"""Dispatch orders (issue 10): ticket closed -> order created -> webhook received, and
orders per second through one dispatcher and through two, on PostgreSQL.

(``bench_dispatch.py`` is the ACD's seat dispatch; this is the dispatcher of orders.)

This process plays the engine's side: it writes tickets (open, answer, seat, town, close in
one transaction, as the ticket writer does) into a fresh PostgreSQL database
``callrouter_bench_<random>`` (through ``--pg-url``, dropped afterwards), runs the engine's
OutboxRelay (poll 50 ms, woken after each write) onto a private ``redis-server``, and
runs an aiohttp webhook receiver for every unit of the shipped ``queues/units.toml`` (each
unit given a webhook to it; signatures checked afterwards). The dispatchers are real
``callrouter dispatch run`` processes (default settings: 50 events per read, poll 1 s).

1. latency: ``--rate`` (50) closed, seat-answered calls per second for ``--seconds`` (20),
   categories and towns drawn from the plan and the units file; per ticket: the close
   committed -> the order's ``created_at`` (dispatcher) -> the webhook request arrived
   (receiver); p50/p99/max. One dispatcher.
2. throughput: ``--backlog`` (3000) closed calls already on the stream, then 1 or 2
   dispatchers started; orders/s from the first order to the last (process start-up not
   counted), and webhooks/s likewise.

    .venv/bin/python scripts/bench_orders.py [--rate 50] [--seconds 20] [--backlog 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from bench_common import fmt, machine, pct, stamp
from bench_dispatch_stream import PrivateRedis, database
from redis.asyncio import Redis

from callrouter.dispatch.dispatcher import SECRET_PREFIX, verify
from callrouter.dispatch.store import DispatchStore
from callrouter.dispatch.units import load_units
from callrouter.numberplan import load_plan
from callrouter.tickets import AnswerTicket, CloseTicket, OpenTicket, SetSeat, SetTown, TicketOp, TicketStore
from callrouter.tickets.relay import OutboxRelay

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "benchorders"
STREAM = PREFIX + ":tickets"


@dataclass
class Receiver:
    port: int
    received: dict[str, float] = field(default_factory=dict)  # order id -> first arrival (time.time())
    bodies: list[tuple[str, str, bytes, str]] = field(default_factory=list)  # unit, ts, body, signature
    runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def hook(request: web.Request) -> web.Response:
            body = await request.read()
            arrived = time.time()
            order = json.loads(body)["order"]["id"]
            self.received.setdefault(order, arrived)
            self.bodies.append((request.match_info["unit"], request.headers.get("X-Callrouter-Timestamp", ""), body,
                                request.headers.get("X-Callrouter-Signature", "")))
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/hook/{unit}", hook)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def valid(self, home: Path) -> tuple[int, int]:
        keys = json.loads((home / "secrets.json").read_text())
        ok = sum(verify(keys.get(SECRET_PREFIX + unit, ""), ts, body, sig, tolerance_s=3600)
                 for unit, ts, body, sig in self.bodies)
        return ok, len(self.bodies)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def units_with_webhooks(dest: Path, port: int) -> Path:
    """The shipped units file, every unit notified by webhook at the receiver."""
    text = (ROOT / "queues" / "units.toml").read_text(encoding="utf-8")
    out: list[str] = []
    unit = ""
    for line in text.splitlines():
        out.append(line)
        m = re.match(r'id = "([a-z0-9_]+)"', line)
        if m:
            unit = m.group(1)
        if line.startswith("liaison = ") and unit:
            out.append(f'notify = {{ webhook = "http://127.0.0.1:{port}/hook/{unit}" }}')
    dest.write_text("\n".join(out) + "\n", encoding="utf-8")
    return dest


class Calls:
    """Closed, seat-answered calls with categories and towns drawn from the plan and units."""

    def __init__(self, seed: int = 7) -> None:
        plan = load_plan(ROOT / "queues" / "numberplan.csv")
        units = load_units(ROOT / "queues" / "units.toml", plan)
        self.entries = list(plan.entries)
        self.towns: list[str | None] = [t.id for t in units.towns] + [None] * 4
        self.rng = random.Random(seed)
        self.n = 0

    def next(self) -> tuple[str, list[TicketOp]]:
        self.n += 1
        entry = self.rng.choice(self.entries)
        tid = f"B{self.n:07d}-{secrets.token_hex(2)}"
        at = datetime.now(UTC) - timedelta(seconds=60)
        town = self.rng.choice(self.towns)
        ops: list[TicketOp] = [
            OpenTicket(id=tid, dialled=entry.number, number=entry.number, caller="13800138000", caller_name="",
                       line=entry.line, category=entry.category, department=entry.department,
                       priority=entry.priority, listed=True, channel_id=f"chan-{tid}", arrived_at=at),
            AnswerTicket(tid, at + timedelta(milliseconds=20)),
            SetSeat(tid, "s110-01" if entry.line == "110" else "s96345-01", at + timedelta(seconds=3))]
        if town is not None:
            ops.append(SetTown(tid, town, "seat", at + timedelta(seconds=10)))
        ops.append(CloseTicket(tid, at + timedelta(seconds=60), "completed"))
        return tid, ops


def start_dispatcher(env: dict[str, str], name: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as err:
        return subprocess.Popen([sys.executable, "-m", "callrouter.cli", "dispatch", "run", "--name", name],
                                env={**env, "CALLROUTER_LOG_LEVEL": "WARNING"}, stdout=subprocess.DEVNULL,
                                stderr=err, start_new_session=True)


def stop_dispatchers(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


async def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.1)


async def group_ready(redis_url: str, consumers: int) -> bool:
    redis = Redis.from_url(redis_url, decode_responses=True)
    try:
        groups = await redis.xinfo_groups(STREAM)
        group = next((g for g in groups if g["name"] == "dispatch"), None)
        return bool(group) and int(group["consumers"]) >= consumers  # type: ignore[index]
    except Exception:  # noqa: BLE001 - no stream yet
        return False
    finally:
        await redis.aclose()


@dataclass
class Setup:
    store: TicketStore
    orders: DispatchStore
    relay: OutboxRelay
    receiver: Receiver
    env: dict[str, str]
    home: Path


async def run_case(args: argparse.Namespace, mode: str, dispatchers: int) -> dict[str, Any]:
    redis = PrivateRedis()
    redis.start()
    calls = Calls()
    try:
        with database("postgresql", args.pg_url) as db_url, tempfile.TemporaryDirectory(prefix="bench-orders-") as tmp:
            home = Path(tmp)
            port = free_port()
            units_path = units_with_webhooks(home / "units.toml", port)
            env = {**os.environ, "CALLROUTER_HOME": str(home), "CALLROUTER_DB_URL": db_url,
                   "CALLROUTER_REDIS_URL": redis.url, "CALLROUTER_REDIS_PREFIX": PREFIX,
                   "CALLROUTER_UNITS": str(units_path)}
            store = TicketStore(db_url)
            store.create_schema()
            receiver = Receiver(port)
            await receiver.start()
            relay = OutboxRelay(store, redis.url, STREAM, poll_s=0.05)
            relay_task = asyncio.create_task(relay.run(), name="bench-relay")
            procs: list[subprocess.Popen[bytes]] = []
            try:
                setup = Setup(store, DispatchStore(store), relay, receiver, env, home)
                if mode == "latency":
                    return await latency(args, setup, calls, procs)
                return await throughput(args, setup, calls, procs, dispatchers)
            finally:
                stop_dispatchers(procs)
                await relay.close()
                relay_task.cancel()
                await asyncio.gather(relay_task, return_exceptions=True)
                await receiver.stop()
                store.close()
    finally:
        redis.kill()


async def latency(args: argparse.Namespace, s: Setup, calls: Calls,
                  procs: list[subprocess.Popen[bytes]]) -> dict[str, Any]:
    procs.append(start_dispatcher(s.env, "d1", s.home / "d1.log"))
    await wait_for(lambda: group_ready(s.env["CALLROUTER_REDIS_URL"], 1), 30, "the dispatcher")
    closed: dict[str, float] = {}
    interval = 1 / args.rate
    start = time.monotonic()
    for i in range(int(args.rate * args.seconds)):
        await asyncio.sleep(max(0.0, start + i * interval - time.monotonic()))
        tid, ops = calls.next()
        await asyncio.to_thread(s.store.apply, ops)
        closed[tid] = time.time()
        s.relay.wake()
    ids = {f"O{t}-1" for t in closed}

    async def all_received() -> bool:
        return ids <= s.receiver.received.keys()
    await wait_for(all_received, 60, "every webhook")
    orders = {o["ticket_id"]: o for o in await asyncio.to_thread(s.orders.orders, None, False, 100_000)}
    to_order = [(datetime.fromisoformat(orders[t]["created_at"]).timestamp() - c) * 1000 for t, c in closed.items()]
    to_hook = [(s.receiver.received[f"O{t}-1"] - c) * 1000 for t, c in closed.items()]
    valid, total = s.receiver.valid(s.home)
    return {"tickets": len(closed), "orders": len(orders), "to_order_ms": to_order, "to_webhook_ms": to_hook,
            "valid": valid, "requests": total}


async def throughput(args: argparse.Namespace, s: Setup, calls: Calls, procs: list[subprocess.Popen[bytes]],
                     dispatchers: int) -> dict[str, Any]:
    tids: list[str] = []
    batch: list[TicketOp] = []
    for _ in range(args.backlog):
        tid, ops = calls.next()
        tids.append(tid)
        batch += ops
        if len(batch) >= 500:
            await asyncio.to_thread(s.store.apply, batch)
            batch = []
            s.relay.wake()
    await asyncio.to_thread(s.store.apply, batch)
    s.relay.wake()

    async def published() -> bool:
        return (await asyncio.to_thread(s.store.outbox_backlog))[0] == 0
    await wait_for(published, 120, "the backlog on the stream")
    for i in range(dispatchers):
        procs.append(start_dispatcher(s.env, f"d{i + 1}", s.home / f"d{i + 1}.log"))
    ids = {f"O{t}-1" for t in tids}

    async def all_received() -> bool:
        return ids <= s.receiver.received.keys()
    await wait_for(all_received, 300, "every webhook")
    orders = await asyncio.to_thread(s.orders.orders, None, False, 1_000_000)
    created = sorted(datetime.fromisoformat(o["created_at"]).timestamp() for o in orders)
    hooks = sorted(s.receiver.received.values())
    valid, total = s.receiver.valid(s.home)
    return {"orders": len(orders), "distinct": len({o["ticket_id"] for o in orders}),
            "orders_per_s": (len(created) - 1) / (created[-1] - created[0]),
            "webhooks_per_s": (len(hooks) - 1) / (hooks[-1] - hooks[0]), "valid": valid, "requests": total}


async def main_async(args: argparse.Namespace) -> None:
    print(f"# bench_orders {stamp()}\n# {machine()}\n# {' '.join(sys.argv)}")
    lat = await run_case(args, "latency", 1)
    print(f"\n## latency at {args.rate}/s for {args.seconds} s (one dispatcher): {lat['tickets']} tickets, "
          f"{lat['orders']} orders, {lat['valid']}/{lat['requests']} webhook requests with a valid signature")
    print("| step | p50 ms | p99 ms | max ms |\n|---|---|---|---|")
    for name, key in (("ticket closed -> order created", "to_order_ms"),
                      ("ticket closed -> webhook received", "to_webhook_ms")):
        values = lat[key]
        print(f"| {name} | {fmt(pct(values, 50))} | {fmt(pct(values, 99))} | {fmt(max(values))} |")
    print(f"\n## throughput: {args.backlog} closed calls waiting on the stream")
    print("| dispatchers | orders | orders/s | webhooks/s | webhook requests | valid signatures |\n"
          "|---|---|---|---|---|---|")
    for n in (1, 2):
        r = await run_case(args, "throughput", n)
        if r["distinct"] != r["orders"]:
            print(f"!! {r['orders'] - r['distinct']} duplicate orders")
        print(f"| {n} | {r['orders']} | {r['orders_per_s']:.0f} | {r['webhooks_per_s']:.0f} | {r['requests']} | "
              f"{r['valid']}/{r['requests']} |")


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--rate", type=float, default=50.0)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--backlog", type=int, default=3000)
    p.add_argument("--pg-url", default=os.environ.get("CALLROUTER_TEST_PG_URL",
                                                      "postgresql+psycopg://root@127.0.0.1:5432/postgres"))
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
