#!/usr/bin/env python3
"""Dispatch stream: ticket change -> event on the Redis stream, relay throughput, and the
time the outbox takes to drain after a Redis outage. SQLite and PostgreSQL.

Everything runs in this process, as in the engine: a TicketWriter (``linger_s`` 0.2 above
``busy_ops_s`` 100, the engine's settings; ``--linger``, ``--busy-ops-s``), an OutboxRelay
(woken by every commit of outbox rows; safety poll 1 s, batch 200)
on the same TicketStore, and a reader doing XREAD on the stream. Redis is a private
``redis-server`` on a free loopback port started by this script (killed and restarted
for the outage); PostgreSQL is a fresh database ``callrouter_bench_<random>`` created
through ``--pg-url`` (default ``$CALLROUTER_TEST_PG_URL`` or
``postgresql+psycopg://root@127.0.0.1:5432/postgres``) and dropped afterwards.

1. latency: one ticket change every 1/``--rate`` s (50/s) for ``--seconds`` (20): each
   change's ``submit()`` -> the reader has the event (XREAD returned it); p50/p99/max.
   Below ``--busy-ops-s`` the writer commits each change at once and the commit wakes
   the relay: a commit, a claim, an XADD and a mark.
2. throughput: ``--backlog`` (20000) events already in the outbox; one relay publishes
   them all: events/s.
3. outage: ~60 ticket changes/s (20 calls/s: open, answer, close); Redis killed for
   ``--outage-s`` (30) s and restarted empty; time from the restart until the outbox is
   empty and until the reader has every event of the outage (the relay retries at most
   every ``retry_max_s``, 2 s, so up to that much of the drain is backoff).

    .venv/bin/python scripts/bench_dispatch_stream.py [--seconds 20] [--outage-s 30]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench_common import fmt, machine, pct, stamp
from redis.asyncio import Redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from callrouter.tickets import (
    AnswerTicket,
    CloseTicket,
    OpenTicket,
    SetSeat,
    TicketOp,
    TicketStore,
    TicketWriter,
)
from callrouter.tickets.relay import OutboxRelay

STREAM = "bench:tickets"
KIND = {OpenTicket: "opened", AnswerTicket: "answered", SetSeat: "seated",
        CloseTicket: "closed"}
_serial = itertools.count()


def call_ops(seat: bool = True) -> list[TicketOp]:
    n = next(_serial)
    tid = f"B{n:07d}-{secrets.token_hex(2)}"
    at = datetime(2026, 11, 29, tzinfo=UTC) + timedelta(seconds=n)
    ops: list[TicketOp] = [
        OpenTicket(id=tid, dialled="12345", number="12345", caller="13800138000",
                   caller_name="", line="96345", category="consultation",
                   department="government service", priority=5, listed=True,
                   channel_id=f"chan-{tid}", arrived_at=at),
        AnswerTicket(tid, at + timedelta(milliseconds=20))]
    if seat:
        ops.append(SetSeat(tid, "s96345-01", at + timedelta(seconds=5)))
    ops.append(CloseTicket(tid, at + timedelta(seconds=60), "completed"))
    return ops


# --- a private redis-server -----------------------------------------------------------
class PrivateRedis:
    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            sys.exit("redis-server not found (apt-get install redis-server)")
        self.binary = binary
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait(up=True)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None
        self._wait(up=False)

    def _wait(self, up: bool) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    if up:
                        return
            except OSError:
                if not up:
                    return
            time.sleep(0.01)
        raise RuntimeError(f"redis-server on {self.port} not {'up' if up else 'down'}")


# --- databases --------------------------------------------------------------------------
@contextmanager
def database(backend: str, pg_url: str) -> Iterator[str]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="bench-dispatch-") as tmp:
            yield f"sqlite:///{Path(tmp) / 'tickets.sqlite3'}"
        return
    admin = create_engine(make_url(pg_url).set(database="postgres"),
                          isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    name = f"callrouter_bench_{secrets.token_hex(6)}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield admin.url.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


class Reader:
    """XREAD from the start of the stream; notes when each event became readable."""

    def __init__(self, redis_url: str, stream: str) -> None:
        self.stream = stream
        self.redis = Redis.from_url(redis_url, decode_responses=True, socket_timeout=5,
                                    socket_connect_timeout=1)
        self.seen: dict[tuple[str, str], float] = {}
        self.last_id = "0-0"

    async def run(self) -> None:
        while True:
            try:
                reply = await self.redis.xread({self.stream: self.last_id}, count=1000,
                                               block=500)
            except Exception:  # noqa: BLE001 - Redis away: retry
                await asyncio.sleep(0.1)
                continue
            now = time.monotonic()
            for _name, entries in reply or []:
                for entry_id, fields in entries:
                    self.last_id = entry_id
                    self.seen.setdefault((fields["ticket_id"], fields["kind"]), now)

    def restart(self) -> None:
        self.last_id = "0-0"  # a restarted Redis without persistence starts empty

    async def close(self) -> None:
        await self.redis.aclose()


async def bench_latency(url: str, redis_url: str, rate: float, seconds: float,
                        linger: float, poll: float, busy_ops_s: float,
                        min_gap_s: float, mark_delay_s: float) -> dict[str, float | None]:
    store = TicketStore(url)
    store.create_schema()
    writer = TicketWriter(store, linger_s=linger, busy_ops_s=busy_ops_s, min_gap_s=min_gap_s)
    stream = f"{STREAM}:{secrets.token_hex(4)}"  # this run's events only
    relay = OutboxRelay(store, redis_url, stream, poll_s=poll, mark_delay_s=mark_delay_s)
    reader = Reader(redis_url, stream)
    submitted: dict[tuple[str, str], float] = {}
    tasks = [asyncio.create_task(t) for t in (writer.run(), relay.run(), reader.run())]
    try:
        pending: list[TicketOp] = []
        interval = 1 / rate
        cpu_start = time.process_time()  # this process: writer, relay, reader and the op source
        start = time.monotonic()
        for i in itertools.count():
            due = start + i * interval
            if due > start + seconds:
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if not pending:
                pending = call_ops()
            op = pending.pop(0)
            submitted[(op.id, KIND[type(op)])] = time.monotonic()
            writer.submit(op)
        await writer.drain(timeout=30)
        cpu_s = time.process_time() - cpu_start
        deadline = time.monotonic() + 30
        while (sum(k in reader.seen for k in submitted) < len(submitted)
               and time.monotonic() < deadline):
            await asyncio.sleep(0.05)
    finally:
        await writer.close(timeout=10)
        await relay.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await reader.close()
        store.close()
    ms = [(reader.seen[k] - t) * 1000 for k, t in submitted.items() if k in reader.seen]
    return {"n": len(submitted), "missing": len(submitted) - len(ms), "p50": pct(ms, 50),
            "p99": pct(ms, 99), "max": max(ms) if ms else None,
            "cpu_ms": cpu_s * 1000 / max(1, len(submitted))}


async def bench_throughput(url: str, redis_url: str, backlog: int) -> tuple[int, float]:
    store = TicketStore(url)
    store.create_schema()
    calls = backlog // 4
    for start in range(0, calls, 250):
        store.apply([op for _ in range(min(250, calls - start)) for op in call_ops()])
    total = store.outbox_backlog()[0]
    relay = OutboxRelay(store, redis_url, f"{STREAM}:throughput:{secrets.token_hex(4)}")
    started = time.monotonic()
    task = asyncio.create_task(relay.run())
    while relay.sent < total:
        await asyncio.sleep(0.01)
    elapsed = time.monotonic() - started
    await relay.close()
    await task
    store.close()
    return total, total / elapsed


async def bench_outage(url: str, redis: PrivateRedis, outage_s: float,
                       calls_per_s: float) -> dict[str, float]:
    store = TicketStore(url)
    store.create_schema()
    writer = TicketWriter(store, linger_s=0.2, busy_ops_s=100.0, min_gap_s=0.2)
    stream = f"{STREAM}:outage:{secrets.token_hex(4)}"
    relay = OutboxRelay(store, redis.url, stream)
    reader = Reader(redis.url, stream)
    produce = True
    produced = 0

    async def producer() -> None:
        nonlocal produced
        while produce:
            for op in call_ops(seat=False):  # 3 changes a call: ~60 changes/s at 20 calls/s
                writer.submit(op)
                produced += 1
            await asyncio.sleep(1 / calls_per_s)

    tasks = [asyncio.create_task(t) for t in (writer.run(), relay.run(), producer(),
                                                  reader.run())]
    try:
        await asyncio.sleep(3)
        redis.kill()
        await asyncio.sleep(outage_s)
        backlog, _ = await asyncio.to_thread(store.outbox_backlog)
        redis.start()
        reader.restart()
        restarted = time.monotonic()
        while (await asyncio.to_thread(store.outbox_backlog))[0] > 0:
            await asyncio.sleep(0.02)
        drained = time.monotonic() - restarted
        # every event written during the outage readable (those before were lost with
        # the non-persistent Redis)
        while len(reader.seen) < backlog:
            await asyncio.sleep(0.02)
        readable = time.monotonic() - restarted
        produce = False
    finally:
        produce = False
        await writer.close(timeout=10)
        await relay.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await reader.close()
        store.close()
    return {"backlog": backlog, "drained_s": drained, "readable_s": readable}


async def main_async(args: argparse.Namespace) -> None:
    redis = PrivateRedis()
    redis.start()
    rows: list[str] = []
    try:
        for backend in args.backends.split(","):
            with database(backend, args.pg_url) as url:
                lat = await bench_latency(url, redis.url, args.rate, args.seconds, args.linger,
                                        args.poll, args.busy_ops_s, args.min_gap, args.mark_delay)
                rows.append(f"| {backend} | change -> readable at {args.rate:g}/s for "
                            f"{args.seconds:g} s (writer linger {args.linger:g} s above "
                            f"{args.busy_ops_s:g} ops/s, commits {args.min_gap:g} s apart below, relay safety poll "
                            f"{args.poll:g} s, marks {args.mark_delay:g} s apart) | "
                            f"p50 {fmt(lat['p50'])} ms, p99 {fmt(lat['p99'])} ms, max "
                            f"{fmt(lat['max'])} ms ({lat['n']} changes, {lat['missing']} "
                            f"missing; process CPU {fmt(lat['cpu_ms'], 2)} ms per change) |")
                print(rows[-1], flush=True)
            if args.backlog > 0:
                with database(backend, args.pg_url) as url:
                    total, rate = await bench_throughput(url, redis.url, args.backlog)
                    rows.append(f"| {backend} | relay throughput, {total} events queued | "
                                f"{rate:,.0f} events/s |")
                    print(rows[-1], flush=True)
            if args.outage_s > 0:
                with database(backend, args.pg_url) as url:
                    out = await bench_outage(url, redis, args.outage_s, args.calls_per_s)
                    rows.append(
                        f"| {backend} | drain after a {args.outage_s:g} s Redis outage at "
                        f"{args.calls_per_s:g} calls/s ({out['backlog']:.0f} events "
                        f"queued) | outbox empty {out['drained_s']:.2f} s, all readable "
                        f"{out['readable_s']:.2f} s after Redis returned |")
                    print(rows[-1], flush=True)
    finally:
        redis.kill()
    print()
    print(f"Machine: {machine()}; {stamp()}")
    print()
    print("| backend | measure | result |")
    print("|---|---|---|")
    for row in rows:
        print(row)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", default="sqlite,postgresql")
    p.add_argument("--pg-url", default=os.environ.get(
        "CALLROUTER_TEST_PG_URL", "postgresql+psycopg://root@127.0.0.1:5432/postgres"))
    p.add_argument("--rate", type=float, default=50.0, help="ticket changes per second")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--linger", type=float, default=0.2,
                   help="writer linger under load (engine: 0.2 above --busy-ops-s)")
    p.add_argument("--busy-ops-s", type=float, default=100.0,
                   help="the writer lingers only above this many ops/s (engine: 100)")
    p.add_argument("--min-gap", type=float, default=0.2,
                   help="below --busy-ops-s, commits start at least this far apart (engine: ticket_commit_gap_ms, default 200 ms)")
    p.add_argument("--mark-delay", type=float, default=1.0,
                   help="the relay marks published rows sent this often (engine: 1.0)")
    p.add_argument("--poll", type=float, default=1.0,
                   help="relay safety poll interval (OutboxRelay default and the engine: 1.0; "
                        "commits in this process wake the relay)")
    p.add_argument("--backlog", type=int, default=20000, help="0 skips the throughput run")
    p.add_argument("--outage-s", type=float, default=30.0, help="0 skips the outage run")
    p.add_argument("--calls-per-s", type=float, default=20.0)
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
