"""The call shell's executor: ARI events become ACD events; decisions become ARI requests.

The ACD core decides who waits, which seat rings and when overflow joins;
``callrouter.acd.callflow`` decides what a transfer, a consult, a seat leg's end, the
caller's end, an in-call code or a REFER mean for the call. This module carries both out,
one call at a time. Every ARI request for a call runs in that call's
own serial lane (a lock per call): requests of one call keep their order, and a slow or
failed request holds up no other caller. Ticket ops go to the TicketWriter's queue and
never stand in front of a caller.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Callable, Coroutine, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from callrouter.acd import (
    Acd,
    AcdError,
    Action,
    Announce,
    CallAbandoned,
    CallArrived,
    CallEnded,
    CallQueued,
    CallTransferred,
    CancelOffer,
    Connect,
    LinesConfig,
    Offer,
    OfferAnswered,
    OfferFailed,
    OverflowChanged,
    Reconfigure,
    SeatRegistered,
    SeatState,
    SeatStateChanged,
    Tick,
)
from callrouter.acd import Event as AcdEvent
from callrouter.acd.callflow import (
    CallerLeft,
    CallPhase,
    ConsultHandover,
    ConsultLeft,
    DropConsult,
    FlowRefused,
    OfferLost,
    SeatHungUp,
    caller_of,
    consult_expired,
    decide_caller_end,
    decide_consult,
    decide_consult_connect,
    decide_leg_end,
    decide_transfer,
    dtmf_step,
    gap_outcome,
    in_call_codes,
    is_consult,
    parse_refer,
    refer_line,
)
from callrouter.ari import AriClient, AriError, Channel
from callrouter.ari.nodes import node_of
from callrouter.calls.bridges import MixingSweep, mixing_bridge_id
from callrouter.calls.holding import CallerGone, HoldingBridges
from callrouter.calls.model import LiveCall, SeatLeg
from callrouter.calls.seats import endpoint_of_channel, endpoint_seats, watch_endpoints
from callrouter.categories import plan_categories
from callrouter.logs import q
from callrouter.numberplan import NumberPlan
from callrouter.tasks import TaskOwner
from callrouter.tickets import (
    AddTransfer,
    AnswerTicket,
    CloseTicket,
    OpenTicket,
    Reclassify,
    SetSeat,
    TicketWriter,
    ticket_id_for_channel,
)
from callrouter.tickets.models import CALLER_MAX, CALLER_NAME_MAX, DIALLED_MAX, untrusted_text

if TYPE_CHECKING:
    from callrouter.recordings.recorder import CallRecorder

log = logging.getLogger("callrouter.calls")

Clock = Callable[[], datetime]

# Seat legs the engine creates carry this prefix (deterministic ids, as its bridges:
# bridges.BRIDGE_PREFIX), so after a restart Asterisk can be asked what is ours.
LEG_PREFIX = "cr-leg-"
# channels a side feature (speech) makes beside a call (snoop, external media): they enter
# the application too, but are nobody's caller or seat
SIDE_PREFIX = "cr-side-"
# Stasis(callrouter,recording): a caller back from [callrouter-record] (MixMonitor started)
RECORDING_ARG = "recording"
# a refused transfer, consult or reclassification: error id and details for the API
TransferError = FlowRefused


def utcnow() -> datetime:
    return datetime.now(UTC)


def parse_ari_time(value: str) -> datetime | None:
    """ARI timestamps look like 2026-11-29T05:43:52.150+0000."""
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f%z").astimezone(UTC)
    except ValueError:
        return None


def announcement(position: int, minutes: int) -> list[str]:
    """The sounds of a position and wait announcement: 您前面还有 N 位来电在等候 (N callers
    ahead), or 您是下一位 for the first in line; then 预计等待时间约 M 分钟."""
    where = ["position-next"] if position <= 1 else ["position-prefix", f"num-{position - 1}", "position-suffix"]
    return [*where, "wait-prefix", f"num-{minutes}", "wait-suffix"]


class CallService:
    def __init__(self, ari: AriClient, plan: NumberPlan, writer: TicketWriter, acd: Acd, *,
                 clock: Clock = utcnow, hold_shard_size: int = 40, nodes: Iterable[str] = ()) -> None:
        self.ari = ari
        # a cluster's node names (their systemnames); empty: one Asterisk, ids as they always were
        self.nodes = frozenset(nodes)
        # seat registrations come from elsewhere (Kamailio's registrar in a cluster): the
        # nodes' endpoint states are not watched
        self.presence_external = False
        self.cluster_status: Callable[[], dict[str, Any]] | None = None  # for /api/status
        self.plan = plan
        self.writer = writer
        self.acd = acd
        self.clock = clock
        self.calls: dict[str, LiveCall] = {}
        self.legs: dict[str, SeatLeg] = {}
        self.holding = HoldingBridges(ari, hold_shard_size, node_of=self.node_of)
        self.tasks = TaskOwner("calls")
        self.counters = {"arrived": 0, "ended": 0, "adopted": 0, "lost_in_gap": 0, "connected": 0}
        if self.nodes:
            self.counters["lost_with_node"] = 0
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []
        self.changes = 0  # ACD events handled: the state saver writes when this moved
        self._leg_seq = 0
        # several engines (callrouter.ha): each names its seat legs apart (cr-leg-<tag>...),
        # so two engines' legs never share an id
        self.leg_tag = ""
        self.acting: Callable[[], bool] = lambda: True
        self._endpoint_seat = endpoint_seats(acd.config)
        self._codes = in_call_codes(acd.config)
        self.mixing_sweep = MixingSweep(ari, self._bridge_of_call)
        # channels and bridges a side feature keeps for a live call: reconciliation leaves
        # these alone and removes any other SIDE_PREFIX channel (a dead engine's)
        self.side_channels: set[str] = set()
        self.side_bridges: set[str] = set()
        # call recording (callrouter.recordings), wired by the engine; None: nothing recorded
        self.recorder: CallRecorder | None = None

    def node_of(self, object_id: str) -> str | None:
        """The cluster node an id belongs to (ari.nodes.node_of); None on one Asterisk."""
        return node_of(object_id, self.nodes) if self.nodes else None

    def _bridge_of_call(self, call_id: str) -> str | None:
        call = self.calls.get(call_id)
        return call.bridge if call is not None else None

    # ------------------------------------------------------------ plumbing
    def call_for(self, acd_id: str) -> LiveCall | None:
        """The live caller an ACD call id stands for (a consult's id names its caller)."""
        return self.calls.get(caller_of(acd_id))

    def now_ts(self) -> float:
        return self.clock().timestamp()

    def feed(self, event: AcdEvent, *, raise_refusal: bool = False) -> None:
        """Give the ACD an event and carry out what it answers.

        A refusal (AcdError: nothing changed) is logged; with ``raise_refusal`` (a request
        from the API) it is raised so that the requester hears the reason.
        """
        try:
            actions = self.acd.handle(event, self.now_ts())
        except AcdError:
            if raise_refusal:
                raise
            log.exception("event=acd_rejected acd_event=%s", q(event))
            return
        except Exception:
            log.exception("event=acd_rejected acd_event=%s", q(event))
            return
        if actions or not isinstance(event, Tick):
            self.changes += 1
        for action in actions:
            self._execute(action)

    def _lane(self, call: LiveCall, coro: Coroutine[Any, Any, None], name: str) -> None:
        async def run() -> None:
            async with call.lane:
                await coro
        self.tasks.spawn(run(), name=f"{name}:{call.id}")

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        """Tell the listeners (the API's feed, speech, the CEL importer) what happened."""
        for listener in self.listeners:
            try:
                listener(kind, data)
            except Exception:
                log.exception("event=listener_failed kind=%s", kind)

    # ------------------------------------------------------------ a caller arrives
    def call_arrived(self, channel: Channel, args: tuple[str, ...]) -> None:
        if self.recorder is not None and self.recorder.back(channel):
            return  # back from the recording detour (or from the fallback hold it fell into)
        if channel.id in self.calls:
            return  # a duplicate StasisStart after a reconcile already adopted it
        if args[:1] == (RECORDING_ARG,):
            args = ()  # back from a dead engine's detour: the dialled number is on the channel
        dialled = args[0] if args else channel.channelvars.get("CR_DIALLED", channel.exten)
        call = self._track(channel, dialled)
        self.counters["arrived"] += 1
        self._lane(call, self._arrive(call, channel.state), "arrive")
        self.feed(CallArrived(call.id, call.line, call.route.priority, call.arrived_at.timestamp()))

    def _track(self, channel: Channel, dialled: str) -> LiveCall:
        # The call arrived when Asterisk created the channel: a caller the dialplan held
        # while the engine was away has been waiting since then, not since we saw them.
        now = self.clock()
        arrived = min(now, parse_ari_time(channel.creationtime) or now)
        # from the phone network: data, never markup; bounded, no control characters
        dialled, caller = untrusted_text(dialled, DIALLED_MAX), untrusted_text(channel.caller_number, CALLER_MAX)
        route = self.plan.route(dialled)
        held = int(channel.channelvars.get("CR_HELD") or 0)
        call = LiveCall(id=channel.id, ticket_id=ticket_id_for_channel(arrived, channel.id), route=route,
                        dialled=dialled, caller=caller, arrived_at=arrived, held=held, line=route.line)
        self.calls[channel.id] = call
        # idempotent: an engine adopting the caller after a restart opens the same ticket id
        self.writer.submit(OpenTicket(
            id=call.ticket_id, dialled=dialled, number=route.number, caller=caller,
            caller_name=untrusted_text(channel.caller_name, CALLER_NAME_MAX), line=route.line, category=route.category,
            department=route.department, priority=route.priority, listed=route.listed,
            channel_id=channel.id, arrived_at=arrived, held_by_dialplan=held > 0))
        log.info("event=call_arrived ticket=%s channel=%s dialled=%s number=%s caller=%s line=%s "
                 "category=%s priority=%d listed=%s held_by_dialplan=%d", call.ticket_id, channel.id,
                 q(dialled), q(route.number), q(caller), route.line, route.category,
                 route.priority, route.listed, held)
        if self.recorder is not None:
            self.recorder.track(call, channel)  # recorded already by an earlier engine's detour?
        self.emit("call_arrived", call.summary())
        return call

    async def _arrive(self, call: LiveCall, state: str) -> None:
        if self.recorder is not None and self.recorder.should_record(call):
            # a line that records: answered first (the answer never waits for a recording),
            # then MixMonitor through the dialplan, on the channel before any audio flows
            if state != "Up":
                try:
                    await self.ari.answer(call.id)
                    state = "Up"
                except AriError:
                    pass  # answered again below, where a failure is handled
            if not await self.recorder.record(call) and call.id not in self.calls:
                return  # hung up meanwhile
        await self._answer_and_greet(call, state)

    async def _answer_and_greet(self, call: LiveCall, state: str) -> None:
        try:
            if state != "Up":
                await self.ari.answer(call.id)
            call.answered = True
            self.writer.submit(AnswerTicket(id=call.ticket_id, at=self.clock()))
            log.info("event=call_answered ticket=%s channel=%s", call.ticket_id, call.id)
            if call.phase is CallPhase.TALKING:
                return  # a seat was quicker than the greeting
            call.greeting_playback = f"greet-{call.id}"
            await self.ari.play(call.id, f"sound:callrouter/greeting-{call.line}",
                                playback_id=call.greeting_playback)
        except AriError as exc:
            call.greeting_playback = ""
            if exc.status == 404:
                return  # the caller hung up; StasisEnd closes the ticket
            log.warning("event=greeting_failed ticket=%s channel=%s error=%s", call.ticket_id, call.id, q(exc))
            # no greeting is no reason for silence: straight to hold music
            await self._hold(call)
        finally:
            if call.answered and call.id in self.calls:
                # the caller is answered and hears us: side features (speech) start now,
                # beside this lane, never in front of the caller's own requests
                self.emit("call_held", call.summary())

    def playback_finished(self, playback_id: str) -> None:
        kind, _, rest = playback_id.partition("-")
        if kind in ("announce", "notice"):
            # ids are <kind>-<channel id>-<n>; a finished one needs no stop before bridging
            call = self.calls.get(rest.rpartition("-")[0])
            attr = f"{kind}_playback"
            if call is not None and getattr(call, attr) == playback_id:
                setattr(call, attr, "")
            return
        if kind != "greet":
            return
        call = self.calls.get(playback_id[len("greet-"):])
        if call is not None and call.greeting_playback == playback_id:
            call.greeting_playback = ""
            if call.phase is not CallPhase.TALKING:
                self._lane(call, self._hold(call), "hold")

    async def _hold(self, call: LiveCall) -> None:
        if call.phase is CallPhase.TALKING or call.id not in self.calls:
            return
        try:
            await self.holding.join(call.line, call.id)
        except CallerGone:
            return  # hung up while joining; StasisEnd closes the ticket
        except AriError as exc:
            if call.id not in self.calls:
                return  # hung up meanwhile
            # never silence: music on the caller's own channel while no bridge will take them
            log.warning("event=hold_bridge_failed ticket=%s channel=%s error=%s; holding on the channel",
                        call.ticket_id, call.id, q(exc))
            try:
                await self.ari.start_moh(call.id)
            except AriError as moh_exc:
                log.warning("event=hold_failed ticket=%s error=%s", call.ticket_id, q(moh_exc))

    # ------------------------------------------------------------ ACD actions
    def _execute(self, action: Action) -> None:
        if isinstance(action, Offer):
            self._offer(action)
        elif isinstance(action, CancelOffer):
            self._cancel_offer(action.call_id, action.seat)
        elif isinstance(action, Connect):
            self._connect(action)
        elif isinstance(action, Announce):
            self._announce(action)
        elif isinstance(action, CallQueued):
            log.info("event=call_queued channel=%s line=%s position=%d eta_s=%d", action.call_id, action.line,
                     action.position, action.eta_s)
        elif isinstance(action, SeatStateChanged):
            if action.state is SeatState.WRAP_UP:
                # the core ends wrap-up on a Tick: tick right when it is due, so the seat
                # takes its next caller then and not up to half a second later
                loop = asyncio.get_running_loop()
                for wrap_up_s in {line.wrap_up_s for line in self.acd.config.lines}:
                    loop.call_later(wrap_up_s + 0.005, self.tick)
            log.info("event=seat_state seat=%s state=%s reason=%s registered=%s", action.seat, action.state.value,
                     q(action.reason), action.registered)
            self.emit("seat_state", {"seat": action.seat, "state": action.state.value, "reason": action.reason,
                                      "registered": action.registered})
        elif isinstance(action, OverflowChanged):
            log.info("event=overflow line=%s active=%s seats=%s trigger=%s", action.line, action.active,
                     ",".join(action.seats) or "-", action.trigger)
            self.emit("overflow", {"line": action.line, "active": action.active, "seats": list(action.seats),
                                    "trigger": action.trigger})

    def _offer(self, action: Offer) -> None:
        call = self.call_for(action.call_id)
        consult = is_consult(action.call_id)
        if call is None or (consult and call.consult_id != action.call_id):
            # the ACD offered a call the shell no longer has: tell it, so the seat is freed
            self.feed(OfferFailed(action.call_id, action.seat, "error"))
            return
        self._leg_seq += 1
        # rung from the caller's node (in a cluster, the node rings the seat through Kamailio);
        # with several engines each tags its legs (ha)
        node = self.node_of(call.id)
        leg = SeatLeg(id=f"{LEG_PREFIX}{f'{node}-' if node else ''}{self.leg_tag}{self._leg_seq}-{int(time.time())}",
                      call_id=action.call_id,
                      seat=action.seat, offered_at=self.now_ts())
        self.legs[leg.id] = leg
        if not consult:
            call.phase = CallPhase.RINGING
            call.offer_leg = leg.id
        log.info("event=offer ticket=%s channel=%s seat=%s leg=%s timeout_s=%.0f", call.ticket_id, call.id,
                 action.seat, leg.id, action.timeout_s)

        async def originate() -> None:
            caller_id = f'"{call.route.category}" <{call.caller or "anonymous"}>'
            # benchmark point (scripts/bench_dispatch.py): offered_at is stamped in the same
            # synchronous ACD step that made the seat ready; at = the request is handed to ARI
            log.debug("event=originate_sent leg=%s seat=%s offered_at=%.6f at=%.6f", leg.id, action.seat,
                      leg.offered_at, self.now_ts())
            try:
                # the ACD times the ring out itself (Tick); Asterisk's timeout is the backstop
                await self.ari.originate(f"PJSIP/{action.endpoint}", channel_id=leg.id,
                                         app_args=f"seat,{action.call_id},{action.seat}",
                                         timeout_s=math.ceil(action.timeout_s) + 2, caller_id=caller_id)
            except AriError as exc:
                log.warning("event=originate_failed ticket=%s seat=%s error=%s", call.ticket_id, action.seat, q(exc))
                if self.legs.pop(leg.id, None) is not None and not leg.cancelled:
                    self.feed(OfferFailed(action.call_id, action.seat, "error"))
                return
            leg.originated = True
            if leg.cancelled:
                await self.hangup(leg.id)  # cancelled while the originate was under way
        # Not in the caller's lane: a seat must ring at once, whatever the caller's channel
        # is busy with (a greeting, a slow request). CancelOffer copes with the overlap.
        self.tasks.spawn(originate(), name=f"offer:{call.id}")

    def _cancel_offer(self, call_id: str, seat: str) -> None:
        for leg in list(self.legs.values()):
            if leg.call_id == call_id and leg.seat == seat and not leg.cancelled:
                leg.cancelled = True
                call = self.call_for(call_id)
                if call is not None and call.offer_leg == leg.id:
                    call.offer_leg = None
                    if call.phase is CallPhase.RINGING:
                        call.phase = CallPhase.WAITING
                if leg.originated:  # else the originate task hangs it up when it returns
                    self.tasks.spawn(self.hangup(leg.id), name=f"cancel:{leg.id}")

    async def hangup(self, channel_id: str, reason: str = "normal") -> None:
        """Hang a channel up; one already gone is no failure."""
        try:
            await self.ari.hangup(channel_id, reason)
        except AriError as exc:
            if exc.status != 404:
                log.warning("event=hangup_failed channel=%s error=%s", channel_id, q(exc))

    def _connect(self, action: Connect) -> None:
        if is_consult(action.call_id):
            self._consult_joined(action)
            return
        call = self.calls.get(action.call_id)
        leg = next((lg for lg in self.legs.values() if lg.call_id == action.call_id and lg.seat == action.seat
                    and not lg.cancelled), None)
        if call is None or leg is None:
            log.warning("event=connect_lost channel=%s seat=%s", action.call_id, action.seat)
            if leg is not None:
                self.tasks.spawn(self.hangup(leg.id), name=f"connect-lost:{leg.id}")
            return
        call.phase = CallPhase.TALKING
        call.seat = action.seat
        call.seat_leg = leg.id
        call.offer_leg = None
        call.seat_answered_at = self.clock()
        self.counters["connected"] += 1
        self.writer.submit(SetSeat(id=call.ticket_id, seat=action.seat, at=call.seat_answered_at))
        log.info("event=call_connected ticket=%s channel=%s seat=%s line=%s wait_s=%.1f", call.ticket_id, call.id,
                 action.seat, action.line, action.wait_s)
        self.emit("call_connected", {**call.summary(), "wait_s": action.wait_s})

        async def bridge() -> None:
            for attr in ("greeting_playback", "notice_playback", "announce_playback"):
                playback = getattr(call, attr)
                if not playback:
                    continue
                setattr(call, attr, "")
                try:
                    await self.ari.stop_playback(playback)
                except AriError:
                    pass  # finished meanwhile
            call.connects += 1
            bridge_id = mixing_bridge_id(call.id, call.connects)
            try:
                await self.ari.create_bridge(bridge_id, "mixing")
            except AriError as exc:
                log.warning("event=bridge_failed ticket=%s error=%s", call.ticket_id, q(exc))
                return
            try:
                self.holding.left(call.id)
                await self.ari.add_to_bridge(bridge_id, call.id, leg.id)
                call.bridge = bridge_id
                if call.id not in self.calls:  # the call ended while we bridged
                    await self.ari.destroy_bridge(bridge_id)
            except AriError as exc:
                # one side left while we bridged; its StasisEnd ends the call. The bridge
                # serves nobody then: remove it, or every such call leaves one behind
                log.warning("event=bridge_failed ticket=%s error=%s", call.ticket_id, q(exc))
                if call.bridge != bridge_id:
                    try:
                        await self.ari.destroy_bridge(bridge_id)
                    except AriError:
                        pass
        self._lane(call, bridge(), "connect")

    def _announce(self, action: Announce) -> None:
        call = self.calls.get(action.call_id)
        if call is None or call.phase is CallPhase.TALKING or call.greeting_playback:
            return
        minutes = max(1, min(99, math.ceil(action.eta_s / 60)))
        position = max(1, min(99, action.position))
        media = ",".join([f"sound:callrouter/{name}" for name in announcement(position, minutes)])

        async def play() -> None:
            if call.phase is CallPhase.TALKING:
                return  # connected while this waited in the call's lane
            call.announces += 1
            call.announce_playback = f"announce-{call.id}-{call.announces}"
            try:
                await self.ari.play(call.id, media, playback_id=call.announce_playback)
            except AriError as exc:
                if exc.status != 404:
                    log.warning("event=announce_failed ticket=%s error=%s", call.ticket_id, q(exc))
        self._lane(call, play(), "announce")

    # ------------------------------------------------------------ seat legs
    def leg_answered(self, channel: Channel, args: tuple[str, ...]) -> None:
        leg = self.legs.get(channel.id)
        if leg is None or leg.cancelled:
            # an answer for an offer we already gave up on
            self.tasks.spawn(self.hangup(channel.id), name=f"stale-leg:{channel.id}")
            return
        leg.answered = True
        log.info("event=seat_answered channel=%s seat=%s leg=%s", leg.call_id, leg.seat, leg.id)
        self.feed(OfferAnswered(leg.call_id, leg.seat))

    def leg_ended(self, leg_id: str, cause: int) -> None:
        leg = self.legs.pop(leg_id, None)
        if leg is None or leg.cancelled:
            return
        call = self.call_for(leg.call_id)
        decision = decide_leg_end(call, leg, cause)
        if isinstance(decision, ConsultHandover) and call is not None:
            self._consult_handover(call, leg, decision)
        elif isinstance(decision, SeatHungUp) and call is not None:
            log.info("event=seat_hung_up ticket=%s seat=%s", call.ticket_id, leg.seat)
            self.finish(call, "completed")
            self.feed(CallEnded(decision.acd_id))
            self.tasks.spawn(self.hangup(call.id), name=f"end-caller:{call.id}")
        elif isinstance(decision, ConsultLeft) and call is not None:
            log.info("event=consult_left ticket=%s seat=%s", call.ticket_id, leg.seat)
            self.feed(CallEnded(decision.consult_id))
            call.consult_id = call.consult_leg = call.consult_line = None
        elif isinstance(decision, OfferLost):
            if decision.back_to_waiting and call is not None:
                call.offer_leg = None
                call.phase = CallPhase.WAITING
            log.info("event=offer_failed channel=%s seat=%s reason=%s cause=%d", decision.call_id, decision.seat,
                     decision.reason, cause)
            self.feed(OfferFailed(decision.call_id, decision.seat, decision.reason))

    # ------------------------------------------------------------ the caller leaves
    def caller_ended(self, channel_id: str, cause: str = "") -> None:
        call = self.calls.get(channel_id)
        if call is None:
            return
        self._caller_left(call, decide_caller_end(call), cause)

    def _caller_left(self, call: LiveCall, left: CallerLeft, cause: str) -> None:
        if left.consult_id is not None:
            self.feed(CallEnded(left.consult_id) if left.consult_ended else CallAbandoned(left.consult_id))
            if left.consult_leg is not None and self.legs.pop(left.consult_leg, None) is not None:
                self.tasks.spawn(self.hangup(left.consult_leg), name=f"end-consult:{left.consult_leg}")
        self.finish(call, left.outcome, cause)
        self.feed(CallEnded(left.acd_id) if left.ended else CallAbandoned(left.acd_id))
        if left.seat_leg is not None and self.legs.pop(left.seat_leg, None) is not None:
            self.tasks.spawn(self.hangup(left.seat_leg), name=f"end-seat:{left.seat_leg}")

    def step_down(self, acd: Acd) -> int:
        """This engine no longer leads (callrouter.ha): forget every call without touching
        it in Asterisk (the new holder has them) and start from ``acd`` (empty). Requests
        under way are cancelled; returns how many calls were dropped."""
        dropped = len(self.calls)
        self.calls.clear()
        self.legs.clear()
        self.holding.forget()
        self.tasks.cancel_all()
        self.acd = acd
        self.changes += 1
        return dropped

    # ------------------------------------------------------------ after a (re)connect (recovery.reconcile)
    def adopt(self, channel: Channel) -> LiveCall:
        """A caller in the application the engine did not know (held by the dialplan or
        by a dead engine): tracked like a new arrival, keeping its original arrival."""
        call = self._track(channel, channel.channelvars.get("CR_DIALLED") or channel.exten)
        call.answered = channel.state == "Up"
        self.counters["adopted"] += 1
        return call

    def ended_in_gap(self, call: LiveCall) -> None:
        """A known caller who left while the engine was away (no StasisEnd was seen)."""
        self.counters["lost_in_gap"] += 1
        outcome = gap_outcome(call)
        self.finish(call, outcome, "ended while the engine was away")
        self.feed(CallEnded(call.id) if outcome == "completed" else CallAbandoned(call.id))

    def ended_unseen(self, call_id: str, arrived_at: float, on_call: bool) -> None:
        """A call only the ACD snapshot knew (after a restart) whose caller is gone: its
        ticket id derives from arrival and channel, so it closes without a look-up."""
        arrived = datetime.fromtimestamp(arrived_at, UTC)
        self.writer.submit(CloseTicket(id=ticket_id_for_channel(arrived, call_id), at=self.clock(),
                                       outcome="completed" if on_call else "abandoned"))
        self.feed(CallEnded(call_id) if on_call else CallAbandoned(call_id))
        self.counters["lost_in_gap"] += 1

    def resume_talking(self, call: LiveCall, leg_id: str, seat: str, bridge_id: str) -> None:
        """An adopted caller Asterisk still keeps bridged with a seat: nothing to do but
        remember it (the bridge id's last part counts the seats the caller met)."""
        call.phase, call.seat, call.seat_leg, call.bridge = CallPhase.TALKING, seat, leg_id, bridge_id
        call.connects = int(bridge_id.rsplit("-", 1)[1])
        self.legs.setdefault(leg_id, SeatLeg(id=leg_id, call_id=call.id, seat=seat, offered_at=self.now_ts(),
                                             originated=True, answered=True))

    def requeue(self, call: LiveCall) -> None:
        """An adopted waiting caller the ACD does not know (no snapshot): queued by the
        original arrival."""
        if self.acd.call_state(call.id) is None:
            self.feed(CallArrived(call.id, call.line, call.route.priority, call.arrived_at.timestamp()))

    def rehold(self, call: LiveCall, state: str) -> None:
        """An adopted waiting caller goes (back) into a holding bridge, in its lane."""
        # a greeting the dead engine started may still be playing (its id is
        # deterministic): stop it, or the channel takes no bridge until it ends
        call.greeting_playback = f"greet-{call.id}"
        self._lane(call, self._rehold(call.id, state), "rehold")

    async def _rehold(self, call_id: str, state: str) -> None:
        call = self.calls.get(call_id)
        if call is None:
            return
        if call.greeting_playback:
            playback, call.greeting_playback = call.greeting_playback, ""
            try:
                await self.ari.stop_playback(playback)
            except AriError:
                pass  # none playing
        if state != "Up":
            try:
                await self.ari.answer(call_id)
            except AriError:
                return
        recorder = self.recorder
        # held by the dialplan while the engine was away: recorded from now on
        if (recorder is not None and recorder.should_record(call) and not await recorder.record(call)
                and call.id not in self.calls):
            return  # hung up meanwhile
        await self._hold(call)

    def finish(self, call: LiveCall, outcome: str, cause: str = "") -> None:
        """The call is over: its ticket closes with ``outcome``, its mixing bridge goes."""
        if self.calls.pop(call.id, None) is None:
            return
        self.holding.left(call.id)
        now = self.clock()
        self.writer.submit(CloseTicket(id=call.ticket_id, at=now, outcome=outcome))
        if self.recorder is not None:
            self.recorder.call_ended(call)  # the file is kept once Asterisk closed it
        self.counters["ended"] += 1
        log.info("event=call_ended ticket=%s channel=%s outcome=%s seat=%s duration_s=%.1f cause=%s",
                 call.ticket_id, call.id, outcome, call.seat or "-", (now - call.arrived_at).total_seconds(), q(cause))
        self.emit("call_ended", {**call.summary(), "outcome": outcome})
        if call.bridge:
            bridge_id = call.bridge

            async def destroy() -> None:
                try:
                    await self.ari.destroy_bridge(bridge_id)
                except AriError:
                    pass
            self.tasks.spawn(destroy(), name=f"destroy:{bridge_id}")

    # ------------------------------------------------------------ seats
    async def watch_seats(self) -> None:
        """Subscribe to the seats' endpoints only (never the trunk's) and read their state
        now (seats.watch_endpoints says why)."""
        if self.presence_external:
            return
        await watch_endpoints(self.ari, sorted(self._endpoint_seat), self.endpoint_state)

    @property
    def seat_endpoints(self) -> list[str]:
        return sorted(self._endpoint_seat)

    def endpoint_state(self, resource: str, state: str) -> None:
        seat = self._endpoint_seat.get(resource)
        if seat is None:
            return
        online = state == "online"
        # Asterisk sends the endpoint's state with every channel it gains or loses (about
        # two per answered call: the seat leg's creation and end), nearly always unchanged:
        # only a change is the ACD's business (each event costs a dispatch pass and a save)
        try:
            if self.acd.seat_registered(seat) == online:
                return
        except AcdError:
            pass  # a seat the ACD no longer has: feed() logs the refusal
        self.feed(SeatRegistered(seat, online))

    def seat_of_channel(self, channel: Channel) -> str | None:
        return self._endpoint_seat.get(endpoint_of_channel(channel.name))

    def node_lost(self, node: str) -> int:
        """A cluster node died (its ARI connection stayed down): its callers and seat legs
        went with it. Their tickets close as ended in the gap, the seats they held are
        free again; returns how many calls were lost."""
        lost = [c for c in self.calls.values() if self.node_of(c.id) == node]
        for call in lost:
            self.ended_in_gap(call)
        for leg_id in [lid for lid in self.legs if self.node_of(lid) == node]:
            # their callers (same node) ended above, which freed the seats in the ACD
            self.legs.pop(leg_id, None)
        self.holding.forget_node(node)
        self.counters["lost_with_node"] = self.counters.get("lost_with_node", 0) + len(lost)
        log.error("event=node_calls_lost node=%s calls=%d", node, len(lost))
        return len(lost)

    # ------------------------------------------------------------ transfer between lines
    def transfer(self, call_id: str, to_line: str, reason: str, by_seat: str | None = None,
                 priority: int | None = None) -> LiveCall:
        """A seat hands its caller to the other line (a transfer onto the line ranked first,
        110, is an escalation: callflow.decide_transfer).

        The caller hears a short notice, then hold music in the target line's holding
        bridge, keeping their place by original arrival (an escalation goes to the
        front of its priority class); the seat that transferred goes to wrap-up; the same
        ticket follows the caller with the transfer recorded. Raises TransferError.
        """
        found = self.calls.get(call_id)
        decision = decide_transfer(found, call_id, to_line, self.acd.config, by_seat)
        call = self.calls[decision.call_id]
        from_line, seat, leg_id, bridge_id = decision.from_line, decision.seat, decision.leg_id, decision.bridge_id
        escalated = decision.escalated
        self.feed(CallTransferred(decision.acd_id, to_line, priority=priority, escalated=escalated))
        call.line, call.phase, call.seat, call.seat_leg, call.bridge = to_line, CallPhase.WAITING, None, None, None
        if leg_id is not None:
            leg = self.legs.pop(leg_id, None)
            if leg is not None:
                leg.cancelled = True
        self.writer.submit(AddTransfer(id=call.ticket_id, from_line=from_line, to_line=to_line, seat=seat or "",
                                       reason=reason, at=self.clock()))
        log.info("event=call_transferred ticket=%s channel=%s from=%s to=%s seat=%s escalated=%s reason=%s",
                 call.ticket_id, call.id, from_line, to_line, seat or "-", escalated, q(reason))
        self.emit("call_transferred", {**call.summary(), "from_line": from_line, "by_seat": seat, "reason": reason})

        async def move() -> None:
            if self.recorder is not None and self.recorder.should_record(call, to_line):
                # onto a line that records (an escalation to 110, say): recorded from here on
                await self.recorder.record(call)
            # the caller first: into the target line's holding bridge, then the notice;
            # only then is the seat's leg hung up, so the caller never hears silence
            try:
                await self.holding.join(to_line, call.id)
                log.info("event=transfer_queued ticket=%s channel=%s to=%s", call.ticket_id, call.id, to_line)
                call.notice_playback = f"notice-{call.id}-{call.connects}"
                await self.ari.play(call.id, f"sound:callrouter/transfer-{to_line}", playback_id=call.notice_playback)
            except CallerGone:
                pass  # hung up meanwhile: the seat's leg and the bridge still go below
            except AriError as exc:
                log.warning("event=transfer_move_failed ticket=%s error=%s", call.ticket_id, q(exc))
            if leg_id is not None:
                await self.hangup(leg_id)
            if bridge_id is not None:
                try:
                    await self.ari.destroy_bridge(bridge_id)
                except AriError:
                    pass
        self._lane(call, move(), "transfer")
        return call

    def reclassify(self, call_id: str, category: str) -> LiveCall:
        """The answering seat corrects the category the number plan gave the call."""
        call = self.calls.get(call_id)
        if call is None:
            raise TransferError("unknown_call", f"no live call {call_id!r}")
        if not re.fullmatch(r"[a-z][a-z0-9_]{1,39}", category):
            raise TransferError("bad_category", f"{category!r}: a lowercase slug such as gas_repair")
        if category not in plan_categories(self.plan):  # else no unit would take it (dispatch)
            raise TransferError("bad_category", f"{category!r} is not a category of the number plan "
                                                "(GET /api/categories)")
        self.writer.submit(Reclassify(id=call.ticket_id, category=category, at=self.clock(), seat=call.seat or ""))
        log.info("event=call_reclassified ticket=%s seat=%s category=%s", call.ticket_id, call.seat or "-", category)
        return call

    # ------------------------------------------------------------ three-way consult
    def consult(self, call_id: str, line: str, by_seat: str | None = None) -> LiveCall:
        """Bring a seat of the other line into the call: caller and both seats in one bridge.

        The consulted line's next free seat is rung like a caller at the front of the
        queue (国办发〔2022〕12号: a three-way call where responsibility is unclear). If no
        seat of that line answers within its ring timeout, the consult is dropped and the
        first seat simply keeps the caller. When the first seat then leaves, the consulted
        seat keeps the caller and the ticket records the hand-over.
        """
        found = self.calls.get(call_id)
        decision = decide_consult(found, call_id, line, self.acd.config, by_seat)
        call = self.calls[call_id]
        consult_id = decision.consult_id
        call.consult_id, call.consult_line = consult_id, line
        log.info("event=consult_requested ticket=%s seat=%s line=%s", call.ticket_id, call.seat, line)
        self.feed(CallArrived(consult_id, line, 1, self.now_ts(), escalated=True))

        def give_up() -> None:
            if consult_expired(call, consult_id):
                log.info("event=consult_no_seat ticket=%s line=%s: the first seat keeps the caller",
                         call.ticket_id, line)
                call.consult_id = call.consult_line = None
                self.feed(CallAbandoned(consult_id))
                self.emit("consult_failed", {**call.summary(), "line": line})
        asyncio.get_running_loop().call_later(decision.ring_timeout_s, give_up)
        return call

    def _consult_joined(self, action: Connect) -> None:
        call = self.call_for(action.call_id)
        leg = next((lg for lg in self.legs.values() if lg.call_id == action.call_id and lg.seat == action.seat
                    and not lg.cancelled), None)
        decision = decide_consult_connect(call, leg, action.call_id)
        if isinstance(decision, DropConsult) or call is None:
            if decision.leg_id is not None:
                self.tasks.spawn(self.hangup(decision.leg_id), name=f"consult-lost:{decision.leg_id}")
            if isinstance(decision, DropConsult) and decision.clear and call is not None:
                # dropped (the caller's own bridge never formed): the first seat keeps the
                # caller and may ask again
                log.warning("event=consult_dropped ticket=%s seat=%s: the call has no bridge", call.ticket_id,
                            action.seat)
                call.consult_id = call.consult_leg = call.consult_line = None
            self.feed(CallEnded(action.call_id))
            return
        call.consult_leg = decision.leg_id
        bridge_id, leg_id = decision.bridge_id, decision.leg_id
        log.info("event=consult_joined ticket=%s seat=%s line=%s", call.ticket_id, action.seat, action.line)
        self.emit("consult_joined", {**call.summary(), "consult_seat": action.seat})

        async def join() -> None:
            try:
                await self.ari.add_to_bridge(bridge_id, leg_id)
            except AriError as exc:
                log.warning("event=consult_bridge_failed ticket=%s error=%s", call.ticket_id, q(exc))
        self._lane(call, join(), "consult")

    def _consult_handover(self, call: LiveCall, first: SeatLeg, decision: ConsultHandover) -> None:
        consult_leg = self.legs.get(call.consult_leg or "")
        if consult_leg is None or call.consult_id is None or call.consult_line is None:
            return
        from_line, from_seat = decision.from_line, decision.from_seat
        self.feed(CallEnded(decision.first_acd_id))  # the first seat's part is over: wrap-up
        call.acd_id, call.line = call.consult_id, call.consult_line
        call.seat, call.seat_leg = consult_leg.seat, consult_leg.id
        call.consult_id = call.consult_leg = call.consult_line = None
        now = self.clock()
        self.writer.submit(AddTransfer(id=call.ticket_id, from_line=from_line, to_line=call.line, seat=from_seat,
                                       reason="three-way consult", at=now))
        self.writer.submit(SetSeat(id=call.ticket_id, seat=consult_leg.seat, at=now))
        log.info("event=consult_handover ticket=%s from_seat=%s to_seat=%s line=%s", call.ticket_id, from_seat,
                 consult_leg.seat, call.line)
        self.emit("call_transferred", {**call.summary(), "from_line": from_line, "by_seat": from_seat,
                                        "reason": "three-way consult"})

    def seat_dtmf(self, leg_id: str, digit: str) -> None:
        """In-call codes a seat keys on its phone (callflow.in_call_codes): *1 hands the
        caller to the line ranked first (110), *9 to the line ranked last (96345)."""
        leg = self.legs.get(leg_id)
        if leg is None:
            return
        leg.dtmf, code = dtmf_step(leg.dtmf, digit, self._codes)
        if code is None:
            return
        to_line = self._codes[code]
        try:
            self.transfer(leg.call_id, to_line, f"seat keyed {code}", by_seat=leg.seat)
        except TransferError as exc:
            log.warning("event=transfer_refused seat=%s code=%s error=%s", leg.seat, code, q(exc.details))

    def seat_refer(self, raw: dict[str, Any]) -> None:
        """A seat's phone sent a blind transfer (SIP REFER) to one of the lines.

        The seat legs carry PJSIP_TRANSFER_HANDLING()=ari-only, so Asterisk leaves the
        REFER to us (ChannelTransfer event) instead of redirecting the caller into the
        dialplan: the caller then keeps their place and their ticket like any transfer.
        """
        refer = parse_refer(raw)
        dest = refer.destination
        leg = self.legs.get(refer.leg_id)
        if leg is None:
            return
        to_line = refer_line(dest, self.acd.config)
        if to_line is None:
            log.warning("event=refer_refused seat=%s destination=%s: only %s", leg.seat, q(dest),
                        " or ".join(self.acd.config.line_ids))
            return
        try:
            self.transfer(leg.call_id, to_line, f"seat transferred (REFER to {dest})", by_seat=leg.seat)
        except TransferError as exc:
            # Asterisk reports some REFERs twice: the second finds the call already moved
            log.info("event=refer_ignored seat=%s error=%s", leg.seat, q(exc.details))
            return
        self.tasks.spawn(self._transfer_progress(leg.id), name=f"refer-progress:{leg.id}")

    async def _transfer_progress(self, leg_id: str) -> None:
        # tells the phone its transfer succeeded (NOTIFY 200) before we hang its leg up
        try:
            await self.ari.request("POST", f"/channels/{leg_id}/transfer_progress", params={"states": "channel_answered"})
        except AriError as exc:
            log.debug("event=transfer_progress_failed leg=%s error=%s", leg_id, q(exc))

    def reconfigure(self, config: LinesConfig, *, raise_refusal: bool = False) -> None:
        """New lines configuration (validated by the caller); no call is dropped. The core
        refuses one that drops a line (AcdError, raised with ``raise_refusal``)."""
        self.feed(Reconfigure(config), raise_refusal=raise_refusal)
        before, self._endpoint_seat = self._endpoint_seat, endpoint_seats(self.acd.config)
        self._codes = in_call_codes(self.acd.config)
        if set(self._endpoint_seat) - set(before):
            # a seat endpoint not watched yet: its registration events from now on
            self.tasks.spawn(self.watch_seats(), name="watch-seats")
        log.info("event=lines_reloaded source=%s", config.source)

    def tick(self) -> None:
        if not self.acting():
            return  # a standby engine (callrouter.ha): nothing of its own to time
        self.feed(Tick())
        surplus = self.holding.surplus()
        if surplus:
            self.tasks.spawn(self.holding.remove(surplus), name="hold-surplus")
        if self.mixing_sweep.due():
            self.tasks.spawn(self.mixing_sweep.sweep(), name="mixing-sweep")
