"""Wait figures over offered callers (callrouter.capacity.outcomes): not survivor-biased.

About 2 s (hypothesis: 200 examples per property).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callrouter.capacity.outcomes import (
    Outcome,
    fair_figures,
    first_answered,
    km_answered_within,
    late_answers,
    matched,
    nearest_rank,
    offered_wait,
    share_answered_within,
    to_outcome,
    worst_gap,
)

waits = st.floats(min_value=0, max_value=200, allow_nan=False).map(lambda x: round(x, 1))
outcome = st.builds(Outcome, wait_s=waits, answered=st.booleans())
outcomes = st.lists(outcome, min_size=1, max_size=60)
times = st.floats(min_value=0, max_value=250, allow_nan=False)


def test_the_survivor_biased_median_favours_the_queue_that_loses_its_long_waiters() -> None:
    # the same 10 callers: A answers everyone, the last four late; B answers the first six
    # a little later than A did and loses the other four at 60 s
    a = [Outcome(w, True) for w in (5, 10, 15, 20, 25, 30, 50, 52, 55, 58)]
    b = [Outcome(w, True) for w in (6, 11, 16, 21, 26, 31)] + [Outcome(60, False)] * 4
    # by the answered callers' median A looks much slower (25 s against 16 s) ...
    assert nearest_rank([o.wait_s for o in a if o.answered], 50) == 25
    assert nearest_rank([o.wait_s for o in b if o.answered], 50) == 16
    # ... over the offered callers it is ahead at every t
    fa, fb = fair_figures(a), fair_figures(b)
    assert (fa.answered, fa.abandoned, fb.answered, fb.abandoned) == (10, 0, 6, 4)
    assert fa.share_within[15.0] == 0.3 and fb.share_within[15.0] == 0.2
    assert fa.share_within[60.0] == 1.0 and fb.share_within[60.0] == 0.6
    assert fa.offered_wait_p50 == 25 and fb.offered_wait_p50 == 26
    m = matched(a, b)
    assert m.n == 6
    assert m.mean_s == (pytest.approx(17.5), pytest.approx(18.5))
    assert m.median_s == (15, 16)
    assert worst_gap(a, b).points == 0.0  # A nowhere behind B
    assert late_answers(a, 54) == 2 and late_answers(b, 54) == 0  # answered in the last 6 s of 60
    gap = worst_gap(b, a)
    assert gap.points == pytest.approx(0.4) and gap.at_s == 58


def test_kaplan_meier_by_hand() -> None:
    # answered at 10 and 30; gave up at 20 and 40; answered at 50
    o = [Outcome(10, True), Outcome(20, False), Outcome(30, True), Outcome(40, False), Outcome(50, True)]
    assert km_answered_within(o, 5) == 0
    assert km_answered_within(o, 10) == pytest.approx(1 / 5)
    # after the abandon at 20, 3 at risk: S = 4/5 * 2/3
    assert km_answered_within(o, 30) == pytest.approx(1 - 4 / 5 * 2 / 3)
    assert km_answered_within(o, 50) == 1.0
    assert share_answered_within(o, 50) == pytest.approx(3 / 5)
    assert to_outcome(o, 50) == 30 and to_outcome(o, 90) == 50
    assert offered_wait(o, 50) == 50 and offered_wait(o, 61) is None


def test_tied_times_count_the_answer_before_the_abandon() -> None:
    o = [Outcome(60, True), Outcome(60, False)]
    assert km_answered_within(o, 60) == pytest.approx(0.5)
    assert share_answered_within(o, 60) == pytest.approx(0.5)


def test_nobody_offered_or_nobody_answered() -> None:
    f = fair_figures([])
    assert (f.offered, f.to_outcome_p50, f.offered_wait_p50, f.share_within[15.0]) == (0, None, None, None)
    gone = [Outcome(60, False)] * 3
    assert fair_figures(gone).share_within[120.0] == 0 and fair_figures(gone).km_within[120.0] == 0
    assert first_answered(gone, 3) == (None, None)
    assert matched(gone, [Outcome(1, True)]).n == 0


@given(outcomes, times, times)
def test_shares_are_monotone_and_kaplan_meier_is_never_below_the_plain_share(o: list[Outcome], t1: float,
                                                                           t2: float) -> None:
    lo, hi = sorted((t1, t2))
    s_lo, s_hi = share_answered_within(o, lo), share_answered_within(o, hi)
    k_lo, k_hi = km_answered_within(o, lo), km_answered_within(o, hi)
    assert s_lo is not None and s_hi is not None and k_lo is not None and k_hi is not None
    assert 0 <= s_lo <= s_hi <= 1 and 0 <= k_lo <= k_hi <= 1 + 1e-12
    assert k_hi >= s_hi - 1e-12
    first_abandon = min((x.wait_s for x in o if not x.answered), default=float("inf"))
    if hi < first_abandon:  # nobody censored yet: the two agree
        assert k_hi == pytest.approx(s_hi)


@given(outcomes, st.floats(min_value=1, max_value=100))
def test_offered_wait_inverts_the_share_curve(o: list[Outcome], p: float) -> None:
    w = offered_wait(o, p)
    share_reached = sum(x.answered for x in o) / len(o)
    if w is None:
        assert share_reached < p / 100 + 1e-9
    else:
        assert (share_answered_within(o, w) or 0) >= p / 100 - 1e-9
        assert any(x.answered and x.wait_s == w for x in o)


@given(outcomes, st.data())
def test_a_queue_answering_the_same_callers_sooner_is_nowhere_behind(a: list[Outcome], data: st.DataObject) -> None:
    # B: each of A's callers answered later, or lost
    b = [Outcome(x.wait_s + data.draw(st.floats(0, 30)), x.answered and data.draw(st.booleans())) for x in a]
    assert worst_gap(a, b).points <= 1e-12
    m = matched(a, b)
    assert m.n == sum(x.answered for x in b)
    if m.n:
        assert m.mean_s[0] is not None and m.mean_s[1] is not None
        assert m.mean_s[0] <= m.mean_s[1] + 1e-9
        assert m.median_s[0] is not None and m.median_s[1] is not None
        assert m.median_s[0] <= m.median_s[1]


@given(outcomes, outcomes)
def test_the_gap_is_where_the_share_curves_differ_most(a: list[Outcome], b: list[Outcome]) -> None:
    gap = worst_gap(a, b)
    assert gap.points >= 0
    for t in [x.wait_s for x in a + b] + [0.0, 1e9]:
        diff = (share_answered_within(b, t) or 0) - (share_answered_within(a, t) or 0)
        assert diff <= gap.points + 1e-12
    if gap.at_s is not None:
        at = (share_answered_within(b, gap.at_s) or 0) - (share_answered_within(a, gap.at_s) or 0)
        assert at == pytest.approx(gap.points)
