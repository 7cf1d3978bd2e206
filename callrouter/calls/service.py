"""The call shell's logic: what happens to a caller, in ARI requests and ticket ops.

Ticket writes go to the TicketWriter's queue and never stand in front of the caller:
the answer is sent without waiting for the database. ARI requests for one call run in
that call's own task, so a slow or failed request holds up nobody else.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from callrouter.ari import AriClient, AriError, Channel
from callrouter.logs import q
from callrouter.numberplan import NumberPlan, Route
from callrouter.tasks import TaskOwner
from callrouter.tickets import AnswerTicket, CloseTicket, OpenTicket, TicketStore, TicketWriter, new_ticket_id

log = logging.getLogger("callrouter.calls")

Clock = Callable[[], datetime]

# Bridges the engine creates are named with this prefix (deterministic ids), so after
# a restart Asterisk can be asked what is ours.
BRIDGE_PREFIX = "callrouter-"


def utcnow() -> datetime:
    return datetime.now(UTC)


def parse_ari_time(value: str) -> datetime | None:
    """ARI timestamps look like 2026-11-29T05:43:52.150+0000."""
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f%z").astimezone(UTC)
    except ValueError:
        return None


@dataclass
class LiveCall:
    channel_id: str
    ticket_id: str
    route: Route
    caller: str
    arrived_at: datetime
    answered: bool = False
    held: int = 0  # rounds the dialplan held this caller while the engine was away
    greeting_playback: str = ""
    extra: dict[str, str] = field(default_factory=dict)


class CallService:
    def __init__(self, ari: AriClient, plan: NumberPlan, writer: TicketWriter, store: TicketStore,
                 *, clock: Clock = utcnow) -> None:
        self.ari = ari
        self.plan = plan
        self.writer = writer
        self.store = store
        self.clock = clock
        self.calls: dict[str, LiveCall] = {}
        self.tasks = TaskOwner("calls")
        self.counters = {"arrived": 0, "ended": 0, "adopted": 0, "lost_in_gap": 0}

    # ------------------------------------------------------------ a caller arrives
    def call_arrived(self, channel: Channel, args: tuple[str, ...]) -> None:
        if channel.id in self.calls:
            return  # a duplicate StasisStart after a reconcile already adopted it
        dialled = args[0] if args else channel.channelvars.get("CR_DIALLED", channel.exten)
        call = self._track(channel, dialled, ticket_id=None)
        self.counters["arrived"] += 1
        self.tasks.spawn(self._answer_and_hold(call, channel.state), name=f"arrive:{channel.id}")

    def _track(self, channel: Channel, dialled: str, ticket_id: str | None) -> LiveCall:
        # The call arrived when Asterisk created the channel: a caller the dialplan held
        # while the engine was away has been waiting since then, not since we saw them.
        now = min(self.clock(), parse_ari_time(channel.creationtime) or self.clock())
        route = self.plan.route(dialled)
        held = int(channel.channelvars.get("CR_HELD") or 0)
        call = LiveCall(channel_id=channel.id, ticket_id=ticket_id or new_ticket_id(now), route=route,
                        caller=channel.caller_number, arrived_at=now, held=held)
        self.calls[channel.id] = call
        if ticket_id is None:
            self.writer.submit(OpenTicket(
                id=call.ticket_id, dialled=dialled, number=route.number, caller=channel.caller_number,
                caller_name=channel.caller_name, line=route.line, category=route.category,
                department=route.department, priority=route.priority, listed=route.listed,
                channel_id=channel.id, arrived_at=now))
        log.info("event=call_arrived ticket=%s channel=%s dialled=%s number=%s caller=%s line=%s "
                 "category=%s priority=%d listed=%s held_by_dialplan=%d", call.ticket_id, channel.id,
                 q(dialled), q(route.number), q(channel.caller_number), route.line, route.category,
                 route.priority, route.listed, held)
        return call

    async def _answer_and_hold(self, call: LiveCall, state: str) -> None:
        try:
            if state != "Up":
                await self.ari.answer(call.channel_id)
            call.answered = True
            self.writer.submit(AnswerTicket(id=call.ticket_id, at=self.clock()))
            log.info("event=call_answered ticket=%s channel=%s", call.ticket_id, call.channel_id)
            call.greeting_playback = f"greet-{call.channel_id}"
            await self.ari.play(call.channel_id, f"sound:callrouter/greeting-{call.route.line}",
                                playback_id=call.greeting_playback)
        except AriError as exc:
            if exc.status == 404:
                return  # the caller hung up while we answered; StasisEnd closes the ticket
            log.warning("event=greeting_failed ticket=%s channel=%s error=%s", call.ticket_id,
                        call.channel_id, q(exc))
            # No greeting is no reason for silence: go straight to hold audio.
            await self._hold(call)

    def playback_finished(self, playback_id: str) -> None:
        for call in self.calls.values():
            if call.greeting_playback == playback_id:
                call.greeting_playback = ""
                self.tasks.spawn(self._hold(call), name=f"hold:{call.channel_id}")
                return

    async def _hold(self, call: LiveCall) -> None:
        try:
            await self.ari.start_moh(call.channel_id)
        except AriError as exc:
            if exc.status != 404:
                log.warning("event=hold_failed ticket=%s channel=%s error=%s", call.ticket_id,
                            call.channel_id, q(exc))

    # ------------------------------------------------------------ the caller leaves
    def call_ended(self, channel_id: str, cause: str = "") -> None:
        call = self.calls.pop(channel_id, None)
        if call is None:
            return
        self._close(call, cause)

    def _close(self, call: LiveCall, cause: str, outcome: str = "abandoned") -> None:
        now = self.clock()
        # No seat answers yet (seats come with the queues): hanging up before a seat
        # answered is an abandoned call.
        self.writer.submit(CloseTicket(id=call.ticket_id, at=now, outcome=outcome))
        self.counters["ended"] += 1
        log.info("event=call_ended ticket=%s channel=%s outcome=%s wait_s=%.1f cause=%s", call.ticket_id,
                 call.channel_id, outcome, (now - call.arrived_at).total_seconds(), q(cause))

    # ------------------------------------------------------------ after a (re)connect
    async def reconcile(self) -> None:
        """Make our view match Asterisk's after a (re)connect.

        Events of the gap are lost and not replayed: callers who arrived while we were
        away are adopted (keeping the ticket a previous engine opened for them), callers
        who left are closed, and bridges of ours that hold nobody are removed.
        """
        app = await self.ari.application()
        live_ids = set(app.get("channel_ids") or [])
        for channel_id in [c for c in self.calls if c not in live_ids]:
            call = self.calls.pop(channel_id)
            self.counters["lost_in_gap"] += 1
            self._close(call, "ended while the engine was disconnected")
        channels = {c.id: c for c in await self.ari.list_channels() if c.id in live_ids}
        for channel in channels.values():
            if channel.id in self.calls:
                continue
            existing = await asyncio.to_thread(self.store.by_channel, channel.id)
            if existing is not None and existing.get("ended_at"):
                continue
            dialled = existing["dialled"] if existing else channel.channelvars.get("CR_DIALLED", channel.exten)
            call = self._track(channel, str(dialled), ticket_id=str(existing["id"]) if existing else None)
            self.counters["adopted"] += 1
            log.info("event=call_adopted ticket=%s channel=%s known=%s", call.ticket_id, channel.id,
                     existing is not None)
            if channel.state == "Up" and existing is not None and existing.get("answered_at"):
                call.answered = True
                self.tasks.spawn(self._hold(call), name=f"readopt:{channel.id}")
            else:
                self.tasks.spawn(self._answer_and_hold(call, channel.state), name=f"adopt:{channel.id}")
        for bridge in await self.ari.list_bridges():
            if bridge.id.startswith(BRIDGE_PREFIX) and not bridge.channels:
                try:
                    await self.ari.destroy_bridge(bridge.id)
                    log.info("event=orphan_bridge_removed bridge=%s", bridge.id)
                except AriError as exc:
                    log.warning("event=orphan_bridge_remove_failed bridge=%s error=%s", bridge.id, q(exc))
        log.info("event=reconciled live=%d tracked=%d", len(live_ids), len(self.calls))
