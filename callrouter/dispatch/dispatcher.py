"""The dispatcher (``callrouter dispatch run``): ticket events in, orders and webhooks out.

Three loops in one task group, all on the event loop, every database call in a thread:

- **consumer**: consumer group ``dispatch`` on the tickets stream (:class:`GroupConsumer`).
  A ticket's ``closed`` (a seat answered the call; an abandoned call is ``abandoned``),
  ``dispatch_requested`` (a seat sent it) or ``intake`` (another channel) event opens the
  ticket's first order (:meth:`DispatchStore.open_order`, once per ticket whatever the
  number of events or deliveries). The event is acknowledged on the stream only after the
  order committed; while the database is away the handler retries, so nothing is
  dead-lettered for an outage.
- **notifier**: claims due webhook deliveries (a lease, so several dispatchers share the
  work and a killed one's claims expire), POSTs each, signed, to its unit's endpoint, and
  marks it delivered, or failed with a retry after a backoff that doubles up to
  ``retry_max_s``. The delivery rows are the outbox: an endpoint that is down loses nothing.
- **escalator**: orders not acknowledged by their deadline go to the next unit of the
  chain (:meth:`DispatchStore.escalate_due`, rows taken with SKIP LOCKED); it sleeps until
  the next deadline, at most ``poll_s``.

Webhook: ``POST`` JSON ``{"delivery", "order", "ticket"}`` with ``X-Callrouter-Delivery``,
``X-Callrouter-Timestamp`` (unix seconds) and ``X-Callrouter-Signature: sha256=<hex
HMAC-SHA256 of "<timestamp>.<body>">`` under the unit's secret (:func:`unit_secrets`). A 2xx
answer is delivery; the same delivery may come again (at least once): dedupe by its id.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import hmac
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import aiohttp
from redis.asyncio import Redis
from sqlalchemy.exc import DBAPIError, OperationalError

from callrouter.config import Settings
from callrouter.tasks import poll_loop
from callrouter.tickets.consumer import Batch, GroupConsumer, StreamEvent

from .store import Delivery, DispatchStore
from .units import Units

log = logging.getLogger("callrouter.dispatch")

GROUP: Final = "dispatch"
ORDER_KINDS: Final = frozenset({"closed", "dispatch_requested", "intake"})
SIGNATURE_PREFIX: Final = "sha256="
SECRET_PREFIX: Final = "webhook:"


# --- pure parts ------------------------------------------------------------------------
def wants_order(event: StreamEvent) -> bool:
    """Does this ticket event open an order? A closed call only when a seat answered it."""
    if event.kind == "closed":
        return bool(event.ticket.get("seat_answered_at"))
    return event.kind in ORDER_KINDS


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return SIGNATURE_PREFIX + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, now: float | None = None,
           tolerance_s: float = 300) -> bool:
    """A receiver's check: the signature matches and the timestamp is recent (no replay)."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature)


def webhook_body(delivery: Delivery) -> bytes:
    order = {k: v for k, v in delivery.order.items() if k not in ("ticket", "delivery_id")}
    return json.dumps({"delivery": delivery.id, "order": order, "ticket": delivery.order.get("ticket")},
                      ensure_ascii=False, separators=(",", ":")).encode()


def retry_delay(attempts: int, initial_s: float, max_s: float) -> float:
    """Seconds before attempt ``attempts + 1`` of a delivery that failed ``attempts`` times."""
    return float(min(max_s, initial_s * 2 ** max(0, min(attempts - 1, 30))))


