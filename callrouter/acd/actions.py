"""Outputs of the ACD core: what the shell should do, in order, one by one.

Time-critical actions come first in a returned list: an ``Offer`` precedes the
bookkeeping that goes with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from callrouter.acd.model import SeatState


@dataclass(frozen=True)
class Offer:
    """Ring ``endpoint`` for ``call_id``; give up after ``timeout_s``."""

    call_id: str
    seat: str
    endpoint: str
    timeout_s: float
    line: str


@dataclass(frozen=True)
class CancelOffer:
    """Stop ringing ``seat`` for ``call_id`` (or hang up its leg if it just answered)."""

    call_id: str
    seat: str


@dataclass(frozen=True)
class Connect:
    """The seat answered and the core accepted it: bridge caller and seat now.

    The shell bridges on this action, never on the raw answer, so an answer that lost
    a race (the caller hung up, the ring timed out) is never bridged.
    ``wait_s`` is the time the caller waited on this line.
    """

    call_id: str
    seat: str
    line: str
    wait_s: float


@dataclass(frozen=True)
class CallQueued:
    """The caller joined ``line``'s queue at ``position`` (1 = next)."""

    call_id: str
    line: str
    position: int
    eta_s: int


@dataclass(frozen=True)
class Announce:
    """Tell a waiting caller their position and expected wait (lines with
    ``announce_interval_s``)."""

    call_id: str
    line: str
    position: int
    eta_s: int


@dataclass(frozen=True)
class SeatStateChanged:
    seat: str
    state: SeatState
    reason: str
    registered: bool


@dataclass(frozen=True)
class OverflowChanged:
    """Seats beyond ``line``'s own now serving it; ``active`` is the automatic policy."""

    line: str
    active: bool
    seats: tuple[str, ...]
    trigger: str  # why: "wait", "predicted_sl", "calm", "supervisor", "seats"


Action = (
    Offer
    | CancelOffer
    | Connect
    | CallQueued
    | Announce
    | SeatStateChanged
    | OverflowChanged
)
