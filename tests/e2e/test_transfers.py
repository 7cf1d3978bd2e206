"""Transfers between the lines, end to end: the caller stays connected, keeps their place
(an escalation to 110 goes to the front of its class) and one ticket follows them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from callrouter.sim.seats import SeatSims, SeatSpec, start_seats
from callrouter.sim.trunk import CallSpec, run_calls
from tests.conftest import wait_for
from tests.e2e.conftest import EngineFactory


def _call_of(engines: EngineFactory, caller: str) -> dict[str, Any]:
    status, calls = engines.api("GET", "/api/calls")
    assert status == 200 and isinstance(calls, list)
    return next(c for c in calls if c["caller"] == caller)


def _answered(row: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(row["seat_answered_at"]))


def test_110_seat_hands_a_caller_to_96345_ahead_of_later_callers(engines: EngineFactory,
                                                                 seats: list[SeatSims]) -> None:
    engines.use_lines(wrap_up_s=1)
    engine = engines.start()
    seats.append(start_seats(engines.settings, [SeatSpec("s110-01", answer_delay_s=0.2, talk_s=0),
                                                SeatSpec("s96345-01", answer_delay_s=0.2, talk_s=2.0,
                                                         talk_dist="fixed")]))
    engines.login("s110-01")
    a = CallSpec("110", "13850000001", -1)
    ta, out_a = engines.calls_in_background([a], 5)
    wait_for(lambda: "event=call_connected" in engine.log(), 15, "the 110 seat to answer")
    later = [CallSpec("12345", f"1385000001{i}", -1) for i in range(2)]
    tb, out_b = engines.calls_in_background(later, 5)
    wait_for(lambda: engines.status()["lines"]["96345"]["waiting"] == 2, 15, "two later 96345 callers waiting")

    call = _call_of(engines, a.caller)
    status, body = engines.api("POST", f"/api/calls/{call['call_id']}/transfer", {"to": "96345", "reason": "噪音投诉"})
    assert status == 200 and body["line"] == "96345", body  # type: ignore[index]
    wait_for(lambda: engines.status()["lines"]["96345"]["waiting"] == 3, 10, "the caller queued on 96345")
    assert engines.status()["seats"]["s110-01"]["state"] in ("wrap_up", "ready")
    engines.login("s96345-01")
    wait_for(lambda: _call_of(engines, a.caller)["seat"] == "s96345-01", 10, "the 96345 seat to take the caller")
    status, body = engines.api("POST", f"/api/calls/{call['call_id']}/reclassify", {"category": "environment"})
    assert status == 200, body
    ta.join(timeout=60)
    tb.join(timeout=60)
    assert out_a and out_a[0].calls[0].outcome == "completed_by_far_end", "the caller stayed connected throughout"
    assert out_b and all(c.ok for c in out_b[0].calls)
    rows = wait_for(lambda: engines.closed_tickets(3), 30, "three closed tickets")
    assert len(rows) == 3, "the transfer made no second ticket"
    by_caller = {r["caller"]: r for r in rows}
    ticket = by_caller[a.caller]
    assert ticket["line"] == "96345" and ticket["seat"] == "s96345-01" and ticket["outcome"] == "completed"
    assert ticket["category"] == "environment", "the receiving seat reclassified it"
    assert [(t["from_line"], t["to_line"], t["seat"], t["reason"]) for t in ticket["transfers"]] == [
        ("110", "96345", "s110-01", "噪音投诉")]
    assert _answered(ticket) < min(_answered(by_caller[c.caller]) for c in later), "kept the place of its arrival"


def test_escalation_to_110_goes_to_the_front_of_its_class(engines: EngineFactory, seats: list[SeatSims]) -> None:
    engines.use_lines(wrap_up_s=1)
    engine = engines.start()
    seats.append(start_seats(engines.settings, [SeatSpec("s96345-01", answer_delay_s=0.2, talk_s=0),
                                                SeatSpec("s110-01", answer_delay_s=0.2, talk_s=2.0,
                                                         talk_dist="fixed")]))
    engines.login("s96345-01")
    ordinary = [CallSpec("110", f"1386000001{i}", -1) for i in range(2)]  # priority 1, waiting
    tb, out_b = engines.calls_in_background(ordinary, 5)
    wait_for(lambda: engines.status()["lines"]["110"]["waiting"] == 2, 15, "two 110 callers waiting")
    a = CallSpec("12345", "13860000001", -1)  # arrives last, on 96345
    ta, out_a = engines.calls_in_background([a], 5)
    wait_for(lambda: "event=call_connected" in engine.log(), 15, "the 96345 seat to answer")
    call = _call_of(engines, a.caller)
    status, body = engines.api("POST", f"/api/calls/{call['call_id']}/transfer",
                               {"to": "110", "reason": "燃气泄漏", "priority": 1})
    assert status == 200, body
    engines.login("s110-01")
    ta.join(timeout=60)
    tb.join(timeout=60)
    assert out_a and out_a[0].calls[0].ok and out_b and all(c.ok for c in out_b[0].calls)
    rows = wait_for(lambda: engines.closed_tickets(3), 30, "three closed tickets")
    first = min(rows, key=_answered)
    assert first["caller"] == a.caller, "the escalated caller was answered before earlier 110 callers"
    assert first["line"] == "110" and first["transfers"][0]["to_line"] == "110"


def test_bad_transfers_are_refused_with_a_reason(engines: EngineFactory) -> None:
    engines.start()
    status, body = engines.api("POST", "/api/calls/nope/transfer", {"to": "96345"})
    assert status == 404 and body["error"] == "unknown_call"  # type: ignore[index]
    status, body = engines.api("POST", "/api/calls/nope/transfer", {})
    assert status == 400 and body["error"] == "missing_to"  # type: ignore[index]
    status, body = engines.api("POST", "/api/calls/nope/transfer", {"to": "96345", "priority": 0})
    assert status == 400 and body["error"] == "bad_priority"  # type: ignore[index]


def test_seat_keys_star_9_on_its_phone_to_hand_the_caller_to_96345(engines: EngineFactory,
                                                                   seats: list[SeatSims]) -> None:
    engines.use_lines(wrap_up_s=1)
    engines.start()
    seats.append(start_seats(engines.settings, [
        SeatSpec("s110-01", answer_delay_s=0.2, mode="transfer", xfer_digit="9"),
        SeatSpec("s96345-01", answer_delay_s=0.2, talk_s=1.0, talk_dist="fixed")]))
    engines.login("s110-01", "s96345-01")
    report = run_calls(engines.settings, [CallSpec("119", "13870000001", -1)], rate=1)
    assert report.calls[0].outcome == "completed_by_far_end", report.to_json()
    ticket = wait_for(lambda: engines.closed_tickets(1), 20, "the ticket")[0]
    assert ticket["line"] == "96345" and ticket["seat"] == "s96345-01"
    assert [(t["from_line"], t["to_line"], t["seat"]) for t in ticket["transfers"]] == [("110", "96345", "s110-01")]


def test_seat_phone_blind_transfer_refer_to_96345(engines: EngineFactory, seats: list[SeatSims]) -> None:
    engines.use_lines(wrap_up_s=1)
    engine = engines.start()
    seats.append(start_seats(engines.settings, [
        SeatSpec("s110-01", answer_delay_s=0.2, mode="refer", refer_to="96345"),
        SeatSpec("s96345-01", answer_delay_s=0.2, talk_s=1.0, talk_dist="fixed")]))
    engines.login("s110-01", "s96345-01")
    report = run_calls(engines.settings, [CallSpec("110", "13880000001", -1)], rate=1)
    assert report.calls[0].outcome == "completed_by_far_end", (report.to_json(), engine.log()[-3000:])
    ticket = wait_for(lambda: engines.closed_tickets(1), 20, "the ticket")[0]
    assert ticket["line"] == "96345" and ticket["seat"] == "s96345-01"
    assert [(t["from_line"], t["to_line"], t["seat"]) for t in ticket["transfers"]] == [("110", "96345", "s110-01")]


def _consult(engines: EngineFactory, caller: str, line: str) -> None:
    call = _call_of(engines, caller)
    status, body = engines.api("POST", f"/api/calls/{call['call_id']}/consult", {"line": line})
    assert status == 200, body


def test_three_way_consult_hands_the_caller_to_the_consulted_seat(engines: EngineFactory,
                                                                   seats: list[SeatSims]) -> None:
    engines.use_lines(wrap_up_s=1)
    engine = engines.start()
    seats.append(start_seats(engines.settings, [
        SeatSpec("s110-01", answer_delay_s=0.2, talk_s=4.0, talk_dist="fixed"),  # leaves after 4 s
        SeatSpec("s96345-01", answer_delay_s=0.2, talk_s=0)]))
    engines.login("s110-01", "s96345-01")
    a = CallSpec("110", "13890000001", 8.0)
    ta, out = engines.calls_in_background([a], 5)
    wait_for(lambda: "event=call_connected" in engine.log(), 10, "the 110 seat to answer")
    _consult(engines, a.caller, "96345")
    wait_for(lambda: "event=consult_joined" in engine.log(), 10, "the 96345 seat to join: three in one bridge")
    wait_for(lambda: "event=consult_handover" in engine.log(), 10, "the first seat to leave")
    ta.join(timeout=30)
    assert out and out[0].calls[0].outcome == "completed", "the caller stayed connected until they hung up"
    ticket = wait_for(lambda: engines.closed_tickets(1), 20, "the ticket")[0]
    assert ticket["seat"] == "s96345-01" and ticket["line"] == "96345" and ticket["outcome"] == "completed"
    assert [(t["from_line"], t["to_line"], t["seat"], t["reason"]) for t in ticket["transfers"]] == [
        ("110", "96345", "s110-01", "three-way consult")]


def test_consult_without_a_free_seat_leaves_the_caller_with_the_first_seat(engines: EngineFactory,
                                                                           seats: list[SeatSims]) -> None:
    engines.use_lines(wrap_up_s=1, ring_timeout_s=3)
    engine = engines.start()
    seats.append(start_seats(engines.settings, [SeatSpec("s110-01", answer_delay_s=0.2, talk_s=0)]))
    engines.login("s110-01")  # nobody on 96345
    a = CallSpec("110", "13890000002", 7.0)
    ta, out = engines.calls_in_background([a], 5)
    wait_for(lambda: "event=call_connected" in engine.log(), 10, "the 110 seat to answer")
    _consult(engines, a.caller, "96345")
    wait_for(lambda: "event=consult_no_seat" in engine.log(), 10, "the consult to give up after the ring timeout")
    assert engines.status()["lines"]["96345"]["waiting"] == 0, "the dropped consult left no one queued"
    ta.join(timeout=30)
    assert out and out[0].calls[0].outcome == "completed"
    ticket = wait_for(lambda: engines.closed_tickets(1), 20, "the ticket")[0]
    assert ticket["seat"] == "s110-01" and ticket["line"] == "110" and ticket["transfers"] == []
