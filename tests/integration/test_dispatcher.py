"""The dispatcher against real Redis and PostgreSQL (and SQLite): ticket events from the
relay become orders once, webhooks arrive signed even after the endpoint was down,
unacknowledged orders are escalated at their deadline, and a dispatcher killed with
kill -9 mid-order loses and duplicates nothing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from redis.asyncio import Redis

from callrouter.dispatch.dispatcher import Dispatcher, verify
from callrouter.dispatch.store import DispatchStore
from callrouter.dispatch.units import Units
from callrouter.tickets import SendToDispatch, TicketStore
from callrouter.tickets.relay import OutboxRelay, stream_fields

from .dispatch_helpers import PLAN, a_call, load_test_units, units_file
from .servers import PrivateRedis, free_port

pytestmark = pytest.mark.integration

MakeStore = Callable[..., tuple[TicketStore, Any]]
PREFIX = "dispatchtest"
STREAM = PREFIX + ":tickets"
SECRETS = {"north_fire": "north-secret", "county_fire": "county-secret"}


async def eventually(condition: Callable[[], Awaitable[bool]] | Callable[[], bool], timeout: float,
                     what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class Receiver:
    """A unit's webhook endpoint: records every POST and whether its signature holds."""

    port: int
    secrets: dict[str, str] = field(default_factory=lambda: dict(SECRETS))
    received: list[dict[str, Any]] = field(default_factory=list)
    runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def hook(request: web.Request) -> web.Response:
            body = await request.read()
            unit = request.match_info["unit"]
            ok = verify(self.secrets.get(unit, ""), request.headers.get("X-Callrouter-Timestamp", ""), body,
                        request.headers.get("X-Callrouter-Signature", ""))
            data = json.loads(body)
            self.received.append({"unit": unit, "valid": ok, "delivery": request.headers["X-Callrouter-Delivery"],
                                  "body": data, "at": time.time()})
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_post("/hook/{unit}", hook)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def orders(self) -> list[str]:
        return [r["body"]["order"]["id"] for r in self.received]


@asynccontextmanager
async def dispatching(tickets: TicketStore, units: Units, redis_url: str, *, dispatchers: int = 1,
                      ack_max_s: float = 0, **options: Any) -> AsyncIterator[list[Dispatcher]]:
    """The engine's relay and ``dispatchers`` dispatchers, as tasks of one task group."""
    relay = OutboxRelay(tickets, redis_url, STREAM, poll_s=0.02, retry_initial_s=0.05, retry_max_s=0.5,
                        redis_timeout_s=1.0, lease_s=5.0)
    store = DispatchStore(tickets, units=units, ack_max_s=ack_max_s)
    options = {"lease_s": 5, "webhook_timeout_s": 1, "retry_initial_s": 0.2, "retry_max_s": 2, "poll_s": 0.2,
               "idle_claim_ms": 2000, **options}
    running = [Dispatcher(store, redis_url, STREAM, SECRETS, name=f"d{i}", **options) for i in range(dispatchers)]
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(relay.run())
        for d in running:
            tg.create_task(d.run(stop))
        try:
            yield running
        finally:
            stop.set()
            await relay.close()


def orders_of(tickets: TicketStore) -> Callable[[], Awaitable[list[dict[str, Any]]]]:
    store = DispatchStore(tickets)

    async def read() -> list[dict[str, Any]]:
        return await asyncio.to_thread(store.orders, None, False, 10_000)
    return read


async def test_a_redelivered_event_makes_no_second_order(backend: str, make_store: MakeStore,
                                                         private_redis: PrivateRedis, tmp_path: Path) -> None:
    tickets, _ = make_store(backend)
    units = load_test_units(tmp_path / "units.toml")
    read = orders_of(tickets)
    now = datetime.now(UTC)
    async with dispatching(tickets, units, private_redis.url, dispatchers=2):
        tickets.apply(a_call("T1", now))
        tickets.apply(a_call("T2", now, town=None, seated=False, outcome="abandoned"))  # no seat: no order
        await eventually(lambda: _count(read, 1), 10, "the order of T1")
        # the same events again on the stream (a relay that died before marking them sent),
        # and a seat sending the ticket once more
        redis = Redis.from_url(private_redis.url, decode_responses=True)
        for row in tickets.outbox():
            await redis.xadd(STREAM, stream_fields(row))  # type: ignore[arg-type]
        await redis.aclose()
        tickets.apply([SendToDispatch("T1", "seat:s110-01", now + timedelta(minutes=2))])
        await eventually(lambda: _group_done(private_redis.url), 10, "every event handled")
        orders = await read()
    assert [(o["id"], o["unit"]) for o in orders] == [("OT1-1", "north_fire")]
    assert (tickets.get("T1") or {})["dispatched_at"] is not None


