"""Wire the engine together and run it until told to stop.

One place builds every dependency (settings -> number plan, lines, ACD, ticket store and
writer, ARI client, call service, state store, API) and owns the long-lived tasks: the
ticket writer, the ARI event loop, the ACD clock (Tick), the state saver and the API
server. Stopping drains the ticket queue and saves the state; callers stay in Asterisk
(held in their bridges, or by the dialplan) and are adopted by the next engine.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from callrouter.acd import Acd, LinesConfig, SnapshotError, load_lines
from callrouter.api import build_app
from callrouter.api.tokens import TokenStore
from callrouter.ari import AriClient
from callrouter.calls.recovery import reconcile
from callrouter.calls.service import CallService
from callrouter.calls.snapshot import StateStore
from callrouter.calls.stasis import StasisRouter
from callrouter.calls.unseen import CEL_FILE, UnseenCallImporter
from callrouter.config import Settings
from callrouter.numberplan import load_plan
from callrouter.provision.asterisk import log_dir_on_host
from callrouter.security_events import SecurityEvents
from callrouter.tickets import TicketStore, TicketWriter
from callrouter.tickets.relay import OutboxRelay, stream_name

log = logging.getLogger("callrouter.engine")

Ready = Callable[[CallService], Awaitable[None]]
TICK_S = 0.5


def restore_acd(config: LinesConfig, saved: dict[str, Any] | None) -> Acd:
    if saved and isinstance(saved.get("acd"), dict):
        try:
            acd = Acd.from_snapshot(config, saved["acd"])
            log.info("event=state_restored saved_at=%s calls=%d", saved.get("saved_at"), len(saved["acd"]["calls"]))
            return acd
        except (SnapshotError, KeyError, TypeError, ValueError) as exc:
            log.warning("event=state_not_restored error=%r: starting clean", exc)
    return Acd(config)


async def _ticker(service: CallService) -> None:
    while True:
        await asyncio.sleep(TICK_S)
        service.tick()


def _state(service: CallService) -> dict[str, Any]:
    now = service.now_ts()
    return {"saved_at": now, "acd": service.acd.snapshot(now), "engine": {**service.counters, "pid": os.getpid()}}


async def _saver(service: CallService, state: StateStore, idle_every_s: float = 5.0) -> None:
    # after every change (at most twice a second), else every few seconds: readers compute
    # growing waits from the arrival times; a storm's snapshot is not small to encode
    saved_changes, saved_at = -1, 0.0
    while True:
        await asyncio.sleep(TICK_S)
        if service.changes == saved_changes and time.monotonic() - saved_at < idle_every_s:
            continue
        saved_changes, saved_at = service.changes, time.monotonic()
        try:
            await state.save(_state(service))
        except OSError as exc:
            log.warning("event=state_save_failed error=%r", exc)


async def run_engine(settings: Settings, stop: asyncio.Event | None = None, *,
                     on_ready: Ready | None = None, handle_signals: bool = True) -> CallService:
    stop = stop or asyncio.Event()
    plan = load_plan(settings.numberplan_path)
    lines = load_lines(settings.lines_path)
    store = TicketStore(settings.database_url)
    await asyncio.to_thread(store.create_schema)
    # a database outage spools ticket changes to a durable local file, written back in order
    # every ticket change reaches dispatch through the outbox, beside the call flow; the
    # writer wakes the relay after each commit, the slow poll finds other engines' rows
    relay = OutboxRelay(store, settings.redis_url, stream_name(settings.redis_prefix), poll_s=1.0,
                        maxlen=settings.stream_maxlen, retention_s=settings.stream_retention_s,
                        outbox_retention_s=settings.outbox_retention_s, housekeeping_s=settings.housekeeping_s)
    writer = TicketWriter(store, linger_s=0.2, retry_max_s=2.0, spool_path=settings.spool_path,
                          on_written=relay.wake)
    state = StateStore(settings.redis_url, settings.state_path, settings.redis_prefix)
    acd = restore_acd(lines, await state.load())
    loop = asyncio.get_running_loop()
    if handle_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    log.info("event=engine_starting plan=%s entries=%d lines=%s db=%s ari=%s api=%s:%d", plan.source,
             len(plan.entries), ",".join(lines.line_ids), store, settings.ari_url, settings.api_bind, settings.api_port)
    ari = AriClient(settings.ari_url, settings.ari_user, settings.ari_password, settings.ari_app)
    ari.rest_over_ws = settings.ari_rest_over_ws
    await ari.open()
    service = CallService(ari, plan, writer, acd)
    # trunk calls the engine never saw (held by the dialplan while it was away), from
    # Asterisk's CEL file; Asterisk's security events for /metrics
    asterisk_logs = await asyncio.to_thread(log_dir_on_host, settings)
    unseen = UnseenCallImporter(asterisk_logs / CEL_FILE, settings.cel_state_path, plan, writer)
    service.listeners.append(unseen.on_event)
    security = SecurityEvents(asterisk_logs / "security.log")

    async def connected() -> None:
        await reconcile(service)
        unseen.after_reconcile(service)
    runner = web.AppRunner(build_app(service, TokenStore(settings.home / "tokens.json", settings.secret("api_token")), store,
                                        settings.lines_path,
                                        settings.numberplan_path, outbox_lag=lambda: relay.lag_s,
                                        relay_status=relay.metrics,
                                        extra_metrics=lambda: security.metrics_text() + unseen.metrics_text()),
                           access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.api_bind, settings.api_port)
    await site.start()
    tasks = {
        asyncio.create_task(writer.run(), name="ticket-writer"),
        asyncio.create_task(ari.run_events(StasisRouter(service), connected), name="ari-events"),
        asyncio.create_task(_ticker(service), name="acd-tick"),
        asyncio.create_task(_saver(service, state), name="state-saver"),
        asyncio.create_task(relay.run(), name="outbox-relay"),
        asyncio.create_task(unseen.run(service, max(1, settings.cel_import_s)), name="unseen-calls"),
        asyncio.create_task(security.run(), name="security-log"),
    }
    keep_running = {"ticket-writer", "outbox-relay"}  # stopped last, in order
    started = time.monotonic()
    try:
        if on_ready is not None:
            await on_ready(service)
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({stopped, *tasks}, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopped and task.exception() is not None:
                log.error("event=engine_task_died task=%s error=%r", task.get_name(), task.exception(),
                          exc_info=task.exception())
        stopped.cancel()
    finally:
        log.info("event=engine_stopping live_calls=%d pending_tickets=%d uptime_s=%.0f", len(service.calls),
                 writer.pending, time.monotonic() - started)
        for task in tasks:
            if task.get_name() not in keep_running:
                task.cancel()
        await asyncio.gather(*[t for t in tasks if t.get_name() not in keep_running], return_exceptions=True)
        await runner.cleanup()
        await service.tasks.shutdown(timeout=3.0)
        try:
            await state.save(_state(service))
        except OSError as exc:
            log.warning("event=state_save_failed error=%r", exc)
        await state.close()
        if not await writer.close(timeout=10.0):
            log.error("event=tickets_not_drained pending=%d", writer.pending)
        # the last changes go out now if Redis lets them; else the next engine's relay sends them
        await relay.drain(timeout=2.0)
        await relay.close()
        await asyncio.gather(*[t for t in tasks if t.get_name() in keep_running], return_exceptions=True)
        await ari.close()
        await asyncio.to_thread(store.close)
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        log.info("event=engine_stopped")
    return service
