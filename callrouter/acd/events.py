"""Inputs to the ACD core: what happened, as the shell (or the simulator) saw it.

Every event is a frozen dataclass; :meth:`Acd.handle` takes one with the current time.
Times inside events (``arrived_at``) use the same clock as ``now``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from callrouter.acd.lines import LinesConfig

OfferFailure = Literal["no_answer", "busy", "error"]


@dataclass(frozen=True)
class CallArrived:
    """A caller is answered by the engine and waits for a seat.

    ``arrived_at`` is the original arrival: a caller re-queued after a restart or a
    transfer keeps their place. ``escalated`` puts the caller at the front of their
    priority class (a 96345 seat handing an emergency to 110).
    """

    call_id: str
    line: str
    priority: int
    arrived_at: float
    escalated: bool = False


@dataclass(frozen=True)
class CallTransferred:
    """A seat hands its caller to another line; the seat goes to wrap-up.

    The caller joins ``to_line`` keeping the original arrival; ``priority`` None keeps
    the current one.
    """

    call_id: str
    to_line: str
    priority: int | None = None
    escalated: bool = False


@dataclass(frozen=True)
class RaisePriority:
    """Make a caller more urgent (a lower number), e.g. on a keyword they said while waiting.

    Never lowers: a ``priority`` not below the current one changes nothing. A waiting
    caller moves to their place in the new class (by original arrival); a caller being
    offered or talking keeps that, with the new priority if they are queued again.
    """

    call_id: str
    priority: int


@dataclass(frozen=True)
class CallAbandoned:
    """The caller hung up before a seat answered (waiting, or while a seat rang)."""

    call_id: str


@dataclass(frozen=True)
class CallEnded:
    """A bridged call ended (either side hung up); the seat goes to wrap-up."""

    call_id: str


@dataclass(frozen=True)
class OfferAnswered:
    call_id: str
    seat: str


@dataclass(frozen=True)
class OfferFailed:
    call_id: str
    seat: str
    reason: OfferFailure = "no_answer"


@dataclass(frozen=True)
class SeatLogin:
    seat: str


@dataclass(frozen=True)
class SeatLogout:
    """Takes effect at once when idle; after the current call and wrap-up otherwise."""

    seat: str


@dataclass(frozen=True)
class SeatRegistered:
    """The seat's softphone registered or lost its registration."""

    seat: str
    registered: bool


@dataclass(frozen=True)
class SeatPause:
    """Pause a seat (at once when idle or ringing; after wrap-up when on a call)."""

    seat: str
    reason: str = "break"


@dataclass(frozen=True)
class SeatResume:
    seat: str


@dataclass(frozen=True)
class WrapUpDone:
    """The agent finished wrap-up early (it also ends by itself on Tick)."""

    seat: str


@dataclass(frozen=True)
class Tick:
    """Periodic (about every 0.5-1 s): ring timeouts, wrap-up expiry, overflow,
    announcements."""


@dataclass(frozen=True)
class AddSeat:
    """A supervisor makes ``seat`` serve ``line`` until RemoveSeat.

    A seat unknown to the configuration is created (logged out) with ``endpoint``
    (default: the seat id).
    """

    seat: str
    line: str
    endpoint: str | None = None


@dataclass(frozen=True)
class RemoveSeat:
    """A supervisor stops ``seat`` serving ``line`` (None: every line it was added to).

    A seat on a call finishes it first. A seat created by AddSeat that serves no line
    any more is dropped once idle.
    """

    seat: str
    line: str | None = None


@dataclass(frozen=True)
class Reconfigure:
    """New lines configuration; no call is dropped."""

    config: LinesConfig


Event = (
    CallArrived
    | CallTransferred
    | RaisePriority
    | CallAbandoned
    | CallEnded
    | OfferAnswered
    | OfferFailed
    | SeatLogin
    | SeatLogout
    | SeatRegistered
    | SeatPause
    | SeatResume
    | WrapUpDone
    | Tick
    | AddSeat
    | RemoveSeat
    | Reconfigure
)
