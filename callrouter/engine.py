"""Wire the engine together and run it until told to stop.

The one top-level place that knows every package: it imports calls/, api/, speech/,
recordings/, tickets/ and ari/, and none of them imports it (scripts/import_cycles.py).
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
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from callrouter.acd import Acd, AcdError, ConfigFileError, LinesConfig, SnapshotError, load_lines
from callrouter.api import build_app
from callrouter.api.app import FEED_KEY
from callrouter.api.tokens import TokenStore
from callrouter.ari import AriClient
from callrouter.ari.nodes import NodesClient
from callrouter.calls.recovery import reconcile
from callrouter.calls.seats import poll_registrations
from callrouter.calls.service import CallService
from callrouter.calls.snapshot import StateStore
from callrouter.calls.stasis import StasisRouter
from callrouter.calls.unseen import CEL_FILE, UnseenCallImporter, metrics_text, node_state_path
from callrouter.config import Settings
from callrouter.ha import leader as ha
from callrouter.logs import q
from callrouter.numberplan import PlanError, load_plan
from callrouter.provision.asterisk import log_dir_on_host, recording_dir_on_host
from callrouter.recordings.recorder import CallRecorder
from callrouter.security_events import SecurityEvents
from callrouter.shutdown import Signals, Watchdog, step
from callrouter.speech import SpeechService
from callrouter.speech.address import listen_address, unreachable_from
from callrouter.tickets import TicketStore, TicketWriter
from callrouter.tickets.machine import rules_of
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


# ---------------------------------------------------------------- cluster mode (issue 11)
# what a cluster cannot do yet (said at start and in /api/status cluster.off): nothing now
CLUSTER_OFF: dict[str, str] = {}


def _cluster_ari(settings: Settings) -> tuple[NodesClient, Any]:
    """One ARI client per node of the cluster these settings describe (``cluster up``'s
    plan: each node's ARI port and credentials under home/cluster/<node>/)."""
    from callrouter.provision import cluster as cl

    plan = cl.plan(settings)
    clients = {}
    for node in plan.nodes:
        client = AriClient(node.settings.ari_url, node.settings.ari_user, node.settings.ari_password, settings.ari_app)
        client.rest_over_ws = settings.ari_rest_over_ws
        clients[node.name] = client
    return NodesClient(clients, lost_after_s=settings.cluster_node_lost_s), plan


def _node_importers(settings: Settings, plan: Any, ari: NodesClient, numbers: Any,
                    writer: TicketWriter) -> list[UnseenCallImporter]:
    """One CEL importer per node: the node's own CEL file (cluster.node_log_dir), its own
    state file, its own client to ask which channels it holds (blocking: paths only)."""
    from callrouter.provision import cluster as cl

    importers = []
    for node in plan.nodes:
        logs = cl.node_log_dir(plan, node)
        if not logs.is_dir():
            # said at start: otherwise that node's held callers silently get no ticket
            log.warning("event=cel_dir_missing node=%s dir=%s: mount the node's Asterisk log directory there "
                        "(cluster_log_root)", node.name, q(str(logs)))
        importers.append(UnseenCallImporter(logs / CEL_FILE, node_state_path(settings.cel_state_path, node.name),
                                            numbers, writer, node=node.name, ari=ari.clients[node.name]))
    return importers


def _cluster_service(service: CallService, ari: NodesClient) -> None:
    """What a cluster changes in the call service: presence from Kamailio, a status part;
    what stays off is said at start, not found out later."""
    service.presence_external = True
    service.cluster_status = lambda: {**ari.status(), "presence": "kamailio", "off": CLUSTER_OFF}
    for feature, why in CLUSTER_OFF.items():
        log.warning("event=cluster_feature_off feature=%s reason=%s", feature, q(why))


def _cluster_tasks(service: CallService, ari: NodesClient, plan: Any, router: StasisRouter,
                   leadership: ha.Leadership | None, speech: SpeechService, recorder: CallRecorder,
                   unseen: list[UnseenCallImporter], cel_import_s: int) -> dict[str, Coroutine[Any, Any, None]]:
    """The cluster's own long-lived work: every node's events (each connect reconciles
    that node only, one node at a time, then imports that node's CEL file; the recordings'
    sweep of every node's spool follows), each node's CEL import, the seats' registrations
    at Kamailio, and the recordings' disks.
    With several engines (``leadership``) only the lease holder reconciles a node, imports,
    counts a dead node's calls lost and follows the seats' presence; a standby does nothing
    of it (it adopts every node's callers, and imports, when it takes over)."""
    from callrouter.provision import cluster as cl
    from callrouter.provision.asterisk import ProvisionError

    lock = asyncio.Lock()
    importers = {imp.node: imp for imp in unseen}

    async def node_connected(name: str, client: AriClient) -> None:
        connected_at = time.time()
        if leadership is not None and not await leadership.on_connected():
            return
        async with lock:
            await reconcile(service, client, name)
        recorder.after_reconcile()
        if name in importers:
            importers[name].after_reconcile(service, connected_at)

    def node_lost(name: str) -> None:
        if service.acting():
            # speech first: the calls' ends would otherwise ask the dead node to remove
            # their snoops and bridges
            speech.node_lost(name)
            service.node_lost(name)

    def presence(resource: str, state: str) -> None:
        if service.acting():
            service.endpoint_state(resource, state)

    def registered() -> list[str]:
        try:
            return [str(r["seat"]).split("@", 1)[0] for r in cl.registered_seats(plan)]
        except ProvisionError as exc:  # Kamailio's control socket did not answer
            raise OSError(str(exc)) from exc

    return {"ari-events": ari.run_nodes(router, node_connected, node_lost),
            "seat-presence": poll_registrations(registered, lambda: list(service.seat_endpoints), presence),
            "recordings": recorder.run(),
            **{f"unseen-calls-{imp.node}": imp.run(service, max(1, cel_import_s)) for imp in unseen}}


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


def _pending(service: CallService | None) -> str:
    if service is None:
        return "starting"
    return (f"live_calls={len(service.calls)},tickets={service.writer.pending},call_tasks={len(service.tasks)},"
            f"holding_bridges={service.holding.count()}")


async def _stop_bounded(service: CallService, tasks: set[asyncio.Task[Any]], keep_running: set[str],
                        runner: web.AppRunner, state: StateStore, writer: TicketWriter, relay: OutboxRelay,
                        ari: AriClient, store: TicketStore, watchdog: Watchdog,
                        speech: SpeechService | None = None) -> None:
    """Each step within its own timeout and the overall budget; what one abandons is logged
    and the next runs. Callers stay in Asterisk; unwritten tickets stay in the spool (or
    the outbox) for the next engine."""
    def budget(own: float) -> float:
        return max(0.1, min(own, watchdog.remaining()))

    loops = [t for t in tasks if t.get_name() not in keep_running]
    for task in loops:
        task.cancel()
    await step("loops", asyncio.gather(*loops, return_exceptions=True), budget(1.0),
               lambda: ",".join(t.get_name() for t in loops if not t.done()))
    await step("api", runner.cleanup(), budget(1.5), lambda: f"connections={len(runner.server.connections) if runner.server else 0}")
    if speech is not None:
        # what transcription made in Asterisk (snoop, external media, bridge) goes; callers stay
        await step("speech", speech.close(timeout=budget(1.0)), budget(1.5),
                   lambda: f"sessions={len(speech.sessions)}")
    recorder = service.recorder
    if recorder is not None:
        # recordings of calls that ended and are not kept yet stay in the spool for the next engine
        await step("recordings", recorder.close(timeout=budget(0.5)), budget(1.0),
                   lambda: f"tasks={len(recorder.tasks)}")
    await step("call_tasks", service.tasks.shutdown(timeout=budget(1.0)), budget(1.5),
               lambda: f"tasks={len(service.tasks)}")
    await step("state_save", state.save(_state(service)), budget(1.0), lambda: f"live_calls={len(service.calls)}")
    await step("state_close", state.close(), budget(0.5))

    async def close_writer() -> None:
        if not await writer.close(timeout=budget(2.0)):
            log.error("event=tickets_not_drained pending=%d", writer.pending)
    if not await step("ticket_writer", close_writer(), budget(2.5), lambda: f"tickets={writer.pending}"):
        try:
            log.warning("event=tickets_spooled_at_shutdown ops=%d", writer.keep_unwritten())
        except OSError as exc:
            log.error("event=tickets_lost_at_shutdown pending=%d error=%r", writer.pending, exc)
    # the last changes go out now if Redis lets them; else the next engine's relay sends them
    await step("relay_drain", relay.drain(timeout=budget(1.0)), budget(1.5), lambda: "outbox rows stay for the next relay")
    await step("relay_close", relay.close(), budget(1.0))
    keep = [t for t in tasks if t.get_name() in keep_running]
    if not await step("keep_running", asyncio.gather(*keep, return_exceptions=True), budget(0.5),
                      lambda: ",".join(t.get_name() for t in keep if not t.done())):
        for task in keep:
            task.cancel()
    await step("ari_close", ari.close(), budget(0.5))
    await step("store_close", asyncio.to_thread(store.close), budget(0.5))


def _leadership(settings: Settings, service: CallService, ari: AriClient, state: StateStore, lines: LinesConfig,
                router: StasisRouter, unseen: list[UnseenCallImporter],
                recorder: CallRecorder) -> ha.Leadership | None:
    """Several engines (``ha_app_filter``), on one Asterisk or across a cluster's nodes:
    the lease decides which one claims calls and runs the queues (callrouter.ha). None
    with one engine."""
    if not settings.ha_app_filter:
        return None
    current = {"lines": lines}

    async def reread_files() -> None:
        """Before a take-over: the lines and number plan as the files say now (the former
        holder may have reloaded them); a file broken meanwhile keeps what this engine has."""
        try:
            current["lines"] = await asyncio.to_thread(load_lines, settings.lines_path)
            service.reconfigure(current["lines"])
        except (ConfigFileError, AcdError) as exc:
            log.warning("event=take_over_lines_kept error=%s", q(exc))
        try:
            service.plan = await asyncio.to_thread(load_plan, settings.numberplan_path)
        except PlanError as exc:
            log.warning("event=take_over_plan_kept error=%s", q(exc))
    leadership = ha.build(settings, service, ari, state, lambda saved: restore_acd(current["lines"], saved))
    leadership.before_take_over = reread_files
    router.acting, router.on_broadcast, router.on_adopted = (leadership.acting, leadership.on_broadcast,
                                                             leadership.on_adopted)

    def after_take_over() -> None:
        # the take-over reconciled every node (or the one Asterisk): each CEL file now
        for importer in unseen:
            importer.after_reconcile(service, time.time())
        recorder.after_reconcile()
    leadership.after_take_over = after_take_over
    return leadership


async def run_engine(settings: Settings, stop: asyncio.Event | None = None, *,
                     on_ready: Ready | None = None, handle_signals: bool = True,
                     watch_exit: bool = True) -> CallService:
    """Run until ``stop`` is set (or SIGTERM/SIGINT with ``handle_signals``).

    With ``handle_signals``, a watchdog armed when stopping begins ends the process if
    stopping (and, with ``watch_exit``, the interpreter's exit after it) passes the hard
    deadline; a caller that goes on working after the engine stopped (the demo) passes
    ``watch_exit=False``, and the watchdog is disarmed once the engine has stopped.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    # signals first: a database or Redis that hangs at start must not make SIGTERM wait;
    # the watchdog ends the process after the first signal, however stuck it is
    watchdog = Watchdog()
    signals = Signals(loop, stop, watchdog, lambda: _pending(service))
    service: CallService | None = None
    if handle_signals:
        signals.install()
    plan = load_plan(settings.numberplan_path)
    lines = load_lines(settings.lines_path)
    ha.check(settings)
    # the ticket rules that differ per line (callbacks of abandoned calls) from lines.toml
    store = TicketStore(settings.database_url, rules=rules_of(lines))
    await asyncio.to_thread(store.create_schema)
    # a database outage spools ticket changes to a durable local file, written back in order
    # every ticket change reaches dispatch through the outbox, beside the call flow; each
    # commit of outbox rows in this process wakes the relay (TicketStore.on_outbox_commit),
    # the slow poll finds other processes' rows
    # (published rows are marked sent once a second: one transaction for many wake-ups)
    relay = OutboxRelay(store, settings.redis_url, stream_name(settings.redis_prefix), poll_s=1.0, mark_delay_s=1.0,
                        maxlen=settings.stream_maxlen, retention_s=settings.stream_retention_s,
                        outbox_retention_s=settings.outbox_retention_s, housekeeping_s=settings.housekeeping_s)
    # a change after a quiet spell is written at once; otherwise commits start at least
    # ticket_commit_gap_ms apart (default 200: CPU first). A commit costs the engine ~3.1 ms
    # of CPU (half the store's transaction, half the event loop's rounds), so the gap sets
    # both the latency and the CPU: 30 ms meets ticket -> stream p99 < 50 ms, but a surge
    # (~60 changes/s, below the writer's 100/s lingering threshold) then costs 1.59x
    # app_queue's CPU per answered call instead of ~1.3x (docs/BENCHMARKS.md)
    writer = TicketWriter(store, linger_s=0.2, busy_ops_s=100.0, min_gap_s=settings.ticket_commit_gap_ms / 1000,
                          retry_max_s=2.0, spool_path=settings.spool_path)
    state = StateStore(settings.redis_url, settings.state_path, settings.redis_prefix)
    acd = restore_acd(lines, await state.load())
    log.info("event=engine_starting plan=%s entries=%d lines=%s db=%s ari=%s api=%s:%d", plan.source,
             len(plan.entries), ",".join(lines.line_ids), store, settings.ari_url, settings.api_bind, settings.api_port)
    cluster_plan: Any = None
    ari: AriClient
    if settings.cluster_engine:
        ari, cluster_plan = _cluster_ari(settings)
    else:
        ari = AriClient(settings.ari_url, settings.ari_user, settings.ari_password, settings.ari_app)
        ari.rest_over_ws = settings.ari_rest_over_ws
    await ari.open()
    service = CallService(ari, plan, writer, acd, nodes=ari.names if isinstance(ari, NodesClient) else ())
    # what waiting callers say (vosk), beside the call path; the model loads in the background
    speech = SpeechService(service, model_path=settings.speech_model, model_label=settings.speech_model_name,
                           keywords_path=settings.keywords_path, max_concurrent=settings.speech_max_concurrent,
                           workers=settings.speech_workers, max_s=settings.speech_max_s,
                           after_answer_s=settings.speech_after_answer_s,
                           bind=listen_address(settings.speech_rtp_bind, settings.http_bind))
    if cluster_plan is not None and speech.model_path is not None:
        # every node sends its callers' audio to this one address: said now if it cannot
        problem = unreachable_from(speech.bind, [node.address for node in cluster_plan.nodes])
        if problem is not None:
            speech.refuse("address", problem)
    speech.tasks.spawn(speech.start(), name="speech-model")
    # trunk calls the engine never saw (held by the dialplan while it was away), from
    # Asterisk's CEL file (in a cluster each node's own); Asterisk's security events for /metrics
    asterisk_logs = await asyncio.to_thread(log_dir_on_host, settings)
    unseen = (await asyncio.to_thread(_node_importers, settings, cluster_plan, ari, plan, writer)
              if isinstance(ari, NodesClient) else
              [UnseenCallImporter(asterisk_logs / CEL_FILE, settings.cel_state_path, plan, writer)])
    for importer in unseen:
        service.listeners.append(importer.on_event)
    security = SecurityEvents(asterisk_logs / "security.log")
    # call recording (lines.toml [line.<id>.recording]): MixMonitor through [callrouter-record];
    # files kept under recordings_dir; the API streams them (service.recorder). In a
    # cluster each node writes into its own directory: one spool per node
    spools: Path | dict[str, Path]
    if cluster_plan is not None:
        from callrouter.provision.cluster import recording_dirs

        spools = recording_dirs(cluster_plan)
    else:
        spools = await asyncio.to_thread(recording_dir_on_host, settings)
    recorder = service.recorder = CallRecorder(service, store, spools, settings.recordings_path,
                                               min_free_mb=settings.recording_min_free_mb)
    if cluster_plan is not None:
        log.info("event=recording_spools %s", " ".join(f"{n}={q(str(d))}" for n, d in recorder.spools.items()))

    router = StasisRouter(service)
    leadership = _leadership(settings, service, ari, state, lines, router, unseen, recorder)

    async def connected() -> None:
        connected_at = time.time()
        if leadership is not None and not await leadership.on_connected():
            return  # a standby: nothing of its own to reconcile (the holder adopts on take-over)
        await reconcile(service)
        for importer in unseen:
            importer.after_reconcile(service, connected_at)
        recorder.after_reconcile()
    # an open event-feed WebSocket would hold aiohttp's shutdown for 60 s by default
    app = build_app(service, TokenStore(settings.home / "tokens.json", settings.secret("api_token")), store,
                    settings.lines_path,
                    settings.numberplan_path, outbox_lag=lambda: relay.lag_s,
                    relay_status=relay.metrics,
                    extra_metrics=lambda: (security.metrics_text() + metrics_text(unseen)
                                           + speech.metrics_text()),
                    speech_status=speech.status, staffing_dir=settings.staffing_path,
                    categories_path=settings.categories_path, units_path=settings.units_path,
                    intake_window_s=settings.intake_window_s,
                    ha_status=leadership.status if leadership is not None else None)
    # dispatch orders' changes (written by the dispatcher) reach the pages as the relay publishes them
    relay.listeners.append(app[FEED_KEY].on_outbox_row)
    runner = web.AppRunner(shutdown_timeout=1.0, app=app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.api_bind, settings.api_port)
    await site.start()
    if isinstance(ari, NodesClient):
        _cluster_service(service, ari)
        call_tasks = _cluster_tasks(service, ari, cluster_plan, router, leadership, speech, recorder, unseen,
                                    settings.cel_import_s)
    else:
        call_tasks = {"ari-events": ari.run_events(router, connected),
                      "recordings": recorder.run(),
                      "unseen-calls": unseen[0].run(service, max(1, settings.cel_import_s))}
    tasks = {
        asyncio.create_task(writer.run(), name="ticket-writer"),
        *(asyncio.create_task(coro, name=name) for name, coro in call_tasks.items()),
        asyncio.create_task(_ticker(service), name="acd-tick"),
        asyncio.create_task(_saver(service, state), name="state-saver"),
        asyncio.create_task(relay.run(), name="outbox-relay"),
        asyncio.create_task(security.run(), name="security-log"),
    }
    if leadership is not None:
        tasks.add(asyncio.create_task(leadership.run(), name="ha-lease"))
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
        if handle_signals:
            watchdog.arm(lambda: _pending(service))  # a task died: stopping all the same, bounded
        await _stop_bounded(service, tasks, keep_running, runner, state, writer, relay, ari, store, watchdog,
                            speech)
        if leadership is not None:
            # after the last state save: a standby taking over now finds it
            await step("ha_release", leadership.close(), max(0.1, min(1.0, watchdog.remaining())))
        if handle_signals:
            signals.remove()
        if not watch_exit:
            watchdog.disarm()
        log.info("event=engine_stopped took_s=%.2f", time.monotonic() - (watchdog.armed_at or time.monotonic()))
    return service
