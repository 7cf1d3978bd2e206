"""At most N transcriptions at once: a caller over the limit is not transcribed, and counted."""

from __future__ import annotations


class Slots:
    """``limit`` slots, each held by one call id. Not thread-safe: the event loop's own."""

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        self.limit = limit
        self._held: set[str] = set()
        self.refused = 0  # callers not transcribed because every slot was taken
        self.peak = 0

    def take(self, call_id: str) -> bool:
        """True if ``call_id`` now holds a slot (or already did); False (counted) if full."""
        if call_id in self._held:
            return True
        if len(self._held) >= self.limit:
            self.refused += 1
            return False
        self._held.add(call_id)
        self.peak = max(self.peak, len(self._held))
        return True

    def release(self, call_id: str) -> None:
        self._held.discard(call_id)

    def holds(self, call_id: str) -> bool:
        return call_id in self._held

    def __len__(self) -> int:
        return len(self._held)
