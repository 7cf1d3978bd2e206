"""A call's mixing bridges: their deterministic ids and the sweep that removes those that
serve nobody (the holding bridges are in ``holding.py``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from callrouter.ari import AriClient, AriError
from callrouter.logs import q

log = logging.getLogger("callrouter.calls")

# Bridges the engine creates carry this prefix (deterministic ids), so after a restart
# Asterisk can be asked what is ours.
BRIDGE_PREFIX = "callrouter-"
MIXING_PREFIX = f"{BRIDGE_PREFIX}call-"
MIXING_SWEEP_S = 15.0  # a stale mixing bridge is gone within two sweeps (15-30 s)


def mixing_bridge_id(call_id: str, n: int) -> str:
    """The n-th seat a caller talks to (a transfer makes a second) meets them here."""
    return f"{MIXING_PREFIX}{call_id}-{n}"


def is_mixing_bridge_of(bridge_id: str, call_id: str) -> bool:
    return bridge_id.startswith(f"{MIXING_PREFIX}{call_id}-")


class MixingSweep:
    """Delete mixing bridges that serve no live call, once seen empty on two sweeps.

    Measured in the soak: when the events WebSocket stalls, a ``POST /bridges/<id>``
    queued on it can run in Asterisk up to 20 s later, after the engine (its request
    timed out, the call moved on or ended) already deleted that bridge: the bridge comes
    back and nobody owns it. Asterisk is the truth, so ask it. Two sweeps apart (so a
    bridge being made right now is never taken) an empty ``callrouter-call-*`` bridge
    that is not the current bridge of a live call goes.
    """

    def __init__(self, ari: AriClient, bridge_of_call: Callable[[str], str | None],
                 every_s: float = MIXING_SWEEP_S) -> None:
        self.ari = ari
        self.bridge_of_call = bridge_of_call  # a live call's current mixing bridge, or None
        self.every_s = every_s
        # mixing bridges seen empty and serving no live call at the last sweep
        self.stale: set[str] = set()
        self.next_at = time.monotonic() + every_s
        self.sweeping = False

    def due(self) -> bool:
        """Time for the next sweep (none under way)? Then it counts as started."""
        if time.monotonic() < self.next_at or self.sweeping:
            return False
        self.next_at = time.monotonic() + self.every_s
        self.sweeping = True
        return True

    async def sweep(self) -> list[str]:
        removed: list[str] = []
        try:
            bridges = await self.ari.list_bridges()
        except AriError as exc:
            log.warning("event=mixing_sweep_failed error=%s", q(exc))
            self.sweeping = False
            return removed
        try:
            stale: set[str] = set()
            for bridge in bridges:
                if not bridge.id.startswith(MIXING_PREFIX) or bridge.channels:
                    continue
                call_id = bridge.id[len(MIXING_PREFIX):].rsplit("-", 1)[0]
                if self.bridge_of_call(call_id) == bridge.id:
                    continue
                stale.add(bridge.id)
            for bridge_id in sorted(stale & self.stale):
                try:
                    await self.ari.destroy_bridge(bridge_id)
                    removed.append(bridge_id)
                    log.info("event=stale_mixing_bridge_removed bridge=%s", bridge_id)
                except AriError as exc:
                    if exc.status != 404:
                        log.warning("event=stale_mixing_bridge_remove_failed bridge=%s error=%s", bridge_id, q(exc))
            self.stale = stale - set(removed)
        finally:
            self.sweeping = False
        return removed
