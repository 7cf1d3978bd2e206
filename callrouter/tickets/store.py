"""The ticket repository: synchronous SQLAlchemy, SQLite or PostgreSQL.

Blocking by design: the engine never calls it on the event loop. Writes go through
:class:`~callrouter.tickets.writer.TicketWriter` (a worker thread via
``asyncio.to_thread``); the API may read from its own threads.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, TypeAlias, cast

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    and_,
    bindparam,
    case,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    or_,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool
from sqlalchemy.schema import CreateColumn

from . import machine
from . import orders as _orders  # noqa: F401 - the order tables join Base.metadata for create_schema
from .machine import INTAKE_FIELDS, OPENED_FIELDS, SHIPPED_RULES, Change, Loaded, TicketRules, apply_op, iso
from .models import (
    Base,
    OpenIntake,
    OpenTicket,
    OutboxEvent,
    RecordingAccessed,
    RecordUnseenCall,
    Ticket,
    TicketEvent,
    TicketOp,
    TicketRow,
    utc,
)

log = logging.getLogger("callrouter.tickets")

TicketDict: TypeAlias = dict[str, Any]


@dataclass(frozen=True, slots=True)
class IntakeResult:
    """What :meth:`TicketStore.open_intake` did: the ticket, and whether it was linked to an
    open one rather than opened."""

    ticket_id: str
    linked: bool

TicketRows: TypeAlias = list[TicketDict]
OutboxRow: TypeAlias = dict[str, Any]  # OutboxEvent.to_dict()

# Execution option read by our SQLite "begin" hook (see _sqlite_begin).
_SQLITE_BEGIN: Final = "callrouter_sqlite_begin"
# Session.info key: this transaction wrote outbox rows (on_outbox_commit runs after it)
_WROTE_OUTBOX: Final = "callrouter_wrote_outbox"
# Session.info key: the rows this transaction claimed for outbox_claimer (handed on commit)
_HANDED: Final = "callrouter_handed_outbox"
_IN_CHUNK: Final = 500  # ids per IN (...) list; far below every backend's limit

# The writer's hot path uses Core statements on these tables (no ORM unit of work)
_TICKETS: Final = cast(Table, Ticket.__table__)
_EVENTS: Final = cast(Table, TicketEvent.__table__)
_OUTBOX: Final = cast(Table, OutboxEvent.__table__)
_TICKET_COLUMNS: Final = tuple(column.name for column in _TICKETS.columns)
# JSON columns: a None left out of the INSERT is SQL NULL (as the ORM wrote it), not JSON null
_JSON_COLUMNS: Final = frozenset(("transcript", "recording"))
_TICKET_KEY: Final = "ticket_key"  # the bound id of the UPDATE (SET takes the columns' own names)
_UPDATE_TICKET: Final = update(_TICKETS).where(_TICKETS.c.id == bindparam(_TICKET_KEY))
# built once: a statement built per call costs its cache key's construction each time
_SELECT_TICKETS: Final = select(_TICKETS).where(_TICKETS.c.id.in_(bindparam("ids", expanding=True)))
_SELECT_OWNERS: Final = (select(_TICKETS.c.channel_id, _TICKETS.c.id)
                         .where(_TICKETS.c.channel_id.in_(bindparam("channels", expanding=True))))
_INSERT_TICKETS: Final = insert(_TICKETS)
_INSERT_EVENTS: Final = insert(_EVENTS)
_INSERT_OUTBOX: Final = insert(_OUTBOX)
_INSERT_OUTBOX_SEQ: Final = insert(_OUTBOX).returning(_OUTBOX.c.seq, sort_by_parameter_order=True)


@dataclass(slots=True)
class _Written:
    """What one batch wrote: the tickets it changed or opened, whether it wrote outbox rows,
    and those claimed for ``outbox_claimer`` (its owner and the rows, handed on commit)."""

    ticket_ids: set[str]
    wrote_outbox: bool = False
    owner: str | None = None
    handed: list[OutboxRow] = field(default_factory=list)


class TicketStore:
    """Tickets in one database, named by an SQLAlchemy URL.

    ``sqlite:///path/tickets.sqlite3`` (the parent directory is created; WAL, foreign keys
    and a busy timeout are switched on) or ``postgresql+psycopg://user@host/db``. ``rules``:
    the per-line ticket rules (which lines' abandoned calls are called back), from
    lines.toml (:func:`callrouter.tickets.machine.rules_of`); without, the shipped file's.
    """

    def __init__(self, url: str, *, sqlite_busy_timeout_s: float = 5.0,
                 connect_timeout_s: int = 5, rules: TicketRules | None = None) -> None:
        self.rules = rules or SHIPPED_RULES
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
                    _private_sqlite_file(Path(database).expanduser())
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
        # SQLite has one writer at a time: ours wait for each other here, not in SQLite
        self._local_writes: AbstractContextManager[Any] = (
            threading.RLock() if self.backend == "sqlite" else nullcontext())
        # called (in the committing thread) after a transaction that wrote outbox rows
        # committed, with the rows claimed for outbox_claimer and its owner: the outbox
        # relay of this process publishes at once instead of polling
        self.on_outbox_commit: list[Callable[[str | None, list[OutboxRow]], None]] = []
        # (owner, lease_s): the outbox rows apply() writes are claimed for this relay in
        # their own transaction and handed to it, so publishing them needs no claim round
        self.outbox_claimer: tuple[str, float] | None = None

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def sessions(self) -> sessionmaker[Session]:
        """The session factory (callrouter.dispatch reads the order tables with it)."""
        return self._sessions

    def __repr__(self) -> str:
        return f"TicketStore({self._engine.url.render_as_string(hide_password=True)!r})"

    # --- lifecycle ----------------------------------------------------------------------
    def create_schema(self) -> None:
        """Create the tables that are missing and add missing columns (idempotent).

        Only additive changes: a column added to a model later must be nullable or carry a
        server default, so a database made by an older version gains it here.
        """
        Base.metadata.create_all(self._engine)
        with self._engine.begin() as conn:
            present = inspect(conn)
            for table in Base.metadata.sorted_tables:
                have = {c["name"] for c in present.get_columns(table.name)}
                for column in table.columns:
                    if column.name in have:
                        continue
                    if not column.nullable and column.server_default is None:
                        raise RuntimeError(f"cannot add column {table.name}.{column.name}: "
                                           "give it a server default or make it nullable")
                    ddl = CreateColumn(column).compile(dialect=conn.dialect)
                    log.warning("adding column %s.%s to an older ticket database",
                                table.name, column.name)
                    conn.exec_driver_sql(f'ALTER TABLE {table.name} ADD COLUMN {ddl}')
                # an index of a column added later (recording_retain_until) is missing too
                indexes = {i["name"] for i in present.get_indexes(table.name)}
                for index in table.indexes:
                    if index.name not in indexes:
                        index.create(conn, checkfirst=True)

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
        happened (and replay its spool after a crash): an ``OpenTicket`` whose id exists,
        an answer for an answered ticket, a close for a closed one, a callback request for
        a flagged one, and a seat change, reclassification, transfer or callback record not
        newer than the last of its kind are no-ops, and no-ops leave no event.

        Every change leaves a ``ticket_events`` row and an ``outbox`` row (the ticket as it
        is after the change) in this same transaction: both or neither.
        """
        if not ops:
            return
        now = datetime.now(UTC)
        # Core statements on a plain connection: the ORM's unit of work and identity map
        # cost this path ~2 ms per transaction, which is what kept the writer from
        # committing every change at once
        with self._local_writes:
            with self._engine.connect() as conn:
                if self.backend == "sqlite":
                    conn.execution_options(**{_SQLITE_BEGIN: "IMMEDIATE"})
                with conn.begin():
                    written = self._apply_rows(conn, ops, now)
            # committed; still under our lock, so the relay hears of commits in their order
            if written.wrote_outbox:
                self._outbox_committed(written.owner, written.handed)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A write transaction (SQLite: the write lock taken at BEGIN), committed on exit.

        For callrouter.dispatch, whose order changes and ticket changes commit together."""
        with self._local_writes:
            with self._write() as session:
                yield session
                info = session.info
            # committed; still under our lock, so the relay hears of commits in their order
            owner, handed = info.pop(_HANDED, (None, []))
            if info.pop(_WROTE_OUTBOX, False):
                self._outbox_committed(owner, handed)

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """A write transaction, committed on exit. SQLite: the write lock is taken at BEGIN
        (a read transaction upgraded to a write one fails at once with SQLITE_BUSY instead
        of waiting out the busy timeout), and this process's writers (the ticket writer,
        the relay, the API) queue on a lock first: a thread waiting in SQLite's busy
        handler sleeps up to 100 ms between tries, which showed as 400 ms ticket→stream
        tails at 50 changes/s."""
        with self._local_writes, self._sessions() as session, session.begin():
            if self.backend == "sqlite":
                session.connection(execution_options={_SQLITE_BEGIN: "IMMEDIATE"})
            yield session

    def _outbox_committed(self, owner: str | None, handed: list[OutboxRow]) -> None:
        for hook in tuple(self.on_outbox_commit):
            try:
                hook(owner, handed)
            except Exception:  # a wake-up that fails costs a poll interval, never a write
                log.exception("outbox commit hook %r failed", hook)

    def add_outbox(self, session: Session, rows: Sequence[OutboxEvent], now: datetime) -> None:
        """Add ``rows`` (new outbox events) in ``session`` (from :meth:`transaction`),
        claimed for ``outbox_claimer`` if one is set and handed to it once committed."""
        if not rows:
            return
        claimer = self.outbox_claimer
        if claimer is not None:
            owner, lease_s = claimer
            until = now + timedelta(seconds=lease_s)
            for row in rows:
                row.claimed_by, row.claimed_until = owner, until
        session.add_all(rows)
        session.info[_WROTE_OUTBOX] = True
        if claimer is not None:
            session.flush()  # their seq
            session.info.setdefault(_HANDED, (owner, []))[1].extend(row.to_dict() for row in rows)

    def apply_in(self, session: Session, ops: Sequence[TicketOp], now: datetime) -> None:
        """:meth:`apply` inside the caller's transaction ``session`` (callrouter.dispatch).

        The session's pending objects are flushed first (their outbox rows keep their place
        in ``seq``); tickets of the session that the ops changed are expired, so the session
        reads them again."""
        if not ops:
            return
        session.flush()
        written = self._apply_rows(session.connection(), ops, now)
        if written.wrote_outbox:
            session.info[_WROTE_OUTBOX] = True
        if written.handed:
            session.info.setdefault(_HANDED, (written.owner, []))[1].extend(written.handed)
        for obj in list(session.identity_map.values()):
            if isinstance(obj, Ticket) and obj.id in written.ticket_ids:
                session.expire(obj)

    def _apply_rows(self, conn: Connection, ops: Sequence[TicketOp], now: datetime) -> _Written:
        """Load the tickets ``ops`` name (one SELECT), apply the state machine to them as
        plain rows, and write with one executemany per table: tickets (new ones inserted,
        changed ones updated: only their changed columns), ticket_events, outbox."""
        tickets = self._load(conn, {op.id for op in ops})
        channel_owner = self._channel_owners(
            conn, {op.channel_id for op in ops if isinstance(op, (OpenTicket, RecordUnseenCall))})
        unseen = {op.channel_id for op in ops if isinstance(op, RecordUnseenCall)}
        if unseen:
            # a call Asterisk recorded may have a ticket under another id (opened by the
            # engine): it is found by its channel
            tickets.update(self._load(conn, {channel_owner[c] for c in unseen if c in channel_owner}
                                      - tickets.keys()))
        before = {ticket_id: _values(ticket) for ticket_id, ticket in tickets.items()}
        loaded = Loaded(tickets, channel_owner)
        events: list[dict[str, Any]] = []
        outbox: list[dict[str, Any]] = []
        audited = self._audited(conn, [op for op in ops if isinstance(op, RecordingAccessed)])
        for op in ops:
            if isinstance(op, RecordingAccessed) and (op.id, utc(op.at)) in audited:
                continue  # a retried batch: this access is on record already
            for change in apply_op(op, loaded, now, self.rules):
                # the changed ticket's id: a RecordUnseenCall may close a ticket the
                # engine opened under another id
                ticket_id = str(change.ticket["id"])
                events.append({"ticket_id": ticket_id, "at": change.at, "kind": change.kind, "data": change.data})
                if not change.outbox_kind:
                    continue  # an audit record (a recording listened to): not for dispatch
                outbox.append({"event_id": uuid.uuid4().hex, "ticket_id": ticket_id, "kind": change.outbox_kind,
                               "at": change.at, "created_at": now, "payload": change.ticket})
        written = _Written({ticket.id for ticket in loaded.new})
        # tickets first, so the events' foreign keys find them
        _execute_many(conn, _INSERT_TICKETS, [
            {c: v for c, v in zip(_TICKET_COLUMNS, _values(t), strict=True) if v is not None or c not in _JSON_COLUMNS}
            for t in loaded.new])
        updates: list[dict[str, Any]] = []
        for ticket_id, old in before.items():
            new = _values(loaded.tickets[ticket_id])
            if new != old:
                written.ticket_ids.add(ticket_id)
                updates.append({_TICKET_KEY: ticket_id, **{c: v for c, v, was in zip(_TICKET_COLUMNS, new, old, strict=True)
                                                          if v != was}})
        _execute_many(conn, _UPDATE_TICKET, updates)
        if events:
            conn.execute(_INSERT_EVENTS, events)
        if outbox:
            written.wrote_outbox = True
            self._insert_outbox(conn, outbox, now, written)
        return written

    def _insert_outbox(self, conn: Connection, rows: list[dict[str, Any]], now: datetime, written: _Written) -> None:
        """Insert outbox ``rows`` (one executemany), claimed for ``outbox_claimer`` if one is
        set: then their ``seq`` comes back and they are handed to it once committed."""
        claimer = self.outbox_claimer
        if claimer is None:
            conn.execute(_INSERT_OUTBOX, rows)
            return
        owner, lease_s = claimer
        until = now + timedelta(seconds=lease_s)
        for row in rows:
            row["claimed_by"], row["claimed_until"] = owner, until
        seqs = conn.execute(_INSERT_OUTBOX_SEQ, rows).scalars()
        written.owner = owner
        written.handed.extend(
            {"seq": seq, "event_id": row["event_id"], "ticket_id": row["ticket_id"], "kind": row["kind"],
             "at": iso(row["at"]), "created_at": iso(now), "ticket": row["payload"], "sent_at": None}
            for seq, row in zip(seqs, rows, strict=True))

    def open_intake(self, op: OpenIntake) -> IntakeResult:
        """Apply ``op`` in its own transaction: open a ticket (event ``opened``, outbox
        ``intake``) or link to the open ticket of the same contact (or caller number) and
        category that arrived within ``op.window_s`` (event and outbox ``linked``).

        Idempotent: the op applied again (a retried request whose answer was lost) finds
        the ticket it opened, or links again without a second ticket. On PostgreSQL a
        transaction-scoped advisory lock on (contact, category) keeps two requests at once
        from both opening a ticket; SQLite's write lock does the same.
        """
        now = datetime.now(UTC)
        since = op.at - timedelta(seconds=op.window_s)
        with self.transaction() as session:
            if self.backend == "postgresql":
                session.execute(select(func.pg_advisory_xact_lock(func.hashtext(f"intake:{op.contact}:{op.category}"))))
            if session.get(Ticket, op.id) is not None:
                return IntakeResult(op.id, False)
            found = session.scalars(
                select(Ticket).where(or_(Ticket.contact == op.contact, Ticket.caller == op.contact),
                                     Ticket.category == op.category, Ticket.solved_at.is_(None),
                                     Ticket.arrived_at >= since, Ticket.arrived_at <= op.at + timedelta(seconds=60))
                .order_by(Ticket.arrived_at.desc(), Ticket.id.desc()).limit(1)).first()
            if found is not None:
                record = {"channel": op.channel, "contact": op.contact, "text": op.text, "at": iso(op.at)}
                found.updated_at = now
                linked = machine.change(found, "linked", op.at, record)
                self._record(session, [linked], now)
                return IntakeResult(found.id, True)
            said: dict[str, Any] = {"model": f"intake:{op.channel}", "text": op.text, "flags": [], "keywords": [],
                    "priority": None, "final": True, "at": iso(op.at)}
            opened = Ticket(
                id=op.id, dialled="", number="", caller="", caller_name="", line=op.line, category=op.category,
                department="", priority=self.rules.priority_of_intake(op.line), listed=True,
                channel_id=f"{op.channel}:{op.id}", arrived_at=op.at, answered_at=None, seat=None,
                seat_answered_at=None, ended_at=None, outcome=None, duration_s=None, updated_at=now,
                reclassified_at=None, transfers=[], notes=[], callback_requested=False, callback_attempts=0,
                held_by_dialplan=False, transcript=said, legal_hold=False, channel=op.channel,
                contact=op.contact, town=op.town)
            session.add(opened)
            session.flush()
            data = {k: v for k, v in opened.to_dict().items() if k in OPENED_FIELDS | INTAKE_FIELDS}
            self._record(session, [machine.change(opened, "opened", op.at, data, outbox_kind="intake")], now)
            return IntakeResult(opened.id, False)

    def _record(self, session: Session, changes: Sequence[Change], now: datetime) -> None:
        """The ticket_events and outbox rows of ``changes`` (tickets already flushed)."""
        outbox: list[OutboxEvent] = []
        for change in changes:
            ticket_id = str(change.ticket["id"])
            session.add(TicketEvent(ticket_id=ticket_id, at=change.at, kind=change.kind, data=change.data))
            if change.outbox_kind:
                outbox.append(OutboxEvent(event_id=uuid.uuid4().hex, ticket_id=ticket_id, kind=change.outbox_kind,
                                          at=change.at, created_at=now, payload=change.ticket))
        self.add_outbox(session, outbox, now)

    # --- the outbox (used by the relay) ---------------------------------------------------
    def claim_outbox(self, owner: str, limit: int, lease_s: float, *,
                     retake_own: bool = True) -> list[OutboxRow]:
        """Claim up to ``limit`` unsent events, oldest first, for ``lease_s`` seconds.

        Rows claimed by another owner whose lease is still running are skipped; our own
        claims are taken again (a relay that failed to publish retries them) unless
        ``retake_own`` is false (a relay that keeps them in memory, rows handed to it by
        ``outbox_claimer`` among them: it must not send them twice). PostgreSQL:
        ``FOR UPDATE SKIP LOCKED``, so two relays never wait for or take the same row;
        SQLite: the write lock taken at BEGIN serialises claimers.
        """
        now = datetime.now(UTC)
        until = now + timedelta(seconds=lease_s)
        stmt = (select(OutboxEvent)
                .where(OutboxEvent.sent_at.is_(None),
                       or_(OutboxEvent.claimed_until.is_(None),
                           OutboxEvent.claimed_until < now,
                           *([OutboxEvent.claimed_by == owner] if retake_own else [])))
                .order_by(OutboxEvent.seq)
                .limit(max(0, limit)))
        if self.backend == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        with self._write() as session:
            rows = list(session.scalars(stmt))
            for row in rows:
                row.claimed_by = owner
                row.claimed_until = until
            return [row.to_dict() for row in rows]

    def mark_sent(self, owner: str, event_ids: Sequence[str]) -> int:
        """Mark events we published as sent; returns how many were still ours to mark."""
        if not event_ids:
            return 0
        now = datetime.now(UTC)
        marked = 0
        with self._write() as session:
            for chunk in _chunks(list(event_ids)):
                result = session.execute(
                    update(OutboxEvent)
                    .where(OutboxEvent.event_id.in_(chunk), OutboxEvent.sent_at.is_(None),
                           OutboxEvent.claimed_by == owner)
                    .values(sent_at=now, claimed_by=None, claimed_until=None))
                marked += getattr(result, "rowcount", 0) or 0
        return marked

    def release_claims(self, owner: str) -> None:
        """Give back unsent rows claimed by ``owner`` (a relay stopping)."""
        with self._write() as session:
            session.execute(update(OutboxEvent)
                            .where(OutboxEvent.claimed_by == owner,
                                   OutboxEvent.sent_at.is_(None))
                            .values(claimed_by=None, claimed_until=None))

    def outbox(self, *, unsent_only: bool = False, limit: int | None = None) -> TicketRows:
        """Outbox events in the order they were written."""
        stmt = select(OutboxEvent).order_by(OutboxEvent.seq)
        if unsent_only:
            stmt = stmt.where(OutboxEvent.sent_at.is_(None))
        if limit is not None:
            stmt = stmt.limit(max(0, limit))
        with self._sessions() as session:
            return [row.to_dict() for row in session.scalars(stmt)]

    def outbox_backlog(self) -> tuple[int, datetime | None]:
        """(unsent events, when the oldest of them was written)."""
        with self._sessions() as session:
            count, oldest = session.execute(
                select(func.count(), func.min(OutboxEvent.created_at))
                .where(OutboxEvent.sent_at.is_(None))).one()
        if isinstance(oldest, str):  # SQLite aggregates lose the column type
            oldest = datetime.fromisoformat(oldest)
        return int(count or 0), None if oldest is None else utc(oldest)

    def purge_sent(self, sent_before: datetime, limit: int = 500) -> int:
        """Delete at most ``limit`` events marked sent before ``sent_before``; how many.

        One short transaction per call (the relay calls it in a loop, yielding between
        batches), so a purge never holds a lock in front of the ticket writer. Unsent rows
        (``sent_at IS NULL``) never match. Uses the ``(sent_at, seq)`` index.

        The newest row is always kept: SQLite gives a new row max(seq) + 1, so an emptied
        table would hand out ``seq`` values again, and consumers order a ticket's events
        by ``seq`` (docs/DISPATCH.md).
        """
        newest = select(func.max(OutboxEvent.seq)).scalar_subquery()
        chosen = (select(OutboxEvent.seq)
                  .where(OutboxEvent.sent_at.is_not(None), OutboxEvent.sent_at < sent_before,
                         OutboxEvent.seq < newest)
                  .order_by(OutboxEvent.sent_at, OutboxEvent.seq)
                  .limit(max(0, limit)))
        with self._write() as session:
            seqs = list(session.scalars(chosen))
            if not seqs:
                return 0
            result = session.execute(delete(OutboxEvent).where(OutboxEvent.seq.in_(seqs),
                                                               OutboxEvent.sent_at.is_not(None)))
            return int(getattr(result, "rowcount", 0) or 0)

    def outbox_counts(self) -> tuple[int, int]:
        """(sent events still kept, unsent events) in the outbox."""
        with self._sessions() as session:
            sent, total = session.execute(
                select(func.count(OutboxEvent.sent_at), func.count())).one()
        return int(sent or 0), int(total or 0) - int(sent or 0)

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

    def list(self, limit: int = 50, line: str | None = None, *, category: str | None = None,
             number: str | None = None, caller: str | None = None, since: datetime | None = None,
             until: datetime | None = None, seat: str | None = None, channel: str | None = None) -> TicketRows:
        """Newest first (by arrival), at most ``limit``, filtered by any of: line, category,
        legacy number (normalised), caller, arrival time window [since, until), seat
        (answered or called back by it), channel (phone, web, wechat, forum), all in the
        query, before the limit."""
        stmt = (select(Ticket)
                .order_by(Ticket.arrived_at.desc(), Ticket.id.desc())
                .limit(max(0, limit)))
        if seat is not None:
            stmt = stmt.where(or_(Ticket.seat == seat, Ticket.callback_seat == seat))
        if line is not None:
            stmt = stmt.where(Ticket.line == line)
        if category is not None:
            stmt = stmt.where(Ticket.category == category)
        if number is not None:
            stmt = stmt.where(Ticket.number == number)
        if caller is not None:
            stmt = stmt.where(Ticket.caller == caller)
        if channel is not None:
            stmt = stmt.where(Ticket.channel == channel)
        if since is not None:
            stmt = stmt.where(Ticket.arrived_at >= since)
        if until is not None:
            stmt = stmt.where(Ticket.arrived_at < until)
        with self._sessions() as session:
            return [t.to_dict() for t in session.scalars(stmt)]

    def figures(self, since: datetime, until: datetime | None = None, *,
                target_s: dict[str, float] | None = None, top: int = 50) -> dict[str, Any]:
        """The day's figures from every ticket arrived in [since, until), counted in SQL.

        Per line: ``offered``; ``done`` (answered by a seat or ended); ``answered`` by a
        seat; ``within_target`` (a seat answered within the line's target, 15 s unless
        ``target_s`` says otherwise); ``abandoned``; ``service_level`` = within/done and
        ``abandon_rate`` = abandoned/done (None before the first call is done). Then the
        ``top`` legacy numbers and categories by calls.
        """
        targets = target_s or {}
        waited = self._seconds_between(Ticket.arrived_at, Ticket.seat_answered_at)
        seated = Ticket.seat_answered_at.is_not(None)
        in_target = or_(*(and_(Ticket.line == line, waited <= t) for line, t in targets.items()),
                        and_(Ticket.line.not_in(list(targets)), waited <= 15.0))
        # calls only: a request from the web or WeChat waits for no seat
        window = ([Ticket.arrived_at >= since, Ticket.channel == "phone"]
                  + ([Ticket.arrived_at < until] if until is not None else []))

        def count_if(cond: Any) -> Any:
            return func.coalesce(func.sum(case((cond, 1), else_=0)), 0)

        per_line = (select(Ticket.line, func.count(), count_if(or_(seated, Ticket.ended_at.is_not(None))),
                           count_if(seated), count_if(and_(seated, in_target)),
                           count_if(Ticket.outcome == "abandoned"))
                    .where(*window).group_by(Ticket.line))
        lines: dict[str, Any] = {}
        with self._sessions() as session:
            for line, offered, done, answered, within, abandoned in session.execute(per_line):
                lines[line] = {"offered": offered, "done": done, "answered": answered, "within_target": within,
                               "abandoned": abandoned, "target_s": targets.get(line, 15.0),
                               "service_level": round(within / done, 4) if done else None,
                               "abandon_rate": round(abandoned / done, 4) if done else None}
            by: dict[str, dict[str, int]] = {}
            for key, column in (("by_number", Ticket.number), ("by_category", Ticket.category)):
                n = func.count().label("n")
                rows = session.execute(select(column, n).where(*window).group_by(column)
                                       .order_by(n.desc(), column).limit(max(0, top)))
                by[key] = {str(k): int(v) for k, v in rows}
        return {"since": iso(since), "until": iso(until) if until else None,
                "offered": sum(v["offered"] for v in lines.values()), "lines": lines, **by}

    def _seconds_between(self, start: Any, end: Any) -> Any:
        if self.engine.dialect.name == "sqlite":  # stored as UTC wall time text
            return (func.julianday(end) - func.julianday(start)) * 86400.0
        return func.extract("epoch", end - start)

    def events(self, ticket_id: str | None = None, limit: int | None = None) -> TicketRows:
        """Ticket events in the order they were written (all tickets, or one)."""
        stmt = select(TicketEvent).order_by(TicketEvent.id)
        if ticket_id is not None:
            stmt = stmt.where(TicketEvent.ticket_id == ticket_id)
        if limit is not None:
            stmt = stmt.limit(max(0, limit))
        with self._sessions() as session:
            return [e.to_dict() for e in session.scalars(stmt)]

    def callbacks(self, pending_only: bool = True, limit: int = 500) -> TicketRows:
        """Tickets flagged for a call back, oldest request first.

        Pending: flagged and not yet ``reached`` (a ``no_answer`` attempt stays pending).
        """
        stmt = (select(Ticket).where(Ticket.callback_requested.is_(True))
                .order_by(Ticket.callback_requested_at, Ticket.id).limit(max(0, limit)))
        if pending_only:
            stmt = stmt.where(or_(Ticket.callback_outcome.is_(None),
                                  Ticket.callback_outcome != "reached"))
        with self._sessions() as session:
            return [t.to_dict() for t in session.scalars(stmt)]

    def recordings_due(self, now: datetime, limit: int = 200) -> TicketRows:
        """Tickets whose recording is past its retention and not on legal hold, oldest
        retention first (uses the recording_retain_until index)."""
        stmt = (select(Ticket)
                .where(Ticket.recording_retain_until.is_not(None), Ticket.recording_retain_until <= now,
                       Ticket.legal_hold.is_(False))
                .order_by(Ticket.recording_retain_until, Ticket.id).limit(max(0, limit)))
        with self._sessions() as session:
            return [t.to_dict() for t in session.scalars(stmt)]

    def recordings_held_past_retention(self, now: datetime) -> int:
        """Recordings past their retention that a legal hold keeps."""
        with self._sessions() as session:
            return session.scalar(select(func.count()).select_from(Ticket).where(
                Ticket.recording_retain_until.is_not(None), Ticket.recording_retain_until <= now,
                Ticket.legal_hold.is_(True))) or 0

    def count(self) -> int:
        with self._sessions() as session:
            return session.scalar(select(func.count()).select_from(Ticket)) or 0

    # --- helpers ------------------------------------------------------------------------
    @staticmethod
    def _load(conn: Connection, ids: set[str]) -> dict[str, TicketRow]:
        found: dict[str, TicketRow] = {}
        for chunk in _chunks(sorted(ids)):
            for row in conn.execute(_SELECT_TICKETS, {"ids": list(chunk)}):
                found[row.id] = TicketRow(**row._mapping)
        return found

    @staticmethod
    def _audited(conn: Connection, accesses: Sequence[RecordingAccessed]) -> set[tuple[str, datetime]]:
        """(ticket, at) of the recording accesses among ``accesses`` already recorded."""
        if not accesses:
            return set()
        rows = conn.execute(select(TicketEvent.ticket_id, TicketEvent.at).where(
            TicketEvent.ticket_id.in_(sorted({a.id for a in accesses})),
            TicketEvent.kind.in_(("recording_accessed", "recording_access_denied"))))
        return {(ticket_id, utc(at)) for ticket_id, at in rows}

    @staticmethod
    def _channel_owners(conn: Connection, channels: set[str]) -> dict[str, str]:
        owners: dict[str, str] = {}
        for chunk in _chunks(sorted(channels)):
            rows = conn.execute(_SELECT_OWNERS, {"channels": list(chunk)})
            owners.update((channel, ticket_id) for channel, ticket_id in rows)
        return owners


def _values(ticket: TicketRow) -> tuple[Any, ...]:
    return tuple(getattr(ticket, column) for column in _TICKET_COLUMNS)


def _execute_many(conn: Connection, stmt: Any, rows: list[dict[str, Any]]) -> None:
    """``stmt`` once per set of keys among ``rows`` (an executemany needs the same keys)."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row), []).append(row)
    for group in groups.values():
        conn.execute(stmt, group)


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _IN_CHUNK):
        yield items[start:start + _IN_CHUNK]


def _private_sqlite_file(path: Path) -> None:
    """Create the SQLite file 0600 (callers' numbers inside) or make an existing one so.

    SQLite gives its -wal and -shm files the database file's mode.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for candidate in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            if candidate.stat().st_mode & 0o077:
                candidate.chmod(0o600)
        except FileNotFoundError:
            pass


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
