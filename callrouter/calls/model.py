"""What the shell knows of a live call and of a seat leg it originated."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from callrouter.acd.callflow import CallPhase
from callrouter.numberplan import Route

__all__ = ["CallPhase", "LiveCall", "SeatLeg"]


@dataclass
class LiveCall:
    id: str  # the caller's Asterisk channel id; also the ACD's call id
    ticket_id: str
    route: Route
    dialled: str
    caller: str
    arrived_at: datetime
    line: str
    held: int = 0  # rounds the dialplan held this caller while the engine was away
    answered: bool = False
    phase: CallPhase = CallPhase.WAITING
    greeting_playback: str = ""
    # the transfer notice playing on the channel: stopped before the caller is bridged
    # (Asterisk 22 crashed, GPF, when a channel left a mixing bridge with it still on)
    notice_playback: str = ""
    # the position/wait announcement playing (stopped before bridging, as the notice)
    announce_playback: str = ""
    announces: int = 0
    offer_leg: str | None = None
    seat: str | None = None
    seat_leg: str | None = None
    seat_answered_at: datetime | None = None
    bridge: str | None = None
    connects: int = 0  # mixing bridges made for this caller so far
    # the ACD's id for this caller: the channel id, or after a three-way consult handed
    # the caller over, the consult's id
    acd_id: str = ""
    consult_id: str | None = None  # a three-way consult under way (its ACD id)
    consult_leg: str | None = None  # the consulted seat's leg, once it answered
    consult_line: str | None = None
    # what the caller said while waiting (speech), as on the ticket; None: not transcribed
    transcript: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.acd_id = self.acd_id or self.id
    # one call's ARI requests run in order, each call in its own lane
    lane: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    def summary(self) -> dict[str, Any]:
        return {"call_id": self.id, "ticket": self.ticket_id, "line": self.line, "dialled": self.dialled,
                "number": self.route.number, "category": self.route.category,
                "department": self.route.department, "priority": self.route.priority, "caller": self.caller,
                "arrived_at": self.arrived_at.isoformat(), "phase": self.phase.value, "seat": self.seat,
                "transcript": self.transcript}


@dataclass
class SeatLeg:
    id: str  # channel id we gave the originate
    call_id: str
    seat: str
    offered_at: float
    originated: bool = False  # Asterisk accepted the originate: the leg exists
    answered: bool = False
    cancelled: bool = False  # we hung it up ourselves: its end is no failure
    dtmf: str = ""  # an in-call code being keyed (*1, *9)
