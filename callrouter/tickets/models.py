"""Ticket tables (SQLAlchemy 2 typed ORM) and the operations that change them.

A ticket is the record of one call. The engine never writes a ticket itself: it builds
an operation (``OpenTicket``, ``AnswerTicket``, ``CloseTicket``, ``SetSeat``) and hands
it to the :class:`~callrouter.tickets.writer.TicketWriter`, which applies it beside the
call flow. Every change also leaves a row in ``ticket_events`` and, in the same
transaction, a row in ``outbox`` that :mod:`~callrouter.tickets.relay` publishes to the
dispatch stream.
"""

from __future__ import annotations

import math
import re
import secrets
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

LINES: Final = ("110", "96345")
CALLBACK_OUTCOMES: Final = ("reached", "no_answer")

# Outcomes the engine is expected to use; the column is free text so that a new outcome
# never turns into a write that fails (and is retried) forever.
OUTCOMES: Final = ("completed", "abandoned", "caller_hangup", "failed", "transferred")


def new_ticket_id(now: datetime) -> str:
    """A ticket id such as ``T20261129-053301-3f9a2c81``, made before the DB is touched.

    The UTC second first, so ids sort by time; then 32 random bits. Ids only clash within
    the same second: at a sustained 10 calls/s the chance of any clash in a whole day is
    about 1e-3 %, and the store logs an error if one ever happens.
    """
    if now.tzinfo is None:
        raise ValueError("new_ticket_id needs a timezone-aware datetime")
    return now.astimezone(UTC).strftime("T%Y%m%d-%H%M%S-") + secrets.token_hex(4)


def ticket_id_for_channel(arrived_at: datetime, channel_id: str) -> str:
    """The ticket id of the call on Asterisk channel ``channel_id``, e.g.
    ``T20261129-053301-1795931002.14``.

    Derived, not drawn: an engine that restarts (or reconnects) while the caller is still
    on the line computes the same id again, so re-opening is a no-op and later changes
    land on the one ticket, with no database look-up on the way. Asterisk's channel ids
    (``<start epoch>.<sequence>``) are unique across Asterisk restarts.
    """
    if arrived_at.tzinfo is None:
        raise ValueError("ticket_id_for_channel needs a timezone-aware datetime")
    safe = "".join(c for c in channel_id if c.isalnum() or c in ".-_")
    return arrived_at.astimezone(UTC).strftime("T%Y%m%d-%H%M%S-") + safe


def utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime; naive values are taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that goes in as UTC and always comes out aware UTC.

    PostgreSQL keeps ``timestamptz``; SQLite has no time zones and hands back naive values,
    so we store UTC wall time there and attach UTC on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = utc(value)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return utc(value)


# BIGINT on PostgreSQL, but SQLite only autoincrements an INTEGER PRIMARY KEY.
_EventId = BigInteger().with_variant(Integer(), "sqlite")
_Json = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    pass


