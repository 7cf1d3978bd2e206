"""Ten minutes of an ordinary day's traffic (the soak benchmark's mix, callrouter/sim/soak.py)
and then counts, not times: nothing of ours left in Asterisk, a closed ticket for every call,
the dispatch stream and the outbox trimmed to their retention, the engine's open files and
threads where they were after the first minutes.

The retentions are a minute, so trimming and purging happen many times within the run.
``CALLROUTER_SOAK_MINUTES`` changes the length (the suite's default is 10).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import redis
from sqlalchemy import func, select

from callrouter.provision import asterisk as prov
from callrouter.sim.leftovers import leftover_problems, pbx_resources
from callrouter.sim.soak import SOAK_LINES, Sampler, SoakMix, run_soak, soak_specs
from callrouter.tickets.models import OutboxEvent
from callrouter.tickets.relay import stream_name
from tests.e2e.conftest import EngineFactory

MINUTES = float(os.environ.get("CALLROUTER_SOAK_MINUTES", "10"))
RETENTION_S = 60  # stream and outbox
HOUSEKEEPING_S = 10
# Redis trims approximately (~): whole radix-tree nodes of at most this many entries
# (stream-node-max-entries, default 100), so up to one node older than the retention stays
NODE = 100
# The engine's open files are bounded by its pools, not by calls: the ARI HTTP connector
# (64 connections; all REST goes over HTTP once a WebSocket request timed out under
# load), the ticket database (SQLite: file, WAL, shm per pooled connection) and Redis.
ARI_HTTP_POOL = 64
FD_MARGIN = 10
THREAD_MARGIN = 2  # threads after the warm-up: asyncio's executor grows on demand
WARM_S = 120.0


def test_ten_minutes_of_traffic_leave_nothing_growing(engines: EngineFactory) -> None:
    settings = engines.settings
    engines.use_lines(**SOAK_LINES)
    engines.env.update({"CALLROUTER_STREAM_RETENTION_S": str(RETENTION_S),
                        "CALLROUTER_OUTBOX_RETENTION_S": str(RETENTION_S),
                        "CALLROUTER_HOUSEKEEPING_S": str(HOUSEKEEPING_S)})
    engine = engines.start()
    asterisk_pid = prov.pid(prov.select_target(settings))
    assert asterisk_pid is not None
    stream = stream_name(engines.env["CALLROUTER_REDIS_PREFIX"])
    sampler = Sampler(settings, engine.proc.pid, asterisk_pid, engines.db_url, settings.redis_url, stream)
    mix = SoakMix()
    specs = soak_specs(mix, MINUTES * 60, seed=7)
    started = datetime.now(UTC)
    try:
        result = run_soak(settings, sampler, specs, mix, sample_every_s=30, seed=7, settle_s=180,
                          login=lambda seats: engines.login(*seats))
    finally:
        sampler.close()
    assert result.aborted is None, result.aborted  # Asterisk or the engine died
    report = result.report
    assert report is not None
    end = result.samples[-1]
    warm = next(s for s in result.samples if s.t_s >= WARM_S)
    trace = f"samples: {[s.row() for s in result.samples]}\ntrunk: {report.to_json() | {'results': '...'}}"

    # every ticket closed
    assert end.open_tickets == 0, trace
    # the mix really happened: seats answered, callers gave up, transfers
    store = engines.store()
    try:
        rows = store.list(limit=100_000)
        with store.engine.connect() as conn:
            cutoff = datetime.now(UTC) - timedelta(seconds=RETENTION_S + HOUSEKEEPING_S + 5)
            stale_sent = conn.execute(select(func.count()).select_from(OutboxEvent)
                                      .where(OutboxEvent.sent_at < cutoff)).scalar_one()
            max_seq = conn.execute(select(func.max(OutboxEvent.seq))).scalar_one()
    finally:
        store.close()
    # one ticket for every call placed (the engine also imports, from Asterisk's CEL, calls
    # an earlier engine on this Asterisk never closed: those arrived before this run)
    rows = [r for r in rows if datetime.fromisoformat(r["arrived_at"]) >= started]
    assert len(rows) == len(specs), trace
    outcomes = [r["outcome"] for r in rows]
    assert outcomes.count("abandoned") >= len(specs) // 20, trace
    assert sum(1 for r in rows if r["seat_answered_at"]) >= len(specs) // 2, trace
    assert sum(1 for r in rows if r["transfers"]) >= 10, trace

    # the outbox: every event sent; sent rows older than the retention purged (exact)
    assert end.outbox_unsent == 0, trace
    assert stale_sent == 0, trace
    assert end.outbox_sent < max_seq // 2, "purging never happened?\n" + trace

    # the stream: trimmed many times over; older entries at most one node
    r = redis.Redis.from_url(settings.redis_url, decode_responses=True, socket_timeout=10)
    try:
        info = r.xinfo_stream(stream)
        assert info["entries-added"] == max_seq, trace  # every event went out once
        assert info["length"] < info["entries-added"] // 2, trace
        secs, micros = r.time()
        old_before = (int(secs) * 1000 + int(micros) // 1000) - (RETENTION_S + HOUSEKEEPING_S + 5) * 1000
        older = list(r.xrange(stream, "-", f"({old_before}", count=NODE + 1) or [])
        assert len(older) <= NODE, f"{len(older)} entries older than the retention\n{trace}"
    finally:
        r.close()

    # the engine: open files within its pools, threads where they were after the warm-up
    first = result.samples[0]
    assert max(s.engine.fds for s in result.samples) <= first.engine.fds + ARI_HTTP_POOL + FD_MARGIN, trace
    assert end.engine.threads <= warm.engine.threads + THREAD_MARGIN, trace
    # Asterisk: no thread or file per call left behind (3,000 calls; a leaked channel costs
    # a thread and its RTP sockets). Its pools keep some threads idle a while after the load.
    assert end.asterisk.threads <= first.asterisk.threads + 50, trace
    assert end.asterisk.fds <= first.asterisk.fds + 60, trace
    assert engine.proc.poll() is None  # still running after all that
    # Asterisk holds nothing of ours beyond each line's spare holding bridge
    assert leftover_problems(pbx_resources(settings)) == [], trace
