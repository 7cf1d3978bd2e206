"""Dispatch orders in the ticket database: opened, notified, acknowledged, reported,
escalated; read by the API, the wallboard and the monthly report.

Blocking (SQLAlchemy, like :class:`~callrouter.tickets.TicketStore`): call it from a thread
(``asyncio.to_thread``), never on the event loop. Every change of an order commits in one
transaction with its ``ticket_events`` row, an ``outbox`` row for the dispatch stream
(kinds ``order_opened``, ``order_acknowledged``, ``order_reported``, ``order_escalated``;
payload ``{"order", "order_id", "unit", "ticket_id", "state", "id"}``) and the ticket
changes it causes (dispatched, solved, follow-up pending), so a crash leaves all or none.

Several dispatchers may share the database: an order is opened under a row lock of its
ticket (PostgreSQL ``FOR UPDATE``; SQLite's write lock), ``(ticket_id, attempt)`` is
unique, overdue orders are taken with ``FOR UPDATE SKIP LOCKED``, and webhook deliveries
are claimed for a lease.
"""

from __future__ import annotations

import logging
import statistics
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.orm import Session

from callrouter.tickets import MarkDispatched, MarkSolved, RequestFollowUp, TicketStore
from callrouter.tickets.models import CHANNELS, OutboxEvent, Ticket, TicketEvent, untrusted_text, utc
from callrouter.tickets.orders import OPEN_STATES, DispatchOrder, OrderNotification

from .units import Unit, Units

log = logging.getLogger("callrouter.dispatch")

RESULT_MAX: Final = 2000
INTAKE_CHANNELS: Final = tuple(c for c in CHANNELS if c != "phone")  # POST /api/intake's
MONTH_FORMAT: Final = "%Y-%m"
# what a unit, its page and its webhook see of the ticket
TICKET_FACTS: Final = ("id", "line", "dialled", "caller", "contact", "channel", "category", "town",
                       "transcript", "arrived_at")


class OrderError(Exception):
    """An order request that cannot be done: ``status`` 400 (bad input), 404 (unknown, or
    not this unit's), 409 (the order is in another state)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Delivery:
    """A webhook delivery claimed by a dispatcher: its id, the unit, the body's data."""

    id: str
    unit: str
    attempts: int
    order: dict[str, Any]


def order_id_for(ticket_id: str, attempt: int) -> str:
    return f"O{ticket_id}-{attempt}"


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """[first instant, first instant of the next month) of ``YYYY-MM`` in UTC."""
    try:
        start = datetime.strptime(month, MONTH_FORMAT).replace(tzinfo=UTC)
    except ValueError as exc:
        raise ValueError(f"month must be YYYY-MM, got {month!r}") from exc
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start, end


