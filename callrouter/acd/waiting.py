"""One line's waiting callers, in order: effective priority, escalation, arrival.

Ageing lifts a caller one priority level per ``ageing_step_s`` waited (never above
``ageing_floor``, nor below where they started). Order within one (priority,
escalated) group never changes, because the older caller there has always aged at
least as much; so each group is a list sorted by arrival and the queue head is the
best of the group heads. Head and position cost O(groups * log n), not O(n).
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterator

from callrouter.acd.model import Call

SortKey = tuple[int, int, float, int]


def _arrival(call: Call) -> tuple[float, int]:
    return (call.arrived_at, call.seq)


class WaitingQueue:
    def __init__(self, ageing_step_s: float, ageing_floor: int) -> None:
        self.ageing_step_s = ageing_step_s
        self.ageing_floor = ageing_floor
        self._groups: dict[tuple[int, bool], list[Call]] = {}
        self._calls: dict[str, Call] = {}
        # (queued_at, seq, call id), deleted lazily: gives the longest wait cheaply
        self._by_queued: list[tuple[float, int, str]] = []

    def effective_priority(self, call: Call, now: float) -> int:
        if self.ageing_step_s <= 0:
            return call.priority
        levels = int(max(0.0, now - call.arrived_at) // self.ageing_step_s)
        return max(min(self.ageing_floor, call.priority), call.priority - levels)

    def key(self, call: Call, now: float) -> SortKey:
        return (
            self.effective_priority(call, now),
            0 if call.escalated else 1,
            call.arrived_at,
            call.seq,
        )

    def __len__(self) -> int:
        return len(self._calls)

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._calls

    def __iter__(self) -> Iterator[Call]:
        return iter(list(self._calls.values()))

    def add(self, call: Call) -> None:
        group = self._groups.setdefault((call.priority, call.escalated), [])
        bisect.insort(group, call, key=_arrival)
        self._calls[call.id] = call
        heapq.heappush(self._by_queued, (call.queued_at, call.seq, call.id))

    def remove(self, call: Call) -> None:
        if self._calls.pop(call.id, None) is None:
            return
        gkey = (call.priority, call.escalated)
        group = self._groups[gkey]
        i = bisect.bisect_left(group, _arrival(call), key=_arrival)
        while group[i] is not call:  # same arrival and seq cannot happen; be safe anyway
            i += 1
        del group[i]
        if not group:
            del self._groups[gkey]

    def head(self, now: float) -> Call | None:
        best: Call | None = None
        best_key: SortKey | None = None
        for group in self._groups.values():
            k = self.key(group[0], now)
            if best_key is None or k < best_key:
                best, best_key = group[0], k
        return best

    def position(self, call: Call, now: float) -> int:
        """1-based place of ``call``, in the queue or as if it joined now."""
        target = self.key(call, now)
        ahead = 0
        for group in self._groups.values():
            ahead += bisect.bisect_left(group, target, key=lambda c: self.key(c, now))
        return ahead + 1

    def ordered(self, now: float) -> list[Call]:
        return sorted(self._calls.values(), key=lambda c: self.key(c, now))

    def oldest_queued_at(self) -> float | None:
        heap = self._by_queued
        while heap:
            queued_at, _, call_id = heap[0]
            call = self._calls.get(call_id)
            if call is not None and call.queued_at == queued_at:
                return queued_at
            heapq.heappop(heap)
        return None
