"""Where waiting callers sit: each line's holding bridges, sharded.

Every join or leave of a bridge sends events carrying the whole bridge, so one holding
bridge of N callers costs O(N) per change; measured here, one bridge of 600+ callers
backs ARI up past 500 queued tasks and stalls hold audio. So a line's callers are spread
over bridges of at most ``shard_size``, with deterministic ids
(``callrouter-110-hold-0``, ``-1``, ...) that a restarted engine finds again by asking
Asterisk. Each bridge plays the line's hold music itself (bridge MOH).
"""

from __future__ import annotations

import asyncio
import logging
import re

from callrouter.ari import AriClient, AriError

log = logging.getLogger("callrouter.calls")

HOLD_RE = re.compile(r"^callrouter-(?P<line>[0-9]+)-hold-(?P<n>[0-9]+)$")


def hold_bridge_id(line: str, n: int) -> str:
    return f"callrouter-{line}-hold-{n}"


class HoldingBridges:
    def __init__(self, ari: AriClient, shard_size: int = 40) -> None:
        self.ari = ari
        self.shard_size = shard_size
        self.members: dict[str, set[str]] = {}  # bridge id -> channel ids
        self._ready: set[str] = set()  # bridges known to exist with MOH started
        # ids that failed: seen here, Asterisk refuses to create a holding bridge again
        # under the id of one deleted earlier (409, yet 404 on use) until it restarts
        self._broken: set[str] = set()
        self._lock = asyncio.Lock()

    def adopt(self, bridge_id: str, channels: tuple[str, ...]) -> None:
        """After a restart: a holding bridge of ours that Asterisk still has."""
        self.members[bridge_id] = set(channels)
        self._ready.add(bridge_id)

    def bridge_of(self, channel_id: str) -> str | None:
        for bridge_id, chans in self.members.items():
            if channel_id in chans:
                return bridge_id
        return None

    def _pick(self, line: str) -> str:
        n = 0
        while True:
            bridge_id = hold_bridge_id(line, n)
            if bridge_id not in self._broken and len(self.members.setdefault(bridge_id, set())) < self.shard_size:
                return bridge_id
            n += 1

    async def join(self, line: str, channel_id: str, attempts: int = 3) -> str:
        """Put a caller into one of ``line``'s holding bridges (created on demand).

        A bridge that fails is set aside and the next shard tried; the last error is
        raised when every attempt failed (the caller may simply have hung up).
        """
        current = self.bridge_of(channel_id)
        if current is not None and HOLD_RE.match(current) and current.split("-")[1] == line:
            return current
        self.left(channel_id)
        failure = AriError("POST", "/bridges", 0, "no attempt made")
        for _ in range(attempts):
            bridge_id = self._pick(line)
            self.members[bridge_id].add(channel_id)
            try:
                await self._ensure(bridge_id)
                await self.ari.add_to_bridge(bridge_id, channel_id)
                return bridge_id
            except AriError as exc:
                self.members[bridge_id].discard(channel_id)
                failure = exc
                if exc.status == 0:
                    break  # Asterisk unreachable: another bridge will not help
                # the channel may be gone (then the next try fails too) or the bridge broken
                log.warning("event=hold_bridge_set_aside bridge=%s error=%s", bridge_id, exc)
                self._ready.discard(bridge_id)
                self._broken.add(bridge_id)
        raise failure

    async def _ensure(self, bridge_id: str) -> None:
        if bridge_id in self._ready:
            return
        async with self._lock:  # two first callers must not both create the bridge
            if bridge_id in self._ready:
                return
            try:
                await self.ari.create_bridge(bridge_id, "holding")
            except AriError as exc:
                if exc.status not in (409, 422):  # already there (another engine, a race)
                    raise
            await self.ari.bridge_moh(bridge_id)
            self._ready.add(bridge_id)

    def left(self, channel_id: str) -> None:
        """The caller left its holding bridge (moved to a call, or hung up)."""
        for chans in self.members.values():
            chans.discard(channel_id)

    def waiting(self) -> int:
        return sum(len(c) for c in self.members.values())