class DispatchStore:
    """Orders in the database of ``ticket_store``. ``units`` (for choosing and escalating,
    and for unit and town names) and ``labels`` (category -> Chinese label) are optional
    for readers; the dispatcher needs ``units``."""

    def __init__(self, ticket_store: TicketStore, *, units: Units | None = None,
                 labels: Mapping[str, str] | None = None, ack_max_s: float = 0) -> None:
        self.tickets = ticket_store
        self.units = units
        self.labels = dict(labels or {})
        self.ack_max_s = ack_max_s  # > 0: caps every unit's time to acknowledge (drills, tests)
        self._sessions = ticket_store.sessions  # one database, one session factory

    # --- the dispatcher: open and escalate -------------------------------------------------
    def open_order(self, ticket_id: str, at: datetime, *, reason: str = "") -> dict[str, Any] | None:
        """Open the first order of ``ticket_id`` (attempt 1, the first unit of its chain);
        None when the ticket already has one, or is unknown. Idempotent."""
        opened = self.open_orders([ticket_id], at, reasons={ticket_id: reason})
        return opened[0] if opened else None

    def open_orders(self, ticket_ids: Sequence[str], at: datetime, *, reasons: Mapping[str, str] | None = None,
                    claim_for: str | None = None, lease_s: float = 60) -> list[dict[str, Any]]:
        """:meth:`open_order` for many tickets in one transaction (one stream read's
        events): the orders opened, in ``ticket_ids`` order, with the ticket's facts. A
        ticket whose category has no unit (a category added to the plan after the units file
        was loaded) is logged and left without an order rather than holding up the others.

        ``claim_for``: the new webhook deliveries are claimed for this owner at once (for
        ``lease_s``), so the dispatcher sends them without a claim of its own; each such
        order carries its ``delivery_id``."""
        units = self._need_units()
        ids = sorted(set(ticket_ids))
        if not ids:
            return []
        now = datetime.now(UTC)
        with self.tickets.transaction() as session:
            stmt = select(Ticket).where(Ticket.id.in_(ids)).order_by(Ticket.id)
            if self.tickets.backend == "postgresql":
                # two dispatchers on one ticket: one waits, then sees the other's order
                # (locked in id order, so two batches never deadlock)
                stmt = stmt.with_for_update()
            tickets = {t.id: t for t in session.scalars(stmt)}
            have = set(session.scalars(select(DispatchOrder.ticket_id).where(DispatchOrder.ticket_id.in_(ids))))
            opened: dict[str, DispatchOrder] = {}
            deliveries: dict[str, str | None] = {}
            for ticket_id in dict.fromkeys(ticket_ids):
                ticket = tickets.get(ticket_id)
                if ticket is None or ticket_id in have:
                    continue  # unknown, or a redelivered or repeated event: the order exists
                chain = units.choose(ticket.category, ticket.town)
                if not chain:
                    log.error("event=order_no_unit ticket_id=%s category=%s town=%s: add a unit for it to the "
                              "units file", ticket_id, ticket.category, ticket.town)
                    continue
                opened[ticket_id], deliveries[ticket_id] = self._new_order(session, ticket, 1, chain[0], at, now,
                                                                           claim_for, lease_s)
            if not opened:
                return []
            self.tickets.apply_in(session, [MarkDispatched(t, o.id, o.unit_id, at) for t, o in opened.items()], now)
            for ticket_id, order in opened.items():
                reason = (reasons or {}).get(ticket_id, "")
                self._changed(session, order, "order_opened", at, now, {"unit": order.unit_id, "reason": reason})
            out = []
            for ticket_id, order in opened.items():
                data = self._with_facts(order, tickets[ticket_id])
                if claim_for is not None and deliveries[ticket_id] is not None:
                    data["delivery_id"] = deliveries[ticket_id]
                out.append(data)
            return out

    def _new_order(self, session: Session, ticket: Ticket, attempt: int, unit: Unit, at: datetime,
                   now: datetime, claim_for: str | None = None, lease_s: float = 60
                   ) -> tuple[DispatchOrder, str | None]:
        """A new order (and its webhook delivery, claimed for ``claim_for`` if given): the
        order and the delivery's id (None: the unit has no webhook)."""
        ack_s = min(unit.ack_s, self.ack_max_s) if self.ack_max_s > 0 else unit.ack_s
        order = DispatchOrder(id=order_id_for(ticket.id, attempt), ticket_id=ticket.id, attempt=attempt,
                              unit_id=unit.id, line=ticket.line, category=ticket.category, town=ticket.town,
                              state="notified", created_at=at, ack_due_at=at + timedelta(seconds=ack_s),
                              overdue=False)
        session.add(order)
        session.flush()
        if unit.webhook is not None:
            delivery = uuid.uuid4().hex
            session.add(OrderNotification(id=delivery, order_id=order.id, unit_id=unit.id, created_at=now,
                                          attempts=0, next_attempt_at=now, lease_owner=claim_for,
                                          lease_until=None if claim_for is None else now + timedelta(seconds=lease_s)))
            return order, delivery
        return order, None

    def escalate_due(self, now: datetime, limit: int = 100) -> list[dict[str, Any]]:
        """Orders not acknowledged by their deadline: each becomes ``escalated`` and overdue,
        and the next unit of the chain gets attempt n+1 (the last unit of a chain stays
        notified, marked overdue). The orders changed, escalated ones first."""
        units = self._need_units()
        stmt = (select(DispatchOrder)
                .where(DispatchOrder.state == "notified", DispatchOrder.overdue.is_(False),
                       DispatchOrder.ack_due_at <= now)
                .order_by(DispatchOrder.ack_due_at).limit(max(0, limit)))
        if self.tickets.backend == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        changed: list[dict[str, Any]] = []
        with self.tickets.transaction() as session:
            for order in session.scalars(stmt).all():
                ticket = session.get(Ticket, order.ticket_id)
                if ticket is None:
                    continue
                chain = units.choose(order.category, order.town)
                ids = [u.id for u in chain]
                # the next unit after this order's one (the chain may have changed since)
                position = ids.index(order.unit_id) + 1 if order.unit_id in ids else order.attempt
                order.overdue = True
                if position < len(chain):
                    order.state = "escalated"
                    order.escalated_at = now
                    nxt, _ = self._new_order(session, ticket, order.attempt + 1, chain[position], now, now)
                    self._changed(session, order, "order_escalated", now, now, {"to": nxt.unit_id, "order_id": nxt.id})
                    self._changed(session, nxt, "order_opened", now, now,
                                  {"unit": nxt.unit_id, "reason": "escalated", "from": order.unit_id})
                    changed += [order.to_dict(), nxt.to_dict()]
                else:
                    # nobody left to escalate to: it stays with this unit, shown overdue
                    self._changed(session, order, "order_escalated", now, now, {"to": None})
                    changed.append(order.to_dict())
        return changed

    def next_due(self) -> datetime | None:
        """The earliest deadline of an order waiting to be acknowledged."""
        with self._sessions() as session:
            return session.scalar(select(DispatchOrder.ack_due_at)
                                  .where(DispatchOrder.state == "notified", DispatchOrder.overdue.is_(False))
                                  .order_by(DispatchOrder.ack_due_at).limit(1))

    # --- webhook deliveries -------------------------------------------------------------------
    def claim_deliveries(self, owner: str, limit: int, lease_s: float, now: datetime | None = None) -> list[Delivery]:
        """Claim up to ``limit`` due deliveries for ``lease_s``: unclaimed ones, and those
        whose lease ran out (a dispatcher that died). A claim still running, ours included
        (a delivery claimed when its order was opened, about to be sent), is left alone."""
        now = now or datetime.now(UTC)
        stmt = (select(OrderNotification)
                .where(OrderNotification.delivered_at.is_(None), OrderNotification.next_attempt_at <= now,
                       or_(OrderNotification.lease_until.is_(None), OrderNotification.lease_until < now))
                .order_by(OrderNotification.next_attempt_at).limit(max(0, limit)))
        if self.tickets.backend == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        out: list[Delivery] = []
        with self.tickets.transaction() as session:
            rows = list(session.scalars(stmt))
            for row in rows:
                row.lease_owner = owner
                row.lease_until = now + timedelta(seconds=lease_s)
            orders = {o.id: o for o in session.scalars(
                select(DispatchOrder).where(DispatchOrder.id.in_([r.order_id for r in rows])))} if rows else {}
            tickets = self._tickets(session, {o.ticket_id for o in orders.values()})
            for row in rows:
                order = orders[row.order_id]
                out.append(Delivery(row.id, row.unit_id, row.attempts,
                                    self._with_facts(order, tickets.get(order.ticket_id))))
        return out

    def delivered(self, owner: str, delivery_ids: Sequence[str], at: datetime) -> int:
        """The units' endpoints took ``delivery_ids``; how many were still ours to mark."""
        if not delivery_ids:
            return 0
        with self.tickets.transaction() as session:
            result = session.execute(
                update(OrderNotification)
                .where(OrderNotification.id.in_(list(delivery_ids)), OrderNotification.lease_owner == owner,
                       OrderNotification.delivered_at.is_(None))
                .values(delivered_at=at, attempts=OrderNotification.attempts + 1, lease_owner=None,
                        lease_until=None, last_error=None))
            return int(getattr(result, "rowcount", 0) or 0)

    def delivery_failed(self, owner: str, delivery_id: str, error: str, retry_at: datetime) -> None:
        with self.tickets.transaction() as session:
            session.execute(
                update(OrderNotification)
                .where(OrderNotification.id == delivery_id, OrderNotification.lease_owner == owner,
                       OrderNotification.delivered_at.is_(None))
                .values(attempts=OrderNotification.attempts + 1, next_attempt_at=retry_at,
                        last_error=untrusted_text(error, 300), lease_owner=None, lease_until=None))

    def release_deliveries(self, owner: str) -> None:
        with self.tickets.transaction() as session:
            session.execute(update(OrderNotification)
                            .where(OrderNotification.lease_owner == owner, OrderNotification.delivered_at.is_(None))
                            .values(lease_owner=None, lease_until=None))

    def deliveries(self, order_id: str | None = None) -> list[dict[str, Any]]:
        stmt = select(OrderNotification).order_by(OrderNotification.created_at, OrderNotification.id)
        if order_id is not None:
            stmt = stmt.where(OrderNotification.order_id == order_id)
        with self._sessions() as session:
            return [n.to_dict() for n in session.scalars(stmt)]

    # --- the units' side (API) -------------------------------------------------------------------
    def acknowledge(self, order_id: str, unit: str, by: str, at: datetime) -> dict[str, Any]:
        with self.tickets.transaction() as session:
            order = self._own(session, order_id, unit)
            if order.state != "notified":
                raise OrderError(409, f"order {order_id} is {order.state}: only a notified order is acknowledged")
            now = datetime.now(UTC)
            order.state = "acknowledged"
            order.acknowledged_at = at
            order.acknowledged_by = untrusted_text(by, 80)
            self._changed(session, order, "order_acknowledged", at, now,
                          {"unit": unit, "by": order.acknowledged_by,
                           "in_time": utc(at) <= utc(order.ack_due_at)})
            return self._with_facts(order, session.get(Ticket, order.ticket_id))

    def report(self, order_id: str, unit: str, result: str, solved: bool, at: datetime) -> dict[str, Any]:
        """The unit reports what it did. 110: a solved report solves the ticket; 96345: the
        ticket goes on the seats' follow-up list (solved once the citizen is reached)."""
        text = untrusted_text(result, RESULT_MAX).strip() if isinstance(result, str) else ""
        if not text:
            raise OrderError(400, f"result must be 1 to {RESULT_MAX} characters of text")
        if not isinstance(solved, bool):
            raise OrderError(400, "solved must be true or false")
        with self.tickets.transaction() as session:
            order = self._own(session, order_id, unit)
            if order.state not in OPEN_STATES:
                raise OrderError(409, f"order {order_id} is {order.state}: only an open order is reported")
            now = datetime.now(UTC)
            if order.acknowledged_at is None:  # reported straight away: that acknowledges it
                order.acknowledged_at = at
                order.acknowledged_by = unit
            order.state = "reported"
            order.reported_at = at
            order.result = text
            order.solved = solved
            self._changed(session, order, "order_reported", at, now,
                          {"unit": unit, "solved": solved, "result": text})
            if order.line == "110":
                if solved:
                    self.tickets.apply_in(session, [MarkSolved(order.ticket_id, f"unit:{unit}", at)], now)
            else:
                self.tickets.apply_in(session, [RequestFollowUp(order.ticket_id, at, order.id)], now)
            return self._with_facts(order, session.get(Ticket, order.ticket_id))

    def _own(self, session: Session, order_id: str, unit: str) -> DispatchOrder:
        stmt = select(DispatchOrder).where(DispatchOrder.id == order_id)
        if self.tickets.backend == "postgresql":
            stmt = stmt.with_for_update()
        order = session.scalars(stmt).one_or_none()
        if order is None or order.unit_id != unit:
            raise OrderError(404, f"no order {order_id!r} for unit {unit!r}")
        return order

    # --- reads ---------------------------------------------------------------------------------
    def orders(self, unit: str | None = None, open_only: bool = True, limit: int = 200,
               ticket_id: str | None = None) -> list[dict[str, Any]]:
        """Orders, newest first, each with the ticket's facts."""
        stmt = select(DispatchOrder).order_by(DispatchOrder.created_at.desc(), DispatchOrder.id.desc())
        if unit is not None:
            stmt = stmt.where(DispatchOrder.unit_id == unit)
        if open_only:
            stmt = stmt.where(DispatchOrder.state.in_(OPEN_STATES))
        if ticket_id is not None:
            stmt = stmt.where(DispatchOrder.ticket_id == ticket_id)
        with self._sessions() as session:
            rows = list(session.scalars(stmt.limit(max(0, limit))))
            tickets = self._tickets(session, {o.ticket_id for o in rows})
            return [self._with_facts(o, tickets.get(o.ticket_id)) for o in rows]

    def order(self, order_id: str) -> dict[str, Any] | None:
        with self._sessions() as session:
            order = session.get(DispatchOrder, order_id)
            if order is None:
                return None
            return self._with_facts(order, session.get(Ticket, order.ticket_id))

    def summary(self, now: datetime, window_s: float = 86400) -> list[dict[str, Any]]:
        """Per unit with an open order or an order in the last ``window_s``: ``open``,
        ``overdue`` (open past its deadline, or escalated for it), ``acknowledged_in_time``,
        ``orders``; the units with overdue orders first."""
        since = now - timedelta(seconds=window_s)
        stmt = select(DispatchOrder).where(or_(DispatchOrder.state.in_(OPEN_STATES),
                                               DispatchOrder.created_at >= since))
        per: dict[str, dict[str, Any]] = {}
        with self._sessions() as session:
            for o in session.scalars(stmt):
                row = per.setdefault(o.unit_id, {"unit": o.unit_id, "name": self._unit_name(o.unit_id),
                                                 "open": 0, "overdue": 0, "acknowledged_in_time": 0, "orders": 0})
                is_open = o.state in OPEN_STATES
                row["open"] += is_open
                late = o.overdue or (o.state == "notified" and utc(o.ack_due_at) <= now)
                row["overdue"] += bool(late and (is_open or utc(o.created_at) >= since))
                if utc(o.created_at) >= since:
                    row["orders"] += 1
                    row["acknowledged_in_time"] += self._in_time(o)
        return sorted(per.values(), key=lambda r: (-r["overdue"], -r["open"], r["unit"]))

    def monthly_report(self, month: str) -> list[dict[str, Any]]:
        """Per unit, the orders created in ``month`` (YYYY-MM, UTC): ``orders``,
        ``acknowledged_in_time``, ``overdue``, ``median_ack_s`` (created -> acknowledged),
        ``median_solve_s`` (created -> the ticket solved, for orders the unit reported),
        ``follow_ups_done`` (its reported 96345 orders whose citizen was reached)."""
        start, end = month_bounds(month)
        stmt = (select(DispatchOrder, Ticket.solved_at, Ticket.follow_up)
                .join(Ticket, Ticket.id == DispatchOrder.ticket_id)
                .where(and_(DispatchOrder.created_at >= start, DispatchOrder.created_at < end))
                .order_by(DispatchOrder.unit_id, DispatchOrder.created_at))
        acc: dict[str, dict[str, Any]] = {}
        with self._sessions() as session:
            for order, solved_at, follow_up in session.execute(stmt):
                row = acc.setdefault(order.unit_id, {"orders": 0, "in_time": 0, "overdue": 0, "ack": [],
                                                     "solve": [], "follow_ups_done": 0})
                row["orders"] += 1
                row["in_time"] += self._in_time(order)
                row["overdue"] += bool(order.overdue)
                if order.acknowledged_at is not None:
                    row["ack"].append((utc(order.acknowledged_at) - utc(order.created_at)).total_seconds())
                if order.state == "reported" and solved_at is not None:
                    row["solve"].append((utc(solved_at) - utc(order.created_at)).total_seconds())
                if order.state == "reported" and order.line != "110" and follow_up == "done":
                    row["follow_ups_done"] += 1
        out = []
        for unit_id, row in sorted(acc.items()):
            out.append({"unit": unit_id, "name": self._unit_name(unit_id), "month": month,
                        "orders": row["orders"], "acknowledged_in_time": row["in_time"], "overdue": row["overdue"],
                        "median_ack_s": _median(row["ack"]), "median_solve_s": _median(row["solve"]),
                        "follow_ups_done": row["follow_ups_done"]})
        return out

    def follow_ups(self, limit: int = 200) -> list[dict[str, Any]]:
        """Tickets waiting for a follow-up call (回访), oldest report first, each with the
        report of the unit (``order``: unit, result, solved, reported_at)."""
        stmt = (select(Ticket).where(Ticket.follow_up == "pending").order_by(Ticket.updated_at, Ticket.id)
                .limit(max(0, limit)))
        with self._sessions() as session:
            tickets = list(session.scalars(stmt))
            reports: dict[str, DispatchOrder] = {}
            if tickets:
                for o in session.scalars(select(DispatchOrder)
                                         .where(DispatchOrder.ticket_id.in_([t.id for t in tickets]),
                                                DispatchOrder.state == "reported")
                                         .order_by(DispatchOrder.reported_at)):
                    reports[o.ticket_id] = o  # the last report wins
            out = []
            for t in tickets:
                data = self._facts(t)
                data.update(caller_name=t.caller_name, follow_up=t.follow_up, solved_at=None)
                last = reports.get(t.id)
                data["order"] = None if last is None else {
                    "id": last.id, "unit": last.unit_id, "unit_name": self._unit_name(last.unit_id),
                    "result": last.result, "solved": last.solved, "reported_at": last.to_dict()["reported_at"]}
                out.append(data)
            return sorted(out, key=lambda d: (d["order"] or {}).get("reported_at") or "")

    def intake_summary(self, since: datetime, limit: int = 20) -> dict[str, Any]:
        """The other channels on the wallboard. ``channels``: per channel (web, WeChat, the
        forum) the requests since ``since``: ``requests`` (new tickets and links), ``tickets``
        (new tickets), ``linked`` (to an open ticket), ``open`` (of the new tickets, not yet
        solved). ``open_requests``: the newest ``limit`` unsolved tickets of those channels,
        each with its category and town names and its latest order's unit and state.

        No contact: the wallboard is a screen in the room (the ticket itself has it)."""
        now = datetime.now(UTC)
        channels = {c: {"requests": 0, "tickets": 0, "linked": 0, "open": 0} for c in INTAKE_CHANNELS}
        count_open = func.coalesce(func.sum(case((Ticket.solved_at.is_(None), 1), else_=0)), 0)
        with self._sessions() as session:
            for channel, n, unsolved in session.execute(
                    select(Ticket.channel, func.count(), count_open)
                    .where(Ticket.channel.in_(INTAKE_CHANNELS), Ticket.arrived_at >= since)
                    .group_by(Ticket.channel)):
                channels[channel].update(tickets=int(n), open=int(unsolved or 0))
            via = TicketEvent.data["channel"].as_string()
            for channel, n in session.execute(
                    select(via, func.count()).where(TicketEvent.kind == "linked", TicketEvent.at >= since)
                    .group_by(via)):
                if channel in channels:
                    channels[channel]["linked"] = int(n)
            tickets = list(session.scalars(
                select(Ticket).where(Ticket.channel.in_(INTAKE_CHANNELS), Ticket.solved_at.is_(None))
                .order_by(Ticket.arrived_at.desc(), Ticket.id.desc()).limit(max(0, limit))))
            latest: dict[str, DispatchOrder] = {}
            if tickets:
                for o in session.scalars(select(DispatchOrder)
                                         .where(DispatchOrder.ticket_id.in_([t.id for t in tickets]))
                                         .order_by(DispatchOrder.attempt)):
                    latest[o.ticket_id] = o  # the last attempt wins
            rows = []
            for t in tickets:
                town = self.units.town(t.town) if self.units is not None and t.town else None
                order = latest.get(t.id)
                rows.append({"ticket_id": t.id, "arrived_at": t.to_dict()["arrived_at"], "channel": t.channel,
                             "line": t.line, "category": t.category,
                             "category_label": self.labels.get(t.category, t.category), "town": t.town,
                             "town_name": town.name if town is not None else None,
                             "unit": order.unit_id if order is not None else None,
                             "unit_name": self._unit_name(order.unit_id) if order is not None else None,
                             "order_state": order.state if order is not None else None,
                             "overdue": bool(order is not None and (order.overdue or (
                                 order.state == "notified" and utc(order.ack_due_at) <= now)))})
        for figures in channels.values():
            figures["requests"] = figures["tickets"] + figures["linked"]
        return {"since": since.astimezone(UTC).isoformat(), "channels": channels, "open_requests": rows}

    # --- helpers ---------------------------------------------------------------------------------
    def _need_units(self) -> Units:
        if self.units is None:
            raise RuntimeError("DispatchStore needs units to open or escalate orders")
        return self.units

    def _unit_name(self, unit_id: str) -> str:
        unit = self.units.unit(unit_id) if self.units is not None else None
        return unit.name if unit is not None else unit_id

    @staticmethod
    def _in_time(order: DispatchOrder) -> bool:
        return order.acknowledged_at is not None and utc(order.acknowledged_at) <= utc(order.ack_due_at)

    @staticmethod
    def _tickets(session: Session, ids: set[str]) -> dict[str, Ticket]:
        if not ids:
            return {}
        return {t.id: t for t in session.scalars(select(Ticket).where(Ticket.id.in_(sorted(ids))))}

    def _facts(self, ticket: Ticket) -> dict[str, Any]:
        full = ticket.to_dict()
        facts = {k: full.get(k) for k in TICKET_FACTS}
        facts["category_label"] = self.labels.get(ticket.category, ticket.category)
        town = self.units.town(ticket.town) if self.units is not None else None
        facts["town_name"] = town.name if town is not None else None
        return facts

    def _with_facts(self, order: DispatchOrder, ticket: Ticket | None) -> dict[str, Any]:
        data = order.to_dict()
        data["unit_name"] = self._unit_name(order.unit_id)
        data["category_label"] = self.labels.get(order.category, order.category)
        data["ticket"] = None if ticket is None else self._facts(ticket)
        return data

    def _changed(self, session: Session, order: DispatchOrder, kind: str, at: datetime, now: datetime,
                 data: dict[str, Any]) -> None:
        """The ticket event and the outbox row of an order change (same transaction)."""
        session.flush()
        snapshot = order.to_dict()
        session.add(TicketEvent(ticket_id=order.ticket_id, at=at, kind=kind, data={"order_id": order.id, **data}))
        # claimed for this process's relay and handed to it on commit: published at once
        self.tickets.add_outbox(session, [OutboxEvent(
            event_id=uuid.uuid4().hex, ticket_id=order.ticket_id, kind=kind, at=at, created_at=now,
            payload={"order": snapshot, "order_id": order.id, "unit": order.unit_id,
                     "ticket_id": order.ticket_id, "state": order.state, "id": order.ticket_id})], now)


def _median(values: Sequence[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None

