"""Wire the engine together and run it until told to stop.

One place builds every dependency (settings -> number plan, ticket store and writer,
ARI client, call service) and owns the long-lived tasks: the ticket writer and the
ARI event loop. Stopping drains the ticket queue; callers stay in Asterisk (held with
music in Stasis) and are adopted by the next engine that connects.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

from callrouter.ari import AriClient
from callrouter.calls.service import CallService
from callrouter.calls.stasis import StasisRouter
from callrouter.config import Settings
from callrouter.numberplan import load_plan
from callrouter.tickets import TicketStore, TicketWriter

log = logging.getLogger("callrouter.engine")

Ready = Callable[[CallService], Awaitable[None]]


async def run_engine(settings: Settings, stop: asyncio.Event | None = None, *,
                     on_ready: Ready | None = None, handle_signals: bool = True) -> CallService:
    stop = stop or asyncio.Event()
    plan = load_plan(settings.numberplan_path)
    store = TicketStore(settings.database_url)
    await asyncio.to_thread(store.create_schema)
    writer = TicketWriter(store, linger_s=0.2)
    loop = asyncio.get_running_loop()
    if handle_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    log.info("event=engine_starting plan=%s entries=%d db=%s ari=%s", plan.source, len(plan.entries),
             store, settings.ari_url)
    ari = AriClient(settings.ari_url, settings.ari_user, settings.ari_password, settings.ari_app)
    ari.rest_over_ws = settings.ari_rest_over_ws
    await ari.open()
    service = CallService(ari, plan, writer, store)
    writer_task = asyncio.create_task(writer.run(), name="ticket-writer")
    events_task = asyncio.create_task(ari.run_events(StasisRouter(service), service.reconcile), name="ari-events")
    try:
        if on_ready is not None:
            await on_ready(service)
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({stopped, writer_task, events_task}, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopped and task.exception() is not None:
                log.error("event=engine_task_died task=%s error=%r", task.get_name(), task.exception())
        stopped.cancel()
    finally:
        log.info("event=engine_stopping live_calls=%d pending_tickets=%d", len(service.calls), writer.pending)
        events_task.cancel()
        await asyncio.gather(events_task, return_exceptions=True)
        await service.tasks.shutdown(timeout=3.0)
        drained = await writer.close(timeout=10.0)
        writer_task.cancel()
        await asyncio.gather(writer_task, return_exceptions=True)
        if not drained:
            log.error("event=tickets_not_drained pending=%d", writer.pending)
        await ari.close()
        await asyncio.to_thread(store.close)
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        log.info("event=engine_stopped")
    return service
