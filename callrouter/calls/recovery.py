"""After every (re)connect: make the engine's view match what Asterisk holds.

Asterisk owns the live channels; the engine owns decisions. Events of a disconnect are
lost and never replayed, and after a kill -9 the engine starts from its last snapshot
(or from nothing). So on each connect:

- callers still in the application are adopted: a caller in a mixing bridge
  ``callrouter-call-<id>`` is talking and is left alone; any other caller is waiting
  and goes (back) into a holding bridge, keeping their original arrival;
- callers the engine knew that are gone ended during the gap: their tickets close;
- seat legs left ringing by a dead engine are hung up (their callers were restored as
  waiting and are offered again); bridges of ours that serve nobody are removed;
- seat registrations are read afresh and the seats' endpoint events subscribed.

With several engines (callrouter.ha) a new lease holder first moves every channel the
other engines' applications still hold into its own (``take_over``: ``POST
/channels/{id}/move``; measured on Asterisk 22.10: the channel stays in its bridge, so a
talking caller hears nothing of it), then reconciles as above.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from callrouter.acd import CallState
from callrouter.ari import AriClient, AriError, Bridge, Channel
from callrouter.calls.bridges import BRIDGE_PREFIX, is_mixing_bridge_of
from callrouter.calls.holding import HOLD_RE
from callrouter.calls.model import CallPhase
from callrouter.calls.service import LEG_PREFIX, SIDE_PREFIX, CallService
from callrouter.logs import q

log = logging.getLogger("callrouter.calls")


# Events the shell never reads: in a storm each caller brings a dozen of them, and every
# one costs Asterisk a JSON encode and the engine a decode.
UNUSED_EVENTS = ["ChannelVarset", "ChannelDialplan", "ChannelStateChange", "ChannelCallerId",
                 "ChannelConnectedLine", "ChannelHangupRequest", "PlaybackStarted", "PlaybackContinuing",
                 "ChannelEnteredBridge", "ChannelLeftBridge", "BridgeCreated", "BridgeDestroyed", "BridgeMerged",
                 "BridgeBlindTransfer", "BridgeAttendedTransfer", "BridgeVideoSourceChanged", "Dial",
                 "ChannelTalkingStarted", "ChannelTalkingFinished", "ChannelToneDetected", "ContactStatusChange",
                 "PeerStatusChange", "ChannelUserevent", "ChannelHold", "ChannelUnhold", "ChannelCreated"]


async def reconcile(service: CallService, ari: AriClient | None = None, node: str | None = None,
                    pending: frozenset[str] = frozenset()) -> None:
    """With ``node`` (a cluster): only that node's view, through its own client ``ari``;
    the calls of other nodes are left alone. ``pending``: channels being moved into this
    application (take_over) that have not arrived yet: alive, adopted when their
    StasisStart comes, so never closed as gone."""
    ari = ari or service.ari
    try:
        await ari.filter_events(UNUSED_EVENTS)
    except AriError as exc:
        log.warning("event=event_filter_failed error=%s", q(exc))
    app = await ari.application()
    in_app = set(app.get("channel_ids") or [])
    channels = {c.id: c for c in await ari.list_channels()}
    bridges = {b.id: b for b in await ari.list_bridges()}

    callers = {cid: ch for cid, ch in channels.items() if cid in in_app
               and not cid.startswith((LEG_PREFIX, SIDE_PREFIX))}
    legs = {cid: ch for cid, ch in channels.items() if cid.startswith(LEG_PREFIX)}

    for bridge in bridges.values():
        if HOLD_RE.match(bridge.id):
            service.holding.adopt(bridge.id, tuple(c for c in bridge.channels if c in callers))

    def mine(object_id: str) -> bool:
        return node is None or service.node_of(object_id) == node
    _close_gone(service, callers, mine, {cid for cid in pending if cid in channels})
    talking_legs = _adopt_callers(service, callers, bridges, legs)
    await _drop_orphans(service, ari, legs, talking_legs, bridges, callers, channels, mine)

    # registrations last: a seat that turns out registered may be offered a caller at
    # once, and every caller must be known by then
    await service.watch_seats()
    if wide_endpoint_watch(app):
        log.warning("event=endpoint_subscription_wide: this Asterisk still sends the application the events of "
                    "every PJSIP endpoint (subscribed by an earlier engine; Asterisk drops it only when it "
                    "restarts): each caller's arrival and departure then costs O(callers held)")
    log.info("event=reconciled live=%d tracked=%d legs=%d adopted=%d%s", len(callers), len(service.calls),
             len(service.legs), service.counters["adopted"], f" node={node}" if node else "")


def wide_endpoint_watch(app: dict[str, Any]) -> bool:
    """Is the application subscribed to a whole technology's endpoints (``PJSIP``, not
    ``PJSIP/<endpoint>``), the trunk's included?"""
    return any("/" not in str(e) for e in app.get("endpoint_ids") or ())