class Ticket(Base):
    __tablename__ = "tickets"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    dialled: Mapped[str] = mapped_column(String)  # as received from the trunk
    number: Mapped[str] = mapped_column(String)  # normalised legacy number
    caller: Mapped[str] = mapped_column(String, default="")  # caller id; may be empty
    caller_name: Mapped[str] = mapped_column(String, default="")
    line: Mapped[str] = mapped_column(String(8))
    category: Mapped[str] = mapped_column(String)
    department: Mapped[str] = mapped_column(String)
    priority: Mapped[int] = mapped_column(Integer)
    listed: Mapped[bool] = mapped_column(Boolean)
    channel_id: Mapped[str] = mapped_column(String, unique=True, index=True)
    arrived_at: Mapped[datetime] = mapped_column(UTCDateTime())
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    seat: Mapped[str | None] = mapped_column(String)
    seat_answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    outcome: Mapped[str | None] = mapped_column(String)
    duration_s: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Columns added with the dispatch outbox carry server defaults, so that
    # TicketStore.create_schema can add them to a database made before them.
    reclassified_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # [{"from_line", "to_line", "seat", "reason", "at"}, ...] oldest first; ``line`` is the last
    transfers: Mapped[list[dict[str, Any]]] = mapped_column(
        _Json, default=list, server_default=text("'[]'"))
    # [{"seat", "text", "at"}, ...] oldest first: what the seats wrote down
    notes: Mapped[list[dict[str, Any]]] = mapped_column(
        _Json, default=list, server_default=text("'[]'"))
    callback_requested: Mapped[bool] = mapped_column(Boolean, default=False,
                                                     server_default=false())
    callback_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    callback_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # last attempt
    callback_seat: Mapped[str | None] = mapped_column(String)
    callback_outcome: Mapped[str | None] = mapped_column(String)  # reached | no_answer
    callback_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    # the dialplan answered and held the caller (music, Stasis retried) while the engine
    # was away; set from the CR_HELD rounds or, for a call the engine never saw, from
    # Asterisk's own record of the call (CEL)
    held_by_dialplan: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # what the caller said while waiting, as the speech recogniser heard it (None: not
    # transcribed): {"model", "text", "flags", "keywords", "priority", "final", "at"}
    transcript: Mapped[dict[str, Any] | None] = mapped_column(_Json, nullable=True)
    # the call's recording (None: not recorded): {"file" (relative to recordings_dir),
    # "sha256", "size", "duration_s", "complete", "started_at", "retain_until"} and
    # "purged_at" once purged; or {"failed": reason, "detail", "at"} when it could not be kept
    recording: Mapped[dict[str, Any] | None] = mapped_column(_Json, nullable=True)
    # when the recording may be purged; None without a recording and once purged
    recording_retain_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    # a supervisor's legal hold: the recording is never purged while it is set
    legal_hold: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Dispatch (callrouter.dispatch). ``channel``: how the request came in (a call, or
    # POST /api/intake from the web, WeChat, the forum); ``contact``: the citizen's contact
    # for a request without a call; ``town``: the caller's town (a town id of units.toml),
    # set by the seat; ``dispatched_at``: the first order was opened; ``solved_at``: the
    # matter is solved; ``follow_up``: None, 'pending' (a 96345 unit reported: a seat calls
    # the citizen back) or 'done'.
    channel: Mapped[str] = mapped_column(String(16), default="phone", server_default=text("'phone'"))
    contact: Mapped[str] = mapped_column(String, default="", server_default=text("''"))
    town: Mapped[str | None] = mapped_column(String(40))
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    solved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    follow_up: Mapped[str | None] = mapped_column(String(16))

    __table_args__ = (
        Index("ix_tickets_arrived_at", "arrived_at"),
        Index("ix_tickets_line_arrived_at", "line", "arrived_at"),
    )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: timestamps as ISO-8601 with ``+00:00``."""
        return ticket_dict(self)


@dataclass(eq=False, slots=True, kw_only=True)
class TicketRow:
    """A ticket as plain attributes: what the ticket writer loads with one Core SELECT,
    the state machine changes and the writer writes back with Core statements (no ORM
    instrumentation or identity map on that path). The fields are :class:`Ticket`'s
    columns (a unit test keeps them equal)."""

    id: str
    dialled: str
    number: str
    caller: str = ""
    caller_name: str = ""
    line: str
    category: str
    department: str
    priority: int
    listed: bool
    channel_id: str
    arrived_at: datetime
    answered_at: datetime | None = None
    seat: str | None = None
    seat_answered_at: datetime | None = None
    ended_at: datetime | None = None
    outcome: str | None = None
    duration_s: float | None = None
    updated_at: datetime
    reclassified_at: datetime | None = None
    transfers: list[dict[str, Any]] = field(default_factory=list)
    notes: list[dict[str, Any]] = field(default_factory=list)
    callback_requested: bool = False
    callback_requested_at: datetime | None = None
    callback_at: datetime | None = None
    callback_seat: str | None = None
    callback_outcome: str | None = None
    callback_attempts: int = 0
    held_by_dialplan: bool = False
    transcript: dict[str, Any] | None = None
    recording: dict[str, Any] | None = None
    recording_retain_until: datetime | None = None
    legal_hold: bool = False
    channel: str = "phone"
    contact: str = ""
    town: str | None = None
    dispatched_at: datetime | None = None
    solved_at: datetime | None = None
    follow_up: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return ticket_dict(self)


def ticket_dict(ticket: Ticket | TicketRow) -> dict[str, Any]:
    """A ticket JSON-ready: timestamps as ISO-8601 with ``+00:00``."""
    return {
        "id": ticket.id,
        "dialled": ticket.dialled,
        "number": ticket.number,
        "caller": ticket.caller,
        "caller_name": ticket.caller_name,
        "line": ticket.line,
        "category": ticket.category,
        "department": ticket.department,
        "priority": ticket.priority,
        "listed": ticket.listed,
        "channel_id": ticket.channel_id,
        "arrived_at": _iso(ticket.arrived_at),
        "answered_at": _iso(ticket.answered_at),
        "seat": ticket.seat,
        "seat_answered_at": _iso(ticket.seat_answered_at),
        "ended_at": _iso(ticket.ended_at),
        "outcome": ticket.outcome,
        "duration_s": ticket.duration_s,
        "updated_at": _iso(ticket.updated_at),
        "reclassified_at": _iso(ticket.reclassified_at),
        "transfers": list(ticket.transfers or []),
        "notes": list(ticket.notes or []),
        "callback_requested": bool(ticket.callback_requested),
        "callback_requested_at": _iso(ticket.callback_requested_at),
        "callback_at": _iso(ticket.callback_at),
        "callback_seat": ticket.callback_seat,
        "callback_outcome": ticket.callback_outcome,
        "callback_attempts": ticket.callback_attempts or 0,
        "held_by_dialplan": bool(ticket.held_by_dialplan),
        "transcript": ticket.transcript,
        "recording": ticket.recording,
        "legal_hold": bool(ticket.legal_hold),
        "channel": ticket.channel or "phone",
        "contact": ticket.contact or "",
        "town": ticket.town,
        "dispatched_at": _iso(ticket.dispatched_at),
        "solved_at": _iso(ticket.solved_at),
        "follow_up": ticket.follow_up,
    }


class TicketEvent(Base):
    """One row per change of a ticket: ``opened``, ``answered``, ``seated``, ``closed``."""

    __tablename__ = "ticket_events"

    id: Mapped[int] = mapped_column(_EventId, primary_key=True, autoincrement=True)
    ticket_id: Mapped[str] = mapped_column(ForeignKey("tickets.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    kind: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]] = mapped_column(_Json)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ticket_id": self.ticket_id,
            "at": _iso(self.at),
            "kind": self.kind,
            "data": self.data,
        }


class OutboxEvent(Base):
    """One event for the dispatch stream, written in the transaction of the change.

    ``seq`` orders events as they were written; ``event_id`` is the id consumers dedupe
    by. A relay claims unsent rows (``claimed_by`` / ``claimed_until``, a lease), publishes
    them and only then sets ``sent_at``.
    """

    __tablename__ = "outbox"

    seq: Mapped[int] = mapped_column(_EventId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(32), unique=True)
    ticket_id: Mapped[str] = mapped_column(String(40), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(UTCDateTime())  # when the change happened
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())  # when it was written
    payload: Mapped[dict[str, Any]] = mapped_column(_Json)  # Ticket.to_dict() after it
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_outbox_sent_at_seq", "sent_at", "seq"),)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "event_id": self.event_id,
            "ticket_id": self.ticket_id,
            "kind": self.kind,
            "at": _iso(self.at),
            "created_at": _iso(self.created_at),
            "ticket": self.payload,
            "sent_at": _iso(self.sent_at),
        }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else utc(value).isoformat()


# --- operations ------------------------------------------------------------------------
# Validated when built, on the call path, because an op the database rejects would be
# retried by the writer forever and hold up every ticket queued behind it.


# What the phone network sends (caller number and name, dialled digits) is untrusted: it
# is kept as text of bounded length, without control or format characters (no newlines in
# logs, no bidi overrides on the pages). The engine cleans it at intake; the store again.
CALLER_MAX: Final = 64
CALLER_NAME_MAX: Final = 80
DIALLED_MAX: Final = 64


UNPRINTABLE: Final = frozenset({"Cc", "Cf", "Cs"})  # control, format (bidi overrides), lone surrogates


def untrusted_text(value: object, limit: int) -> str:
    """``value`` as at most ``limit`` characters, control/format characters removed."""
    text = value if isinstance(value, str) else ""
    return "".join(c for c in text if unicodedata.category(c) not in UNPRINTABLE)[:limit]


def _aware(name: str, value: datetime) -> None:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r}")


def _text(name: str, value: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be str, got {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class OpenTicket:
    id: str
    dialled: str
    number: str
    caller: str
    caller_name: str
    line: str
    category: str
    department: str
    priority: int
    listed: bool
    channel_id: str
    arrived_at: datetime
    held_by_dialplan: bool = False  # the dialplan held the caller while the engine was away

    def __post_init__(self) -> None:
        for name in ("id", "dialled", "number", "caller", "caller_name", "line",
                     "category", "department", "channel_id"):
            _text(name, getattr(self, name))
        if not self.id or not self.channel_id:
            raise ValueError("OpenTicket needs an id and a channel_id")
        if self.line not in LINES:
            raise ValueError(f"line must be one of {LINES}, got {self.line!r}")
        if not isinstance(self.priority, int) or isinstance(self.priority, bool):
            raise TypeError(f"priority must be int, got {self.priority!r}")
        if not isinstance(self.listed, bool):
            raise TypeError(f"listed must be bool, got {self.listed!r}")
        _aware("arrived_at", self.arrived_at)


@dataclass(frozen=True, slots=True)
class AnswerTicket:
    """The engine answered the call (the caller now hears the greeting / hold audio)."""

    id: str
    at: datetime

    def __post_init__(self) -> None:
        _text("id", self.id)
        _aware("at", self.at)


@dataclass(frozen=True, slots=True)
class CloseTicket:
    id: str
    at: datetime
    outcome: str

    def __post_init__(self) -> None:
        _text("id", self.id)
        _text("outcome", self.outcome)
        _aware("at", self.at)


@dataclass(frozen=True, slots=True)
class SetSeat:
    """A seat answered the call (again after a transfer: the last seat wins)."""

    id: str
    seat: str
    at: datetime

    def __post_init__(self) -> None:
        _text("id", self.id)
        _text("seat", self.seat)
        _aware("at", self.at)


def _line(name: str, value: str) -> None:
    if value not in LINES:
        raise ValueError(f"{name} must be one of {LINES}, got {value!r}")


@dataclass(frozen=True, slots=True)
class Reclassify:
    """The answering seat corrects the category (the last reclassification wins)."""

    id: str
    category: str
    at: datetime
    seat: str

    def __post_init__(self) -> None:
        for name in ("id", "category", "seat"):
            _text(name, getattr(self, name))
        _aware("at", self.at)


@dataclass(frozen=True, slots=True)
class AddTransfer:
    """The caller was handed from one line to the other; the ticket follows."""

    id: str
    from_line: str
    to_line: str
    seat: str
    reason: str
    at: datetime

    def __post_init__(self) -> None:
        for name in ("id", "from_line", "to_line", "seat", "reason"):
            _text(name, getattr(self, name))
        _line("from_line", self.from_line)
        _line("to_line", self.to_line)
        _aware("at", self.at)


@dataclass(frozen=True, slots=True)
class RequestCallback:
    """Flag the ticket for a call back (the store also does so for abandoned 110 calls)."""

    id: str
    at: datetime

    def __post_init__(self) -> None:
        _text("id", self.id)
        _aware("at", self.at)


@dataclass(frozen=True, slots=True)
class RecordCallback:
    """A seat called the citizen back: ``reached`` ends the callback, ``no_answer`` not."""

    id: str
    at: datetime
    seat: str
    outcome: str

    def __post_init__(self) -> None:
        _text("id", self.id)
        _text("seat", self.seat)
        if self.outcome not in CALLBACK_OUTCOMES:
            raise ValueError(f"outcome must be one of {CALLBACK_OUTCOMES}, got {self.outcome!r}")
        _aware("at", self.at)


@dataclass(frozen=True, slots=True)
class AddNote:
    """A seat writes a note on the ticket (kept in order; the text is the seat's own)."""

    id: str
    text: str
    seat: str
    at: datetime

    def __post_init__(self) -> None:
        for name in ("id", "text", "seat"):
            _text(name, getattr(self, name))
        if not self.text.strip():
            raise ValueError("a note needs some text")
        _aware("at", self.at)


@dataclass(frozen=True, slots=True)
class RecordUnseenCall:
    """A trunk call that ended without the engine closing its ticket, from Asterisk's own
    record of the call (CEL): the caller the dialplan held while the engine was away and
    who hung up before it returned, or a call whose ops a killed engine never wrote.

    Matched by ``channel_id``: a ticket the engine opened for this channel is closed (if
    still open) at ``ended_at``; without one a ticket is opened under ``id`` and closed
    at once as ``abandoned``. Applying it twice changes nothing.
    """

    id: str
    dialled: str
    number: str
    caller: str
    caller_name: str
    line: str
    category: str
    department: str
    priority: int
    listed: bool
    channel_id: str
    arrived_at: datetime
    ended_at: datetime
    answered_at: datetime | None = None
    held_by_dialplan: bool = False

    def __post_init__(self) -> None:
        self.opening()  # the fields it shares with OpenTicket, checked by OpenTicket's rules
        if not isinstance(self.held_by_dialplan, bool):
            raise TypeError(f"held_by_dialplan must be bool, got {self.held_by_dialplan!r}")
        _aware("ended_at", self.ended_at)
        if self.answered_at is not None:
            _aware("answered_at", self.answered_at)

    def opening(self) -> OpenTicket:
        return OpenTicket(id=self.id, dialled=self.dialled, number=self.number, caller=self.caller,
                          caller_name=self.caller_name, line=self.line, category=self.category,
                          department=self.department, priority=self.priority, listed=self.listed,
                          channel_id=self.channel_id, arrived_at=self.arrived_at,
                          held_by_dialplan=self.held_by_dialplan)


TRANSCRIPT_MAX: Final = 4000
MODEL_NAME_MAX: Final = 120


@dataclass(frozen=True, slots=True)
class SetTranscript:
    """What the caller said so far (the whole text, not a part): the latest ``at`` wins.

    ``flags`` are the keyword rules' flags (``probable_emergency`` ...), ``keywords`` the
    words that raised them, ``priority`` what a rule raised the caller to (None: not
    raised); ``final`` once the caller's audio ended. The text comes from a recogniser
    hearing untrusted audio: bounded, without control characters.
    """

    id: str
    model: str
    text: str
    at: datetime
    flags: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()
    priority: int | None = None
    final: bool = False

    def __post_init__(self) -> None:
        for name in ("id", "model", "text"):
            _text(name, getattr(self, name))
        object.__setattr__(self, "text", untrusted_text(self.text, TRANSCRIPT_MAX))
        object.__setattr__(self, "model", untrusted_text(self.model, MODEL_NAME_MAX))
        for name in ("flags", "keywords"):  # a list after a trip through the spool's JSON
            values = getattr(self, name)
            if not isinstance(values, (tuple, list)) or not all(isinstance(v, str) for v in values):
                raise TypeError(f"{name} must be a sequence of str, got {values!r}")
            object.__setattr__(self, name, tuple(untrusted_text(v, 80) for v in values)[:20])
        if self.priority is not None and (not isinstance(self.priority, int) or isinstance(self.priority, bool)):
            raise TypeError(f"priority must be int or None, got {self.priority!r}")
        if not isinstance(self.final, bool):
            raise TypeError(f"final must be bool, got {self.final!r}")
        _aware("at", self.at)


# --- recordings (callrouter.recordings) -------------------------------------------------
# a kept recording's file, relative to recordings_dir: YYYY/MM/DD/<ticket id>.wav
RECORDING_FILE: Final = re.compile(r"[0-9]{4}/[0-9]{2}/[0-9]{2}/[A-Za-z0-9][A-Za-z0-9._-]{0,80}\.wav")
SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")
RECORDING_FAILURES: Final = ("disk_full", "read_only", "start_failed", "no_file", "store_failed")
REASON_MAX: Final = 200


def _number(name: str, value: object, *, integer: bool = False) -> None:
    if (isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int))
            or not math.isfinite(value) or value < 0):
        raise ValueError(f"{name} must be a non-negative {'integer' if integer else 'number'}, got {value!r}")


