"""The last hours of each line, minute by minute, for the wallboard's live chart.

The engine looks at its lines every few seconds (:func:`sampler`) and keeps, per line and
per minute, in memory and bounded (:data:`KEEP_MINUTES`):

* ``waiting``: the most callers waiting at once that minute (as sampled);
* ``offered`` / ``answered`` / ``abandoned`` / ``answered_in_target``: callers who joined
  the queue, were answered, hung up waiting, were answered within the line's target,
  in that minute (differences of the ACD's counters);
* ``service_level``: ``answered_in_target / (answered + abandoned)`` of that minute, None
  when no caller finished waiting in it.

Nothing is kept across a restart: the chart starts empty and fills minute by minute (the
day's figures on the wallboard come from the ticket database, not from here).
:class:`LineHistory` is pure; :func:`sampler` is the engine's loop that feeds it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("callrouter.api")

KEEP_MINUTES = 24 * 60
"""A day of minutes per line: about 100 bytes a minute, a few hundred kB for both lines."""
SAMPLE_S = 5.0
COUNTERS = ("offered", "answered", "abandoned", "answered_in_target")


@dataclass
class _Minute:
    start: int  # unix seconds, a multiple of 60
    waiting: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))

    def as_dict(self) -> dict[str, Any]:
        done = self.counts["answered"] + self.counts["abandoned"]
        return {
            "at": self.start,
            "waiting": self.waiting,
            **self.counts,
            "service_level": round(self.counts["answered_in_target"] / done, 4) if done else None,
        }


class LineHistory:
    """Per-minute samples of every line; ``observe`` often, ``samples`` to read."""

    def __init__(self, keep_minutes: int = KEEP_MINUTES) -> None:
        if keep_minutes < 1:
            raise ValueError("keep_minutes must be >= 1")
        self.keep_minutes = keep_minutes
        self._minutes: dict[str, deque[_Minute]] = {}
        self._last: dict[str, dict[str, int]] = {}  # the counters at the last observation

    def observe(self, now: float, lines: Mapping[str, Mapping[str, Any]]) -> None:
        """Take one look at the lines: ``{line: {"waiting": n, "service": {counters}}}``
        (the ACD snapshot's ``lines``)."""
        start = int(now // 60) * 60
        for line_id, line in lines.items():
            minutes = self._minutes.setdefault(line_id, deque(maxlen=self.keep_minutes))
            if not minutes or minutes[-1].start < start:
                minutes.append(_Minute(start))
            elif minutes[-1].start > start:
                continue  # the clock went back: keep what we have, never reorder
            current = minutes[-1]
            current.waiting = max(current.waiting, _count(line.get("waiting")))
            service = line.get("service") or {}
            counters = {key: _count(service.get(key)) for key in COUNTERS}
            last = self._last.get(line_id)
            if last is not None:
                for key in COUNTERS:
                    # a counter that went down was reset (a reconfigured line): count from 0
                    delta = counters[key] - last[key]
                    current.counts[key] += delta if delta >= 0 else counters[key]
            self._last[line_id] = counters

    def samples(self, now: float, minutes: int) -> dict[str, list[dict[str, Any]]]:
        """Per line, the minutes that began in the last ``minutes`` minutes, oldest first;
        the current (unfinished) minute last. A minute nobody looked at is missing."""
        since = int(now // 60) * 60 - (minutes - 1) * 60
        return {line_id: [m.as_dict() for m in kept if m.start >= since]
                for line_id, kept in self._minutes.items()}


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


async def sampler(history: LineHistory, snapshot: Callable[[], tuple[float, Mapping[str, Any]]],
                  every_s: float = SAMPLE_S) -> None:
    """Observe the lines every ``every_s`` seconds until cancelled; ``snapshot`` returns
    (now, the ACD snapshot's ``lines``)."""
    while True:
        try:
            now, lines = snapshot()
            history.observe(now, lines)
        except Exception:  # a chart is never worth the engine: log it and look again later
            log.exception("event=history_sample_failed")
        await asyncio.sleep(every_s)
