"""The ticket state machine: what one op does to a ticket, without a database.

:class:`~callrouter.tickets.store.TicketStore` loads the tickets a batch of ops names (and
which ticket owns each channel), calls :func:`apply_op` for each op in order and writes
what it returns: a ``ticket_events`` row per :class:`Change` and an ``outbox`` row for
those with an ``outbox_kind``. The tickets are :class:`~callrouter.tickets.models.TicketRow`
values changed in place: plain objects (no session, no SQL, no ORM instrumentation), so the
rules are tested without a database and the writer's transaction stays cheap.

Every rule is idempotent, so a retried batch (the writer's retry, its spool replayed after
a crash) changes nothing twice: an op already applied, or older than the last of its kind,
returns no change. The rules that differ per line come from configuration
(:class:`TicketRules`, built from ``queues/lines.toml`` by the engine).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol, TypeVar

from .models import (
    CALLER_MAX,
    CALLER_NAME_MAX,
    DIALLED_MAX,
    AddNote,
    AddTransfer,
    AnswerTicket,
    AttachRecording,
    CloseTicket,
    FollowUpDone,
    MarkDispatched,
    MarkSolved,
    OpenTicket,
    PurgeRecording,
    Reclassify,
    RecordCallback,
    RecordingAccessed,
    RecordingFailed,
    RecordUnseenCall,
    RequestCallback,
    RequestFollowUp,
    SendToDispatch,
    SetLegalHold,
    SetSeat,
    SetTown,
    SetTranscript,
    Ticket,
    TicketOp,
    TicketRow,
    duration_between,
    untrusted_text,
    utc,
)

log = logging.getLogger("callrouter.tickets")


@dataclass(frozen=True, slots=True)
class TicketRules:
    """The per-line rules (``[line.<id>]`` in lines.toml).

    ``callback_lines``: lines whose abandoned calls (the caller gave up before a seat
    answered) are flagged for a call back (``callback_abandoned = true``: PSAP practice on
    110). ``intake_priority``: the priority of a request from another channel (web,
    WeChat) per line, ``default_intake_priority`` for a line not named.
    """

    callback_lines: frozenset[str] = frozenset()
    intake_priority: Mapping[str, int] = field(default_factory=dict)
    default_intake_priority: int = 5

    def priority_of_intake(self, line: str) -> int:
        return self.intake_priority.get(line, self.default_intake_priority)


# The rules of the shipped queues/lines.toml (tests/unit/test_ticket_machine.py keeps them
# equal): a store built without the lines file (tools, tests) applies these; the engine
# passes the rules of the lines file it runs with.
SHIPPED_RULES: Final = TicketRules(callback_lines=frozenset({"110"}), intake_priority={"110": 2, "96345": 5})


class _LineRules(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def callback_abandoned(self) -> bool: ...
    @property
    def intake_priority(self) -> int: ...


class _Lines(Protocol):
    @property
    def lines(self) -> tuple[_LineRules, ...]: ...


def rules_of(lines: _Lines) -> TicketRules:
    """The ticket rules of a lines configuration (callrouter.acd.lines.LinesConfig)."""
    return TicketRules(callback_lines=frozenset(line.id for line in lines.lines if line.callback_abandoned),
                       intake_priority={line.id: line.intake_priority for line in lines.lines})


@dataclass(frozen=True, slots=True)
class Change:
    """One recorded change: a ``ticket_events`` row and, with ``outbox_kind``, an outbox row."""

    kind: str  # ticket_events kind
    outbox_kind: str  # dispatch stream kind; "" for an audit record not sent to dispatch
    at: datetime
    data: dict[str, Any]  # ticket_events data: what changed
    ticket: dict[str, Any]  # the whole ticket after the change


@dataclass(slots=True)
class Loaded:
    """The tickets a batch may change, as loaded by the store, and what the batch adds."""

    tickets: dict[str, TicketRow]  # by id
    channel_owner: dict[str, str]  # channel id -> the id of the ticket recording it
    new: list[TicketRow] = field(default_factory=list)  # opened by this batch (to insert)


def change(ticket: Ticket | TicketRow, kind: str, at: datetime, data: dict[str, Any],
           outbox_kind: str | None = None) -> Change:
    return Change(kind, outbox_kind or kind, at, data, ticket.to_dict())


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


# what an "opened" ticket event records (as before the dispatch columns were added)
OPENED_FIELDS: Final = frozenset((
    "id", "dialled", "number", "caller", "caller_name", "line", "category", "department",
    "priority", "listed", "channel_id", "arrived_at", "answered_at", "seat",
    "seat_answered_at", "ended_at", "outcome", "duration_s", "held_by_dialplan"))
INTAKE_FIELDS: Final = frozenset(("channel", "contact", "town"))


def apply_op(op: TicketOp, loaded: Loaded, now: datetime, rules: TicketRules) -> list[Change]:
    """Change the loaded tickets for one op; the changes to record (none for a no-op).

    ``now`` is the write time (``updated_at``); the op's own ``at`` is when it happened.
    """
    if isinstance(op, RecordUnseenCall):
        return _record_unseen(op, loaded, now, rules)
    if isinstance(op, OpenTicket):
        return _open(op, loaded, now)
    ticket = loaded.tickets.get(op.id)
    if ticket is None:
        # ops are applied in submission order, so this means the open was never submitted
        log.warning("%s for unknown ticket %s: not recorded (%r)", type(op).__name__, op.id, op)
        return []
    rule = _RULES.get(type(op))
    if rule is None:
        raise TypeError(f"not a ticket op: {op!r}")
    return rule(op, ticket, now, rules)


def _open(op: OpenTicket, loaded: Loaded, now: datetime) -> list[Change]:
    existing = loaded.tickets.get(op.id)
    if existing is not None:
        if existing.channel_id != op.channel_id:
            log.error("ticket id %s clashes: already used for channel %s, not opened "
                      "for channel %s", op.id, existing.channel_id, op.channel_id)
        return []  # a retried batch: already written
    owner = loaded.channel_owner.get(op.channel_id)
    if owner is not None:
        # the same call opened twice (e.g. after an engine restart): the first ticket
        # stays the record of this channel
        log.warning("channel %s already has ticket %s; ticket %s not opened",
                    op.channel_id, owner, op.id)
        return []
    opened = TicketRow(
        id=op.id, dialled=untrusted_text(op.dialled, DIALLED_MAX), number=op.number[:DIALLED_MAX],
        caller=untrusted_text(op.caller, CALLER_MAX),
        caller_name=untrusted_text(op.caller_name, CALLER_NAME_MAX), line=op.line, category=op.category,
        department=op.department, priority=op.priority, listed=op.listed,
        channel_id=op.channel_id, arrived_at=op.arrived_at, answered_at=None, seat=None,
        seat_answered_at=None, ended_at=None, outcome=None, duration_s=None,
        updated_at=now, reclassified_at=None, transfers=[], callback_requested=False,
        callback_requested_at=None, callback_at=None, callback_seat=None,
        callback_outcome=None, callback_attempts=0, held_by_dialplan=op.held_by_dialplan)
    loaded.tickets[op.id] = opened
    loaded.channel_owner[op.channel_id] = op.id
    loaded.new.append(opened)
    data = {k: v for k, v in opened.to_dict().items() if k in OPENED_FIELDS}
    return [change(opened, "opened", op.arrived_at, data)]


def _record_unseen(op: RecordUnseenCall, loaded: Loaded, now: datetime, rules: TicketRules) -> list[Change]:
    """Open (if the channel has no ticket) and close a call Asterisk recorded."""
    changes: list[Change] = []
    owner = loaded.channel_owner.get(op.channel_id)
    if owner is None:
        changes += apply_op(op.opening(), loaded, now, rules)
        owner = op.id
    ticket = loaded.tickets.get(owner)
    if ticket is None or ticket.ended_at is not None:
        return changes  # already closed: by the engine, or by an earlier import
    if op.answered_at is not None and ticket.answered_at is None:
        changes += apply_op(AnswerTicket(id=owner, at=op.answered_at), loaded, now, rules)
    # a seat answered: the engine saw the call talking; else the caller left waiting
    outcome = "completed" if ticket.seat_answered_at is not None else "abandoned"
    changes += apply_op(CloseTicket(id=owner, at=max(utc(op.ended_at), utc(ticket.arrived_at)), outcome=outcome),
                        loaded, now, rules)
    return changes


# --- the call's life ------------------------------------------------------------------------
def _answer(op: AnswerTicket, ticket: TicketRow, now: datetime, rules: TicketRules) -> list[Change]:
    if ticket.answered_at is not None:
        return []
    ticket.answered_at = op.at
    ticket.updated_at = now
    return [change(ticket, "answered", op.at, {"answered_at": iso(op.at)})]


def _close(op: CloseTicket, ticket: TicketRow, now: datetime, rules: TicketRules) -> list[Change]:
    if ticket.ended_at is not None:
        return []
    ticket.ended_at = op.at
    ticket.outcome = op.outcome
    ticket.duration_s = duration_between(ticket.arrived_at, op.at)
    ticket.updated_at = now
    abandoned = op.outcome == "abandoned"
    changes = [change(ticket, "closed", op.at,
                      {"ended_at": iso(op.at), "outcome": op.outcome, "duration_s": ticket.duration_s},
                      outbox_kind="abandoned" if abandoned else "closed")]
    if abandoned and ticket.line in rules.callback_lines and not ticket.callback_requested:
        # PSAP practice: an emergency caller who gave up before a seat answered is
        # called back
        changes.extend(_request_callback(ticket, op.at, now))
    return changes


def _seat(op: SetSeat, ticket: TicketRow, now: datetime, rules: TicketRules) -> list[Change]:
    if ticket.seat_answered_at is not None and op.at <= ticket.seat_answered_at:
        return []  # this change or a later one is already written
    ticket.seat = op.seat
    ticket.seat_answered_at = op.at
    ticket.updated_at = now
    return [change(ticket, "seated", op.at, {"seat": op.seat, "seat_answered_at": iso(op.at)})]


def _reclassify(op: Reclassify, ticket: TicketRow, now: datetime, rules: TicketRules) -> list[Change]:
    if ticket.reclassified_at is not None and op.at <= ticket.reclassified_at:
        return []
    previous = ticket.category
    ticket.category = op.category
    ticket.reclassified_at = op.at
    ticket.updated_at = now
    return [change(ticket, "reclassified", op.at, {"from": previous, "to": op.category, "seat": op.seat})]


def _transfer(op: AddTransfer, ticket: TicketRow, now: datetime, rules: TicketRules) -> list[Change]:
    transfers = list(ticket.transfers or [])
    if transfers and op.at <= datetime.fromisoformat(transfers[-1]["at"]):
        return []
    record = {"from_line": op.from_line, "to_line": op.to_line, "seat": op.seat,
              "reason": op.reason, "at": iso(op.at)}
    ticket.transfers = [*transfers, record]  # a new list: JSON columns track assignment
    ticket.line = op.to_line
    ticket.updated_at = now
    return [change(ticket, "transferred", op.at, record)]


def _note(op: AddNote, ticket: TicketRow, now: datetime, rules: TicketRules) -> list[Change]:
    notes = list(ticket.notes or [])
    record = {"seat": op.seat, "text": op.text, "at": iso(op.at)}
    if record in notes:
        return []  # a retried batch
    ticket.notes = [*notes, record]
    ticket.updated_at = now
    return [change(ticket, "noted", op.at, record)]


def _callback_request(op: RequestCallback, ticket: TicketRow, now: datetime, rules: TicketRules) -> list[Change]:
    if ticket.callback_requested:
        return []
    return _request_callback(ticket, op.at, now)


def _callback_done(op: RecordCallback, ticket: TicketRow, now: datetime, rules: TicketRules) -> list[Change]:
    if ticket.callback_at is not None and op.at <= ticket.callback_at:
        return []
    ticket.callback_at = op.at
    ticket.callback_seat = op.seat
    ticket.callback_outcome = op.outcome
    ticket.callback_attempts = (ticket.callback_attempts or 0) + 1
    ticket.updated_at = now
    return [change(ticket, "callback_done", op.at, {"seat": op.seat, "outcome": op.outcome, "at": iso(op.at),
                                                    "attempt": ticket.callback_attempts})]


def _transcript(op: SetTranscript, ticket: TicketRow, now: datetime, rules: TicketRules) -> list[Change]:
    written: dict[str, Any] = ticket.transcript or {}
    if written.get("at") and op.at <= datetime.fromisoformat(str(written["at"])):
        return []  # this text or a later one is already written
    said: dict[str, Any] = {"model": op.model, "text": op.text, "flags": list(op.flags),
                            "keywords": list(op.keywords), "priority": op.priority, "final": op.final,
                            "at": iso(op.at)}
    ticket.transcript = said  # a new dict: JSON columns track assignment
    ticket.updated_at = now
    return [change(ticket, "transcribed", op.at, said)]


def _request_callback(ticket: TicketRow, at: datetime, now: datetime) -> list[Change]:
    ticket.callback_requested = True
    ticket.callback_requested_at = at
    ticket.updated_at = now
    return [change(ticket, "callback_requested", at, {"callback_requested_at": iso(at)})]


# --- recordings (callrouter.recordings) -------------------------------------------------------
def _attach_recording(op: AttachRecording, ticket: TicketRow, now: datetime, rules: TicketRules) -> list[Change]:
    kept: dict[str, Any] = dict(ticket.recording or {})
    if kept.get("sha256") == op.sha256 or kept.get("purged_at"):
        return []  # written already (a retried batch), or kept and purged since
    recording = {"file": op.file, "sha256": op.sha256, "size": op.size, "duration_s": round(op.duration_s, 3),
                 "complete": op.complete, "started_at": iso(op.started_at),
                 "retain_until": iso(op.retain_until)}
    ticket.recording = recording  # a new dict: JSON columns track assignment
    ticket.recording_retain_until = op.retain_until
    ticket.updated_at = now
    return [change(ticket, "recorded", op.at, recording)]


def _recording_failed(op: RecordingFailed, ticket: TicketRow, now: datetime, rules: TicketRules) -> list[Change]:
    kept: dict[str, Any] = dict(ticket.recording or {})
    if kept.get("sha256") or kept.get("failed") == op.reason:
        return []  # a kept recording stands; this failure is written already
    failure = {"failed": op.reason, "detail": op.detail, "at": iso(op.at)}
    ticket.recording = failure
    ticket.updated_at = now
    return [change(ticket, "recording_failed", op.at, failure)]


def _legal_hold(op: SetLegalHold, ticket: TicketRow, now: datetime, rules: TicketRules) -> list[Change]:
    if bool(ticket.legal_hold) == op.held:
        return []
    ticket.legal_hold = op.held
    ticket.updated_at = now
    return [change(ticket, "legal_hold", op.at, {"held": op.held, "by": op.by, "reason": op.reason})]


def _purge_recording(op: PurgeRecording, ticket: TicketRow, now: datetime, rules: TicketRules) -> list[Change]:
    kept: dict[str, Any] = dict(ticket.recording or {})
    if not kept.get("sha256") or kept.get("purged_at"):
        return []
    ticket.recording = {**kept, "purged_at": iso(op.at)}
    ticket.recording_retain_until = None
    ticket.updated_at = now
    data = {k: kept.get(k) for k in ("file", "sha256", "size", "retain_until")}
    return [change(ticket, "recording_purged", op.at,
                   {**data, "deleted": op.deleted, "legal_hold": bool(ticket.legal_hold)})]


def _recording_accessed(op: RecordingAccessed, ticket: TicketRow, now: datetime, rules: TicketRules) -> list[Change]:
    # an audit record: the ticket itself does not change, dispatch is not told
    kind = "recording_accessed" if op.granted else "recording_access_denied"
    return [Change(kind, "", op.at, {"by": op.by, "reason": op.reason, "part": op.part}, {"id": ticket.id})]


# --- dispatch (callrouter.dispatch) ------------------------------------------------------------
def _town(op: SetTown, ticket: TicketRow, now: datetime, rules: TicketRules) -> list[Change]:
    if ticket.town == op.town:
        return []
    previous, ticket.town = ticket.town, op.town
    ticket.updated_at = now
    return [change(ticket, "town_set", op.at, {"from": previous, "to": op.town, "by": op.by})]


def _to_dispatch(op: SendToDispatch, ticket: TicketRow, now: datetime, rules: TicketRules) -> list[Change]:
    if ticket.dispatched_at is not None:
        return []  # its order is open already
    return [change(ticket, "dispatch_requested", op.at, {"by": op.by})]


def _dispatched(op: MarkDispatched, ticket: TicketRow, now: datetime, rules: TicketRules) -> list[Change]:
    if ticket.dispatched_at is not None:
        return []
    ticket.dispatched_at = op.at
    ticket.updated_at = now
    return [change(ticket, "dispatched", op.at, {"order_id": op.order_id, "unit": op.unit})]


def _solved(op: MarkSolved, ticket: TicketRow, now: datetime, rules: TicketRules) -> list[Change]:
    return _solve(ticket, op.at, op.by, now)


def _follow_up(op: RequestFollowUp, ticket: TicketRow, now: datetime, rules: TicketRules) -> list[Change]:
    if ticket.follow_up is not None or ticket.solved_at is not None:
        return []
    ticket.follow_up = "pending"
    ticket.updated_at = now
    return [change(ticket, "follow_up_requested", op.at, {"order_id": op.order_id})]


def _follow_up_done(op: FollowUpDone, ticket: TicketRow, now: datetime, rules: TicketRules) -> list[Change]:
    if ticket.follow_up != "pending":
        return []  # none asked, or done already (a retried batch)
    ticket.updated_at = now
    record = {"outcome": op.outcome, "by": op.by, "note": op.note, "at": iso(op.at)}
    if op.outcome != "reached":
        return [change(ticket, "follow_up_done", op.at, record)]
    ticket.follow_up = "done"
    return [change(ticket, "follow_up_done", op.at, record), *_solve(ticket, op.at, op.by, now)]


def _solve(ticket: TicketRow, at: datetime, by: str, now: datetime) -> list[Change]:
    if ticket.solved_at is not None:
        return []
    ticket.solved_at = at
    ticket.updated_at = now
    return [change(ticket, "solved", at, {"by": by, "solved_at": iso(at)})]


_Op = TypeVar("_Op")
_Rule = Callable[[Any, TicketRow, datetime, TicketRules], list[Change]]


def _rule(handler: Callable[[_Op, TicketRow, datetime, TicketRules], list[Change]]) -> _Rule:
    return handler  # each handler takes its own op type; looked up by that type below


# the op types that change an existing ticket, and their rule
_RULES: Final[dict[type, _Rule]] = {
    AnswerTicket: _rule(_answer), CloseTicket: _rule(_close), SetSeat: _rule(_seat),
    Reclassify: _rule(_reclassify), AddTransfer: _rule(_transfer), AddNote: _rule(_note),
    RequestCallback: _rule(_callback_request), RecordCallback: _rule(_callback_done),
    SetTranscript: _rule(_transcript),
    AttachRecording: _rule(_attach_recording), RecordingFailed: _rule(_recording_failed),
    SetLegalHold: _rule(_legal_hold), PurgeRecording: _rule(_purge_recording),
    RecordingAccessed: _rule(_recording_accessed),
    SetTown: _rule(_town), SendToDispatch: _rule(_to_dispatch), MarkDispatched: _rule(_dispatched),
    MarkSolved: _rule(_solved), RequestFollowUp: _rule(_follow_up), FollowUpDone: _rule(_follow_up_done),
}
