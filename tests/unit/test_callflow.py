"""The call-flow decisions (callrouter.acd.callflow), without Asterisk: transfers, consults,
a seat leg's end, the caller's end, in-call codes and REFER."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callrouter.acd.callflow import (
    BUSY_CAUSES,
    NO_ANSWER_CAUSES,
    CallerLeft,
    CallPhase,
    Consult,
    ConsultHandover,
    ConsultLeft,
    DropConsult,
    FlowRefused,
    JoinConsult,
    OfferLost,
    Refer,
    SeatHungUp,
    Transfer,
    caller_of,
    consult_expired,
    consult_id_for,
    decide_caller_end,
    decide_consult,
    decide_consult_connect,
    decide_leg_end,
    decide_transfer,
    dtmf_step,
    escalation_line,
    gap_outcome,
    in_call_codes,
    is_consult,
    offer_failure,
    parse_refer,
    refer_line,
)
from callrouter.acd.lines import LinesConfig, load_lines

ROOT = Path(__file__).resolve().parents[2]
LINES = load_lines(ROOT / "queues" / "lines.toml")


@dataclass
class Call:
    id: str = "ch-1"
    acd_id: str = "ch-1"
    line: str = "110"
    phase: CallPhase = CallPhase.TALKING
    seat: str | None = "s110-01"
    seat_leg: str | None = "cr-leg-1"
    offer_leg: str | None = None
    bridge: str | None = "callrouter-call-ch-1-1"
    consult_id: str | None = None
    consult_leg: str | None = None
    consult_line: str | None = None


@dataclass
class Leg:
    id: str = "cr-leg-1"
    call_id: str = "ch-1"
    seat: str = "s110-01"
    answered: bool = True


def reordered(lines: LinesConfig) -> LinesConfig:
    """The same lines listed in the other order, the ranks swapped: rank decides, not ids."""
    a, b = lines.lines
    return dataclasses.replace(lines, lines=(dataclasses.replace(b, rank=1), dataclasses.replace(a, rank=2)))


# ------------------------------------------------------------ lines
def test_escalation_line_and_codes_come_from_the_ranks() -> None:
    assert escalation_line(LINES) == "110"
    assert in_call_codes(LINES) == {"*1": "110", "*9": "96345"}
    swapped = reordered(LINES)
    assert escalation_line(swapped) == "96345"
    assert in_call_codes(swapped) == {"*1": "96345", "*9": "110"}


# ------------------------------------------------------------ transfer
def test_transfer_of_a_talking_110_call_to_96345() -> None:
    decision = decide_transfer(Call(), "ch-1", "96345", LINES, by_seat="s110-01")
    assert decision == Transfer(call_id="ch-1", acd_id="ch-1", from_line="110", to_line="96345", seat="s110-01",
                                leg_id="cr-leg-1", bridge_id="callrouter-call-ch-1-1", escalated=False)


def test_transfer_to_the_first_ranked_line_is_an_escalation() -> None:
    decision = decide_transfer(Call(line="96345", seat="s96345-01"), "ch-1", "110", LINES)
    assert decision.escalated and decision.from_line == "96345"


def test_a_handed_over_call_transfers_under_its_acd_id() -> None:
    call = Call(acd_id=consult_id_for("ch-1"), line="96345", seat="s96345-02")
    assert decide_transfer(call, "ch-1", "110", LINES).acd_id == "consult~ch-1"


@pytest.mark.parametrize(("call", "to_line", "by_seat", "error_id"), [
    (None, "96345", None, "unknown_call"),
    (Call(), "12345", None, "unknown_line"),
    (Call(), "110", None, "same_line"),
    (Call(phase=CallPhase.WAITING), "96345", None, "not_talking"),
    (Call(phase=CallPhase.RINGING), "96345", None, "not_talking"),
    (Call(), "96345", "s110-02", "not_your_call"),
    (Call(consult_id="consult~ch-1"), "96345", None, "consult_under_way"),
    # the checks run in this order: a bad line beats a call that is not talking
    (Call(phase=CallPhase.WAITING), "12345", "s110-09", "unknown_line"),
])
def test_transfer_refusals(call: Call | None, to_line: str, by_seat: str | None, error_id: str) -> None:
    with pytest.raises(FlowRefused) as info:
        decide_transfer(call, "ch-1", to_line, LINES, by_seat=by_seat)
    assert info.value.error_id == error_id and info.value.details


@given(phase=st.sampled_from(CallPhase), line=st.sampled_from(["110", "96345"]),
       to_line=st.sampled_from(["110", "96345", "12345", ""]), consulting=st.booleans(),
       seat=st.sampled_from(["s110-01", "s96345-01"]), by_seat=st.sampled_from([None, "s110-01", "s96345-01"]))
def test_transfer_is_allowed_exactly_when_every_rule_holds(phase: CallPhase, line: str, to_line: str,
                                                          consulting: bool, seat: str, by_seat: str | None) -> None:
    call = Call(phase=phase, line=line, seat=seat, consult_id="consult~ch-1" if consulting else None)
    allowed = (to_line in LINES.line_ids and to_line != line and phase is CallPhase.TALKING
               and by_seat in (None, seat) and not consulting)
    try:
        decision = decide_transfer(call, "ch-1", to_line, LINES, by_seat=by_seat)
    except FlowRefused:
        assert not allowed
    else:
        assert allowed
        assert (decision.from_line, decision.to_line, decision.seat) == (line, to_line, seat)
        assert decision.escalated == (to_line == "110")


# ------------------------------------------------------------ consult
def test_consult_rings_the_other_line_with_its_ring_timeout() -> None:
    decision = decide_consult(Call(), "ch-1", "96345", LINES, by_seat="s110-01")
    assert decision == Consult(consult_id="consult~ch-1", line="96345",
                               ring_timeout_s=LINES.line("96345").ring_timeout_s)
    assert is_consult(decision.consult_id) and caller_of(decision.consult_id) == "ch-1"
    assert caller_of("ch-1") == "ch-1" and not is_consult("ch-1")


@pytest.mark.parametrize(("call", "line", "by_seat", "error_id"), [
    (None, "96345", None, "unknown_call"),
    (Call(), "110", None, "bad_line"),
    (Call(), "12345", None, "bad_line"),
    (Call(phase=CallPhase.WAITING), "96345", None, "not_talking"),
    (Call(), "96345", "s110-07", "not_your_call"),
    (Call(consult_id="consult~ch-1"), "96345", None, "consult_under_way"),
])
def test_consult_refusals(call: Call | None, line: str, by_seat: str | None, error_id: str) -> None:
    with pytest.raises(FlowRefused) as info:
        decide_consult(call, "ch-1", line, LINES, by_seat=by_seat)
    assert info.value.error_id == error_id


def test_consult_expires_only_while_no_consulted_seat_answered() -> None:
    assert consult_expired(Call(consult_id="consult~ch-1"), "consult~ch-1")
    assert not consult_expired(Call(consult_id="consult~ch-1", consult_leg="cr-leg-2"), "consult~ch-1")
    assert not consult_expired(Call(), "consult~ch-1")  # dropped or handed over meanwhile


def test_consulted_seat_joins_the_callers_bridge() -> None:
    call = Call(consult_id="consult~ch-1")
    leg = Leg(id="cr-leg-2", call_id="consult~ch-1", seat="s96345-01")
    assert decide_consult_connect(call, leg, "consult~ch-1") == JoinConsult("cr-leg-2", "callrouter-call-ch-1-1")


def test_consult_without_a_bridge_is_dropped_and_forgotten() -> None:
    call = Call(consult_id="consult~ch-1", bridge=None)
    leg = Leg(id="cr-leg-2", call_id="consult~ch-1", seat="s96345-01")
    assert decide_consult_connect(call, leg, "consult~ch-1") == DropConsult(leg_id="cr-leg-2", clear=True)


def test_consult_of_a_gone_caller_or_an_old_consult_is_dropped() -> None:
    leg = Leg(id="cr-leg-2", call_id="consult~ch-1", seat="s96345-01")
    assert decide_consult_connect(None, leg, "consult~ch-1") == DropConsult(leg_id="cr-leg-2", clear=False)
    assert decide_consult_connect(Call(), leg, "consult~ch-1") == DropConsult(leg_id="cr-leg-2", clear=False)
    assert decide_consult_connect(Call(consult_id="consult~ch-1"), None, "consult~ch-1") == DropConsult(None, True)


# ------------------------------------------------------------ a seat leg ends
def test_seat_hanging_up_a_connected_call_ends_it() -> None:
    assert decide_leg_end(Call(), Leg(), 16) == SeatHungUp(acd_id="ch-1")


def test_first_seat_leaving_a_consult_hands_the_caller_over() -> None:
    call = Call(consult_id="consult~ch-1", consult_leg="cr-leg-2", consult_line="96345")
    assert decide_leg_end(call, Leg(), 16) == ConsultHandover(first_acd_id="ch-1", from_line="110",
                                                              from_seat="s110-01")


def test_consulted_seat_leaving_leaves_the_first_seat_with_the_caller() -> None:
    call = Call(consult_id="consult~ch-1", consult_leg="cr-leg-2", consult_line="96345")
    leg = Leg(id="cr-leg-2", call_id="consult~ch-1", seat="s96345-01")
    assert decide_leg_end(call, leg, 16) == ConsultLeft(consult_id="consult~ch-1")


def test_a_ringing_seat_that_is_busy_fails_the_offer_and_the_caller_waits_again() -> None:
    call = Call(phase=CallPhase.RINGING, seat=None, seat_leg=None, bridge=None, offer_leg="cr-leg-3")
    leg = Leg(id="cr-leg-3", answered=False)
    assert decide_leg_end(call, leg, 17) == OfferLost(call_id="ch-1", seat="s110-01", reason="busy",
                                                      back_to_waiting=True)


def test_a_leg_of_a_gone_caller_is_a_failed_offer() -> None:
    assert decide_leg_end(None, Leg(answered=False), 19) == OfferLost("ch-1", "s110-01", "no_answer", False)


@pytest.mark.parametrize(("cause", "answered", "reason"), [
    (17, False, "busy"), (21, False, "busy"), (18, False, "no_answer"), (19, False, "no_answer"),
    (0, False, "no_answer"), (16, False, "error"), (34, False, "error"), (17, True, "error"), (0, True, "error"),
])
def test_offer_failure_reasons(cause: int, answered: bool, reason: str) -> None:
    assert offer_failure(cause, answered) == reason


@given(cause=st.integers(min_value=0, max_value=127), answered=st.booleans())
def test_offer_failure_is_total_and_answered_legs_are_errors(cause: int, answered: bool) -> None:
    reason = offer_failure(cause, answered)
    assert reason in ("busy", "no_answer", "error")
    if answered:
        assert reason == "error"
    elif cause in BUSY_CAUSES:
        assert reason == "busy"
    elif cause in NO_ANSWER_CAUSES or cause == 0:
        assert reason == "no_answer"


legs = st.sampled_from(["cr-leg-1", "cr-leg-2", "cr-leg-3", None])


@given(seat_leg=legs, consult_leg=legs, offer_leg=legs, leg_id=st.sampled_from(["cr-leg-1", "cr-leg-2", "cr-leg-3"]),
       live=st.booleans(), cause=st.integers(min_value=0, max_value=40))
def test_leg_end_is_one_decision_matching_the_legs_role(seat_leg: str | None, consult_leg: str | None,
                                                        offer_leg: str | None, leg_id: str, live: bool,
                                                        cause: int) -> None:
    call = Call(seat_leg=seat_leg, consult_leg=consult_leg, offer_leg=offer_leg) if live else None
    decision = decide_leg_end(call, Leg(id=leg_id), cause)
    if call is not None and seat_leg == leg_id:
        assert isinstance(decision, ConsultHandover if consult_leg is not None else SeatHungUp)
    elif call is not None and consult_leg == leg_id:
        assert isinstance(decision, ConsultLeft)
    else:
        assert isinstance(decision, OfferLost)
        assert decision.back_to_waiting == (call is not None and offer_leg == leg_id)


# ------------------------------------------------------------ the caller leaves
def test_caller_hanging_up_while_talking_completes_and_frees_the_seat() -> None:
    assert decide_caller_end(Call()) == CallerLeft(outcome="completed", acd_id="ch-1", ended=True, consult_id=None,
                                                   consult_ended=False, consult_leg=None, seat_leg="cr-leg-1")


def test_caller_hanging_up_while_waiting_abandons() -> None:
    call = Call(phase=CallPhase.WAITING, seat=None, seat_leg=None, bridge=None)
    assert decide_caller_end(call) == CallerLeft(outcome="abandoned", acd_id="ch-1", ended=False, consult_id=None,
                                                 consult_ended=False, consult_leg=None, seat_leg=None)
    assert gap_outcome(call) == "abandoned" and gap_outcome(Call()) == "completed"


def test_caller_hanging_up_during_a_consult_ends_the_consult() -> None:
    ringing = decide_caller_end(Call(consult_id="consult~ch-1", consult_line="96345"))
    assert (ringing.consult_id, ringing.consult_ended, ringing.consult_leg) == ("consult~ch-1", False, None)
    joined = decide_caller_end(Call(consult_id="consult~ch-1", consult_leg="cr-leg-2", consult_line="96345"))
    assert (joined.consult_id, joined.consult_ended, joined.consult_leg) == ("consult~ch-1", True, "cr-leg-2")


# ------------------------------------------------------------ in-call codes and REFER
def test_star_then_a_digit_completes_a_code() -> None:
    codes = in_call_codes(LINES)
    assert dtmf_step("", "*", codes) == ("*", None)
    assert dtmf_step("*", "9", codes) == ("", "*9")
    assert dtmf_step("*", "5", codes) == ("", None)  # unknown code: forgotten
    assert dtmf_step("", "1", codes) == ("", None)  # a digit without a star is no code


@given(st.lists(st.sampled_from(list("0123456789*#")), max_size=30))
def test_a_code_completes_only_right_after_a_star(digits: list[str]) -> None:
    codes = in_call_codes(LINES)
    buffer, previous = "", ""
    for digit in digits:
        buffer, code = dtmf_step(buffer, digit, codes)
        assert buffer in ("", "*")
        if code is not None:
            assert previous == "*" and code == "*" + digit and code in codes
        previous = digit


def test_refer_event_is_read_and_missing_parts_are_empty() -> None:
    raw = {"referred_by": {"source_channel": {"id": "cr-leg-4"}},
           "refer_to": {"requested_destination": {"destination": "96345"}}}
    assert parse_refer(raw) == Refer(leg_id="cr-leg-4", destination="96345")
    assert parse_refer({}) == Refer(leg_id="", destination="")
    assert parse_refer({"referred_by": None, "refer_to": {"requested_destination": None}}) == Refer("", "")


@pytest.mark.parametrize(("destination", "line"), [
    ("96345", "96345"), ("+96345", "96345"), ("0096345", "96345"), ("110", "110"), ("+86110", "110"),
    ("12345", None), ("", None), ("1100", None),
])
def test_refer_destination_names_a_line(destination: str, line: str | None) -> None:
    assert refer_line(destination, LINES) == line


@given(st.sampled_from(["110", "96345"]), st.text(alphabet="+0123456789", max_size=6))
def test_any_number_ending_in_a_line_id_refers_to_that_line(line: str, prefix: str) -> None:
    assert refer_line(prefix.lstrip("+") + line, LINES) == line
