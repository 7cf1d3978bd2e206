"""The state the core keeps: calls and seats."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class SeatState(StrEnum):
    LOGGED_OUT = "logged_out"
    READY = "ready"
    RINGING = "ringing"
    ON_CALL = "on_call"
    WRAP_UP = "wrap_up"
    PAUSED = "paused"


# logged in and taking calls now or after the current one (Erlang C counts these)
STAFFED = frozenset({SeatState.READY, SeatState.RINGING, SeatState.ON_CALL, SeatState.WRAP_UP})


class CallState(StrEnum):
    WAITING = "waiting"
    RINGING = "ringing"
    ON_CALL = "on_call"


@dataclass
class Call:
    id: str
    line: str
    priority: int
    arrived_at: float  # original arrival: orders the queue
    queued_at: float  # joined this line's queue: measures this line's wait
    escalated: bool
    seq: int  # arrival order, the last tie-breaker
    state: CallState = CallState.WAITING
    seat: str | None = None
    offer_deadline: float | None = None
    answered_at: float | None = None
    announced_at: float = 0.0
    # seats that already failed to answer this call: offered to others first
    tried: set[str] = field(default_factory=set)


@dataclass
class Seat:
    id: str
    endpoint: str
    home: str | None  # the line whose own seat this is; None for pool and runtime seats
    may_serve: frozenset[str]  # lines the automatic overflow may assign (pool seats)
    runtime: bool = False  # created by AddSeat, not in the configuration
    state: SeatState = SeatState.LOGGED_OUT
    since: float = 0.0
    reason: str = ""
    registered: bool = False
    idle_since: float = 0.0  # last call/wrap-up end or login: longest idle gets the offer
    missed: int = 0  # consecutive offers not answered
    call_id: str | None = None
    call_line: str | None = None
    wrap_until: float | None = None
    overflow_lines: set[str] = field(default_factory=set)  # assigned by the policy
    pinned_lines: set[str] = field(default_factory=set)  # assigned by a supervisor
    pending: str | None = None  # "pause" or "logout" once the current call is done
    pending_reason: str = ""
    retiring: bool = False  # removed from the configuration: dropped once free

    def serves(self, line: str) -> bool:
        return line == self.home or line in self.pinned_lines or line in self.overflow_lines

    @property
    def extra_lines(self) -> set[str]:
        return self.overflow_lines | self.pinned_lines
