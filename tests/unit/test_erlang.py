"""Erlang C against published figures and an independent exact formula."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from callrouter.acd.erlang import (
    agents_needed,
    average_speed_of_answer,
    erlang_b,
    erlang_c,
    service_level,
)


def erlang_c_exact(traffic: Fraction, agents: int) -> Fraction:
    """The textbook formula with factorials, in exact arithmetic (small N only)."""
    top = traffic**agents / math.factorial(agents) * Fraction(agents) / (agents - traffic)
    bottom = sum(traffic**k / math.factorial(k) for k in range(agents)) + top
    return top / bottom


def test_published_probability_of_waiting_for_ten_erlangs() -> None:
    # the classic worked example: 100 calls per half hour, 3 minutes each = 10 erlangs
    assert erlang_c(10, 11) == pytest.approx(0.6821, abs=5e-5)
    assert erlang_c(10, 12) == pytest.approx(0.4494, abs=5e-5)


@pytest.mark.parametrize(
    ("traffic", "agents"),
    [(Fraction(10), 11), (Fraction(10), 12), (Fraction(1, 2), 1), (Fraction(37, 4), 14),
     (Fraction(5), 20), (Fraction(299, 10), 30)],
)
def test_matches_the_factorial_formula(traffic: Fraction, agents: int) -> None:
    assert erlang_c(float(traffic), agents) == pytest.approx(
        float(erlang_c_exact(traffic, agents)), rel=1e-12
    )


def test_published_service_levels_of_a_911_call_calc_note() -> None:
    # al911.org "Erlang C Call Calc" application note: 2 call takers, 30 calls an hour of
    # 60 s: fewer than 8 % wait more than 10 s; with 20 s more work per call, 14 %
    assert 1 - service_level(30 / 3600, 60, 2, 10) == pytest.approx(0.078, abs=5e-4)
    assert 1 - service_level(30 / 3600, 80, 2, 10) == pytest.approx(0.141, abs=5e-4)


def test_service_level_by_hand_for_the_ten_erlang_example() -> None:
    rate, aht = 100 / 1800, 180.0
    c = float(erlang_c_exact(Fraction(10), 13))
    assert service_level(rate, aht, 13, 20) == pytest.approx(1 - c * math.exp(-3 * 20 / 180))
    assert average_speed_of_answer(rate, aht, 13) == pytest.approx(c * 180 / 3)
    # 13 seats give 79.6 %, 14 give 88.8 %: 80 % within 20 s needs 14
    assert agents_needed(rate, aht, 20, 0.80) == 14
    assert service_level(rate, aht, 13, 20) < 0.80 <= service_level(rate, aht, 14, 20)


def test_edges_overload_and_no_traffic() -> None:
    assert erlang_c(10, 10) == 1.0
    assert erlang_c(10, 3) == 1.0
    assert service_level(0.5, 100, 50, 15) == 0.0  # 50 erlangs on 50 seats: unstable
    assert service_level(0, 100, 0, 15) == 1.0
    assert erlang_c(0, 5) == 0.0
    assert average_speed_of_answer(1, 10, 5) == math.inf
    assert erlang_b(0, 3) == 0.0
    with pytest.raises(ValueError):
        service_level(1, 0, 5, 15)
    with pytest.raises(ValueError):
        agents_needed(1, 10, 15, 1.0)


def test_stable_for_large_centres() -> None:
    # factorials of 2000 overflow a float; the recursion does not
    p = erlang_c(1900.0, 2000)
    assert 0.0 < p < 1.0
    assert agents_needed(1900 / 180, 180, 20, 0.8) > 1900


def test_agents_needed_is_the_smallest_that_meets_the_target() -> None:
    for rate in (0.01, 0.05, 0.2, 1.0):
        n = agents_needed(rate, 120, 15, 0.9)
        assert service_level(rate, 120, n, 15) >= 0.9
        assert n == 1 or service_level(rate, 120, n - 1, 15) < 0.9
