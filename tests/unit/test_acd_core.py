"""The ACD core: ordering, ageing, seat selection, offers, wrap-up, seats at runtime."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

import pytest

from callrouter.acd import (
    MISSED_OFFERS,
    Acd,
    AcdError,
    Action,
    AddSeat,
    Announce,
    CallAbandoned,
    CallArrived,
    CallEnded,
    CallQueued,
    CallState,
    CallTransferred,
    CancelOffer,
    Connect,
    Event,
    Offer,
    OfferAnswered,
    OfferFailed,
    OverflowChanged,
    Reconfigure,
    RemoveSeat,
    SeatLogin,
    SeatLogout,
    SeatPause,
    SeatRegistered,
    SeatResume,
    SeatState,
    Tick,
    UnknownLine,
    UnknownSeat,
    WrapUpDone,
    parse_lines,
)
from callrouter.acd.lines import LinesConfig

A = TypeVar("A")


def lines_toml(
    *,
    seats_110: Iterable[str] = ("a1", "a2", "a3"),
    seats_96345: Iterable[str] = ("b1", "b2"),
    pool: Iterable[tuple[str, str]] = (("p1", '"110", "96345"'), ("p2", '"96345"')),
    ring: float = 10,
    wrap: float = 20,
    missed: int = 2,
    ageing: float = 60,
    floor: int = 2,
    policy: str = "wait_threshold",
    threshold: float = 20,
    calm: float = 60,
    z: float = 1.0,
) -> str:
    def seat_list(ids: Iterable[str]) -> str:
        return ", ".join(f'"{s}"' for s in ids)

    text = f"""
[line.110]
rank = 1
seats = [{seat_list(seats_110)}]
ring_timeout_s = {ring}
wrap_up_s = {wrap}
max_missed_offers = {missed}
target_s = 15
target_service_level = 0.9
ageing_step_s = {ageing}
ageing_floor = {floor}
aht_default_s = 90

[line.110.overflow]
policy = "{policy}"
wait_threshold_s = {threshold}
calm_s = {calm}
margin = 0.03
rate_window_s = 60
rate_confidence_z = {z}

[line.96345]
rank = 2
seats = [{seat_list(seats_96345)}]
ring_timeout_s = 15
wrap_up_s = 30
max_missed_offers = 2
target_s = 15
target_service_level = 0.95
ageing_step_s = 120
aht_default_s = 150
announce_interval_s = 30

