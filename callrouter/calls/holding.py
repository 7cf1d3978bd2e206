"""Where waiting callers sit: each line's holding bridges, sharded and bounded.

Every join or leave of a bridge sends events carrying the whole bridge, so one holding
bridge of N callers costs O(N) per change; measured here, one bridge of 600+ callers
backs ARI up past 500 queued tasks and stalls hold audio. So a line's callers are spread
over bridges of at most ``shard_size``, with deterministic ids
(``callrouter-110-hold-0``, ``-1``, ...) that a restarted engine finds again by asking
Asterisk. Each bridge plays the line's hold music itself (bridge MOH: one
``Announcer/ARI_MOH`` channel per bridge). Measured on Asterisk 22: the announcer leaves
when the bridge's last caller does, so the first caller into an emptied bridge starts the
music again (``POST /bridges/{id}/moh`` is idempotent); without it each caller would get
music of its own (the holding bridge's idle mode), at twice the CPU.

Bounded: a line keeps at most ``ceil(waiting / shard_size) + 1`` holding bridges. New
callers fill the lowest-numbered bridge with room; a bridge that has stayed empty for
``idle_s`` beyond that bound is deleted (``surplus``). A failed ``addChannel`` for a
caller who hung up meanwhile (``Channel not found``, ``not in Stasis``) is the caller's
end, not the bridge's: the bridge stays in use. Only a bridge Asterisk itself refuses is
set aside, and it is deleted, so a refused id costs Asterisk nothing. Measured on
Asterisk 22: for a moment after a DELETE the id still exists (create answers 409 ``already
exists``, use 409 ``not in Stasis application``); half a second later it can be created
again. So a refused id is skipped for ``refuse_s``, then reused.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Callable, Iterable
from urllib.parse import quote

from callrouter.ari import AriClient, AriError

log = logging.getLogger("callrouter.calls")

# a cluster's engine holds callers per line AND node (a caller can only be bridged on its
# own node): callrouter-node1-110-hold-0; a single Asterisk's ids carry no node, as before
HOLD_RE = re.compile(r"^callrouter-(?:(?P<node>[A-Za-z][A-Za-z0-9_]*)-)?(?P<line>[0-9]+)-hold-(?P<n>[0-9]+)$")


def hold_bridge_id(line: str, n: int, node: str | None = None) -> str:
    return f"callrouter-{node}-{line}-hold-{n}" if node else f"callrouter-{line}-hold-{n}"


def hold_line(bridge_id: str) -> str | None:
    m = HOLD_RE.match(bridge_id)
    return m.group("line") if m else None


def hold_key(bridge_id: str) -> tuple[str | None, str] | None:
    """(node, line) of a holding bridge id (node None on a single Asterisk); None if not one."""
    m = HOLD_RE.match(bridge_id)
    return (m.group("node"), m.group("line")) if m else None


def hold_n(bridge_id: str) -> int:
    m = HOLD_RE.match(bridge_id)
    return int(m.group("n")) if m else -1


class CallerGone(AriError):
    """addChannel failed because the caller's channel is gone (hung up): not the bridge's fault."""


def channel_gone(exc: AriError) -> bool:
    """Does this addChannel error say the channel (not the bridge) is missing?

    Asterisk answers 400 ``Channel not found`` for a channel that no longer exists and 422
    ``Channel not in Stasis application`` for one leaving it (hanging up); some versions
    answer 404 with the same words. ``Bridge not found`` is the bridge's own problem.
    """
    text = exc.message.lower()
    return exc.status in (400, 404, 422) and "channel" in text and "bridge" not in text


def hold_bound(waiting: int, shard_size: int) -> int:
    """Most holding bridges a line may keep for ``waiting`` callers."""
    return math.ceil(waiting / shard_size) + 1


def pick_bridge(members: dict[str, set[str]], line: str, shard_size: int, refused: Iterable[str],
                node: str | None = None) -> str:
    """The bridge for the next caller of ``line`` (on ``node``): the lowest-numbered with
    room, else a new id."""
    refused = set(refused)
    key = (node, line)
    ours = sorted((b for b in members if hold_key(b) == key and b not in refused), key=hold_n)
    for bridge_id in ours:
        if len(members[bridge_id]) < shard_size:
            return bridge_id
    n = 0
    while hold_bridge_id(line, n, node) in members or hold_bridge_id(line, n, node) in refused:
        n += 1
    return hold_bridge_id(line, n, node)


def surplus_bridges(members: dict[str, set[str]], empty_since: dict[str, float], shard_size: int, now: float,
                    idle_s: float) -> list[str]:
    """Empty bridges beyond each line's bound that have been empty for ``idle_s``: highest first.

    The lowest-numbered bridge of a line is never surplus (one spare stays ready, so the
    next caller joins without waiting for a bridge to be made).
    """
    by_line: dict[tuple[str | None, str], list[str]] = {}
    for bridge_id in members:
        key = hold_key(bridge_id)
        if key is not None:
            by_line.setdefault(key, []).append(bridge_id)
    out: list[str] = []
    for ids in by_line.values():
        waiting = sum(len(members[b]) for b in ids)
        excess = len(ids) - hold_bound(waiting, shard_size)
        ids.sort(key=hold_n)
        for bridge_id in reversed(ids[1:]):
            if excess <= 0:
                break
            if not members[bridge_id] and now - empty_since.get(bridge_id, now) >= idle_s:
                out.append(bridge_id)
                excess -= 1
    return out


class HoldingBridges:
    def __init__(self, ari: AriClient, shard_size: int = 40, *, idle_s: float = 2.0, refuse_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic,
                 node_of: Callable[[str], str | None] = lambda _channel_id: None) -> None:
        self.ari = ari
        self.node_of = node_of  # a caller's node (its channel id names it); None: one Asterisk
        self.shard_size = shard_size
        self.idle_s = idle_s  # an empty surplus bridge waits this long before it goes (no churn in a storm)
        self.clock = clock
        self.members: dict[str, set[str]] = {}  # bridge id -> channel ids (bridges we hold or are making)
        self._ready: set[str] = set()  # bridges known to exist with MOH started
        self._empty_since: dict[str, float] = {}
        self._quiet: set[str] = set()  # emptied since their music started: Asterisk stopped it
        # ids Asterisk refused (a bridge that failed, or a just-deleted id it does not
        # create again yet) -> when: skipped for refuse_s
        self._refused: dict[str, float] = {}
        self.refuse_s = refuse_s
        self._lock = asyncio.Lock()
        self.set_aside = 0  # bridges refused since start (a figure for /metrics and tests)

    def adopt(self, bridge_id: str, channels: tuple[str, ...]) -> None:
        """After a restart: a holding bridge of ours that Asterisk still has."""
        self.members[bridge_id] = set(channels)
        self._ready.add(bridge_id)
        if not channels:
            self._empty_since[bridge_id] = self.clock()
            self._quiet.add(bridge_id)

    def forget(self) -> None:
        """Drop what this engine knows of the bridges, touching none (another engine took
        them over: callrouter.ha)."""
        self.members.clear()
        self._ready.clear()
        self._empty_since.clear()
        self._quiet.clear()

    def bridge_of(self, channel_id: str) -> str | None:
        for bridge_id, chans in self.members.items():
            if channel_id in chans:
                return bridge_id
        return None

    def _take(self, bridge_id: str, channel_id: str) -> None:
        self.members.setdefault(bridge_id, set()).add(channel_id)
        self._empty_since.pop(bridge_id, None)

    def _drop(self, bridge_id: str, channel_id: str) -> None:
        chans = self.members.get(bridge_id)
        if chans is not None and channel_id in chans:
            chans.discard(channel_id)
            if not chans:
                self._empty_since[bridge_id] = self.clock()
                self._quiet.add(bridge_id)

    async def join(self, line: str, channel_id: str, attempts: int = 3) -> str:
        """Put a caller into one of ``line``'s holding bridges (created on demand).

        Raises CallerGone when the caller's channel is gone (the bridge stays in use), or
        the last AriError when no bridge would take the caller.
        """
        node = self.node_of(channel_id)
        current = self.bridge_of(channel_id)
        if current is not None and hold_key(current) == (node, line):
            return current
        self.left(channel_id)
        failure = AriError("POST", "/bridges", 0, "no attempt made")
        for _ in range(attempts):
            bridge_id = pick_bridge(self.members, line, self.shard_size, self._refused_now(), node)
            self._take(bridge_id, channel_id)
            try:
                await self._ensure(bridge_id)
                await self.ari.add_to_bridge(bridge_id, channel_id)
                return bridge_id
            except AriError as exc:
                self._drop(bridge_id, channel_id)
                failure = exc
                if exc.status == 0:
                    break  # Asterisk unreachable: another bridge will not help
                if channel_gone(exc) or not await self._channel_exists(channel_id):
                    # the caller hung up while joining: their StasisEnd closes the call
                    log.info("event=hold_join_caller_gone bridge=%s channel=%s status=%d", bridge_id, channel_id,
                             exc.status)
                    raise CallerGone(exc.method, exc.path, exc.status, exc.message) from exc
                await self._refuse(bridge_id, exc)
        raise failure

    def _refused_now(self) -> set[str]:
        now = self.clock()
        for bridge_id in [b for b, at in self._refused.items() if now - at >= self.refuse_s]:
            del self._refused[bridge_id]
        return set(self._refused)

    async def _channel_exists(self, channel_id: str) -> bool:
        try:
            await self.ari.request("GET", f"/channels/{quote(channel_id)}")
        except AriError as exc:
            return exc.status != 404
        return True

    async def _refuse(self, bridge_id: str, exc: AriError) -> None:
        """The bridge itself failed: set its id aside; delete it once nobody is in it."""
        log.warning("event=hold_bridge_set_aside bridge=%s error=%s", bridge_id, exc)
        self.set_aside += 1
        self._refused[bridge_id] = self.clock()
        if self.members.get(bridge_id):
            # Callers already in it keep their music: deleting the bridge would leave them
            # in Stasis with no bridge, in silence. New callers skip it (refused), and once
            # it is empty the surplus sweep deletes it like any spare bridge.
            log.warning("event=hold_bridge_refused_with_callers bridge=%s callers=%d", bridge_id,
                        len(self.members[bridge_id]))
            return
        self.members.pop(bridge_id, None)
        self._ready.discard(bridge_id)
        self._quiet.discard(bridge_id)
        self._empty_since.pop(bridge_id, None)
        try:
            await self.ari.destroy_bridge(bridge_id)
        except AriError:
            pass  # not there (the usual case of a refused id)

    async def _ensure(self, bridge_id: str) -> None:
        if bridge_id in self._ready:
            if bridge_id in self._quiet:
                self._quiet.discard(bridge_id)
                await self.ari.bridge_moh(bridge_id)
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
            self._quiet.discard(bridge_id)

    def left(self, channel_id: str) -> None:
        """The caller left its holding bridge (moved to a call, or hung up)."""
        for bridge_id, chans in self.members.items():
            if channel_id in chans:
                self._drop(bridge_id, channel_id)

    def surplus(self) -> list[str]:
        """Take the empty bridges beyond the bound out of use; the caller deletes them (``remove``)."""
        gone = surplus_bridges(self.members, self._empty_since, self.shard_size, self.clock(), self.idle_s)
        for bridge_id in gone:
            # not this id again for a while: a caller put into it now would be thrown out
            # by the DELETE under way (and Asterisk refuses the id for a moment after it)
            self._refused[bridge_id] = self.clock()
            self.members.pop(bridge_id, None)
            self._ready.discard(bridge_id)
            self._quiet.discard(bridge_id)
            self._empty_since.pop(bridge_id, None)
        return gone

    async def remove(self, bridge_ids: list[str]) -> None:
        for bridge_id in bridge_ids:
            try:
                await self.ari.destroy_bridge(bridge_id)
                log.info("event=hold_bridge_removed bridge=%s", bridge_id)
            except AriError as exc:
                if exc.status != 404:
                    log.warning("event=hold_bridge_remove_failed bridge=%s error=%s", bridge_id, exc)

    def forget_node(self, node: str) -> list[str]:
        """A node died: its holding bridges went with it (the ids are free again once it
        is back). Returns the ids forgotten."""
        gone = [b for b in self.members if (hold_key(b) or (None, ""))[0] == node]
        for bridge_id in gone:
            self.members.pop(bridge_id, None)
            self._ready.discard(bridge_id)
            self._quiet.discard(bridge_id)
            self._empty_since.pop(bridge_id, None)
        return gone

    def waiting(self) -> int:
        return sum(len(c) for c in self.members.values())

    def count(self, line: str | None = None) -> int:
        return sum(1 for b in self.members if line is None or hold_line(b) == line)
