"""Elastic overflow policies: when the pool joins a line, how many seats, when it leaves.

A policy is a pure function of the line's configuration, its previous
:class:`OverflowState` and the current :class:`LineLoad`.

``wait_threshold``
    joins every pool seat allowed on the line once the oldest caller has waited longer
    than ``wait_threshold_s``; leaves after nobody has waited longer than half of that
    for ``calm_s``.
``predictive``
    also joins when the service level that Erlang C predicts from the live arrival rate
    and handle time, with the seats serving the line now, falls below the line's
    target. The rate it trusts for that is a cautious one: ``(k - z*sqrt(k)) / window``
    for ``k`` arrivals in the window (``z = rate_confidence_z``), so the ordinary
    Poisson bunching of a quiet evening does not call the pool in, while a real surge
    (dozens of calls in the window) does at once. It brings just enough pool seats to meet the target (all of them once the
    wait threshold is crossed: the queue is already late) and grows as the load does.
    It leaves after ``calm_s`` during which nobody waited longer than half the
    threshold AND the line's own seats alone predict the target plus ``margin``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from callrouter.acd import erlang
from callrouter.acd.lines import LineConfig


@dataclass(frozen=True)
class LineLoad:
    oldest_wait_s: float
    arrivals_in_window: int
    window_s: float
    aht_s: float  # talk + wrap-up: how long a call keeps a seat
    own_staffed: int  # the line's own seats logged in and not paused
    serving_staffed: int  # every seat serving the line now (own + extra)
    pool_size: int  # pool seats allowed on this line

    @property
    def arrival_rate_per_s(self) -> float:
        return self.arrivals_in_window / self.window_s

    def cautious_rate_per_s(self, z: float) -> float:
        k = self.arrivals_in_window
        return max(0.0, k - z * math.sqrt(k)) / self.window_s


@dataclass(frozen=True)
class OverflowState:
    active: bool = False
    calm_since: float | None = None
    activated_at: float | None = None


@dataclass(frozen=True)
class OverflowDecision:
    state: OverflowState
    wanted_seats: int  # pool seats the line should have now (0 when inactive)
    trigger: str  # "wait", "predicted_sl", "calm" or "" (no change of mind)
    predicted_sl: float | None  # with the seats serving now (predictive only)


def decide(
    line: LineConfig, state: OverflowState, load: LineLoad, now: float
) -> OverflowDecision:
    if line.overflow.policy == "predictive":
        return _predictive(line, state, load, now)
    return _wait_threshold(line, state, load, now)


def _wait_threshold(
    line: LineConfig, state: OverflowState, load: LineLoad, now: float
) -> OverflowDecision:
    threshold = line.overflow.wait_threshold_s
    late = load.oldest_wait_s > threshold
    calm = load.oldest_wait_s <= threshold / 2
    return _settle(line, state, now, late, "wait", calm, load.pool_size, None)


def _predictive(
    line: LineConfig, state: OverflowState, load: LineLoad, now: float
) -> OverflowDecision:
    cfg = line.overflow
    aht = load.aht_s
    rate = load.cautious_rate_per_s(cfg.rate_confidence_z)
    predicted = erlang.service_level(rate, aht, load.serving_staffed, line.target_s)
    late = load.oldest_wait_s > cfg.wait_threshold_s
    short = rate > 0 and predicted < line.target_service_level
    # calm is judged on the plain estimate: the gap between the two is the hysteresis
    own = erlang.service_level(
        load.arrival_rate_per_s, aht, load.own_staffed, line.target_s
    )
    calm = load.oldest_wait_s <= cfg.wait_threshold_s / 2 and own >= min(
        0.999, line.target_service_level + cfg.margin
    )
    if late:
        wanted = load.pool_size
    elif short or state.active:
        needed = erlang.agents_needed(
            rate,
            aht,
            line.target_s,
            line.target_service_level,
            max_agents=load.own_staffed + load.pool_size + 1,
        )
        wanted = min(load.pool_size, max(1, needed - load.own_staffed))
    else:
        wanted = 0  # not needed: nothing will join
    trigger = "wait" if late else "predicted_sl"
    return _settle(line, state, now, late or short, trigger, calm, wanted, predicted)


def _settle(
    line: LineConfig,
    state: OverflowState,
    now: float,
    pressed: bool,
    trigger: str,
    calm: bool,
    wanted: int,
    predicted: float | None,
) -> OverflowDecision:
    if not state.active:
        if pressed:
            return OverflowDecision(OverflowState(True, None, now), wanted, trigger, predicted)
        return OverflowDecision(state, 0, "", predicted)
    if pressed or not calm:
        # still under pressure, or in between: stay, and restart the calm clock
        kept = OverflowState(True, None, state.activated_at)
        return OverflowDecision(kept, wanted if pressed else 0, "", predicted)
    calm_since = state.calm_since if state.calm_since is not None else now
    if now - calm_since >= line.overflow.calm_s:
        return OverflowDecision(OverflowState(), 0, "calm", predicted)
    return OverflowDecision(
        OverflowState(True, calm_since, state.activated_at), 0, "", predicted
    )