def unit_secrets(settings: Settings, units: Units) -> dict[str, str]:
    """Each webhook unit's signing secret, generated on first use into the secrets file
    (mode 0600, under the home directory, never in git). A lock file keeps two dispatchers
    starting at once from generating two different secrets for one unit."""
    settings.home.mkdir(parents=True, exist_ok=True)
    fd = os.open(settings.home / ".secrets.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return {u.id: settings.secret(SECRET_PREFIX + u.id) for u in units.units if u.webhook is not None}
    finally:
        os.close(fd)


def unit_secret(settings: Settings, unit_id: str) -> str:
    settings.home.mkdir(parents=True, exist_ok=True)
    fd = os.open(settings.home / ".secrets.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return settings.secret(SECRET_PREFIX + unit_id)
    finally:
        os.close(fd)


@dataclass
class DispatchMetrics:
    events: int = 0
    orders_opened: int = 0
    delivered: int = 0
    delivery_failures: int = 0
    escalated: int = 0

    def to_json(self) -> dict[str, int]:
        return dict(self.__dict__)


class Dispatcher:
    """One dispatcher process's work; ``run(stop)`` until ``stop`` is set."""

    def __init__(self, store: DispatchStore, redis_url: str, stream: str, secrets: Mapping[str, str], *,
                 name: str | None = None, lease_s: float = 60, webhook_timeout_s: float = 10,
                 retry_initial_s: float = 0.5, retry_max_s: float = 300, idle_claim_ms: int = 30_000,
                 poll_s: float = 1.0, batch: int = 50, concurrency: int = 16) -> None:
        if store.units is None:
            raise ValueError("the dispatcher's DispatchStore needs units")
        if lease_s <= webhook_timeout_s * 2:
            # a claim must outlive the requests sent under it, or another dispatcher resends them
            raise ValueError("lease_s must be more than twice webhook_timeout_s")
        self.store = store
        self.units: Units = store.units
        self.redis_url = redis_url
        self.stream = stream
        self.secrets = dict(secrets)
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.owner = f"{self.name}:{uuid.uuid4().hex[:8]}"[:64]
        self.lease_s = lease_s
        self.webhook_timeout_s = webhook_timeout_s
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.idle_claim_ms = idle_claim_ms
        self.poll_s = poll_s
        self.batch = batch
        self.metrics = DispatchMetrics()
        self._limit = asyncio.Semaphore(concurrency)
        self._notify_wake = asyncio.Event()
        self._escalate_wake = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None
        # deliveries claimed for us when their orders were opened, for the notifier's next round
        self._claimed: list[Delivery] = []

    async def run(self, stop: asyncio.Event) -> None:
        redis = Redis.from_url(self.redis_url, decode_responses=True, socket_timeout=15, socket_connect_timeout=5)
        consumer = GroupConsumer(redis, self.stream, GROUP, self.name, count=self.batch, block_ms=1000,
                                 idle_claim_ms=self.idle_claim_ms, max_deliveries=20)
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.webhook_timeout_s))
        log.info("event=dispatcher_started name=%s owner=%s stream=%s units=%d webhooks=%d", self.name, self.owner,
                 self.stream, len(self.units), len(self.secrets))
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(consumer.run(Batch(lambda events: self._handle(events, stop)), stop),
                                  name="dispatch-consumer")
                tasks.create_task(poll_loop("dispatch-notifier", self._notify_step, stop, self._notify_wake,
                                            retry_max_s=5.0), name="dispatch-notifier")
                tasks.create_task(poll_loop("dispatch-escalator", self._escalate_step, stop, self._escalate_wake,
                                            retry_max_s=5.0), name="dispatch-escalator")
        finally:
            await self._http.close()
            await redis.aclose()
            try:
                await asyncio.to_thread(self.store.release_deliveries, self.owner)
            except Exception as exc:  # noqa: BLE001 - the lease runs out by itself
                log.warning("event=dispatch_release_failed error=%r", exc)
            log.info("event=dispatcher_stopped name=%s %s", self.name,
                     " ".join(f"{k}={v}" for k, v in self.metrics.to_json().items()))

    # --- the consumer -----------------------------------------------------------------------
    async def _handle(self, events: list[StreamEvent], stop: asyncio.Event) -> None:
        """One read's events: the orders they ask for, in one transaction."""
        self.metrics.events += len(events)
        reasons = {e.ticket_id: e.kind for e in events if wants_order(e)}
        if not reasons:
            return
        delay = 0.1
        while True:
            try:
                # the new deliveries come claimed for us: sent at once, without a claim round
                opened = await asyncio.to_thread(self.store.open_orders, list(reasons), datetime.now(UTC),
                                                 reasons=reasons, claim_for=self.owner, lease_s=self.lease_s)
                break
            except (OperationalError, DBAPIError) as exc:
                # the database is away: hold these events (unacknowledged) until it is back
                log.warning("event=dispatch_db_failed events=%d retry_in_s=%.2g error=%r", len(reasons), delay, exc)
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    pass
                if stop.is_set():
                    raise
                delay = min(delay * 2, 5.0)
        # the rest had their order already (a redelivery, or a second event of the ticket)
        for order in opened:
            self.metrics.orders_opened += 1
            log.info("event=order_opened order_id=%s ticket_id=%s unit=%s kind=%s", order["id"], order["ticket_id"],
                     order["unit"], reasons.get(order["ticket_id"], ""))
        for order in opened:
            if "delivery_id" in order:
                self._claimed.append(Delivery(order["delivery_id"], order["unit"], 0, order))
        if opened:
            self._notify_wake.set()
            self._escalate_wake.set()

    # --- the notifier -----------------------------------------------------------------------
    async def _notify_step(self) -> float:
        deliveries, self._claimed = self._claimed, []
        if not deliveries:
            deliveries = await asyncio.to_thread(self.store.claim_deliveries, self.owner, self.batch, self.lease_s)
        if not deliveries:
            return self.poll_s
        errors = await asyncio.gather(*(self._deliver(d) for d in deliveries))
        done = [d for d, error in zip(deliveries, errors, strict=True) if error is None]
        # marked in one transaction; a dispatcher killed before it sends them again (at least once)
        await asyncio.to_thread(self.store.delivered, self.owner, [d.id for d in done], datetime.now(UTC))
        self.metrics.delivered += len(done)
        for d in done:
            log.info("event=webhook_delivered delivery=%s order_id=%s unit=%s attempt=%d", d.id, d.order["id"],
                     d.unit, d.attempts + 1)
        for d, error in zip(deliveries, errors, strict=True):
            if error is not None:
                unit = self.units.unit(d.unit)
                gone = unit is None or unit.webhook is None or d.unit not in self.secrets
                await self._failed(d, error, self.retry_max_s if gone else
                                   retry_delay(d.attempts + 1, self.retry_initial_s, self.retry_max_s))
        return 0.0

    async def _deliver(self, delivery: Delivery) -> str | None:
        """POST ``delivery`` to its unit; None when taken (2xx), else what went wrong."""
        unit = self.units.unit(delivery.unit)
        secret = self.secrets.get(delivery.unit)
        if unit is None or unit.webhook is None or secret is None:
            # the unit lost its webhook in the units file since: keep the delivery, try later
            return "the unit has no webhook in the units file"
        if self._http is None:
            raise RuntimeError("Dispatcher._deliver outside run()")
        body = webhook_body(delivery)
        timestamp = int(time.time())
        headers = {"Content-Type": "application/json", "X-Callrouter-Delivery": delivery.id,
                   "X-Callrouter-Timestamp": str(timestamp), "X-Callrouter-Signature": sign(secret, timestamp, body)}
        async with self._limit:
            try:
                async with self._http.post(unit.webhook, data=body, headers=headers) as response:
                    await response.read()
                    if not 200 <= response.status < 300:
                        return f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                return f"{type(exc).__name__}: {exc}"[:300]
        return None

    async def _failed(self, delivery: Delivery, error: str, retry_in_s: float) -> None:
        self.metrics.delivery_failures += 1
        level = logging.WARNING if delivery.attempts % 10 == 0 else logging.DEBUG
        log.log(level, "event=webhook_failed delivery=%s order_id=%s unit=%s attempt=%d retry_in_s=%.3g error=%r",
                delivery.id, delivery.order["id"], delivery.unit, delivery.attempts + 1, retry_in_s, error)
        await asyncio.to_thread(self.store.delivery_failed, self.owner, delivery.id, error,
                                datetime.now(UTC) + timedelta(seconds=retry_in_s))

    # --- the escalator ----------------------------------------------------------------------
    async def _escalate_step(self) -> float:
        now = datetime.now(UTC)
        changed = await asyncio.to_thread(self.store.escalate_due, now, self.batch)
        if changed:
            for order in changed:
                if order["state"] == "escalated" or order["overdue"]:
                    self.metrics.escalated += 1
                    log.warning("event=order_overdue order_id=%s unit=%s state=%s", order["id"], order["unit"],
                                order["state"])
            self._notify_wake.set()
            return 0.0
        due = await asyncio.to_thread(self.store.next_due)
        if due is None:
            return self.poll_s
        return max(0.01, min(self.poll_s, (due - datetime.now(UTC)).total_seconds()))

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "owner": self.owner, **self.metrics.to_json()}


