"""Trunk calls the engine never saw: tickets from Asterisk's own record of every channel.

A caller held by the dialplan while the engine is away (answer, music, retry Stasis) who
hangs up before it returns never reaches the engine; a ``kill -9`` can lose the ticket
ops of a short call still lingering in the writer. Asterisk writes a channel event log
(CEL, ``asterisk-conf/cel.conf``, ``cel_custom.conf``): one JSON object a line per
channel start, answer, hold round (``MusicOnHold``) and end, to a local file under its
log directory. A local file, not the ticket database, because it keeps recording while
the database is down and needs no credentials in Asterisk.

The importer runs at every (re)connect (from ``reconcile``) and every ``interval_s``:

- it renames the file to ``<name>.importing`` (Asterisk opens the file for every record,
  so its next record starts a new file) and reads that, so the file never holds more than
  one interval of events and nothing is read twice; an ``.importing`` file left by a
  crash is read first;
- only trunk channels count: a channel whose start was in context ``from-trunk``
  (never seat legs, feature codes, announcers);
- channels started and not yet ended are kept in a small state file
  (``<home>/cel-import.json``, 0600) until their end comes; a kept channel that Asterisk
  no longer holds at two imports in a row (Asterisk restarted) is recorded as ended then;
- each ended trunk call not live in the engine becomes a ``RecordUnseenCall``: the
  ticket id derives from arrival and channel like the engine's own, and the store
  matches by channel, so importing twice, or a call the engine saw, never makes a second
  ticket; a ticket the engine opened but never closed is closed;
- a call that ended less than ``grace_s`` ago waits for the next import: the engine may
  still be handling its hang-up;
- the file is deleted only once the writer has written the ops (or spooled them).

In a cluster (``cluster_engine``) every node writes its own CEL file: one importer per
node (``node``), each with its own state file (``node_state_path``), reading that node's
file and checking its calls against that node's view only: the channels its own ARI
client lists and the engine's calls on that node. A node that does not answer the list
makes no call of its own count as ended, whatever the other nodes say.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from callrouter.ari import AriClient, AriError
from callrouter.ari.nodes import node_of
from callrouter.calls.service import CallService
from callrouter.numberplan import NumberPlan
from callrouter.tickets import RecordUnseenCall, TicketWriter, ticket_id_for_channel

# the channels Asterisk holds now (None: it could not be asked), fetched only when needed
LiveSource = Callable[[], Awaitable[set[str] | None]]

log = logging.getLogger("callrouter.calls")

# where asterisk-conf/cel_custom.conf has Asterisk write, under its log directory
CEL_FILE = "cel-custom/callrouter.json"
TRUNK_CONTEXT = "from-trunk"
HOLD_APP = "musiconhold"
_FIELD_MAX = 256  # caller-controlled fields are capped before anything else sees them


@dataclass(frozen=True)
class CelEvent:
    kind: str  # CHAN_START | ANSWER | APP_START | CHAN_END
    at: float  # epoch seconds
    uniqueid: str
    context: str
    exten: str
    app: str
    caller: str
    caller_name: str


@dataclass
class TrunkCall:
    """What the record says of one trunk channel so far (epoch seconds)."""

    uniqueid: str
    started: float
    dialled: str
    caller: str
    caller_name: str
    answered: float | None = None
    held_rounds: int = 0
    ended: float | None = None
    missing: int = 0  # imports at which Asterisk no longer held it and no end was read


def parse_line(line: str) -> CelEvent | None:
    """One record of the JSON CEL file; None if it is not one (logged by the caller)."""
    try:
        data = json.loads(line, strict=False)  # control characters a caller put in their name
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    try:
        at = float(data.get("eventtime") or "")
    except (TypeError, ValueError):
        return None

    def text(name: str) -> str:
        value = data.get(name)
        return value[:_FIELD_MAX] if isinstance(value, str) else ""

    kind, uniqueid = text("eventtype"), text("uniqueid")
    if not kind or not uniqueid:
        return None
    return CelEvent(kind=kind, at=at, uniqueid=uniqueid, context=text("context"), exten=text("exten"),
                    app=text("appname"), caller=text("num"), caller_name=text("name"))


def _uniqueid_of(line: str) -> str | None:
    """The uniqueid of a record as Asterisk writes it, found without parsing; None if the
    line is not in that exact form (it is then parsed in full)."""
    i = line.find(_UID_KEY)
    if i < 0:
        return None
    j = line.find('"', i + len(_UID_KEY))
    return line[i + len(_UID_KEY):j] if j > 0 else None


_UID_KEY = '"uniqueid":"'
_CONTEXT_KEY = '"context":"'
_TRUNK_CONTEXT_FIELD = f'"context":"{TRUNK_CONTEXT}"'


def parse_records(text: str, follow: set[str] | None = None) -> tuple[list[CelEvent], int]:
    """The records in ``text`` and how many lines were unreadable.

    With ``follow`` (the channels being followed; trunk channels started in ``text`` are
    added), records of other channels are skipped without being parsed: seat legs and
    announcers make most of the file. A caller's name may carry a line break into the
    file; such a record is read across the break (up to three lines) before being given
    up.
    """
    events: list[CelEvent] = []
    bad = 0
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        if follow is not None and _skippable(line, follow):
            i += 1
            continue
        for span in (1, 2, 3):
            event = parse_line("\n".join(lines[i:i + span]))
            if event is not None:
                events.append(event)
                if follow is not None and event.kind == "CHAN_START" and event.context == TRUNK_CONTEXT:
                    follow.add(event.uniqueid)
                i += span
                break
        else:
            bad += 1
            i += 1
    return events, bad


def _skippable(line: str, follow: set[str]) -> bool:
    if '"eventtype":"CHAN_START"' in line:
        # a start in another context (when the line has Asterisk's exact form)
        return _CONTEXT_KEY in line and _TRUNK_CONTEXT_FIELD not in line
    uniqueid = _uniqueid_of(line)
    return uniqueid is not None and uniqueid not in follow


def fold(events: Iterable[CelEvent], calls: dict[str, TrunkCall]) -> None:
    """Apply ``events`` (in file order) to the trunk calls being followed, in place.

    A channel is followed from its CHAN_START in the trunk's context; events of other
    channels are ignored.
    """
    for ev in events:
        if ev.kind == "CHAN_START":
            if ev.context == TRUNK_CONTEXT and ev.uniqueid not in calls:
                calls[ev.uniqueid] = TrunkCall(uniqueid=ev.uniqueid, started=ev.at, dialled=ev.exten,
                                               caller=ev.caller, caller_name=ev.caller_name)
            continue
        call = calls.get(ev.uniqueid)
        if call is None:
            continue
        if ev.kind == "ANSWER" and call.answered is None:
            call.answered = ev.at
        elif ev.kind == "APP_START" and ev.app.lower() == HOLD_APP:
            call.held_rounds += 1
        elif ev.kind == "CHAN_END":
            call.ended = ev.at


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def unseen_op(call: TrunkCall, plan: NumberPlan) -> RecordUnseenCall:
    """The ticket op for an ended trunk call, routed like the engine routes it."""
    if call.ended is None:
        raise ValueError(f"channel {call.uniqueid} has not ended")
    route = plan.route(call.dialled)
    arrived = _utc(call.started)
    return RecordUnseenCall(
        id=ticket_id_for_channel(arrived, call.uniqueid), dialled=call.dialled, number=route.number,
        caller=call.caller, caller_name=call.caller_name, line=route.line, category=route.category,
        department=route.department, priority=route.priority, listed=route.listed,
        channel_id=call.uniqueid, arrived_at=arrived, ended_at=_utc(max(call.ended, call.started)),
        answered_at=None if call.answered is None else _utc(call.answered),
        held_by_dialplan=call.held_rounds > 0)


def node_state_path(state_path: Path, node: str) -> Path:
    """A cluster node's own import state beside the engine's: ``cel-import.json`` ->
    ``cel-import-node1.json`` (the calls one node's file left open never mix with another's)."""
    return state_path.with_name(f"{state_path.stem}-{node}{state_path.suffix}")


def _node_label(node: str | None) -> str:
    return f'{{node="{node}"}}' if node else ""


def metrics_text(importers: Iterable[UnseenCallImporter]) -> str:
    """The importers' counters for /metrics: one sample each, labelled by node in a
    cluster (none on one Asterisk)."""
    every = list(importers)

    def samples(metric: str, counter: str) -> list[str]:
        return [f"{metric}{_node_label(i.node)} {i.counters[counter]}" for i in every]
    return "\n".join([
        ("# HELP callrouter_unseen_calls_recorded_total Trunk calls recorded from Asterisk's CEL "
         "file (callers the engine never saw, or whose ticket a killed engine never closed)."),
        "# TYPE callrouter_unseen_calls_recorded_total counter",
        *samples("callrouter_unseen_calls_recorded_total", "recorded"),
        "# HELP callrouter_cel_unreadable_lines_total Lines of the CEL file that could not be read.",
        "# TYPE callrouter_cel_unreadable_lines_total counter",
        *samples("callrouter_cel_unreadable_lines_total", "unreadable")]) + "\n"


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` atomically, readable by the owner only (it holds caller numbers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


class UnseenCallImporter:
    """Reads Asterisk's CEL file into tickets for calls the engine did not close.

    ``node`` (a cluster): the node whose file this is; only its calls count, and ``ari``
    (that node's own client) says which channels it holds. On one Asterisk both are None
    (the service's client is asked).
    """

    def __init__(self, cel_file: Path, state_path: Path, plan: NumberPlan, writer: TicketWriter, *,
                 node: str | None = None, ari: AriClient | None = None,
                 grace_s: float = 5.0, drain_timeout_s: float = 10.0) -> None:
        self.node = node
        self.ari = ari
        self._where = f" node={node}" if node else ""
        self.cel_file = cel_file
        self.importing = cel_file.with_name(cel_file.name + ".importing")
        self.state_path = state_path
        self.plan = plan
        self.writer = writer
        self.grace_s = grace_s
        self.drain_timeout_s = drain_timeout_s
        self.calls: dict[str, TrunkCall] = self._load_state()
        self.counters = {"imports": 0, "recorded": 0, "unreadable": 0}
        # calls this engine closed itself since the last import: no record needed
        self.closed_here: set[str] = set()
        self._lock = asyncio.Lock()

    # --- the state file: trunk calls started, not yet ended or not yet recorded -------
    def _load_state(self) -> dict[str, TrunkCall]:
        try:
            raw = json.loads(self.state_path.read_text())
            return {c["uniqueid"]: TrunkCall(**c) for c in raw.get("calls", [])}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("event=cel_state_unreadable path=%s error=%r: starting empty", self.state_path, exc)
            return {}

    def _save_state(self) -> None:
        data: dict[str, Any] = {"calls": [asdict(c) for c in self.calls.values()]}
        _write_private(self.state_path, json.dumps(data, ensure_ascii=False))

    # --- one import -------------------------------------------------------------------
    def _take_file(self) -> str:
        """The text of the file to import now (rotating the live file if none is left)."""
        if not self.importing.exists():
            try:
                os.replace(self.cel_file, self.importing)
            except FileNotFoundError:
                return ""
        return self.importing.read_text(errors="replace")

    def on_event(self, kind: str, data: dict[str, Any]) -> None:
        """A ``CallService`` listener: calls this engine closed need no record from here."""
        if kind == "call_ended" and isinstance(data.get("call_id"), str):
            if not self._mine(data["call_id"]):
                return  # another node's call: never in this node's file
            if len(self.closed_here) > 100_000:
                self.closed_here.clear()  # no CEL file read for a long while: forget, stay bounded
            self.closed_here.add(data["call_id"])

    def _mine(self, channel_id: str) -> bool:
        return self.node is None or node_of(channel_id, (self.node,)) == self.node

    async def run_once(self, *, live: set[str] | None = None, engine_calls: set[str], now: float,
                       settled_before: float = 0.0, live_source: LiveSource | None = None) -> int:
        """Import what the file holds; returns how many calls were recorded.

        ``live``: channels Asterisk holds now (None if it could not be asked: nothing is
        then taken as ended without its record); or ``live_source``, asked only when a
        call followed is neither the engine's nor ended (the usual import asks nothing:
        with 1,000+ held, Asterisk's list of every channel is about 1 MB of JSON to build
        and decode); ``engine_calls``: channels the engine tracks now (it closes their
        tickets itself); ``settled_before``: calls that ended before this time need no
        grace (they ended before the engine connected, so it cannot be handling their
        hang-up).
        """
        async with self._lock:
            return await self._run_once(live, engine_calls, now, settled_before, live_source)

    def _read_and_fold(self) -> tuple[int, int]:
        """Take the record file, parse it and fold it into the calls followed (blocking)."""
        text = self._take_file()
        events, bad = parse_records(text, follow=set(self.calls))
        fold(events, self.calls)
        return len(events), bad

    async def _run_once(self, live: set[str] | None, engine_calls: set[str], now: float,
                        settled_before: float, live_source: LiveSource | None = None) -> int:
        # reading and parsing a busy interval's records takes a tenth of a second per
        # thousand calls: off the event loop, which is answering callers meanwhile (only
        # this import, under its lock, touches self.calls)
        records, bad = await asyncio.to_thread(self._read_and_fold)
        if bad:
            self.counters["unreadable"] += bad
            log.warning("event=cel_records_unreadable file=%s lines=%d%s", self.importing, bad, self._where)
        ops: list[RecordUnseenCall] = []
        done: list[str] = []
        if live_source is not None and any(c.ended is None and c.uniqueid not in engine_calls
                                           for c in self.calls.values()):
            live = await live_source()
        for call in list(self.calls.values()):
            if call.uniqueid in engine_calls:
                call.missing = 0
                continue
            if call.ended is None:
                if live is None or call.uniqueid in live:
                    call.missing = 0
                    continue
                # Asterisk no longer holds it and no end was read: the end may sit in the
                # file started since the rotation; if not by the next import, Asterisk
                # restarted without writing one
                call.missing += 1
                if call.missing < 2:
                    continue
                call.ended = now
                log.warning("event=cel_call_without_end channel=%s: recorded as ended now", call.uniqueid)
            if now - call.ended < self.grace_s and call.ended >= settled_before:
                continue  # the engine may still be handling this hang-up
            done.append(call.uniqueid)
            if call.uniqueid in self.closed_here:
                continue  # this engine closed it
            try:
                ops.append(unseen_op(call, self.plan))
            except ValueError as exc:
                log.warning("event=cel_call_not_recorded channel=%s error=%s", call.uniqueid, exc)
        for op in ops:
            self.writer.submit(op)
            # the store ignores it when the channel's ticket is already closed
            log.info("event=unseen_call_recorded ticket=%s channel=%s held_by_dialplan=%s wait_s=%.1f",
                     op.id, op.channel_id, op.held_by_dialplan, (op.ended_at - op.arrived_at).total_seconds())
        if ops and not await self.writer.drain(self.drain_timeout_s):
            # not written yet (database away): keep the file and the calls; the next
            # import submits them again (the store ignores repeats)
            log.warning("event=cel_import_not_drained pending=%d%s", self.writer.pending, self._where)
            return len(ops)
        for uniqueid in done:
            self.calls.pop(uniqueid, None)
            self.closed_here.discard(uniqueid)
        await asyncio.to_thread(self._commit)
        self.counters["imports"] += 1
        self.counters["recorded"] += len(ops)
        log.info("event=cel_imported records=%d submitted=%d following=%d%s", records, len(ops), len(self.calls),
                 self._where)
        return len(ops)

    async def import_now(self, service: CallService, settled_before: float = 0.0) -> int:
        """One import against the engine's live view (channels Asterisk holds, calls tracked);
        in a cluster, this node's view only."""
        ari = self.ari or service.ari

        async def live() -> set[str] | None:
            try:
                return {c.id for c in await ari.list_channels()}
            except AriError as exc:
                log.warning("event=cel_import_no_channel_list error=%s%s", exc, self._where)
                return None
        engine_calls = {cid for cid in service.calls if self._mine(cid)}
        return await self.run_once(engine_calls=engine_calls, now=time.time(), settled_before=settled_before,
                                   live_source=live)

    def after_reconcile(self, service: CallService, connected_at: float) -> None:
        """At every (re)connect, once the engine has adopted what Asterisk holds: import in
        the background (the database may be slow or away; events must keep flowing).
        Calls that ended before the connection (``connected_at``, less a second for the
        events socket opened just before) are recorded at once; one that ended within that
        second waits for its grace, so a second import follows once the grace is over (not
        the next periodic import, up to ``interval_s`` later)."""
        self._spawn(service, connected_at - 1.0)
        self._spawn(service, connected_at - 1.0, delay_s=self.grace_s + 0.5)

    def _spawn(self, service: CallService, settled_before: float, delay_s: float = 0.0) -> None:
        async def once() -> None:
            if delay_s:
                await asyncio.sleep(delay_s)
            try:
                await self.import_now(service, settled_before)
            except (OSError, ValueError) as exc:
                log.warning("event=cel_import_failed file=%s error=%r", self.cel_file, exc)
        service.tasks.spawn(once(), name=f"unseen-calls-import{f'-{self.node}' if self.node else ''}")

    async def run(self, service: CallService, interval_s: float) -> None:
        """Import every ``interval_s`` until cancelled (a task the engine owns)."""
        while True:
            await asyncio.sleep(interval_s)
            if not service.acting():
                continue  # a standby engine (callrouter.ha): the lease holder imports
            try:
                await self.import_now(service)
            except (OSError, ValueError) as exc:
                log.warning("event=cel_import_failed file=%s error=%r", self.cel_file, exc)

    def _commit(self) -> None:
        self._save_state()
        try:
            self.importing.unlink()
        except FileNotFoundError:
            pass
