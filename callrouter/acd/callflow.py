"""Call-flow decisions, sans-I/O: what a transfer, a consult, a seat leg's end, a caller's
end, an in-call code or a REFER mean for the call.

The ACD core decides who waits and which seat rings; this module decides what happens to
one live call when a seat or the caller does something. Like the core it never awaits,
never reads a clock and never touches ARI: each function takes what the shell knows of
the call (:class:`CallView`, which ``calls.model.LiveCall`` satisfies) and returns a
decision (a frozen dataclass) that ``calls.service`` carries out, or raises
:class:`FlowRefused` with a stable error id the API shows. The line ids come from the
lines configuration, never from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, Protocol

from callrouter.acd.lines import LinesConfig

# a three-way consult is its own call in the ACD, named after its caller
CONSULT_PREFIX = "consult~"
# Q.850 causes of a seat leg that ended before answer
BUSY_CAUSES = frozenset({17, 21})  # user busy, call rejected
NO_ANSWER_CAUSES = frozenset({18, 19})  # no user responding, no answer

OfferFailure = Literal["busy", "no_answer", "error"]
Outcome = Literal["completed", "abandoned"]


class CallPhase(StrEnum):
    WAITING = "waiting"  # answered, greeted or held; no seat ringing
    RINGING = "ringing"  # a seat's phone rings for this caller
    TALKING = "talking"  # caller and seat in one mixing bridge


class CallView(Protocol):
    """What a decision reads of a live call (``calls.model.LiveCall``)."""

    @property
    def id(self) -> str: ...
    @property
    def acd_id(self) -> str: ...
    @property
    def line(self) -> str: ...
    @property
    def phase(self) -> CallPhase: ...
    @property
    def seat(self) -> str | None: ...
    @property
    def seat_leg(self) -> str | None: ...
    @property
    def offer_leg(self) -> str | None: ...
    @property
    def bridge(self) -> str | None: ...
    @property
    def consult_id(self) -> str | None: ...
    @property
    def consult_leg(self) -> str | None: ...
    @property
    def consult_line(self) -> str | None: ...


class LegView(Protocol):
    """What a decision reads of a seat leg (``calls.model.SeatLeg``)."""

    @property
    def id(self) -> str: ...
    @property
    def call_id(self) -> str: ...
    @property
    def seat(self) -> str: ...
    @property
    def answered(self) -> bool: ...


class FlowRefused(Exception):
    """A seat's (or the API's) request that would make no sense for the call: nothing
    changed. ``error_id`` is stable (the API's error id), ``details`` says why."""

    def __init__(self, error_id: str, details: str) -> None:
        super().__init__(details)
        self.error_id = error_id
        self.details = details


# ------------------------------------------------------------ ids
def consult_id_for(call_id: str) -> str:
    return f"{CONSULT_PREFIX}{call_id}"


def is_consult(acd_id: str) -> bool:
    return acd_id.startswith(CONSULT_PREFIX)


def caller_of(acd_id: str) -> str:
    """The caller's channel id an ACD call id stands for (a consult's id names its caller)."""
    return acd_id[len(CONSULT_PREFIX):] if is_consult(acd_id) else acd_id


# ------------------------------------------------------------ lines
def escalation_line(lines: LinesConfig) -> str:
    """The line dispatched first (rank 1: the emergency line). A transfer onto it is an
    escalation: the caller goes to the front of their priority class."""
    return min(lines.lines, key=lambda line: line.rank).id


def in_call_codes(lines: LinesConfig) -> dict[str, str]:
    """Codes a seat keys during a call to hand the caller over: ``*1`` to the line
    dispatched first (the emergency line), ``*9`` to the line dispatched last."""
    ranked = sorted(lines.lines, key=lambda line: line.rank)
    return {"*1": ranked[0].id, "*9": ranked[-1].id}


# ------------------------------------------------------------ transfer between lines
@dataclass(frozen=True)
class Transfer:
    """Move the caller to ``to_line``'s queue; the seat's leg and bridge go once the
    caller is held there."""

    call_id: str
    acd_id: str
    from_line: str
    to_line: str
    seat: str | None
    leg_id: str | None
    bridge_id: str | None
    escalated: bool


def decide_transfer(call: CallView | None, call_id: str, to_line: str, lines: LinesConfig,
                    by_seat: str | None = None) -> Transfer:
    """A seat hands its caller to another line. Raises FlowRefused."""
    if call is None:
        raise FlowRefused("unknown_call", f"no live call {call_id!r}")
    if to_line not in lines.line_ids:
        raise FlowRefused("unknown_line", f"{to_line!r}: use one of {', '.join(lines.line_ids)}")
    if to_line == call.line:
        raise FlowRefused("same_line", f"the call is already on line {to_line}")
    if call.phase is not CallPhase.TALKING:
        raise FlowRefused("not_talking", "only a call a seat is talking to can be transferred")
    if by_seat is not None and call.seat != by_seat:
        raise FlowRefused("not_your_call", f"seat {by_seat} is not on call {call_id}")
    if call.consult_id is not None:
        raise FlowRefused("consult_under_way", "finish or drop the three-way consult first")
    return Transfer(call_id=call.id, acd_id=call.acd_id, from_line=call.line, to_line=to_line, seat=call.seat,
                    leg_id=call.seat_leg, bridge_id=call.bridge, escalated=to_line == escalation_line(lines))


# ------------------------------------------------------------ three-way consult
@dataclass(frozen=True)
class Consult:
    """Ring ``line``'s next free seat as an escalated caller ``consult_id``; give up after
    ``ring_timeout_s`` if none answered (the first seat keeps the caller)."""

    consult_id: str
    line: str
    ring_timeout_s: float


def decide_consult(call: CallView | None, call_id: str, line: str, lines: LinesConfig,
                   by_seat: str | None = None) -> Consult:
    """Bring a seat of another line into the call. Raises FlowRefused."""
    if call is None:
        raise FlowRefused("unknown_call", f"no live call {call_id!r}")
    if line not in lines.line_ids or line == call.line:
        raise FlowRefused("bad_line", f"consult the other line, not {line!r}")
    # TALKING from the seat's answer on; the mixing bridge may still be in the making
    # (tens of ms, seconds under load): the consulted seat joins it when it answers,
    # which takes at least its ring, and a consult whose call never got a bridge is
    # dropped then (decide_consult_connect)
    if call.phase is not CallPhase.TALKING:
        raise FlowRefused("not_talking", "only a call a seat is talking to can have a consult")
    if by_seat is not None and call.seat != by_seat:
        raise FlowRefused("not_your_call", f"seat {by_seat} is not on call {call_id}")
    if call.consult_id is not None:
        raise FlowRefused("consult_under_way", "a consult is already under way")
    return Consult(consult_id=consult_id_for(call.id), line=line, ring_timeout_s=lines.line(line).ring_timeout_s)


def consult_expired(call: CallView, consult_id: str) -> bool:
    """At the consult's ring timeout: still no consulted seat on the call?"""
    return call.consult_id == consult_id and call.consult_leg is None


@dataclass(frozen=True)
class JoinConsult:
    """The consulted seat answered: its leg joins the caller's mixing bridge."""

    leg_id: str
    bridge_id: str


@dataclass(frozen=True)
class DropConsult:
    """The consulted seat answered but there is nothing to join: hang its leg up (if any),
    end the consult in the ACD, and with ``clear`` forget it on the call (the first
    seat keeps the caller and may ask again)."""

    leg_id: str | None
    clear: bool


def decide_consult_connect(call: CallView | None, leg: LegView | None, consult_id: str) -> JoinConsult | DropConsult:
    if call is None or leg is None or call.consult_id != consult_id or call.bridge is None:
        return DropConsult(leg_id=leg.id if leg is not None else None,
                           clear=call is not None and call.consult_id == consult_id)
    return JoinConsult(leg_id=leg.id, bridge_id=call.bridge)


# ------------------------------------------------------------ a seat leg ends
@dataclass(frozen=True)
class ConsultHandover:
    """The seat that asked for the consult left: the consulted seat keeps the caller, the
    first seat's part ends (wrap-up) and the ticket records the hand-over."""

    first_acd_id: str
    from_line: str
    from_seat: str


@dataclass(frozen=True)
class SeatHungUp:
    """The seat hung up a connected call: the call is over for the caller too."""

    acd_id: str


@dataclass(frozen=True)
class ConsultLeft:
    """The consulted seat left; the first seat and the caller talk on."""

    consult_id: str


@dataclass(frozen=True)
class OfferLost:
    """A leg that never became the call's: the offer failed for ``reason``; with
    ``back_to_waiting`` the caller was ringing that seat and waits again."""

    call_id: str
    seat: str
    reason: OfferFailure
    back_to_waiting: bool


LegEnd = ConsultHandover | SeatHungUp | ConsultLeft | OfferLost


def offer_failure(cause: int, answered: bool) -> OfferFailure:
    """Why an offer failed, from the Q.850 cause of the seat leg's end (0: unknown, as
    when it ended while the engine was away)."""
    if answered:
        return "error"  # answered but the bridge never formed
    if cause in BUSY_CAUSES:
        return "busy"
    if cause in NO_ANSWER_CAUSES or cause == 0:
        return "no_answer"
    return "error"


def decide_leg_end(call: CallView | None, leg: LegView, cause: int) -> LegEnd:
    """A seat leg of ours (not cancelled by us) ended; ``call`` is its caller, if live."""
    if call is not None and call.seat_leg == leg.id:
        if call.consult_leg is not None:
            return ConsultHandover(first_acd_id=call.acd_id, from_line=call.line, from_seat=leg.seat)
        return SeatHungUp(acd_id=call.acd_id)
    if call is not None and call.consult_leg == leg.id:
        return ConsultLeft(consult_id=leg.call_id)
    return OfferLost(call_id=leg.call_id, seat=leg.seat, reason=offer_failure(cause, leg.answered),
                     back_to_waiting=call is not None and call.offer_leg == leg.id)


# ------------------------------------------------------------ the caller leaves
@dataclass(frozen=True)
class CallerLeft:
    """The caller hung up: the ticket closes with ``outcome``; ``ended`` says whether the
    ACD hears CallEnded (a seat had them) or CallAbandoned; a consult under way ends
    too (``consult_ended``: its seat had answered), and the seat legs still up go."""

    outcome: Outcome
    acd_id: str
    ended: bool
    consult_id: str | None
    consult_ended: bool
    consult_leg: str | None
    seat_leg: str | None


def decide_caller_end(call: CallView) -> CallerLeft:
    talking = call.phase is CallPhase.TALKING
    return CallerLeft(outcome="completed" if talking else "abandoned", acd_id=call.acd_id, ended=talking,
                      consult_id=call.consult_id, consult_ended=bool(call.consult_leg),
                      consult_leg=call.consult_leg or None, seat_leg=(call.seat_leg or None) if talking else None)


def gap_outcome(call: CallView) -> Outcome:
    """A caller who left while the engine was away: completed if a seat had them."""
    return "completed" if call.phase is CallPhase.TALKING else "abandoned"


# ------------------------------------------------------------ in-call codes and REFER
def dtmf_step(buffer: str, digit: str, codes: Mapping[str, str]) -> tuple[str, str | None]:
    """One DTMF digit from a seat's phone: the new buffer, and the code completed (None
    while none is). ``*`` starts a code; the next digit ends it, known or not."""
    if digit == "*":
        return "*", None
    code = buffer + digit
    return "", code if code in codes else None


@dataclass(frozen=True)
class Refer:
    """A seat's blind transfer (SIP REFER, ARI ChannelTransfer): who sent it, to where."""

    leg_id: str
    destination: str


def parse_refer(raw: Mapping[str, Any]) -> Refer:
    """The leg and destination of a ChannelTransfer event (missing parts are empty)."""
    source = ((raw.get("referred_by") or {}).get("source_channel") or {}).get("id", "")
    dest = ((raw.get("refer_to") or {}).get("requested_destination") or {}).get("destination", "")
    return Refer(leg_id=str(source), destination=str(dest))


def refer_line(destination: str, lines: LinesConfig) -> str | None:
    """The line a REFER's destination names: the number the phone dialled ends in the
    line id (``96345``, ``+96345``, ``0096345``), or None."""
    number = destination.lstrip("+")
    return next((line for line in lines.line_ids if number.endswith(line)), None)
