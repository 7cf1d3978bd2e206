"""Tickets: the record of every call, written beside the call flow.

The engine builds ops (``OpenTicket`` ... ``SetSeat``) with ids from ``new_ticket_id`` and
submits them to a ``TicketWriter``, which applies them to a ``TicketStore`` (SQLite or
PostgreSQL) in the background, in order, retrying through database outages.
"""

from .models import (
    LINES,
    OUTCOMES,
    AnswerTicket,
    Base,
    CloseTicket,
    OpenTicket,
    SetSeat,
    Ticket,
    TicketEvent,
    TicketOp,
    new_ticket_id,
    ticket_id_for_channel,
)
from .store import TicketDict, TicketStore
from .writer import TicketWriter

__all__ = [
    "LINES",
    "OUTCOMES",
    "AnswerTicket",
    "Base",
    "CloseTicket",
    "OpenTicket",
    "SetSeat",
    "Ticket",
    "TicketDict",
    "TicketEvent",
    "TicketOp",
    "TicketStore",
    "TicketWriter",
    "new_ticket_id",
    "ticket_id_for_channel",
]
