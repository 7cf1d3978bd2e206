"""Elastic overflow: activation, sizing, hysteresis and drain, for both policies."""

from __future__ import annotations

from callrouter.acd import (
    CallEnded,
    OfferAnswered,
    OverflowChanged,
    SeatState,
    Tick,
)
from callrouter.acd.erlang import agents_needed
from callrouter.acd.overflow import LineLoad, OverflowState, decide
from tests.unit.test_acd_core import Desk, make_config, of

POOL4 = tuple((f"p{i}", '"110", "96345"') for i in range(1, 5))


def changes(d: Desk, line: str = "110") -> list[tuple[bool, tuple[str, ...], str]]:
    return [
        (a.active, a.seats, a.trigger)
        for a in of(OverflowChanged, d.log)
        if isinstance(a, OverflowChanged) and a.line == line
    ]


# --- wait_threshold -------------------------------------------------------------------


def test_wait_threshold_joins_the_whole_pool_when_the_oldest_caller_is_late() -> None:
    d = Desk(policy="wait_threshold", threshold=20, calm=60)
    d.staff("a1", "p1", "p2")
    d.answer_all(d.call("c1"))  # a1 busy
    d.call("c2")
    d.at(20).do(Tick())
    assert not d.acd.overflow_active("110")
    out = d.at(20.5).do(Tick())
    # p2 serves only 96345: p1 joins and takes c2 at once
    assert changes(d) == [(True, ("p1",), "wait")]
    assert d.offers(out) == [("c2", "p1")]


def test_wait_threshold_ignores_a_high_arrival_rate_without_waits() -> None:
    d = Desk(policy="wait_threshold", wrap=0)
    d.staff("a1", "p1")
    for i in range(30):
        d.at(i).answer_all(d.call(f"c{i}"))
        d.at(i + 0.5).do(CallEnded(f"c{i}"))
        d.do(Tick())
    assert changes(d) == []


def test_wait_threshold_leaves_after_calm_with_hysteresis_and_drains() -> None:
    d = Desk(policy="wait_threshold", threshold=20, calm=60)
    d.staff("a1", "p1")
    d.answer_all(d.call("c1"))
    d.call("c2")
    d.answer_all(d.at(21).do(Tick()))  # p1 joins, answers c2
    assert d.acd.overflow_active("110")
    d.at(30).do(Tick())  # queue empty: calm from 30
    # a caller waits 15 s (> threshold / 2): the calm clock restarts
    d.at(40).call("c3")
    d.at(55).do(Tick())
    d.at(56).do(CallEnded("c1"))  # a1 wraps up until 76 ...
    d.at(76).do(Tick())  # ... then takes c3
    d.answer_all(d.log[-2:])
    d.at(77).do(Tick())  # calm from 77
    d.at(136).do(Tick())
    assert d.acd.overflow_active("110")
    out = d.at(137).do(Tick())
    assert of(OverflowChanged, out) == [OverflowChanged("110", False, (), "calm")]
    # p1 is still talking to c2: it finishes, then takes no more 110 calls
    assert d.acd.seat_state("p1") is SeatState.ON_CALL
    d.at(140).do(CallEnded("c2"))
    d.at(200).do(Tick())
    assert d.acd.seat_state("p1") is SeatState.READY
    d.at(201).do(CallEnded("c3"))
    assert d.offers(d.at(202).call("c4")) == []


# --- predictive -----------------------------------------------------------------------


def test_predictive_joins_before_anyone_waits_and_sizes_the_pool_by_erlang_c() -> None:
    d = Desk(policy="predictive", pool=POOL4, calm=60, z=0)  # trust the raw count
    d.staff("a1", "a2", "a3", "p1", "p2", "p3", "p4")
    d.answer_all(d.call("c1"))
    d.at(1).do(Tick())
    # one call a minute, 110 s a call: 3 seats predict 68.5 % within 15 s, below 90 %
    needed = agents_needed(1 / 60, 110, 15, 0.9)
    assert needed == 5
    assert changes(d) == [(True, ("p1", "p2"), "predicted_sl")]
    # more calls: the pool grows
    for i in range(2, 4):
        d.at(i).answer_all(d.call(f"c{i}"))
    d.at(4).do(Tick())
    assert changes(d)[-1] == (True, ("p1", "p2", "p3", "p4"), "seats")


def test_predictive_leaves_only_after_the_line_is_calm_for_calm_s() -> None:
    d = Desk(policy="predictive", pool=POOL4, calm=60, z=0)
    d.staff("a1", "a2", "a3", "p1", "p2", "p3", "p4")
    d.answer_all(d.call("c1"))
    d.at(1).do(Tick())
    d.at(20).do(CallEnded("c1"))
    for t in range(2, 60):
        d.at(t).do(Tick())  # the arrival is still in the 60 s window: not calm
    assert d.acd.overflow_active("110")
    d.at(60).do(Tick())  # window empty: own seats predict 100 %, calm from here
    d.at(119).do(Tick())
    assert d.acd.overflow_active("110")
    d.at(120).do(Tick())
    assert not d.acd.overflow_active("110")
    assert changes(d)[-1] == (False, (), "calm")