# --- the process -----------------------------------------------------------------------
def open_store(settings: Settings, *, with_units: bool = True) -> DispatchStore:
    """The DispatchStore of ``settings``: units and labels loaded and validated."""
    from callrouter.categories import load_categories
    from callrouter.numberplan import load_plan
    from callrouter.tickets import TicketStore

    from .units import load_units

    plan = load_plan(settings.numberplan_path)
    units = load_units(settings.units_path, plan) if with_units else None
    labels = load_categories(settings.categories_path, plan)
    tickets = TicketStore(settings.database_url)
    tickets.create_schema()
    return DispatchStore(tickets, units=units, labels=labels, ack_max_s=settings.dispatch_ack_max_s)


async def serve(settings: Settings, *, name: str | None = None, idle_claim_ms: int = 30_000) -> Dispatcher:
    """Run a dispatcher until SIGTERM or SIGINT; returns it (for its metrics)."""
    import signal

    from callrouter.tickets.relay import stream_name

    store = await asyncio.to_thread(open_store, settings)
    if store.units is None:
        raise RuntimeError("no units")
    secrets = await asyncio.to_thread(unit_secrets, settings, store.units)
    dispatcher = Dispatcher(store, settings.redis_url, stream_name(settings.redis_prefix), secrets, name=name,
                            lease_s=settings.dispatch_lease_s, webhook_timeout_s=settings.dispatch_webhook_timeout_s,
                            retry_max_s=settings.dispatch_retry_max_s, idle_claim_ms=idle_claim_ms)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await dispatcher.run(stop)
    finally:
        await asyncio.to_thread(store.tickets.close)
    return dispatcher
