"""Live figures of one line: arrival rate, handle time, service-level counters."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass


class ArrivalRate:
    """Arrivals per second over a sliding window (the last ``window_s`` seconds)."""

    def __init__(self, window_s: float, times: Iterable[float] = ()) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque(sorted(times))

    def record(self, at: float) -> None:
        self._times.append(at)

    def rate(self, now: float) -> float:
        return self.count(now) / self.window_s

    def count(self, now: float) -> int:
        self._prune(now)
        return len(self._times)

    def times(self, now: float) -> list[float]:
        self._prune(now)
        return list(self._times)

    def _prune(self, now: float) -> None:
        start = now - self.window_s
        times = self._times
        while times and times[0] <= start:
            times.popleft()


@dataclass
class TalkTime:
    """Exponentially weighted mean talk time, seeded with the configured default."""

    mean_s: float
    alpha: float
    samples: int = 0

    def record(self, talk_s: float) -> None:
        self.mean_s += self.alpha * (max(0.0, talk_s) - self.mean_s)
        self.samples += 1


@dataclass
class LineCounters:
    offered: int = 0  # callers who joined this line's queue (transfers in included)
    answered: int = 0
    answered_in_target: int = 0  # answered within the line's target_s
    abandoned: int = 0
    transferred_out: int = 0
    offers_failed: int = 0  # offers a seat did not answer (no answer, busy, error)

    def as_dict(self) -> dict[str, int]:
        return {
            "offered": self.offered,
            "answered": self.answered,
            "answered_in_target": self.answered_in_target,
            "abandoned": self.abandoned,
            "transferred_out": self.transferred_out,
            "offers_failed": self.offers_failed,
        }