def test_predictive_joins_the_whole_pool_once_a_caller_is_late() -> None:
    d = Desk(policy="predictive", pool=POOL4, calm=60, seats_110=("a1",))
    d.staff("a1")
    d.answer_all(d.call("c1"))
    d.call("c2")
    d.at(21).do(Tick())
    # c2 is late (21 s > 20 s); no pool seat logged in yet: active, nobody to add
    assert changes(d) == [(True, (), "wait")]
    d.staff("p1", "p2", "p3", "p4")
    out = d.at(22).do(Tick())
    assert of(OverflowChanged, out) == [
        OverflowChanged("110", True, ("p1", "p2", "p3", "p4"), "seats")
    ]
    assert d.offers(out) == [("c2", "p1")]


def test_shared_pool_seat_serves_110_first() -> None:
    d = Desk(policy="wait_threshold", threshold=20, seats_110=("a1",), seats_96345=("b1",),
             pool=(("p1", '"110", "96345"'),))
    d.staff("a1", "b1", "p1")
    d.answer_all(d.call("e1", "110"))
    d.answer_all(d.call("s1", "96345"))
    d.call("s2", "96345")
    d.at(1).call("e2", "110")
    d.at(40).do(Tick())  # both lines late: p1 serves both, 110 goes first
    assert d.acd.overflow_seats("110") == ("p1",)
    assert d.acd.overflow_seats("96345") == ("p1",)
    assert d.offers(d.log)[-1] == ("e2", "p1")
    d.do(OfferAnswered("e2", "p1"))
    d.at(50).do(CallEnded("e2"))
    d.at(70).do(Tick())  # p1 wrapped up; 96345's caller is next
    assert d.offers(d.log[-3:]) == [("s2", "p1")]


# --- the policy functions on their own ------------------------------------------------


def load(oldest: float = 0, per_min: float = 0, own: int = 10, serving: int = 10) -> LineLoad:
    # per_min calls a minute, as counted over a 60 s window
    return LineLoad(oldest, round(per_min), 60.0, 110.0, own, serving, pool_size=4)


def test_policy_hysteresis_resets_the_calm_clock_on_any_pressure() -> None:
    line = make_config(policy="wait_threshold", threshold=20, calm=60).line("110")
    st = decide(line, OverflowState(), load(oldest=21), 0).state
    assert st.active
    st = decide(line, st, load(oldest=5), 10).state
    assert st.calm_since == 10
    st = decide(line, st, load(oldest=15), 20).state  # between T/2 and T: not calm
    assert st.active and st.calm_since is None
    st = decide(line, st, load(oldest=0), 30).state
    st = decide(line, st, load(oldest=0), 89).state
    assert st.active
    assert not decide(line, st, load(oldest=0), 90).state.active


def test_predictive_policy_uses_predicted_service_level_and_margin() -> None:
    line = make_config(policy="predictive", z=0).line("110")
    # 10 seats, 110 s per call: 4 calls a minute = 7.3 erlangs
    busy = load(per_min=4)
    decision = decide(line, OverflowState(), busy, 0)
    assert decision.state.active and decision.trigger == "predicted_sl"
    assert decision.predicted_sl is not None and decision.predicted_sl < 0.9
    expected = agents_needed(4 / 60, 110, 15, 0.9) - 10
    assert decision.wanted_seats == min(4, max(1, expected))
    # with the pool serving, the prediction is met but own seats alone are not calm
    st = decide(line, decision.state, load(per_min=4, serving=14), 1).state
    assert st.active and st.calm_since is None
    quiet = decide(line, st, load(per_min=1, serving=14), 2)
    assert quiet.state.calm_since == 2


def test_cautious_rate_ignores_a_quiet_bunch_but_not_a_surge() -> None:
    line = make_config(policy="predictive", z=1.0).line("110")
    # 6 calls in a minute on 10 seats would predict 0 % (11 erlangs), but 6 - sqrt(6)
    # = 3.55 calls a minute predict 90.4 %: a bunch, not yet a surge; 7 predict 69 %
    assert not decide(line, OverflowState(), load(per_min=6), 0).state.active
    assert decide(line, OverflowState(), load(per_min=7), 0).state.active
    # with z = 0 the raw count is trusted and the bunch already calls the pool
    raw = make_config(policy="predictive", z=0).line("110")
    assert decide(raw, OverflowState(), load(per_min=6), 0).state.active