def _close_gone(service: CallService, callers: dict[str, Channel], mine: Callable[[str], bool],
                pending: set[str]) -> None:
    """Calls the engine (or its snapshot) knew whose caller left during the gap."""
    for call in [c for c in service.calls.values() if c.id not in callers and mine(c.id) and c.id not in pending]:
        if service.recorder is not None and service.recorder.detouring(call.id):
            continue  # out of the application for its recording's start: back in a moment
        service.ended_in_gap(call)
    # calls only the ACD snapshot knows (after a restart) whose caller is gone: the ticket
    # id derives from arrival and channel, so their tickets close without a look-up
    for entry in service.acd.snapshot(service.now_ts())["calls"]:
        cid = str(entry["call_id"])
        if cid not in callers and cid not in service.calls and mine(cid) and cid not in pending:
            service.ended_unseen(cid, float(entry["arrived_at"]), entry["state"] == CallState.ON_CALL.value)


def _adopt_callers(service: CallService, callers: dict[str, Channel], bridges: dict[str, Bridge],
                   legs: dict[str, Channel]) -> set[str]:
    talking_legs: set[str] = set()
    for channel in sorted(callers.values(), key=lambda c: c.creationtime):
        mixing = next((b for b in bridges.values() if is_mixing_bridge_of(b.id, channel.id)
                       and channel.id in b.channels), None)
        leg_id = next((c for c in (mixing.channels if mixing else ()) if c in legs), None)
        call = service.calls.get(channel.id)
        if call is None:
            call = service.adopt(channel)
            log.info("event=call_adopted ticket=%s channel=%s talking=%s", call.ticket_id, channel.id,
                     leg_id is not None)
        if leg_id is not None and mixing is not None:
            # talking: Asterisk keeps them bridged; nothing to do but remember it
            talking_legs.add(leg_id)
            service.resume_talking(call, leg_id, service.seat_of_channel(legs[leg_id]) or "", mixing.id)
            continue
        if call.phase is CallPhase.TALKING:
            continue
        service.requeue(call)
        if service.holding.bridge_of(call.id) is None and call.offer_leg is None:
            service.rehold(call, channel.state)
    return talking_legs


async def _drop_orphans(service: CallService, ari: AriClient, legs: dict[str, Channel], talking_legs: set[str],
                        bridges: dict[str, Bridge], callers: dict[str, Channel],
                        channels: dict[str, Channel], mine: Callable[[str], bool]) -> None:
    for leg_id in legs:
        known = service.legs.get(leg_id)
        if leg_id in talking_legs or (known is not None and not known.cancelled):
            continue
        # a seat still ringing (or answered, unbridged) for a dead engine's offer
        await service.hangup(leg_id)
        log.info("event=orphan_leg_hung_up leg=%s", leg_id)
    for leg_id in [lid for lid in service.legs if lid not in legs and mine(lid)]:
        service.leg_ended(leg_id, 0)  # ended during the gap
    for channel_id in channels:
        if channel_id.startswith(SIDE_PREFIX) and channel_id not in service.side_channels:
            # a snoop or external media channel of a dead engine's speech: nobody listens
            await service.hangup(channel_id)
            log.info("event=orphan_side_channel_hung_up channel=%s", channel_id)
    for bridge in bridges.values():
        if bridge.id in service.side_bridges:
            continue  # a live call's speech bridge: it serves the snoop, not the caller
        # empty holding bridges stay: they are reused (and Asterisk may refuse their id
        # again once deleted); what goes is a call's mixing bridge with nobody to serve
        if not bridge.id.startswith(BRIDGE_PREFIX) or HOLD_RE.match(bridge.id):
            continue
        serves = [c for c in bridge.channels if c in callers or c in talking_legs]
        if serves:
            continue
        try:
            await ari.destroy_bridge(bridge.id)
            log.info("event=orphan_bridge_removed bridge=%s", bridge.id)
        except AriError as exc:
            log.warning("event=orphan_bridge_remove_failed bridge=%s error=%s", bridge.id, q(exc))


async def take_over(service: CallService, app_filter: str, *, settle_s: float = 1.0) -> set[str]:
    """The lease changed hands: adopt every channel other engines' applications (names
    matching ``app_filter``) hold, then reconcile. Returns the channels moved that had not
    arrived by the reconcile: adopt each when its StasisStart (args ``adopted``) comes
    (``reconcile`` again)."""
    ari = service.ari
    pattern = re.compile(app_filter)
    moved: set[str] = set()
    for app in await ari.applications():
        name = str(app.get("name", ""))
        if name == ari.app or not pattern.search(name):
            continue
        for channel_id in [str(c) for c in app.get("channel_ids") or []]:
            if not channel_id.startswith((LEG_PREFIX, SIDE_PREFIX)):
                # a move waits for the channel's current playback; the greeting the dead
                # engine started is stopped by the reconcile anyway (rehold)
                try:
                    await ari.stop_playback(f"greet-{channel_id}")
                except AriError:
                    pass  # none playing
            try:
                await ari.move(channel_id, ADOPTED)
                moved.add(channel_id)
            except AriError as exc:
                # hung up meanwhile (404), or already moved by another engine: not ours to adopt
                log.info("event=take_over_move_failed channel=%s app=%s error=%s", channel_id, name, q(exc))
    # a move completes on the channel's own thread: wait a moment until they show in ours
    deadline = time.monotonic() + settle_s
    missing = set(moved)
    while missing:
        missing -= set((await ari.application()).get("channel_ids") or [])
        if not missing or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    log.info("event=take_over_moved channels=%d pending=%d", len(moved), len(missing))
    await reconcile(service, pending=frozenset(missing))
    return missing


# StasisStart args of a moved channel (read by calls.stasis)
ADOPTED = "adopted"
