"""The dispatch order tables, beside the tickets (same metadata, same database).

Kept here, in the tickets package, so :meth:`TicketStore.create_schema` creates and
upgrades them with the tickets; what they mean and every change to them is in
:mod:`callrouter.dispatch.store`.

``dispatch_orders``: one row per order sent to a unit about a ticket. ``attempt`` counts
the orders of a ticket (1, then 2 after an escalation ...); ``(ticket_id, attempt)`` is
unique, so a stream event handled twice never makes a second order.
``order_notifications``: the webhook outbox, one row per delivery, retried until the
unit's endpoint took it; a dispatcher claims due rows for a lease.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint, false, text
from sqlalchemy.orm import Mapped, mapped_column

from .models import Base, UTCDateTime, _iso

ORDER_STATES = ("notified", "acknowledged", "reported", "escalated")
OPEN_STATES = ("notified", "acknowledged")


class DispatchOrder(Base):
    __tablename__ = "dispatch_orders"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # O<ticket>-<attempt>
    ticket_id: Mapped[str] = mapped_column(ForeignKey("tickets.id"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    unit_id: Mapped[str] = mapped_column(String(40))
    line: Mapped[str] = mapped_column(String(8))
    category: Mapped[str] = mapped_column(String)
    town: Mapped[str | None] = mapped_column(String(40))
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ack_due_at: Mapped[datetime] = mapped_column(UTCDateTime())
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    acknowledged_by: Mapped[str | None] = mapped_column(String(80))
    reported_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    result: Mapped[str | None] = mapped_column(Text)
    solved: Mapped[bool | None] = mapped_column(Boolean)
    overdue: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    escalated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        UniqueConstraint("ticket_id", "attempt", name="uq_dispatch_orders_ticket_attempt"),
        Index("ix_dispatch_orders_unit_state", "unit_id", "state"),
        Index("ix_dispatch_orders_state_due", "state", "ack_due_at"),
        Index("ix_dispatch_orders_created_at", "created_at"),
    )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ticket_id": self.ticket_id,
            "attempt": self.attempt,
            "unit": self.unit_id,
            "line": self.line,
            "category": self.category,
            "town": self.town,
            "state": self.state,
            "created_at": _iso(self.created_at),
            "ack_due_at": _iso(self.ack_due_at),
            "acknowledged_at": _iso(self.acknowledged_at),
            "acknowledged_by": self.acknowledged_by,
            "reported_at": _iso(self.reported_at),
            "result": self.result,
            "solved": self.solved,
            "overdue": bool(self.overdue),
            "escalated_at": _iso(self.escalated_at),
        }


class OrderNotification(Base):
    """One webhook delivery of an order (its id is the ``delivery`` the receiver dedupes by)."""

    __tablename__ = "order_notifications"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("dispatch_orders.id"), index=True)
    unit_id: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(String(300))
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_order_notifications_due", "delivered_at", "next_attempt_at"),)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "order_id": self.order_id,
            "unit": self.unit_id,
            "created_at": _iso(self.created_at),
            "attempts": self.attempts,
            "next_attempt_at": _iso(self.next_attempt_at),
            "delivered_at": _iso(self.delivered_at),
            "last_error": self.last_error,
        }
