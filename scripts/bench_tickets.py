#!/usr/bin/env python3
"""Ticket write throughput through TicketWriter, on SQLite and PostgreSQL.

Each ticket is three ops (OpenTicket, AnswerTicket, CloseTicket). Ops are submitted as
calls would produce them: opens and answers in arrival order, each close ``--window``
tickets later (that many calls in progress), so closes usually update tickets written by
an earlier batch. All ops are submitted at once (a storm), then the writer drains.

Also measured, on the event loop while the writer works: the cost of ``submit()`` (the
call path's only contact with tickets) and the worst lateness of a 1 ms ticker, i.e. how
long the loop was ever kept from other work. The writer's thread shares the GIL with the
loop (CPython hands it over every 5 ms), and a full garbage collection stops every
thread; the longest collection is shown beside the stall.

Each backend gets a fresh database: a temporary SQLite file, or a temporary PostgreSQL
database ``callrouter_bench_<random>`` created through ``--pg-url`` (default
``$CALLROUTER_TEST_PG_URL`` or ``postgresql+psycopg://root@127.0.0.1:5432/postgres``)
and dropped afterwards.

    .venv/bin/python scripts/bench_tickets.py --tickets 5000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import secrets
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from callrouter.tickets import (
    AnswerTicket,
    CloseTicket,
    OpenTicket,
    TicketOp,
    TicketStore,
    TicketWriter,
    new_ticket_id,
)


@dataclass
class Result:
    backend: str
    tickets: int
    ops: int
    seconds: float
    batches: int
    submit_us: list[float]
    max_stall_ms: float
    max_gc_ms: float

    def row(self) -> str:
        s = sorted(self.submit_us)
        p99 = s[min(len(s) - 1, int(len(s) * 0.99))]
        return (f"| {self.backend} | {self.tickets:,} | {self.seconds:.2f} "
                f"| {self.tickets / self.seconds:,.0f} | {self.ops / self.seconds:,.0f} "
                f"| {self.batches} | {statistics.fmean(s):.1f} / {p99:.1f} / {s[-1]:.0f} "
                f"| {self.max_stall_ms:.1f} | {self.max_gc_ms:.1f} |")


def make_ops(n: int, window: int) -> list[TicketOp]:
    t0 = datetime.now(UTC)
    ids: list[str] = []
    ops: list[TicketOp] = []
    for i in range(n + window):
        if i < n:
            at = t0 + timedelta(milliseconds=20 * i)
            tid = new_ticket_id(at)
            ids.append(tid)
            line = "110" if i % 3 == 0 else "96345"
            ops.append(OpenTicket(
                id=tid, dialled="119" if line == "110" else "12315",
                number="119" if line == "110" else "12315", caller=f"138{i:08d}",
                caller_name="", line=line, category="fire" if line == "110" else "consumer",
                department="fire brigade" if line == "110" else "market supervision",
                priority=1 if line == "110" else 5, listed=True,
                channel_id=f"1764394381.{i}", arrived_at=at))
            ops.append(AnswerTicket(tid, at + timedelta(milliseconds=35)))
        if i >= window:
            j = i - window
            ops.append(CloseTicket(ids[j], t0 + timedelta(milliseconds=20 * j, seconds=95),
                                   "completed"))
    return ops


class GcPauses:
    """The longest garbage collection while measuring (it stops every thread)."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.longest = max(self.longest, time.perf_counter() - self._start)


class CountingStore(TicketStore):
    batches = 0

    def apply(self, ops: Sequence[TicketOp]) -> None:
        self.batches += 1
        super().apply(ops)


async def run_one(backend: str, url: str, tickets: int, window: int,
                  batch_max: int) -> Result:
    ops = make_ops(tickets, window)
    store = CountingStore(url)
    try:
        store.create_schema()
        writer = TicketWriter(store, batch_max=batch_max)
        submit_us: list[float] = []
        stall = 0.0

        async def ticker() -> None:
            nonlocal stall
            while True:
                before = time.perf_counter()
                await asyncio.sleep(0.001)
                stall = max(stall, time.perf_counter() - before - 0.001)

        gc_pauses = GcPauses()
        gc.callbacks.append(gc_pauses)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(writer.run())
            tick = tg.create_task(ticker())
            await asyncio.sleep(0.01)
            started = time.perf_counter()
            for k, op in enumerate(ops):
                t = time.perf_counter_ns()
                writer.submit(op)
                submit_us.append((time.perf_counter_ns() - t) / 1000)
                if k % 50 == 49:
                    await asyncio.sleep(0)  # as calls do: other events run in between
            if not await writer.drain(timeout=600):
                raise RuntimeError(f"{backend}: not drained, {writer.pending} pending")
            seconds = time.perf_counter() - started
            tick.cancel()
            gc.callbacks.remove(gc_pauses)
            await writer.close(timeout=10)
        assert store.count() == tickets, store.count()
        assert len(store.events()) == 3 * tickets
        return Result(backend, tickets, len(ops), seconds, store.batches, submit_us,
                      stall * 1000, gc_pauses.longest * 1000)
    finally:
        store.close()


@contextmanager
def sqlite_database() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="bench-tickets-") as tmp:
        yield f"sqlite:///{Path(tmp) / 'tickets.sqlite3'}"


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    admin = create_engine(make_url(admin_url).set(database="postgres"),
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


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--tickets", type=int, default=5000)
    parser.add_argument("--window", type=int, default=100,
                        help="calls in progress: a ticket is closed this many opens later")
    parser.add_argument("--batch-max", type=int, default=200)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--pg-url", default=os.environ.get(
        "CALLROUTER_TEST_PG_URL", "postgresql+psycopg://root@127.0.0.1:5432/postgres"))
    args = parser.parse_args()

    results: list[Result] = []
    for backend in args.backends.split(","):
        ctx = sqlite_database() if backend == "sqlite" else postgres_database(args.pg_url)
        with ctx as url:
            results.append(await run_one(backend, url, args.tickets, args.window,
                                         args.batch_max))

    print(f"\nTicketWriter, {args.tickets:,} tickets x 3 ops, batch_max {args.batch_max}, "
          f"{args.window} calls in progress\n")
    print("| backend | tickets | seconds | tickets/s | ops/s | batches "
          "| submit() µs mean / p99 / max | max loop stall ms | longest GC ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(r.row())
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