[line.96345.overflow]
policy = "{policy}"
wait_threshold_s = 30
calm_s = {calm}
rate_window_s = 60
"""
    for seat_id, serves in pool:
        text += f'\n[[overflow.seat]]\nid = "{seat_id}"\nlines = [{serves}]\n'
    return text


def make_config(**kw: object) -> LinesConfig:
    return parse_lines(lines_toml(**kw))  # type: ignore[arg-type]


class Desk:
    """An Acd with a clock; ``do`` feeds one event at the current time."""

    def __init__(self, config: LinesConfig | None = None, **kw: object) -> None:
        self.acd = Acd(config if config is not None else make_config(**kw))
        self.now = 0.0
        self.log: list[Action] = []

    def at(self, t: float) -> Desk:
        self.now = t
        return self

    def do(self, event: Event) -> list[Action]:
        out = self.acd.handle(event, self.now)
        self.log.extend(out)
        return out

    def staff(self, *seats: str) -> None:
        for seat in seats:
            self.do(SeatRegistered(seat, True))
            self.do(SeatLogin(seat))

    def call(self, call_id: str, line: str = "110", priority: int = 5, **kw: object) -> list[Action]:
        return self.do(CallArrived(call_id, line, priority, self.now, **kw))  # type: ignore[arg-type]

    def offers(self, out: list[Action]) -> list[tuple[str, str]]:
        return [(a.call_id, a.seat) for a in out if isinstance(a, Offer)]

    def answer_all(self, out: list[Action]) -> None:
        for call_id, seat in self.offers(out):
            self.do(OfferAnswered(call_id, seat))


def of(kind: type[A], out: list[Action]) -> list[A]:
    return [a for a in out if isinstance(a, kind)]


# --- ordering and ageing ----------------------------------------------------------


def test_queue_orders_by_priority_then_arrival() -> None:
    d = Desk()
    d.call("low-early", priority=5)
    d.at(1).call("high-late", priority=2)
    d.at(2).call("low-late", priority=5)
    d.at(3).call("top", priority=1)
    assert d.acd.waiting("110", d.now) == ["top", "high-late", "low-early", "low-late"]
    d.at(4).staff("a1")
    assert d.offers(d.log) == [("top", "a1")]


def test_call_queued_reports_position_only_when_the_caller_waits() -> None:
    d = Desk()
    d.staff("a1")
    out = d.at(1).call("c1")
    assert of(Offer, out) and not of(CallQueued, out)
    out = d.at(2).call("c2", priority=4)
    out3 = d.at(3).call("c3", priority=3)
    assert [(a.call_id, a.position) for a in of(CallQueued, out + out3)] == [
        ("c2", 1),
        ("c3", 1),
    ]
    assert d.acd.waiting("110", 3) == ["c3", "c2"]


def test_ageing_lifts_a_long_waiting_caller_but_not_above_the_floor() -> None:
    d = Desk(ageing=60, floor=2)
    d.call("old", priority=5)
    d.at(150).call("new", priority=3)
    # old has aged 2 levels (5 -> 3) and arrived first
    assert d.acd.waiting("110", 150) == ["old", "new"]
    d.at(400).call("fire", priority=1)
    # old ages to 2 at most (floor); a priority-1 caller still goes first
    assert d.acd.waiting("110", 400) == ["fire", "old", "new"]


def test_ageing_off_keeps_strict_priority() -> None:
    d = Desk(ageing=0)
    d.call("old", priority=5)
    d.at(10_000).call("new", priority=4)
    assert d.acd.waiting("110", 10_000) == ["new", "old"]


def test_escalated_caller_goes_to_the_front_of_their_priority_class() -> None:
    d = Desk()
    d.call("c1", priority=3)
    d.at(1).call("c2", priority=3)
    d.at(2).call("urgent", priority=2)
    d.at(5).do(CallArrived("esc", "110", 3, arrived_at=4.0, escalated=True))
    assert d.acd.waiting("110", 5) == ["urgent", "esc", "c1", "c2"]


def test_transfer_keeps_the_original_arrival_and_sends_the_seat_to_wrap_up() -> None:
    d = Desk()
    d.staff("a1")
    d.answer_all(d.call("misrouted", "110", priority=5))
    d.at(5).call("b-later", "96345", priority=5)
    out = d.at(60).do(CallTransferred("misrouted", "96345"))
    assert d.acd.seat_state("a1") is SeatState.WRAP_UP
    # arrived at 0, before b-later (5): keeps that place on 96345
    assert d.acd.waiting("96345", 60) == ["misrouted", "b-later"]
    assert [(a.call_id, a.line, a.position) for a in of(CallQueued, out)] == [
        ("misrouted", "96345", 1)
    ]
    snap = d.acd.snapshot(60)
    assert snap["lines"]["110"]["service"]["transferred_out"] == 1
    assert snap["lines"]["96345"]["service"]["offered"] == 2


def test_escalation_by_transfer_jumps_ahead_of_same_priority() -> None:
    d = Desk()
    d.staff("b1")
    d.call("a", "110", priority=3)
    d.at(1).call("b", "110", priority=3)
    d.at(2).answer_all(d.call("svc", "96345", priority=5))
    d.at(30).do(CallTransferred("svc", "110", priority=3, escalated=True))
    assert d.acd.waiting("110", 30) == ["svc", "a", "b"]


# --- seat selection -----------------------------------------------------------------


def test_longest_idle_ready_seat_gets_the_offer() -> None:
    d = Desk(wrap=0)
    d.at(0).staff("a1")
    d.at(5).staff("a2")
    d.at(10).staff("a3")
    # a1 idle since 0, the longest
    out = d.at(20).call("c1")
    assert d.offers(out) == [("c1", "a1")]
    d.answer_all(out)
    d.at(30).do(CallEnded("c1"))  # a1 idle again since 30: now the newest
    assert d.offers(d.at(31).call("c2")) == [("c2", "a2")]
    assert d.offers(d.at(32).call("c3")) == [("c3", "a3")]
    assert d.offers(d.at(33).call("c4")) == [("c4", "a1")]


def test_unregistered_or_paused_seats_are_never_offered() -> None:
    d = Desk()
    d.do(SeatLogin("a1"))  # softphone not registered
    d.staff("a2")
    d.do(SeatPause("a2", "lunch"))
    assert d.offers(d.at(1).call("c1")) == []
    out = d.at(2).do(SeatRegistered("a1", True))
    assert d.offers(out) == [("c1", "a1")]


def test_own_seats_before_overflow_seats() -> None:
    d = Desk()
    d.staff("p1")
    d.do(AddSeat("p1", "110"))
    d.at(10).staff("a1")
    assert d.offers(d.at(20).call("c1")) == [("c1", "a1")]
    assert d.offers(d.at(21).call("c2")) == [("c2", "p1")]


# --- offers -------------------------------------------------------------------------


def test_ring_no_answer_reoffers_at_once_to_the_next_seat_and_counts_a_miss() -> None:
    d = Desk()
    d.staff("a1", "a2")
    d.at(1).call("c0")  # a1
    d.at(2).call("c1")  # a2
    d.at(3).call("c2")  # waits
    out = d.at(8).do(OfferFailed("c0", "a1", "no_answer"))
    # c0 is back at its original place (ahead of c2) and goes to... a1 is the only
    # ready seat; c0 prefers seats that have not missed it, but there is none
    assert d.offers(out) == [("c0", "a1")]
    d.do(OfferAnswered("c1", "a2"))
    out = d.at(12).do(OfferFailed("c0", "a1", "no_answer"))
    # second miss in a row: a1 paused, c0 waits at the head
    assert d.acd.seat_state("a1") is SeatState.PAUSED
    assert d.acd.seat_reason("a1") == MISSED_OFFERS
    assert d.acd.waiting("110", 12) == ["c0", "c2"]
    assert not d.offers(out)
    # a resumed seat starts counting from zero again
    d.do(SeatResume("a1"))
    assert d.offers(d.log[-2:]) == [("c0", "a1")]


def test_reoffer_prefers_a_seat_that_has_not_missed_the_call() -> None:
    d = Desk()
    d.at(0).staff("a1")
    d.at(1).staff("a2")
    d.at(2).answer_all([a for a in d.call("busy") if isinstance(a, Offer)])  # a1 busy
    d.at(3).call("c1")  # a2
    d.at(4).do(CallEnded("busy"))
    d.at(4).do(WrapUpDone("a1"))  # a1 ready again
    out = d.at(5).do(OfferFailed("c1", "a2", "no_answer"))
    assert d.offers(out) == [("c1", "a1")]


def test_ring_timeout_on_tick_cancels_and_reoffers_and_duplicate_report_is_ignored() -> None:
    d = Desk(ring=10)
    d.at(0).staff("a1")
    d.at(1).staff("a2")
    d.at(2).call("c1")  # to a1
    assert d.acd.waiting("110", 2) == []
    assert not d.offers(d.at(11.9).do(Tick()))
    out = d.at(12).do(Tick())
    assert of(CancelOffer, out) == [CancelOffer("c1", "a1")]
    assert d.offers(out) == [("c1", "a2")]
    # the shell's own no-answer report arrives late: nothing happens
    assert d.at(12.1).do(OfferFailed("c1", "a1", "no_answer")) == []
    # a1 answers too late: its leg is dropped, never bridged
    assert d.do(OfferAnswered("c1", "a1")) == [CancelOffer("c1", "a1")]
    out = d.do(OfferAnswered("c1", "a2"))
    assert of(Connect, out) == [Connect("c1", "a2", "110", 10.1)]
    assert d.do(OfferAnswered("c1", "a2")) == []  # duplicate answer


def test_abandon_while_ringing_cancels_the_offer_without_blaming_the_seat() -> None:
    d = Desk(missed=1)
    d.staff("a1")
    d.at(3).call("c1")
    out = d.at(5).do(CallAbandoned("c1"))
    assert of(CancelOffer, out) == [CancelOffer("c1", "a1")]
    assert d.acd.seat_state("a1") is SeatState.READY
    assert d.acd.call_state("c1") is None
    assert d.acd.snapshot(5)["lines"]["110"]["service"]["abandoned"] == 1
    assert d.do(CallAbandoned("c1")) == []  # duplicate hang-up


def test_abandon_while_waiting_leaves_the_queue() -> None:
    d = Desk()
    d.call("c1")
    d.at(1).call("c2")
    d.at(2).do(CallAbandoned("c1"))
    assert d.acd.waiting("110", 2) == ["c2"]
    assert d.acd.snapshot(2)["lines"]["110"]["longest_wait_s"] == 1.0


def test_wrap_up_expires_on_tick_or_ends_early() -> None:
    d = Desk(wrap=20)
    d.staff("a1", "a2")
    d.answer_all(d.at(1).call("c1"))
    d.answer_all(d.at(2).call("c2"))
    d.at(50).do(CallEnded("c1"))
    d.at(51).do(CallEnded("c2"))
    assert d.acd.seat_state("a1") is SeatState.WRAP_UP
    d.at(60).do(WrapUpDone("a2"))
    assert d.acd.seat_state("a2") is SeatState.READY
    d.at(69.9).do(Tick())
    assert d.acd.seat_state("a1") is SeatState.WRAP_UP
    d.at(70).do(Tick())
    assert d.acd.seat_state("a1") is SeatState.READY
    # a2 (ready since 60) has been idle longer than a1 (70)
    assert d.offers(d.at(71).call("c3")) == [("c3", "a2")]


def test_pause_and_logout_during_a_call_wait_for_wrap_up() -> None:
    d = Desk(wrap=10)
    d.staff("a1", "a2")
    d.answer_all(d.call("c1"))
    d.answer_all(d.call("c2"))
    d.do(SeatPause("a1", "training"))
    d.do(SeatLogout("a2"))
    assert d.acd.seat_state("a1") is SeatState.ON_CALL
    d.at(30).do(CallEnded("c1"))
    d.at(30).do(CallEnded("c2"))
    d.at(40).do(Tick())
    assert d.acd.seat_state("a1") is SeatState.PAUSED
    assert d.acd.seat_reason("a1") == "training"
    assert d.acd.seat_state("a2") is SeatState.LOGGED_OUT


def test_logout_while_ringing_puts_the_caller_back() -> None:
    d = Desk()
    d.staff("a1")
    d.call("c1")
    out = d.at(2).do(SeatLogout("a1"))
    assert of(CancelOffer, out) == [CancelOffer("c1", "a1")]
    assert d.acd.waiting("110", 2) == ["c1"]
    assert d.acd.seat_state("a1") is SeatState.LOGGED_OUT


def test_unknown_seat_or_line_raises_before_any_change() -> None:
    d = Desk()
    with pytest.raises(UnknownSeat):
        d.do(SeatLogin("nobody"))
    with pytest.raises(UnknownLine):
        d.call("c1", line="999")
    assert d.acd.call_state("c1") is None


def test_duplicate_arrival_is_ignored_and_priority_is_clamped() -> None:
    d = Desk()
    d.call("c1", priority=42)
    assert d.call("c1", priority=1) == []
    assert d.acd.snapshot(0)["calls"][0]["priority"] == 9


def test_announcements_only_on_lines_with_an_interval() -> None:
    d = Desk()
    d.call("e1", "110")
    d.call("s1", "96345")
    d.at(1).call("s2", "96345")
    assert not of(Announce, d.at(29).do(Tick()))
    out = d.at(30).do(Tick())
    assert [(a.call_id, a.position) for a in of(Announce, out)] == [("s1", 1)]
    out = d.at(31).do(Tick())
    assert [(a.call_id, a.position) for a in of(Announce, out)] == [("s2", 2)]
    assert all(a.line == "96345" for a in of(Announce, d.log))
    d.at(40).do(CallAbandoned("s1"))
    out = d.at(61).do(Tick())
    assert [(a.call_id, a.position) for a in of(Announce, out)] == [("s2", 1)]


# --- supervisor changes -------------------------------------------------------------


@pytest.mark.parametrize(("seat", "endpoint"), [
    ("temp-1", "trunk/sip:+8613900000000@carrier"), ("temp-1", "trunk"), ("temp-1", "a@b"),
    ("temp/1", None), ("temp:1", None), ("", None), ("x" * 65, None), ("temp-1", "bench-trunk"),
])
def test_runtime_seat_follows_the_naming_rule(seat: str, endpoint: str | None) -> None:
    d = Desk()
    with pytest.raises(AcdError, match="seat id|endpoint"):
        d.do(AddSeat(seat, "110", endpoint=endpoint))
    assert seat not in d.acd.snapshot(0)["seats"]


def test_add_and_remove_seat_at_runtime() -> None:
    d = Desk()
    d.call("c1", "96345")
    out = d.at(1).do(AddSeat("a1", "96345"))  # a 110 seat helps 96345
    assert of(OverflowChanged, out) == [OverflowChanged("96345", False, ("a1",), "supervisor")]
    d.at(2).staff("a1")
    assert ("c1", "a1") in d.offers(d.log)
    d.answer_all([a for a in d.log if isinstance(a, Offer)])
    # a brand-new seat, created by the supervisor
    d.at(3).do(AddSeat("temp-1", "110", endpoint="pjsip-temp-1"))
    d.staff("temp-1")
    out = d.at(4).call("c2", "110")
    assert [(a.seat, a.endpoint) for a in of(Offer, out)] == [("temp-1", "pjsip-temp-1")]
    # removing it while it rings: it finishes, then it is gone
    d.at(5).do(RemoveSeat("temp-1"))
    d.do(OfferAnswered("c2", "temp-1"))
    d.at(6).do(CallEnded("c2"))
    d.at(40).do(Tick())
    with pytest.raises(UnknownSeat):
        d.acd.seat_state("temp-1")
    # a line's own seat cannot be removed from it
    with pytest.raises(AcdError):
        d.do(RemoveSeat("a1", "110"))
    # removing a1 from 96345: after its call it takes 96345 calls no more
    d.do(RemoveSeat("a1", "96345"))
    d.at(50).do(CallEnded("c1"))
    d.at(90).do(Tick())
    assert d.offers(d.at(91).call("c3", "96345")) == []


def test_reconfigure_keeps_calls_and_retires_removed_seats_after_their_call() -> None:
    d = Desk()
    d.staff("a1", "a2", "a3")
    d.answer_all(d.call("c1"))  # a1 on call
    d.call("c2")  # a2 ringing
    d.at(1).call("c3")  # a3 ringing
    d.do(OfferAnswered("c3", "a3"))
    d.at(2).call("c4")  # waits
    new = make_config(seats_110=("a1", "a2", "a4"), ring=12)
    out = d.at(3).do(Reconfigure(new))
    # a3 is on a call: it stays until done; a4 appears, logged out
    assert d.acd.seat_state("a3") is SeatState.ON_CALL
    assert d.acd.seat_state("a4") is SeatState.LOGGED_OUT
    assert d.acd.waiting("110", 3) == ["c4"]
    assert d.acd.call_state("c2") is CallState.RINGING
    assert not of(CancelOffer, out)
    d.at(10).do(CallEnded("c3"))
    d.at(40).do(Tick())
    with pytest.raises(UnknownSeat):
        d.acd.seat_state("a3")
    d.staff("a4")
    assert [(a.call_id, a.seat, a.timeout_s) for a in of(Offer, d.log[-3:])] == [
        ("c4", "a4", 12.0)
    ]


def test_reconfigure_cannot_drop_a_line() -> None:
    d = Desk()
    only_110 = parse_lines(lines_toml(pool=()).split("[line.96345]")[0])
    with pytest.raises(AcdError, match="96345"):
        d.do(Reconfigure(only_110))
    assert d.acd.config.line_ids == ("110", "96345")
