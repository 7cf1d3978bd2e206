"""How fast a queue answered its callers, in figures that are not survivor-biased.

The time to answer of ANSWERED callers (ASA, TTA p50/p90) flatters a queue that loses its
long waiters: they leave as abandons and their waits are not counted, while a queue that
keeps them and answers them late shows a worse median for serving more people. Every
figure here is taken over the OFFERED callers, each with one outcome: answered after
``wait_s``, or gave up after ``wait_s``.

* ``share_answered_within(t)``: answered within t / offered (abandons in the
  denominator): the service level of a planner's strictest common definition, and the
  empirical cumulative incidence of "answered" with abandoning as the competing outcome.
* ``km_answered_within(t)``: Kaplan-Meier, abandons censored at the time they gave up:
  what share would have been answered within t had nobody given up (assumes that giving
  up says nothing about the wait to come). Equal to the share above for every t before
  the first abandon; beyond the last event it stays flat.
* ``offered_wait(p)``: the wait by which p % of the OFFERED callers were answered (an
  unanswered caller counts as never answered); ``None`` when fewer than p % were answered.
  The inverse of the share curve.
* ``to_outcome(p)``: time until answered or gave up, over all offered callers (how long
  callers spent waiting, whatever the end). Not a speed measure on its own: a queue that
  loses callers quickly looks fast by it.
* ``late_answers(after_s)``: callers answered only after ``after_s`` (in a benchmark whose
  callers hang up a fixed time after their 200 OK whether a seat took them or not, an
  answer in their last seconds is a conversation of those seconds: counted as answered,
  it is hardly service).
* ``matched``: two queues that answered N_a and N_b of the same offered callers,
  compared on the first N = min(N_a, N_b) answered of each, by wait: mean and median of
  each side's N shortest waits. Rank by rank this is ``offered_wait``: queue A is nowhere
  slower than B when A's k-th shortest wait is at most B's for every k, which is the same
  as A's share answered within t at least B's for every t (``worst_gap``).

Percentiles are nearest-rank, as the benchmarks' ``pct`` and ``sim.trunk.percentile``.
Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

THRESHOLDS_S = (15.0, 30.0, 60.0, 120.0)


@dataclass(frozen=True)
class Outcome:
    """One offered caller: answered after ``wait_s``, or gave up after ``wait_s``."""

    wait_s: float
    answered: bool


def _rank(n: int, p: float) -> int:
    """0-based nearest rank of the p-th percentile among n values (n >= 1)."""
    return max(0, min(n - 1, math.ceil(p / 100 * n) - 1))


def nearest_rank(values: Sequence[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[_rank(len(ordered), p)]


def answered_waits(outcomes: Iterable[Outcome]) -> list[float]:
    """The waits of the answered callers, shortest first."""
    return sorted(o.wait_s for o in outcomes if o.answered)


def share_answered_within(outcomes: Sequence[Outcome], t: float) -> float | None:
    """Answered within ``t`` seconds / offered; ``None`` with nobody offered."""
    if not outcomes:
        return None
    return sum(1 for o in outcomes if o.answered and o.wait_s <= t) / len(outcomes)


def km_answered_within(outcomes: Sequence[Outcome], t: float) -> float | None:
    """Kaplan-Meier estimate of P(answered within ``t``), abandons censored when they gave
    up. At one instant answers count before abandons (the usual convention: a caller who
    gave up at that instant was still at risk of being answered then)."""
    if not outcomes:
        return None
    at_risk = len(outcomes)
    survival = 1.0
    by_time: dict[float, list[int]] = {}
    for o in outcomes:
        counts = by_time.setdefault(o.wait_s, [0, 0])
        counts[0 if o.answered else 1] += 1
    for time_s in sorted(by_time):
        if time_s > t:
            break
        answered, gave_up = by_time[time_s]
        if answered:
            survival *= 1 - answered / at_risk
        at_risk -= answered + gave_up
    return 1 - survival


def offered_wait(outcomes: Sequence[Outcome], p: float) -> float | None:
    """The wait by which ``p`` % of the offered callers were answered (nearest rank over
    the offered, the unanswered counted as never answered); ``None`` if never reached."""
    if not outcomes:
        return None
    waits = answered_waits(outcomes)
    k = _rank(len(outcomes), p)
    return waits[k] if k < len(waits) else None


def late_answers(outcomes: Iterable[Outcome], after_s: float) -> int:
    """Callers answered only after waiting more than ``after_s``."""
    return sum(1 for o in outcomes if o.answered and o.wait_s > after_s)


def to_outcome(outcomes: Sequence[Outcome], p: float) -> float | None:
    """The p-th percentile of the time until answered or gave up, over all offered."""
    return nearest_rank([o.wait_s for o in outcomes], p)


@dataclass(frozen=True)
class Fair:
    """One queue's (one line's) figures over its offered callers."""

    offered: int
    answered: int
    abandoned: int
    to_outcome_p50: float | None
    to_outcome_p90: float | None
    offered_wait_p50: float | None  # None: fewer than half of the offered were answered
    share_within: dict[float, float | None]  # t -> answered within t / offered
    km_within: dict[float, float | None]  # t -> Kaplan-Meier, abandons censored


def fair_figures(outcomes: Sequence[Outcome], thresholds: Sequence[float] = THRESHOLDS_S) -> Fair:
    answered = sum(1 for o in outcomes if o.answered)
    return Fair(
        offered=len(outcomes),
        answered=answered,
        abandoned=len(outcomes) - answered,
        to_outcome_p50=to_outcome(outcomes, 50),
        to_outcome_p90=to_outcome(outcomes, 90),
        offered_wait_p50=offered_wait(outcomes, 50),
        share_within={t: share_answered_within(outcomes, t) for t in thresholds},
        km_within={t: km_answered_within(outcomes, t) for t in thresholds},
    )


@dataclass(frozen=True)
class Matched:
    """The first ``n`` answered callers of each queue (by wait), ``n`` the smaller count."""

    n: int
    mean_s: tuple[float | None, float | None]
    median_s: tuple[float | None, float | None]


def first_answered(outcomes: Iterable[Outcome], n: int) -> tuple[float | None, float | None]:
    """Mean and (nearest-rank) median of the ``n`` shortest answered waits."""
    waits = answered_waits(outcomes)[:n]
    if not waits:
        return None, None
    return sum(waits) / len(waits), waits[_rank(len(waits), 50)]


def matched(a: Sequence[Outcome], b: Sequence[Outcome]) -> Matched:
    n = min(sum(1 for o in a if o.answered), sum(1 for o in b if o.answered))
    ma, pa = first_answered(a, n)
    mb, pb = first_answered(b, n)
    return Matched(n=n, mean_s=(ma, mb), median_s=(pa, pb))


@dataclass(frozen=True)
class Gap:
    """Where queue A answered the smallest share of its offered callers against B:
    ``share_b - share_a`` at ``at_s`` (<= 0: A answered at least B's share at every t)."""

    points: float
    at_s: float | None


def worst_gap(a: Sequence[Outcome], b: Sequence[Outcome]) -> Gap:
    """The largest lead of B over A in the share answered within t, over all t; shares
    are over each queue's own offered callers (the same callers in a benchmark)."""
    if not a or not b:
        return Gap(0.0, None)
    best, at = 0.0, None
    # the difference changes only where either curve steps: at an answered caller's wait
    for t in sorted(set(answered_waits(a)) | set(answered_waits(b))):
        gap = (share_answered_within(b, t) or 0.0) - (share_answered_within(a, t) or 0.0)
        if gap > best:
            best, at = gap, t
    return Gap(best, at)
