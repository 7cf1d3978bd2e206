"""Recordings on real databases and real files: what the ticket keeps, the purge (held and
unexpired files stay, the rest go, every deletion on the ticket), and who may listen
through the API (every access on the ticket). SQLite and PostgreSQL; the API in-process
with no Asterisk."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from callrouter.acd import Acd, load_lines
from callrouter.api.app import build_app
from callrouter.api.tokens import TokenStore
from callrouter.ari import AriClient
from callrouter.calls.service import CallService
from callrouter.config import load_settings
from callrouter.numberplan import load_plan
from callrouter.recordings import purge_recordings, retain_until, store_relpath
from callrouter.recordings.recorder import CallRecorder
from callrouter.tickets import (
    AddTransfer,
    AnswerTicket,
    AttachRecording,
    CloseTicket,
    OpenTicket,
    PurgeRecording,
    RecordingAccessed,
    RecordingFailed,
    SetLegalHold,
    SetSeat,
    TicketStore,
    TicketWriter,
)

from .conftest import FreshDatabase

pytestmark = pytest.mark.integration

MakeStore = Callable[..., tuple[TicketStore, FreshDatabase]]
ADMIN = "integration-admin-token-0123456789"


def wav_bytes(seconds: float) -> bytes:
    data = struct.pack("<h", 1000) * int(8000 * seconds)
    return (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE" + b"fmt "
            + struct.pack("<IHHIIHH", 16, 1, 1, 8000, 16000, 2, 16) + b"data" + struct.pack("<I", len(data)) + data)


@dataclass
class Call:
    ticket: str
    arrived: datetime
    ended: datetime


def a_call(store: TicketStore, n: int, ended: datetime, *, seats: tuple[str, ...] = ("s110-01",)) -> Call:
    """A closed 110 call answered by ``seats`` in turn (each hand-over a transfer)."""
    arrived = ended - timedelta(minutes=3)
    ticket = f"T{arrived:%Y%m%d-%H%M%S}-1796000000.{n}"
    ops: list[Any] = [
        OpenTicket(id=ticket, dialled="110", number="110", caller=f"1390000{n:04d}", caller_name="", line="110",
                   category="police", department="县公安局", priority=1, listed=True, channel_id=f"1796000000.{n}",
                   arrived_at=arrived),
        AnswerTicket(id=ticket, at=arrived + timedelta(seconds=1))]
    for i, seat in enumerate(seats):
        at = arrived + timedelta(seconds=10 + 30 * i)
        if i:
            ops.append(AddTransfer(id=ticket, from_line="110", to_line="96345", seat=seats[i - 1],
                                   reason="噪音投诉", at=at - timedelta(seconds=5)))
        ops.append(SetSeat(id=ticket, seat=seat, at=at))
    ops.append(CloseTicket(id=ticket, at=ended, outcome="completed"))
    store.apply(ops)
    return Call(ticket, arrived, ended)


def record(store: TicketStore, store_dir: Path, call: Call, days: int, seconds: float = 1.0) -> AttachRecording:
    """The call's recording as the recorder keeps it: a real file and the ticket op."""
    rel = store_relpath(call.ticket, call.arrived)
    path = store_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    content = wav_bytes(seconds)
    path.write_bytes(content)
    op = AttachRecording(id=call.ticket, file=rel, sha256=hashlib.sha256(content).hexdigest(), size=len(content),
                         duration_s=seconds, started_at=call.arrived, retain_until=retain_until(call.ended, days),
                         at=call.ended)
    store.apply([op])
    return op


def kinds(store: TicketStore, ticket: str) -> list[str]:
    return [e["kind"] for e in store.events(ticket)]