async def _count(read: Callable[[], Awaitable[list[dict[str, Any]]]], n: int) -> bool:
    return len(await read()) >= n


async def _group_done(redis_url: str) -> bool:
    redis = Redis.from_url(redis_url, decode_responses=True)
    try:
        groups = await redis.xinfo_groups(STREAM)
        info = await redis.xinfo_stream(STREAM)
    finally:
        await redis.aclose()
    group = next((g for g in groups if g["name"] == "dispatch"), None)
    return bool(group and group["pending"] == 0 and group["last-delivered-id"] == info["last-generated-id"])


async def test_a_unit_that_never_acknowledges_is_escalated_at_its_deadline(
        backend: str, make_store: MakeStore, private_redis: PrivateRedis, tmp_path: Path) -> None:
    tickets, _ = make_store(backend)
    units = load_test_units(tmp_path / "units.toml")
    store = DispatchStore(tickets, units=units)
    read = orders_of(tickets)
    async with dispatching(tickets, units, private_redis.url, ack_max_s=1.5):
        tickets.apply(a_call("T1", datetime.now(UTC)))
        await eventually(lambda: _count(read, 1), 10, "the first order")
        first = (await read())[0]  # north_fire never acknowledges it
        await eventually(lambda: _count(read, 2), 10, "the escalation")
        escalated_at = time.time()
        orders = {o["id"]: o for o in await read()}
    due = datetime.fromisoformat(first["ack_due_at"]).timestamp()
    assert due <= escalated_at <= due + 2.5, "escalated at the deadline (poll 0.2 s), not long after"
    assert orders["OT1-1"]["state"] == "escalated" and orders["OT1-1"]["overdue"] is True
    assert orders["OT1-2"]["unit"] == "county_fire" and orders["OT1-2"]["state"] in ("notified", "escalated")
    board = await asyncio.to_thread(store.summary, datetime.now(UTC))
    assert {r["unit"]: r["overdue"] for r in board}["north_fire"] == 1
    assert board[0]["overdue"] >= 1, "the units with overdue orders come first"


async def test_an_endpoint_down_for_30_s_gets_every_notification_once_back(
        make_store: MakeStore, private_redis: PrivateRedis, tmp_path: Path) -> None:
    tickets, _ = make_store("postgresql")
    port = free_port()
    units = load_test_units(tmp_path / "units.toml", webhook=f"http://127.0.0.1:{port}/hook/north_fire")
    receiver = Receiver(port)
    read = orders_of(tickets)
    async with dispatching(tickets, units, private_redis.url, dispatchers=2) as running:
        now = datetime.now(UTC)
        for i in range(10):
            tickets.apply(a_call(f"T{i}", now))
        await eventually(lambda: _count(read, 10), 15, "ten orders")
        await asyncio.sleep(30)  # the endpoint is down all this time
        assert receiver.received == []
        failures = sum(d.metrics.delivery_failures for d in running)
        assert failures >= 10, "every delivery was tried and failed"
        await receiver.start()
        try:
            await eventually(lambda: len(set(receiver.orders())) == 10, 10, "every notification")
            await asyncio.sleep(0.5)  # a second copy would come now
        finally:
            await receiver.stop()
    assert sorted(receiver.orders()) == sorted(f"OT{i}-1" for i in range(10))
    assert all(r["valid"] for r in receiver.received)
    assert len(receiver.received) == 10, "each once: two dispatchers never send one delivery both"
    assert len({r["delivery"] for r in receiver.received}) == 10
    body = receiver.received[0]["body"]
    assert set(body) == {"delivery", "order", "ticket"} and body["ticket"]["town"] == "north"
    assert all(d["delivered_at"] for d in DispatchStore(tickets).deliveries())


def _dispatcher_env(tmp_path: Path, db_url: str, redis_url: str, units: Path) -> dict[str, str]:
    return {**os.environ, "CALLROUTER_HOME": str(tmp_path / "home"), "CALLROUTER_DB_URL": db_url,
            "CALLROUTER_REDIS_URL": redis_url, "CALLROUTER_REDIS_PREFIX": PREFIX, "CALLROUTER_UNITS": str(units),
            "CALLROUTER_NUMBERPLAN": str(PLAN), "CALLROUTER_DISPATCH_RETRY_MAX_S": "1",
            "CALLROUTER_DISPATCH_LEASE_S": "5", "CALLROUTER_DISPATCH_WEBHOOK_TIMEOUT_S": "2"}


def _start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as err:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "callrouter.cli", "dispatch", "run", "--name", "d1",
                                 "--claim-idle-ms", "3000"], env=env, stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)


