"""Tickets: the record of every call, written beside the call flow.

The engine builds ops (``OpenTicket`` ... ``RecordCallback``) with ids from
``new_ticket_id`` and submits them to a ``TicketWriter``, which applies them to a
``TicketStore`` (SQLite or PostgreSQL; what an op does to a ticket is the pure state
machine of ``machine``, its per-line rules ``TicketRules`` from lines.toml) in the background, in order, retrying through
database outages (with a durable local spool when given one). Every change also writes an
outbox row in the same transaction; ``OutboxRelay`` publishes those to the Redis stream
``<prefix>:tickets`` and ``consumer`` reads it with a consumer group (docs/DISPATCH.md).
"""

from .machine import TicketRules
from .models import (
    CALLBACK_OUTCOMES,
    LINES,
    OUTCOMES,
    AddNote,
    AddTransfer,
    AnswerTicket,
    AttachRecording,
    Base,
    CloseTicket,
    FollowUpDone,
    MarkDispatched,
    MarkSolved,
    OpenIntake,
    OpenTicket,
    OutboxEvent,
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
    TicketEvent,
    TicketOp,
    new_ticket_id,
    ticket_id_for_channel,
)
from .store import IntakeResult, TicketDict, TicketStore
from .writer import TicketWriter

__all__ = [
    "CALLBACK_OUTCOMES",
    "LINES",
    "OUTCOMES",
    "AddNote",
    "AddTransfer",
    "AnswerTicket",
    "AttachRecording",
    "Base",
    "CloseTicket",
    "FollowUpDone",
    "IntakeResult",
    "MarkDispatched",
    "MarkSolved",
    "OpenIntake",
    "OpenTicket",
    "OutboxEvent",
    "PurgeRecording",
    "Reclassify",
    "RecordCallback",
    "RecordUnseenCall",
    "RecordingAccessed",
    "RecordingFailed",
    "RequestCallback",
    "RequestFollowUp",
    "SendToDispatch",
    "SetLegalHold",
    "SetSeat",
    "SetTown",
    "SetTranscript",
    "Ticket",
    "TicketDict",
    "TicketEvent",
    "TicketOp",
    "TicketRules",
    "TicketStore",
    "TicketWriter",
    "new_ticket_id",
    "ticket_id_for_channel",
]