# ------------------------------------------------------------------ the ticket
def test_the_ticket_keeps_the_recording_and_every_change_once(make_store: MakeStore, backend: str,
                                                              tmp_path: Path) -> None:
    store, _ = make_store(backend)
    now = datetime.now(UTC)
    call = a_call(store, 1, now)
    op = record(store, tmp_path, call, days=180, seconds=2.0)
    store.apply([op])  # a retried batch
    ticket = store.get(call.ticket)
    assert ticket is not None
    rec = ticket["recording"]
    assert rec["file"] == op.file and rec["sha256"] == op.sha256 and rec["size"] == op.size
    assert rec["duration_s"] == 2.0 and rec["complete"] is True
    assert datetime.fromisoformat(rec["retain_until"]) == now + timedelta(days=180)
    assert kinds(store, call.ticket).count("recorded") == 1
    # a failure reported late never hides a kept recording
    store.apply([RecordingFailed(call.ticket, "store_failed", now, "late")])
    assert (store.get(call.ticket) or {})["recording"]["sha256"] == op.sha256
    # listening is on the ticket's record once (a retry adds nothing), and not on the dispatch stream
    access = RecordingAccessed(call.ticket, now, "supervisor:ops", True, "复核", "")
    store.apply([access])
    store.apply([access])
    denied = RecordingAccessed(call.ticket, now + timedelta(seconds=1), "agent:s110-02", False)
    store.apply([denied])
    assert kinds(store, call.ticket).count("recording_accessed") == 1
    assert kinds(store, call.ticket).count("recording_access_denied") == 1
    outbox_kinds = [o["kind"] for o in store.outbox() if o["ticket_id"] == call.ticket]
    assert "recorded" in outbox_kinds and not any(k.startswith("recording_access") for k in outbox_kinds)
    # legal hold: once per change, on the stream too
    hold = SetLegalHold(call.ticket, True, "supervisor:ops", "案件 2026-17", now)
    store.apply([hold, hold])
    assert (store.get(call.ticket) or {})["legal_hold"] is True
    held = [e for e in store.events(call.ticket) if e["kind"] == "legal_hold"]
    assert len(held) == 1 and held[0]["data"] == {"held": True, "by": "supervisor:ops", "reason": "案件 2026-17"}
    # a call that could not be recorded says why
    other = a_call(store, 2, now)
    store.apply([RecordingFailed(other.ticket, "disk_full", now, "2 MB free")])
    assert (store.get(other.ticket) or {})["recording"]["failed"] == "disk_full"


# ------------------------------------------------------------------ the purge
def test_purge_keeps_held_and_unexpired_recordings_and_deletes_the_rest(make_store: MakeStore, backend: str,
                                                                        tmp_path: Path) -> None:
    store, _ = make_store(backend)
    store_dir = tmp_path / "recordings"
    now = datetime.now(UTC)
    expired = a_call(store, 1, now - timedelta(days=200))
    held = a_call(store, 2, now - timedelta(days=230))
    fresh = a_call(store, 3, now - timedelta(days=10))
    gone = a_call(store, 4, now - timedelta(days=400))
    ops = {c.ticket: record(store, store_dir, c, days=180) for c in (expired, held, fresh, gone)}
    (store_dir / ops[gone.ticket].file).unlink()  # removed by hand earlier
    store.apply([SetLegalHold(held.ticket, True, "supervisor:ops", "案件 2026-17", now)])

    dry = purge_recordings(store, store_dir, now, dry_run=True)
    assert sorted(f["ticket"] for f in dry.deleted) == sorted([expired.ticket, gone.ticket])
    assert all((store_dir / op.file).exists() for t, op in ops.items() if t != gone.ticket), "a dry run deletes nothing"

    report = purge_recordings(store, store_dir, now)
    assert [f["ticket"] for f in report.deleted] == [expired.ticket]
    assert report.missing == [gone.ticket] and report.held == 1 and not report.failed
    assert not (store_dir / ops[expired.ticket].file).exists()
    assert (store_dir / ops[held.ticket].file).exists() and (store_dir / ops[fresh.ticket].file).exists()
    for call, deleted in ((expired, True), (gone, False)):
        ticket = store.get(call.ticket) or {}
        assert ticket["recording"]["purged_at"] and ticket["recording"]["sha256"] == ops[call.ticket].sha256
        [event] = [e for e in store.events(call.ticket) if e["kind"] == "recording_purged"]
        assert event["data"]["file"] == ops[call.ticket].file and event["data"]["deleted"] is deleted
    for call in (held, fresh):
        assert "recording_purged" not in kinds(store, call.ticket)
    # the expired file's day directory held nothing else: gone too
    assert not (store_dir / ops[expired.ticket].file).parent.exists()

    again = purge_recordings(store, store_dir, now)
    assert not again.deleted and not again.missing and again.held == 1, "nothing is purged twice"
    # released from the hold: the next purge takes it
    store.apply([SetLegalHold(held.ticket, False, "supervisor:ops", "结案", now)])
    assert [f["ticket"] for f in purge_recordings(store, store_dir, now).deleted] == [held.ticket]
    assert (store_dir / ops[fresh.ticket].file).exists()


