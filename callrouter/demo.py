"""The demo of the main job: a real Asterisk, the engine, simulated seats and callers,
and dispatch to simulated units.

Brings up Asterisk (building the chroot on first run), runs the engine in this process,
registers simulated softphones for four seats of each line and logs them in, places a
traffic mix over the legacy numbers through the SIPp trunk (most callers wait for a
seat; some lose patience and hang up), then prints what the tickets say per line and per
category (by its Chinese label), read back from the ticket database. Simulated agents
finish their wrap-up a second after each call, as a quick agent would.

Dispatch, when Redis (where the engine's relay publishes ticket changes) answers: a real
dispatcher runs in this process (:class:`~callrouter.dispatch.dispatcher.Dispatcher`, as
``callrouter dispatch run`` does) and opens an order for every answered call's ticket;
simulated units (:mod:`callrouter.sim.units`) acknowledge and report each order over the
orders API with their own unit tokens; the simulated 96345 seats make the follow-up calls
(回访, :mod:`callrouter.sim.follow_ups`) with their agent tokens. The summary then counts
orders per unit, acknowledgements in time, reports, solved tickets and follow-ups. Without
Redis the calls run all the same and the summary says why dispatch was skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import statistics
import sys
import threading
import time
import urllib.parse
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from callrouter.acd import SeatLogin, WrapUpDone
from callrouter.acd.errors import ConfigFileError
from callrouter.calls import CallService
from callrouter.config import Settings
from callrouter.dispatch.dispatcher import GROUP, Dispatcher, open_store
from callrouter.dispatch.store import DispatchStore
from callrouter.engine import run_engine
from callrouter.numberplan import PlanError
from callrouter.provision import asterisk as prov
from callrouter.sim import trunk
from callrouter.sim.follow_ups import SimFollowUps
from callrouter.sim.seats import SeatSpec, start_seats
from callrouter.sim.units import ApiClient, SimUnits, sim_tokens
from callrouter.tickets import TicketStore
from callrouter.tickets.orders import OPEN_STATES
from callrouter.tickets.relay import stream_name

log = logging.getLogger("callrouter.demo")

DEMO_SEATS = [f"s110-{i:02d}" for i in range(1, 5)] + [f"s96345-{i:02d}" for i in range(1, 5)]
# after the last call, how long the units and the follow-up calls may take to finish
DISPATCH_SETTLE_S = 20.0


def _wait_s(row: dict[str, Any]) -> float | None:
    if not row.get("seat_answered_at"):
        return None
    return (datetime.fromisoformat(str(row["seat_answered_at"])) - datetime.fromisoformat(str(row["arrived_at"]))
            ).total_seconds()


def summarise(rows: list[dict[str, Any]], labels: Mapping[str, str] | None = None) -> str:
    """Calls per line (answered, within 15 s, median wait, outcomes) and per category,
    a category by its Chinese label (``labels``: slug -> label; the slug without one)."""
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
    # the label last: Chinese characters are two columns wide in a terminal
    out += ["", "line    calls  category"]
    for (line, cat), n in sorted(by_cat.items(), key=lambda kv: (kv[0][0], -kv[1], kv[0][1])):
        out.append(f"{line:<7} {n:>5}  {(labels or {}).get(cat, cat)}")
    return "\n".join(out)


# --- dispatch: the pure parts ---------------------------------------------------------------
def answered_ids(tickets: Sequence[Mapping[str, Any]]) -> set[str]:
    """The tickets of calls a seat answered: each must get an order."""
    return {str(t["id"]) for t in tickets if t.get("seat_answered_at")}


def without_order(tickets: Sequence[Mapping[str, Any]], orders: Sequence[Mapping[str, Any]]) -> list[str]:
    """Answered calls' tickets that have no order (sorted)."""
    return sorted(answered_ids(tickets) - {str(o["ticket_id"]) for o in orders})