@dataclass(frozen=True, slots=True)
class AttachRecording:
    """The call's recording was kept, once the call ended: its file (relative to the
    recordings directory), checksum, size, duration, when it began and when it may be
    purged. ``complete`` is False when Asterisk never closed the file (it died mid-call):
    the end of the call may be missing."""

    id: str
    file: str
    sha256: str
    size: int
    duration_s: float
    started_at: datetime
    retain_until: datetime
    at: datetime
    complete: bool = True

    def __post_init__(self) -> None:
        for name in ("id", "file", "sha256"):
            _text(name, getattr(self, name))
        if not RECORDING_FILE.fullmatch(self.file):
            raise ValueError(f"file must be YYYY/MM/DD/<ticket>.wav, got {self.file!r}")
        if not SHA256_HEX.fullmatch(self.sha256):
            raise ValueError(f"sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        _number("size", self.size, integer=True)
        _number("duration_s", self.duration_s)
        if not isinstance(self.complete, bool):
            raise TypeError(f"complete must be bool, got {self.complete!r}")
        for name in ("started_at", "retain_until", "at"):
            _aware(name, getattr(self, name))


@dataclass(frozen=True, slots=True)
class RecordingFailed:
    """The call was to be recorded and is not (or not kept): ``reason`` is one of
    RECORDING_FAILURES; the call itself went on."""

    id: str
    reason: str
    at: datetime
    detail: str = ""

    def __post_init__(self) -> None:
        for name in ("id", "reason", "detail"):
            _text(name, getattr(self, name))
        if self.reason not in RECORDING_FAILURES:
            raise ValueError(f"reason must be one of {RECORDING_FAILURES}, got {self.reason!r}")
        object.__setattr__(self, "detail", untrusted_text(self.detail, REASON_MAX))
        _aware("at", self.at)


@dataclass(frozen=True, slots=True)
class SetLegalHold:
    """A supervisor puts the ticket on legal hold (its recording is never purged) or
    releases it. ``by`` names the token (role and seat or name)."""

    id: str
    held: bool
    by: str
    reason: str
    at: datetime

    def __post_init__(self) -> None:
        for name in ("id", "by", "reason"):
            _text(name, getattr(self, name))
        if not isinstance(self.held, bool):
            raise TypeError(f"held must be bool, got {self.held!r}")
        object.__setattr__(self, "reason", untrusted_text(self.reason, REASON_MAX))
        _aware("at", self.at)


@dataclass(frozen=True, slots=True)
class PurgeRecording:
    """The recording's file was deleted after its retention (``deleted`` False: it was
    already gone). The ticket keeps what the file was (name, checksum, size)."""

    id: str
    at: datetime
    deleted: bool = True

    def __post_init__(self) -> None:
        _text("id", self.id)
        if not isinstance(self.deleted, bool):
            raise TypeError(f"deleted must be bool, got {self.deleted!r}")
        _aware("at", self.at)


@dataclass(frozen=True, slots=True)
class RecordingAccessed:
    """Someone asked for the recording through the API: granted (streamed) or refused.
    An audit record: it goes to the ticket's events, not to the dispatch stream."""

    id: str
    at: datetime
    by: str
    granted: bool
    reason: str = ""
    part: str = ""  # the Range asked for ("": the whole file)

    def __post_init__(self) -> None:
        for name in ("id", "by", "reason", "part"):
            _text(name, getattr(self, name))
        if not isinstance(self.granted, bool):
            raise TypeError(f"granted must be bool, got {self.granted!r}")
        object.__setattr__(self, "reason", untrusted_text(self.reason, REASON_MAX))
        object.__setattr__(self, "part", untrusted_text(self.part, 100))
        _aware("at", self.at)


# --- dispatch (callrouter.dispatch) -----------------------------------------------------
CHANNELS: Final = ("phone", "web", "wechat", "forum")
FOLLOW_UP_OUTCOMES: Final = CALLBACK_OUTCOMES  # reached | no_answer
CONTACT_MAX: Final = 64
INTAKE_TEXT_MAX: Final = TRANSCRIPT_MAX
BY_MAX: Final = 80
TOWN_ID: Final = re.compile(r"[a-z][a-z0-9_]{0,39}")
CATEGORY_SLUG: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")


def _by(op: Any) -> None:
    _text("by", op.by)
    object.__setattr__(op, "by", untrusted_text(op.by, BY_MAX))


@dataclass(frozen=True, slots=True)
class SetTown:
    """The seat sets the caller's town (a town id of units.toml; None: unknown)."""

    ticket_id: str
    town: str | None
    by: str
    at: datetime

    @property
    def id(self) -> str:
        return self.ticket_id

    def __post_init__(self) -> None:
        _text("ticket_id", self.ticket_id)
        if self.town is not None and (not isinstance(self.town, str) or not TOWN_ID.fullmatch(self.town)):
            raise ValueError(f"town must be a town id (a lowercase slug) or None, got {self.town!r}")
        _by(self)
        _aware("at", self.at)


@dataclass(frozen=True, slots=True)
class SendToDispatch:
    """A seat sends the ticket to dispatch now (the dispatcher opens its order)."""

    ticket_id: str
    by: str
    at: datetime

    @property
    def id(self) -> str:
        return self.ticket_id

    def __post_init__(self) -> None:
        _text("ticket_id", self.ticket_id)
        _by(self)
        _aware("at", self.at)


@dataclass(frozen=True, slots=True)
class MarkSolved:
    """The matter is solved (a 110 unit reported it solved, or a supervisor says so)."""

    ticket_id: str
    by: str
    at: datetime

    @property
    def id(self) -> str:
        return self.ticket_id

    def __post_init__(self) -> None:
        _text("ticket_id", self.ticket_id)
        _by(self)
        _aware("at", self.at)


@dataclass(frozen=True, slots=True)
class RequestFollowUp:
    """A 96345 unit reported: a seat calls the citizen back (回访) before it is solved."""

    ticket_id: str
    at: datetime
    order_id: str = ""

    @property
    def id(self) -> str:
        return self.ticket_id

    def __post_init__(self) -> None:
        _text("ticket_id", self.ticket_id)
        _text("order_id", self.order_id)
        _aware("at", self.at)


@dataclass(frozen=True, slots=True)
class FollowUpDone:
    """A seat called the citizen back: ``reached`` ends the follow-up and solves the
    ticket; ``no_answer`` leaves it pending."""

    ticket_id: str
    outcome: str
    by: str
    note: str
    at: datetime

    @property
    def id(self) -> str:
        return self.ticket_id

    def __post_init__(self) -> None:
        for name in ("ticket_id", "outcome", "note"):
            _text(name, getattr(self, name))
        if self.outcome not in FOLLOW_UP_OUTCOMES:
            raise ValueError(f"outcome must be one of {FOLLOW_UP_OUTCOMES}, got {self.outcome!r}")
        _by(self)
        object.__setattr__(self, "note", untrusted_text(self.note, REASON_MAX * 5))
        _aware("at", self.at)


@dataclass(frozen=True, slots=True)
class MarkDispatched:
    """The dispatcher opened the ticket's first order (sets ``dispatched_at`` once)."""

    ticket_id: str
    order_id: str
    unit: str
    at: datetime

    @property
    def id(self) -> str:
        return self.ticket_id

    def __post_init__(self) -> None:
        for name in ("ticket_id", "order_id", "unit"):
            _text(name, getattr(self, name))
        _aware("at", self.at)


@dataclass(frozen=True, slots=True)
class OpenIntake:
    """A request from another channel (web, WeChat, the forum; or a phone system without a
    call) opens a ticket of the same model, with ``contact`` instead of a caller number
    and no call fields; or, when the same contact asked about the same category within
    ``window_s`` and that ticket is not solved, links to it (event ``linked``).
    Applied by :meth:`TicketStore.open_intake`, which says which ticket and whether linked.
    ``id`` (the new ticket's) is drawn when not given."""

    channel: str
    contact: str
    line: str
    category: str
    town: str | None
    text: str
    at: datetime
    window_s: float
    id: str = ""

    def __post_init__(self) -> None:
        for name in ("channel", "contact", "line", "category", "text", "id"):
            _text(name, getattr(self, name))
        if self.channel not in CHANNELS:
            raise ValueError(f"channel must be one of {CHANNELS}, got {self.channel!r}")
        _line("line", self.line)
        if not CATEGORY_SLUG.fullmatch(self.category):
            raise ValueError(f"category must be a category slug, got {self.category!r}")
        if self.town is not None and (not isinstance(self.town, str) or not TOWN_ID.fullmatch(self.town)):
            raise ValueError(f"town must be a town id (a lowercase slug) or None, got {self.town!r}")
        contact = untrusted_text(self.contact, CONTACT_MAX).strip()
        if not contact:
            raise ValueError("an intake request needs a contact")
        object.__setattr__(self, "contact", contact)
        object.__setattr__(self, "text", untrusted_text(self.text, INTAKE_TEXT_MAX))
        _number("window_s", self.window_s)
        _aware("at", self.at)
        if not self.id:
            object.__setattr__(self, "id", new_ticket_id(self.at))


TicketOp = (OpenTicket | AnswerTicket | CloseTicket | SetSeat | Reclassify | AddTransfer
            | RequestCallback | RecordCallback | AddNote | RecordUnseenCall | SetTranscript
            | AttachRecording | RecordingFailed | SetLegalHold | PurgeRecording | RecordingAccessed
            | SetTown | SendToDispatch | MarkSolved | RequestFollowUp | FollowUpDone | MarkDispatched)
TICKET_OPS: Final = (OpenTicket, AnswerTicket, CloseTicket, SetSeat, Reclassify, AddTransfer,
                     RequestCallback, RecordCallback, AddNote, RecordUnseenCall, SetTranscript,
                     AttachRecording, RecordingFailed, SetLegalHold, PurgeRecording, RecordingAccessed,
                     SetTown, SendToDispatch, MarkSolved, RequestFollowUp, FollowUpDone, MarkDispatched)


def duration_between(start: datetime, end: datetime) -> float:
    """Seconds from ``start`` to ``end``."""
    return (utc(end) - utc(start)).total_seconds()
