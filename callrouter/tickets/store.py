"""The ticket repository: synchronous SQLAlchemy, SQLite or PostgreSQL.

Blocking by design: the engine never calls it on the event loop. Writes go through
:class:`~callrouter.tickets.writer.TicketWriter` (a worker thread via
``asyncio.to_thread``); the API may read from its own threads.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, TypeAlias

from sqlalchemy import Connection, Engine, create_engine, event, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

from .models import (
    AnswerTicket,
    Base,
    CloseTicket,
    OpenTicket,
    SetSeat,
    Ticket,
    TicketEvent,
    TicketOp,
    duration_between,
)

log = logging.getLogger("callrouter.tickets")

TicketDict: TypeAlias = dict[str, Any]
TicketRows: TypeAlias = list[TicketDict]

# Execution option read by our SQLite "begin" hook (see _sqlite_begin).
_SQLITE_BEGIN: Final = "callrouter_sqlite_begin"
_IN_CHUNK: Final = 500  # ids per IN (...) list; far below every backend's limit


class TicketStore:
    """Tickets in one database, named by an SQLAlchemy URL.

    ``sqlite:///path/tickets.sqlite3`` (the parent directory is created; WAL, foreign keys
    and a busy timeout are switched on) or ``postgresql+psycopg://user@host/db``.
    """

    def __init__(self, url: str, *, sqlite_busy_timeout_s: float = 5.0,
                 connect_timeout_s: int = 5) -> None:
        parsed = make_url(url)
        self.backend: str = parsed.get_backend_name()
        kwargs: dict[str, Any] = {}
        if self.backend == "sqlite":
            database = parsed.database or ""
            if database in ("", ":memory:") or "mode=memory" in str(parsed):
                # one shared connection, or each checkout would see its own empty database
                kwargs["poolclass"] = StaticPool
                kwargs["connect_args"] = {"check_same_thread": False}
            else:
                if not database.startswith("file:"):
                    Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
                kwargs["connect_args"] = {"timeout": sqlite_busy_timeout_s}
        else:
            # after a database restart the pool holds dead connections: test before use
            kwargs["pool_pre_ping"] = True
            if self.backend == "postgresql" and parsed.get_driver_name() in ("psycopg",
                                                                             "psycopg2"):
                kwargs["connect_args"] = {"connect_timeout": connect_timeout_s}
        self._engine: Engine = create_engine(parsed, **kwargs)
        if self.backend == "sqlite":
            _configure_sqlite(self._engine, busy_timeout_ms=int(sqlite_busy_timeout_s * 1000))
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)

    @property
    def engine(self) -> Engine:
        return self._engine

    def __repr__(self) -> str:
        return f"TicketStore({self._engine.url.render_as_string(hide_password=True)!r})"

    # --- lifecycle ----------------------------------------------------------------------
    def create_schema(self) -> None:
        """Create the tables that are missing (idempotent)."""
        Base.metadata.create_all(self._engine)

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- writes -------------------------------------------------------------------------
    def apply(self, ops: Sequence[TicketOp]) -> None:
        """Apply ``ops`` in order, in one transaction.

        Idempotent, so the writer can retry a batch whose commit may or may not have
        happened: an ``OpenTicket`` whose id exists, an answer for an answered ticket, a
        close for a closed one and a seat change not newer than the last are no-ops, and
        no-ops leave no event.
        """
        if not ops:
            return
        now = datetime.now(UTC)
        with self._sessions() as session, session.begin():
            if self.backend == "sqlite":
                # take the write lock up front: a read transaction upgraded to a write one
                # fails at once with SQLITE_BUSY instead of waiting out the busy timeout
                session.connection(execution_options={_SQLITE_BEGIN: "IMMEDIATE"})
            tickets = self._load(session, {op.id for op in ops})
            channel_owner = self._channel_owners(
                session, {op.channel_id for op in ops if isinstance(op, OpenTicket)})
            new: list[Ticket] = []
            events: list[TicketEvent] = []
            for op in ops:
                event_ = _apply_one(op, tickets, channel_owner, new, now)
                if event_ is not None:
                    events.append(event_)
            session.add_all(new)
            # tickets first, so the events' foreign keys find them
            session.flush()
            session.add_all(events)

    # --- reads --------------------------------------------------------------------------
    def get(self, ticket_id: str) -> TicketDict | None:
        with self._sessions() as session:
            ticket = session.get(Ticket, ticket_id)
            return None if ticket is None else ticket.to_dict()

    def by_channel(self, channel_id: str) -> TicketDict | None:
        with self._sessions() as session:
            ticket = session.scalars(
                select(Ticket).where(Ticket.channel_id == channel_id)).one_or_none()
            return None if ticket is None else ticket.to_dict()

    def list(self, limit: int = 50, line: str | None = None) -> TicketRows:
        """Newest first (by arrival), at most ``limit``, optionally of one line."""
        stmt = (select(Ticket)
                .order_by(Ticket.arrived_at.desc(), Ticket.id.desc())
                .limit(max(0, limit)))
        if line is not None:
            stmt = stmt.where(Ticket.line == line)
        with self._sessions() as session:
            return [t.to_dict() for t in session.scalars(stmt)]

    def events(self, ticket_id: str | None = None, limit: int | None = None) -> TicketRows:
        """Ticket events in the order they were written (all tickets, or one)."""
        stmt = select(TicketEvent).order_by(TicketEvent.id)
        if ticket_id is not None:
            stmt = stmt.where(TicketEvent.ticket_id == ticket_id)
        if limit is not None:
            stmt = stmt.limit(max(0, limit))
        with self._sessions() as session:
            return [e.to_dict() for e in session.scalars(stmt)]

    def count(self) -> int:
        with self._sessions() as session:
            return session.scalar(select(func.count()).select_from(Ticket)) or 0

    # --- helpers ------------------------------------------------------------------------
    @staticmethod
    def _load(session: Session, ids: set[str]) -> dict[str, Ticket]:
        found: dict[str, Ticket] = {}
        for chunk in _chunks(sorted(ids)):
            for ticket in session.scalars(select(Ticket).where(Ticket.id.in_(chunk))):
                found[ticket.id] = ticket
        return found

    @staticmethod
    def _channel_owners(session: Session, channels: set[str]) -> dict[str, str]:
        owners: dict[str, str] = {}
        for chunk in _chunks(sorted(channels)):
            rows = session.execute(
                select(Ticket.channel_id, Ticket.id).where(Ticket.channel_id.in_(chunk)))
            owners.update((channel, ticket_id) for channel, ticket_id in rows)
        return owners


def _apply_one(op: TicketOp, tickets: dict[str, Ticket], channel_owner: dict[str, str],
               new: list[Ticket], now: datetime) -> TicketEvent | None:
    """Change the loaded ``tickets`` for one op; the event to record, or None for a no-op."""
    if isinstance(op, OpenTicket):
        existing = tickets.get(op.id)
        if existing is not None:
            if existing.channel_id != op.channel_id:
                log.error("ticket id %s clashes: already used for channel %s, not opened "
                          "for channel %s", op.id, existing.channel_id, op.channel_id)
            return None  # a retried batch: already written
        owner = channel_owner.get(op.channel_id)
        if owner is not None:
            # the same call opened twice (e.g. after an engine restart): the first ticket
            # stays the record of this channel
            log.warning("channel %s already has ticket %s; ticket %s not opened",
                        op.channel_id, owner, op.id)
            return None
        opened = Ticket(
            id=op.id, dialled=op.dialled, number=op.number, caller=op.caller,
            caller_name=op.caller_name, line=op.line, category=op.category,
            department=op.department, priority=op.priority, listed=op.listed,
            channel_id=op.channel_id, arrived_at=op.arrived_at, answered_at=None, seat=None,
            seat_answered_at=None, ended_at=None, outcome=None, duration_s=None,
            updated_at=now)
        tickets[op.id] = opened
        channel_owner[op.channel_id] = op.id
        new.append(opened)
        data = opened.to_dict()
        del data["updated_at"]
        return TicketEvent(ticket_id=op.id, at=op.arrived_at, kind="opened", data=data)

    ticket = tickets.get(op.id)
    if ticket is None:
        # ops are applied in submission order, so this means the open was never submitted
        log.warning("%s for unknown ticket %s: not recorded (%r)", type(op).__name__, op.id, op)
        return None

    if isinstance(op, AnswerTicket):
        if ticket.answered_at is not None:
            return None
        ticket.answered_at = op.at
        ticket.updated_at = now
        return TicketEvent(ticket_id=op.id, at=op.at, kind="answered",
                           data={"answered_at": op.at.astimezone(UTC).isoformat()})

    if isinstance(op, CloseTicket):
        if ticket.ended_at is not None:
            return None
        ticket.ended_at = op.at
        ticket.outcome = op.outcome
        ticket.duration_s = duration_between(ticket.arrived_at, op.at)
        ticket.updated_at = now
        return TicketEvent(ticket_id=op.id, at=op.at, kind="closed",
                           data={"ended_at": op.at.astimezone(UTC).isoformat(),
                                 "outcome": op.outcome, "duration_s": ticket.duration_s})

    if isinstance(op, SetSeat):
        if ticket.seat_answered_at is not None and op.at <= ticket.seat_answered_at:
            return None  # this change or a later one is already written
        ticket.seat = op.seat
        ticket.seat_answered_at = op.at
        ticket.updated_at = now
        return TicketEvent(ticket_id=op.id, at=op.at, kind="seated",
                           data={"seat": op.seat,
                                 "seat_answered_at": op.at.astimezone(UTC).isoformat()})

    raise TypeError(f"not a ticket op: {op!r}")


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _IN_CHUNK):
        yield items[start:start + _IN_CHUNK]


def _configure_sqlite(engine: Engine, *, busy_timeout_ms: int) -> None:
    """WAL, foreign keys, busy timeout, and SQLAlchemy (not sqlite3) emitting BEGIN.

    Python's sqlite3 (before 3.12's ``autocommit``) only begins a transaction at the first
    INSERT/UPDATE, so our SELECTs would run outside it; we turn that off and begin
    ourselves, as the SQLAlchemy SQLite docs recommend.
    """

    def on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    def on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(_SQLITE_BEGIN, "")
        if mode not in ("", "DEFERRED", "IMMEDIATE", "EXCLUSIVE"):
            raise ValueError(f"bad SQLite BEGIN mode {mode!r}")
        connection.exec_driver_sql(f"BEGIN {mode}".rstrip())

    event.listen(engine, "connect", on_connect)
    event.listen(engine, "begin", on_begin)