def dispatch_settled(tickets: Sequence[Mapping[str, Any]], orders: Sequence[Mapping[str, Any]]) -> bool:
    """Every answered call's ticket has its order, no order waits for its unit and no
    follow-up call waits for a seat."""
    return (not without_order(tickets, orders) and not any(o.get("state") in OPEN_STATES for o in orders)
            and not any(t.get("follow_up") == "pending" for t in tickets))


def acknowledged_in_time(order: Mapping[str, Any]) -> bool:
    ack, due = order.get("acknowledged_at"), order.get("ack_due_at")
    if not isinstance(ack, str) or not isinstance(due, str):
        return False
    return datetime.fromisoformat(ack) <= datetime.fromisoformat(due)


def summarise_dispatch(tickets: Sequence[Mapping[str, Any]], orders: Sequence[Mapping[str, Any]]) -> str:
    """What dispatch did with the demo's tickets: orders per unit (by the unit's name),
    acknowledged in time, reported, tickets solved, follow-up calls done."""
    answered = answered_ids(tickets)
    missing = without_order(tickets, orders)
    solved = [t for t in tickets if t.get("solved_at") and str(t["id"]) in answered]
    solved_110 = sum(1 for t in solved if t.get("line") == "110")
    follow_done = sum(1 for t in tickets if t.get("follow_up") == "done")
    follow_waiting = sum(1 for t in tickets if t.get("follow_up") == "pending")
    in_time = sum(1 for o in orders if acknowledged_in_time(o))
    reported = sum(1 for o in orders if o.get("state") == "reported")
    escalated = sum(1 for o in orders if o.get("state") == "escalated")
    still_open = sum(1 for o in orders if o.get("state") in OPEN_STATES)
    got = f"dispatch: {len(answered) - len(missing)} of {len(answered)} answered calls' tickets got an order"
    if missing:
        got += f" (none yet: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''})"
    follow = f"  follow-up calls (回访) done {follow_done}"
    if follow_waiting:
        follow += f", {follow_waiting} waiting"
    out = ["", got,
           (f"  orders {len(orders)}: acknowledged in time {in_time}, reported {reported}, "
            f"escalated {escalated}, still open {still_open}"),
           (f"  tickets solved {len(solved)} of {len(answered)} (110 on the unit's report {solved_110}, "
            f"96345 after the follow-up call {len(solved) - solved_110})"),
           follow]
    per: dict[str, Counter[str]] = defaultdict(Counter)
    names: dict[str, str] = {}
    for o in orders:
        unit = str(o.get("unit"))
        names[unit] = str(o.get("unit_name") or unit)
        per[unit]["orders"] += 1
        per[unit]["in_time"] += acknowledged_in_time(o)
        per[unit]["reported"] += o.get("state") == "reported"
    if per:
        # two units may share a name (the fire brigade's duty desk and its inspection office)
        shared = {n for n, k in Counter(names.values()).items() if k > 1}
        out += ["", "orders  in time  reported  unit"]
        for unit, c in sorted(per.items(), key=lambda kv: (-kv[1]["orders"], names[kv[0]], kv[0])):
            name = f"{names[unit]} ({unit})" if names[unit] in shared else names[unit]
            out.append(f"{c['orders']:>6}  {c['in_time']:>7}  {c['reported']:>8}  {name}")
    return "\n".join(out)