async def test_kill_9_mid_order_loses_and_duplicates_nothing(
        make_store: MakeStore, private_redis: PrivateRedis, tmp_path: Path) -> None:
    tickets, database = make_store("postgresql")
    port = free_port()
    path = units_file(tmp_path / "units.toml", webhook=f"http://127.0.0.1:{port}/hook/north_fire")
    units = load_test_units(tmp_path / "units2.toml")  # for the relay side only
    env = _dispatcher_env(tmp_path, database.url, private_redis.url, path)
    secret = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "callrouter.cli", "dispatch", "secret",
                                                      "north_fire"], env=env, check=True, capture_output=True,
                                     text=True)
    receiver = Receiver(port, {"north_fire": secret.stdout.strip()})
    await receiver.start()
    read = orders_of(tickets)
    log = tmp_path / "dispatcher.log"
    proc = _start(env, log)
    total = 400
    try:
        async with dispatching(tickets, units, private_redis.url, dispatchers=0):
            now = datetime.now(UTC)

            async def write() -> None:  # 100 calls a second, so the kill lands while tickets still come
                for start in range(0, total, 25):
                    await asyncio.to_thread(tickets.apply, [op for i in range(start, start + 25)
                                                            for op in a_call(f"T{i:03d}", now)])
                    await asyncio.sleep(0.25)

            writing = asyncio.create_task(write())
            await eventually(lambda: _count(read, 30), 30, "the dispatcher at work")
            os.kill(proc.pid, signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 5)
            killed_at = len(await read())
            proc = _start(env, log)
            await writing
            await eventually(lambda: _count(read, total), 60, "every order after the restart")
            await eventually(lambda: len(set(receiver.orders())) >= total, 30, "every webhook")
            await eventually(lambda: _group_done(private_redis.url), 10, "every event acknowledged")
            orders = await read()
    finally:
        with suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        if proc.poll() is None:
            proc.kill()
        await receiver.stop()
    assert sorted(o["id"] for o in orders) == sorted(f"OT{i:03d}-1" for i in range(total))
    assert sorted(set(receiver.orders())) == sorted(o["id"] for o in orders)
    assert all(r["valid"] for r in receiver.received)
    # at least once: a delivery sent just before the kill may come twice, under its one id
    by_order: dict[str, set[str]] = {}
    for r in receiver.received:
        by_order.setdefault(r["body"]["order"]["id"], set()).add(r["delivery"])
    assert all(len(ids) == 1 for ids in by_order.values())
    assert 0 < killed_at < total, "killed mid-order"


def test_cli_report_secret_and_units_check(make_store: MakeStore, tmp_path: Path) -> None:
    tickets, database = make_store("sqlite")
    path = units_file(tmp_path / "units.toml", webhook="http://127.0.0.1:9/hook/north_fire")
    store = DispatchStore(tickets, units=load_test_units(tmp_path / "units-copy.toml"))
    t0 = datetime(2026, 11, 3, 8, 0, tzinfo=UTC)
    tickets.apply(a_call("T1", t0))
    store.open_order("T1", t0)
    store.acknowledge("OT1-1", "north_fire", "u", t0 + timedelta(seconds=90))
    store.report("OT1-1", "north_fire", "done", True, t0 + timedelta(seconds=600))
    env = _dispatcher_env(tmp_path, database.url, "redis://127.0.0.1:1/0", path)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "callrouter.cli", "dispatch", *args], env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    rows = json.loads(cli("report", "--month", "2026-11", "--json").stdout)
    assert [(r["unit"], r["orders"], r["acknowledged_in_time"], r["median_ack_s"], r["median_solve_s"])
            for r in rows] == [("north_fire", 1, 1, 90.0, 600.0)]
    csv_text = cli("report", "--month", "2026-11", "--csv").stdout
    assert csv_text.splitlines()[1].startswith("2026-11,north_fire,北镇消防站,1,1,0,90.0,600.0,0")
    bad_month = cli("report", "--month", "November")
    assert bad_month.returncode == 2 and "YYYY-MM" in bad_month.stderr
    secret = cli("secret", "north_fire")
    assert secret.returncode == 0 and len(secret.stdout.strip()) >= 32
    assert cli("secret", "north_fire").stdout == secret.stdout, "generated once, then kept"
    assert (tmp_path / "home" / "secrets.json").stat().st_mode & 0o777 == 0o600
    assert cli("secret", "nobody").returncode == 1
    assert cli("units", "check").returncode == 0
    broken = tmp_path / "broken.toml"
    broken.write_text(path.read_text(encoding="utf-8").replace('area = "north"', 'area = "west"'), encoding="utf-8")
    checked = cli("units", "check", "--file", str(broken))
    line = next(i for i, text in enumerate(broken.read_text(encoding="utf-8").splitlines(), start=1)
                if text == 'area = "west"')
    assert checked.returncode == 1 and f"{broken}:{line}: unit north_fire: unknown area 'west'" in checked.stderr
