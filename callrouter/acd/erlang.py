"""Erlang C: how likely a caller waits, and how many answer within a target.

The classic M/M/N model: Poisson arrivals, exponential handle times, N seats, callers
who wait forever. Computed through the Erlang B recursion
``B(0) = 1, B(n) = A*B(n-1) / (n + A*B(n-1))``, which needs no factorials and stays
within [0, 1], so it is exact enough for thousands of seats.

:func:`service_level` and :func:`agents_needed` remember their last few thousand answers:
the overflow policy asks the same question on every Tick until a call comes or goes.
"""

from __future__ import annotations

import functools
import math


def erlang_b(traffic_erlangs: float, agents: int) -> float:
    """Blocking probability of ``agents`` servers offered ``traffic_erlangs``."""
    if traffic_erlangs < 0 or agents < 0:
        raise ValueError("traffic and agents must not be negative")
    b = 1.0
    for n in range(1, agents + 1):
        b = traffic_erlangs * b / (n + traffic_erlangs * b)
    return b


def erlang_c(traffic_erlangs: float, agents: int) -> float:
    """Probability that a caller has to wait (1.0 when the seats cannot keep up)."""
    if traffic_erlangs < 0 or agents < 0:
        raise ValueError("traffic and agents must not be negative")
    if traffic_erlangs == 0:
        return 0.0
    if agents <= traffic_erlangs:
        return 1.0
    b = erlang_b(traffic_erlangs, agents)
    return agents * b / (agents - traffic_erlangs * (1.0 - b))


@functools.lru_cache(maxsize=4096)
def service_level(
    arrival_rate_per_s: float, aht_s: float, agents: int, target_s: float
) -> float:
    """Fraction of callers answered within ``target_s`` seconds.

    ``SL = 1 - C(A, N) * exp(-(N - A) * t / AHT)`` with ``A = rate * AHT``.
    """
    if arrival_rate_per_s < 0 or aht_s <= 0 or target_s < 0:
        raise ValueError("rate must be >= 0, handle time > 0, target >= 0")
    traffic = arrival_rate_per_s * aht_s
    if traffic == 0:
        return 1.0
    if agents <= traffic:
        return 0.0
    c = erlang_c(traffic, agents)
    return max(0.0, 1.0 - c * math.exp(-(agents - traffic) * target_s / aht_s))


def average_speed_of_answer(arrival_rate_per_s: float, aht_s: float, agents: int) -> float:
    """Mean wait in seconds over all callers (inf when the seats cannot keep up)."""
    traffic = arrival_rate_per_s * aht_s
    if traffic == 0:
        return 0.0
    if agents <= traffic:
        return math.inf
    return erlang_c(traffic, agents) * aht_s / (agents - traffic)


@functools.lru_cache(maxsize=4096)
def agents_needed(
    arrival_rate_per_s: float,
    aht_s: float,
    target_s: float,
    target_service_level: float,
    *,
    max_agents: int = 10_000,
) -> int:
    """Fewest seats that answer ``target_service_level`` of callers within ``target_s``.

    Returns ``max_agents`` when even that many fall short.
    """
    if not 0 < target_service_level < 1:
        raise ValueError("target service level must be between 0 and 1")
    if arrival_rate_per_s < 0 or aht_s <= 0 or target_s < 0:
        raise ValueError("rate must be >= 0, handle time > 0, target >= 0")
    traffic = arrival_rate_per_s * aht_s
    if traffic == 0:
        return 1
    # walk the Erlang B recursion once instead of restarting it for every n
    b = 1.0
    for n in range(1, max_agents + 1):
        b = traffic * b / (n + traffic * b)
        if n <= traffic:
            continue
        c = n * b / (n - traffic * (1.0 - b))
        if 1.0 - c * math.exp(-(n - traffic) * target_s / aht_s) >= target_service_level:
            return n
    return max_agents