def test_purge_from_the_command_line(make_store: MakeStore, tmp_path: Path) -> None:
    store, db = make_store("sqlite")
    store_dir = tmp_path / "recordings"
    now = datetime.now(UTC)
    old = a_call(store, 1, now - timedelta(days=181))
    new = a_call(store, 2, now - timedelta(days=179))
    ops = {c.ticket: record(store, store_dir, c, days=180) for c in (old, new)}
    env = {**os.environ, "CALLROUTER_DB_URL": db.url, "CALLROUTER_RECORDINGS_DIR": str(store_dir),
           "CALLROUTER_HOME": str(tmp_path / "home")}
    cli = [sys.executable, "-m", "callrouter.cli", "recordings"]
    hold = subprocess.run([*cli, "hold", new.ticket, "--reason", "投诉调查"], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert hold.returncode == 0 and json.loads(hold.stdout)["legal_hold"] is True, hold.stderr
    out = subprocess.run([*cli, "purge"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["deleted"] == 1 and report["files"][0]["ticket"] == old.ticket and report["bytes"] > 0
    assert not (store_dir / ops[old.ticket].file).exists() and (store_dir / ops[new.ticket].file).exists()
    events = [e for e in store.events(new.ticket) if e["kind"] == "legal_hold"]
    assert events and events[0]["data"]["by"].startswith("cli:")


# ------------------------------------------------------------------ the API
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Api:
    base: str
    store: TicketStore
    writer: TicketWriter
    store_dir: Path
    tokens: TokenStore
    service: CallService


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    settings = load_settings()
    store = TicketStore(f"sqlite:///{tmp_path / 'tickets.sqlite3'}")
    store.create_schema()
    writer = TicketWriter(store)
    ari = AriClient(f"http://127.0.0.1:{_closed_port()}/ari", "u", "p", "callrouter")
    service = CallService(ari, load_plan(settings.numberplan_path), writer, Acd(load_lines(settings.lines_path)))
    store_dir = tmp_path / "recordings"
    service.recorder = CallRecorder(service, store, tmp_path / "spool", store_dir)
    tokens = TokenStore(tmp_path / "tokens.json", ADMIN)
    server = TestServer(build_app(service, tokens, store, settings.lines_path, settings.numberplan_path),
                        host="127.0.0.1", port=0)
    await server.start_server()
    task = asyncio.create_task(writer.run())
    try:
        yield Api(f"http://127.0.0.1:{server.port}", store, writer, store_dir, tokens, service)
    finally:
        await writer.close(timeout=5)
        task.cancel()
        await server.close()
        await ari.close()
        await service.recorder.close()
        store.close()


async def _get(api: Api, path: str, token: str | None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    hdrs = {**({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})}
    async with aiohttp.ClientSession() as http, http.get(api.base + path, headers=hdrs) as resp:
        body = await resp.read()
        if resp.content_type == "application/json":
            return resp.status, json.loads(body)
        return resp.status, (resp.content_type, resp.headers.get("Content-Range"), body)


async def test_a_recording_is_streamed_to_supervisors_and_the_seats_that_took_the_call(api: Api) -> None:
    now = datetime.now(UTC)
    call = await asyncio.to_thread(a_call, api.store, 1, now, seats=("s110-01", "s96345-01"))
    op = await asyncio.to_thread(record, api.store, api.store_dir, call, 180, 1.5)
    content = (api.store_dir / op.file).read_bytes()
    supervisor = api.tokens.create("supervisor", name="ops")
    first, last, other = (api.tokens.create("agent", seat=s) for s in ("s110-01", "s96345-01", "s110-02"))
    path = f"/api/tickets/{call.ticket}/recording"

    for token in (supervisor, first, last, ADMIN):
        status, (ctype, _, body) = await _get(api, path + "?reason=%E5%A4%8D%E6%A0%B8", token)
        assert status == 200 and ctype == "audio/wav" and body == content, token
    status, (ctype, where, body) = await _get(api, path, supervisor, {"Range": "bytes=0-43"})
    assert status == 206 and body == content[:44] and where == f"bytes 0-43/{len(content)}"
    status, err = await _get(api, path, other)
    assert status == 403 and err["error"] == "forbidden", "a seat that never took the call"
    status, err = await _get(api, path, None)
    assert status == 401
    status, err = await _get(api, path + "?reason=a%01b", supervisor)
    assert status == 400 and err["error"] == "bad_reason" and err["details"]
    status, err = await _get(api, path + "?reason=" + "x" * 201, supervisor)
    assert status == 400 and err["error"] == "bad_reason"
    status, err = await _get(api, "/api/tickets/T20261201-000000-9.9/recording", supervisor)
    assert status == 404 and err["error"] == "unknown_ticket"

    # legal hold: supervisors only, with a reason
    async with aiohttp.ClientSession() as http:
        hold = api.base + f"/api/tickets/{call.ticket}/legal-hold"
        async with http.post(hold, json={"hold": True, "reason": "案件"}, headers={"Authorization": f"Bearer {last}"}) as r:
            assert r.status == 403
        for bad in ({"hold": "yes", "reason": "x"}, {"hold": True}, {"hold": True, "reason": " "},
                    {"hold": True, "reason": "x" * 201}):
            async with http.post(hold, json=bad, headers={"Authorization": f"Bearer {supervisor}"}) as r:
                body = await r.json()
                assert r.status == 400 and body["error"] in ("bad_hold", "bad_reason") and body["details"], bad
        async with http.post(hold, json={"hold": True, "reason": "案件 2026-17"},
                             headers={"Authorization": f"Bearer {supervisor}"}) as r:
            assert r.status == 200 and (await r.json()) == {"ticket": call.ticket, "legal_hold": True}

    assert await api.writer.drain(timeout=5)
    events = await asyncio.to_thread(api.store.events, call.ticket)
    granted = [e["data"] for e in events if e["kind"] == "recording_accessed"]
    assert [g["by"] for g in granted] == ["supervisor:ops", "agent:s110-01", "agent:s96345-01", "admin:bootstrap",
                                         "supervisor:ops"]
    assert granted[0]["reason"] == "复核" and granted[-1]["part"] == "bytes=0-43"
    denied = [e["data"] for e in events if e["kind"] == "recording_access_denied"]
    assert [d["by"] for d in denied] == ["agent:s110-02"]
    assert [e["data"]["reason"] for e in events if e["kind"] == "legal_hold"] == ["案件 2026-17"]
    assert (await asyncio.to_thread(api.store.get, call.ticket) or {})["legal_hold"] is True


async def test_a_ticket_without_a_recording_says_why(api: Api) -> None:
    now = datetime.now(UTC)
    supervisor = api.tokens.create("supervisor", name="ops")
    unrecorded = await asyncio.to_thread(a_call, api.store, 1, now)
    status, err = await _get(api, f"/api/tickets/{unrecorded.ticket}/recording", supervisor)
    assert status == 404 and err["error"] == "not_recorded"
    failed = await asyncio.to_thread(a_call, api.store, 2, now)
    await asyncio.to_thread(api.store.apply, [RecordingFailed(failed.ticket, "disk_full", now, "1 MB free")])
    status, err = await _get(api, f"/api/tickets/{failed.ticket}/recording", supervisor)
    assert status == 404 and "disk_full" in err["details"]
    purged = await asyncio.to_thread(a_call, api.store, 3, now - timedelta(days=200))
    await asyncio.to_thread(record, api.store, api.store_dir, purged, 180)
    await asyncio.to_thread(api.store.apply, [PurgeRecording(purged.ticket, now)])
    status, err = await _get(api, f"/api/tickets/{purged.ticket}/recording", supervisor)
    assert status == 404 and err["error"] == "purged"
    # the engine reports what it records on the status and in /metrics
    status, body = await _get(api, "/api/status", supervisor)
    assert status == 200 and body["recording"]["state"] == "on" and body["recording"]["lines"] == ["110"]
    status, (_, _, text) = await _get(api, "/metrics", supervisor)
    assert b'callrouter_recording_failures_total{reason="disk_full"} 0' in text


def test_an_older_ticket_database_gains_the_recording_columns_and_index(make_store: MakeStore, backend: str,
                                                                       tmp_path: Path) -> None:
    from sqlalchemy import inspect, text

    store, _ = make_store(backend)
    now = datetime.now(UTC)
    call = a_call(store, 1, now - timedelta(days=200))
    with store.engine.begin() as conn:  # as a database made before recordings
        conn.execute(text("DROP INDEX ix_tickets_recording_retain_until"))
        for column in ("recording", "recording_retain_until", "legal_hold"):
            conn.execute(text(f"ALTER TABLE tickets DROP COLUMN {column}"))
    store.create_schema()
    present = inspect(store.engine)
    assert {"recording", "recording_retain_until", "legal_hold"} <= {c["name"] for c in present.get_columns("tickets")}
    assert "ix_tickets_recording_retain_until" in {i["name"] for i in present.get_indexes("tickets")}
    ticket = store.get(call.ticket) or {}
    assert ticket["recording"] is None and ticket["legal_hold"] is False, "old tickets read as not recorded"
    record(store, tmp_path, call, days=180)
    assert [f["ticket"] for f in purge_recordings(store, tmp_path, now).deleted] == [call.ticket]