def redacted(url: str) -> str:
    """``url`` without a password, to print."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


async def redis_unreachable(url: str, timeout_s: float = 3.0) -> str | None:
    """None when Redis at ``url`` answers a PING, else why not (to print)."""
    try:
        redis = Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    except ValueError as exc:
        return f"the Redis URL {redacted(url)!r} is not usable: {exc}"
    try:
        await asyncio.wait_for(redis.ping(), timeout_s * 2)
    except (RedisError, OSError, TimeoutError) as exc:
        return f"Redis at {redacted(url)} is not reachable ({type(exc).__name__}: {exc})"
    finally:
        await redis.aclose()
    return None


# --- dispatch: the running parts ------------------------------------------------------------
class DemoDispatch:
    """The demo's dispatch side: a dispatcher, the simulated units and the seats' follow-up
    calls, as tasks of this event loop that end on :meth:`close` or when ``stop`` (the
    engine's: SIGTERM, SIGINT) is set."""

    def __init__(self, settings: Settings, since: datetime, store: DispatchStore, tokens: Mapping[str, str]) -> None:
        self.settings = settings
        self.since = since
        self.store = store
        self.tokens = dict(tokens)
        self.stop = asyncio.Event()
        self.units: SimUnits | None = None
        self.follow_ups: SimFollowUps | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    @classmethod
    def prepare(cls, settings: Settings, since: datetime) -> DemoDispatch:
        """Blocking: the units file and labels (validated), tokens for the units the demo's
        calls can reach (every category's county-wide chain: seats set no town) and for
        the 96345 seats."""
        store = open_store(settings)
        if store.units is None:
            raise RuntimeError("open_store gave no units")
        reach = {u.id for cat in store.labels for u in store.units.choose(cat, None)}
        tokens = sim_tokens(settings, sorted(reach), [s for s in DEMO_SEATS if s.startswith("s96345-")])
        return cls(settings, since, store, tokens)

    async def start(self, engine_stop: asyncio.Event) -> None:
        settings = self.settings
        stream = stream_name(settings.redis_prefix)
        redis = Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=5)
        try:
            # a new group starts at the stream's end: the demo orders its own calls and
            # leaves the stream's history (earlier runs' calls) alone
            await redis.xgroup_create(stream, GROUP, id="$", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        finally:
            await redis.aclose()
        dispatcher = Dispatcher(self.store, settings.redis_url, stream, {}, name="demo",
                                lease_s=settings.dispatch_lease_s, webhook_timeout_s=settings.dispatch_webhook_timeout_s,
                                retry_max_s=settings.dispatch_retry_max_s)
        api = ApiClient(settings.api_url)
        unit_tokens = {k.removeprefix("unit:"): v for k, v in self.tokens.items() if k.startswith("unit:")}
        seat_tokens = {k.removeprefix("seat:"): v for k, v in self.tokens.items() if k.startswith("seat:")}
        self.units = SimUnits(api, settings.secret("api_token"), unit_tokens, since=self.since, seed=11)
        self.follow_ups = SimFollowUps(api, seat_tokens, since=self.since, seed=13)
        self._tasks = [asyncio.create_task(self._linked(engine_stop), name="demo-dispatch-stop"),
                       asyncio.create_task(dispatcher.run(self.stop), name="demo-dispatcher"),
                       asyncio.create_task(self._people(api), name="demo-units-and-seats")]

    async def _people(self, api: ApiClient) -> None:
        # the client's connections close as soon as the people stop: an engine stopping
        # must not wait for them
        if self.units is None or self.follow_ups is None:
            raise RuntimeError("DemoDispatch._people before start()")
        async with api, asyncio.TaskGroup() as tasks:
            tasks.create_task(self.units.run(self.stop), name="demo-units")
            tasks.create_task(self.follow_ups.run(self.stop), name="demo-follow-ups")

    async def _linked(self, engine_stop: asyncio.Event) -> None:
        stopped = asyncio.create_task(engine_stop.wait())
        own = asyncio.create_task(self.stop.wait())
        try:
            await asyncio.wait({stopped, own}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            own.cancel()
        self.stop.set()

    async def read(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The demo's tickets and their orders."""
        def read() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            tickets = [dict(t) for t in self.store.tickets.list(100_000, since=self.since)]
            ids = {str(t["id"]) for t in tickets}
            orders = [o for o in self.store.orders(open_only=False, limit=100_000) if o["ticket_id"] in ids]
            return tickets, orders
        return await asyncio.to_thread(read)

    async def settle(self, timeout_s: float) -> bool:
        """Wait until every answered call's ticket has its order and the units and seats
        are done with them: True; False after ``timeout_s`` or a stop."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not self.stop.is_set() and asyncio.get_running_loop().time() < deadline:
            if dispatch_settled(*await self.read()):
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 0.5)
            if self._failed():
                break  # said by problems(); the summary shows what was done
        return False

    def _failed(self) -> list[str]:
        return [f"{t.get_name()} ended: {t.exception()!r}" for t in self._tasks
                if t.done() and not t.cancelled() and t.exception() is not None]

    def problems(self) -> list[str]:
        out = self._failed()
        if self.units is not None and self.units.tally.errors:
            out.append(f"simulated units: {len(self.units.tally.errors)} requests failed or refused (tried again "
                       "from the order's state), e.g. "
                       f"{self.units.tally.errors[0]}")
        if self.follow_ups is not None and self.follow_ups.tally.errors:
            out.append(f"follow-up calls: {len(self.follow_ups.tally.errors)} requests failed or refused (tried "
                       "again while the ticket waits), e.g. "
                       f"{self.follow_ups.tally.errors[0]}")
        return out

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.stop.set()
        if self._tasks:
            done, pending = await asyncio.wait(self._tasks, timeout=3)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.error("event=demo_dispatch_task_failed task=%s error=%r", task.get_name(), task.exception())
            self._tasks = []
        await asyncio.to_thread(self.store.tickets.close)


def _labels(settings: Settings) -> dict[str, str]:
    from callrouter.categories import load_categories
    from callrouter.numberplan import load_plan

    try:
        return load_categories(settings.categories_path, load_plan(settings.numberplan_path))
    except (ConfigFileError, PlanError, OSError) as exc:
        print(f"warning: category labels not read ({exc}): categories show as slugs", file=sys.stderr)
        return {}


def traffic_specs(settings: Settings, calls: int, seed: int = 7) -> list[trunk.CallSpec]:
    """Callers who wait for a seat (the seat ends the call), a few who give up after 4 s."""
    rng = random.Random(seed)
    specs = trunk.storm_specs(settings, calls, -1, seed)
    return [trunk.CallSpec(s.number, s.caller, 4.0 if rng.random() < 0.15 else -1) for s in specs]


async def _demo(settings: Settings, calls: int, rate: float, keep_running: bool) -> int:
    started = datetime.now(UTC)
    stop = asyncio.Event()
    result: dict[str, int] = {}
    labels = await asyncio.to_thread(_labels, settings)
    dispatch: DemoDispatch | None = None
    skipped = await redis_unreachable(settings.redis_url)
    if skipped is None:
        try:
            dispatch = await asyncio.to_thread(DemoDispatch.prepare, settings, started)
        except (ConfigFileError, PlanError, OSError) as exc:
            skipped = f"the dispatch configuration is not usable: {exc}"
    if skipped is not None:
        print(f"dispatch skipped: {skipped}. The calls run all the same; the engine keeps the tickets' changes "
              "for the stream until Redis is back (start Redis or set CALLROUTER_REDIS_URL to see orders "
              "go to the units)", file=sys.stderr)

    def quick_agents(service: CallService) -> None:
        def on_event(kind: str, data: dict[str, Any]) -> None:
            if kind == "call_ended" and data.get("seat"):
                asyncio.get_running_loop().call_later(1.0, service.feed, WrapUpDone(str(data["seat"])))
        service.listeners.append(on_event)

    async def traffic(service: CallService) -> None:
        nonlocal dispatch, skipped
        await asyncio.wait_for(service.ari.connected.wait(), 20)
        quick_agents(service)
        seats = await asyncio.to_thread(start_seats, settings, [
            SeatSpec(s, answer_delay_s=1.0, talk_s=4.0) for s in DEMO_SEATS], seed=3)
        try:
            for seat in DEMO_SEATS:
                service.feed(SeatLogin(seat))
            if dispatch is not None:
                try:
                    await dispatch.start(stop)
                except (RedisError, OSError) as exc:  # Redis went away since it answered
                    await dispatch.close()
                    dispatch, skipped = None, f"Redis at {redacted(settings.redis_url)} failed ({exc!r})"
                    print(f"dispatch skipped: {skipped}", file=sys.stderr)
            if dispatch is not None:
                print(f"dispatch: a dispatcher on {stream_name(settings.redis_prefix)}, simulated units acknowledging "
                      "and reporting over the orders API, the 96345 seats making the follow-up calls",
                      file=sys.stderr)
            print(f"engine connected; {len(DEMO_SEATS)} simulated seats registered and logged in; placing {calls} "
                  f"calls at {rate}/s over the legacy numbers", file=sys.stderr)
            # SIGTERM / SIGINT (the engine's stop) ends the callers' SIPp at once
            cancel = threading.Event()
            cancel_on_stop = asyncio.create_task(_set_when(stop, cancel), name="demo-cancel-calls")
            try:
                report = await asyncio.to_thread(trunk.run_calls, settings, traffic_specs(settings, calls), rate,
                                                 cancel=cancel)
            finally:
                cancel_on_stop.cancel()
            if stop.is_set():
                result["interrupted"] = 1
                print("stopped by a signal before the calls were done: no summary", file=sys.stderr)
                return
            print(f"SIP: {len(report.calls) - report.failed} of {len(report.calls)} calls answered and completed; "
                  f"INVITE->200 OK p50 {report.percentile(50)} ms, p99 {report.percentile(99)} ms", file=sys.stderr)
            result["failed"] = report.failed
            for _ in range(100):  # the last hang-ups' events may still be on their way
                if not service.calls:
                    break
                await asyncio.sleep(0.1)
            if not await service.writer.drain(15):
                print("warning: tickets still pending", file=sys.stderr)
            if dispatch is not None:
                waited = time.monotonic()
                settled = await dispatch.settle(DISPATCH_SETTLE_S)
                print(f"dispatch: {'units and follow-up calls done' if settled else 'NOT settled'} "
                      f"{time.monotonic() - waited:.1f} s after the last call's ticket was written", file=sys.stderr)
                if stop.is_set():
                    result["interrupted"] = 1
                    print("stopped by a signal: the summary shows what was done by then", file=sys.stderr)
                mine, orders = await dispatch.read()
                if not keep_running:
                    await dispatch.close()
            else:
                store = TicketStore(settings.database_url)
                try:
                    rows = await asyncio.to_thread(store.list, 100_000)
                finally:
                    await asyncio.to_thread(store.close)
                mine = [r for r in rows if datetime.fromisoformat(str(r["arrived_at"])) >= started]
            print(summarise(mine, labels))
            if dispatch is not None:
                print(summarise_dispatch(mine, orders))
                for problem in dispatch.problems():
                    print(f"warning: {problem}", file=sys.stderr)
                missing = without_order(mine, orders)
                result["without_order"] = len(missing)
                if missing:
                    print(f"error: {len(missing)} answered calls' tickets got no order within "
                          f"{DISPATCH_SETTLE_S:g} s", file=sys.stderr)
            else:
                print(f"\ndispatch skipped: {skipped}")
        finally:
            if not keep_running or stop.is_set():
                if dispatch is not None:
                    await dispatch.close()
                # stopping on a signal: Asterisk goes next, no time to unregister
                await asyncio.to_thread(seats.stop, unregister=not stop.is_set())
        if keep_running:
            print(f"\nkept running: Asterisk on udp:{settings.sip_bind}:{settings.sip_port}, engine API "
                  f"{settings.api_url}, simulated seats registered"
                  + (", the dispatcher and the simulated units" if dispatch is not None else "")
                  + "; Ctrl-C stops", file=sys.stderr)
        else:
            stop.set()

    try:
        await run_engine(settings, stop, on_ready=traffic, watch_exit=False)  # Asterisk is stopped after it
    finally:
        if dispatch is not None:
            await dispatch.close()
    return 1 if result.get("failed", 1) or result.get("without_order", 0) or result.get("interrupted") else 0


async def _set_when(stop: asyncio.Event, then: threading.Event) -> None:
    await stop.wait()
    then.set()


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
