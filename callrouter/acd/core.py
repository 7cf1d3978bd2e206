"""The ACD core: ``Acd.handle(event, now) -> [actions]``.

A pure state machine in the manner of h11: no I/O, no clock, no randomness. The shell
feeds it what happened with the current time and executes the actions it returns, in
order. The same object runs under Asterisk, in unit tests and in the simulator.

Policy in brief (details at each handler):

* callers are ordered by effective priority (ageing), escalation, original arrival;
* the head caller goes to the ready, registered seat serving the line that has been
  idle longest; the line's own seats before extra ones, seats that already missed this
  caller last;
* an offer not taken (``no_answer``, ``busy`` or ``error`` reported, or the ring
  timeout seen on Tick) puts the caller back at their original place at once and
  counts a miss; ``max_missed_offers`` in a row pause the seat with reason
  ``missed_offers``; a seat that missed goes to the back of the idle order;
* the shell bridges caller and seat on ``Connect``, never on the raw answer: a late
  answer (ring timed out, caller gone) gets ``CancelOffer`` instead;
* duplicate or stale reports are ignored; an unknown seat or line raises AcdError
  before anything changes;
* after a call the seat wraps up for the line's ``wrap_up_s``;
* the overflow policy (``overflow.py``) runs on Tick and assigns pool seats.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from callrouter.acd.actions import (
    Action,
    Announce,
    CallQueued,
    CancelOffer,
    Connect,
    Offer,
    OverflowChanged,
    SeatStateChanged,
)
from callrouter.acd.errors import AcdError, UnknownLine, UnknownSeat
from callrouter.acd.events import (
    AddSeat,
    CallAbandoned,
    CallArrived,
    CallEnded,
    CallTransferred,
    Event,
    OfferAnswered,
    OfferFailed,
    RaisePriority,
    Reconfigure,
    RemoveSeat,
    SeatLogin,
    SeatLogout,
    SeatPause,
    SeatRegistered,
    SeatResume,
    Tick,
    WrapUpDone,
)
from callrouter.acd.lines import MAX_PRIORITY, MIN_PRIORITY, LinesConfig, seat_name_problem
from callrouter.acd.model import STAFFED, Call, CallState, Seat, SeatState
from callrouter.acd.overflow import LineLoad, decide
from callrouter.acd.snapshot import dump, load
from callrouter.acd.state import AcdState, LineRuntime, seats_from_config

MISSED_OFFERS = "missed_offers"


class Acd:
    def __init__(self, config: LinesConfig, *, _state: AcdState | None = None) -> None:
        if _state is None:
            _state = AcdState(config=config, lines={}, seats={}, calls={}, ringing={})
            for cfg in config.lines:
                _state.lines[cfg.id] = LineRuntime.new(cfg)
            for seat in seats_from_config(config):
                _state.seats[seat.id] = seat
        self._s = _state
        self._fresh: list[Call] = []  # joined a queue during this handle()
        self._pooled: tuple[LinesConfig | None, frozenset[str]] = (None, frozenset())  # tick_due's

    # --- public -------------------------------------------------------------------
    @property
    def config(self) -> LinesConfig:
        return self._s.config

    def handle(self, event: Event, now: float) -> list[Action]:
        """Apply ``event`` at time ``now``; return what the shell should do, in order."""
        out: list[Action] = []
        match event:
            case CallArrived():
                self._arrived(event, now)
            case CallTransferred():
                self._transferred(event, now, out)
            case CallAbandoned() | CallEnded():
                self._hung_up(event.call_id, now, out)
            case RaisePriority():
                self._raise_priority(event)
            case OfferAnswered():
                self._answered(event, now, out)
            case OfferFailed():
                call = self._s.ringing.get(event.call_id)
                if call is not None and call.seat == event.seat:
                    self._offer_failed(call, now, out)
                # else: a duplicate (we timed the ring out first) or stale report
            case SeatLogin():
                self._login(self._seat(event.seat), now, out)
            case SeatLogout():
                self._logout(self._seat(event.seat), now, out)
            case SeatRegistered():
                seat = self._seat(event.seat)
                if seat.registered != event.registered:
                    seat.registered = event.registered
                    out.append(_changed(seat))
            case SeatPause():
                self._pause(self._seat(event.seat), event.reason, now, out)
            case SeatResume():
                self._resume(self._seat(event.seat), now, out)
            case WrapUpDone():
                seat = self._seat(event.seat)
                if seat.state is SeatState.WRAP_UP:
                    self._finish_wrap_up(seat, now, out)
            case Tick():
                self._tick(now, out)
            case AddSeat():
                self._add_seat(event, now, out)
            case RemoveSeat():
                self._remove_seat(event, now, out)
            case Reconfigure():
                self._reconfigure(event.config, now, out)
            case _:
                raise AcdError(f"not an ACD event: {event!r}")
        self._dispatch(now, out)
        self._report_queued(now, out)
        return out

    def snapshot(self, now: float) -> dict[str, Any]:
        """JSON-ready state for supervisors and for :meth:`from_snapshot`."""
        return dump(self._s, now)

    @classmethod
    def from_snapshot(cls, config: LinesConfig, data: Mapping[str, Any]) -> Acd:
        """Rebuild after a restart: waiting callers in order, seats on calls.

        Offers that were ringing come back as waiting callers at their original place
        (the shell hangs up any seat leg left over) and their seats as ready.
        """
        return cls(config, _state=load(config, data))

    # read-only views (the shell, the simulator and tests use them)
    def seat_state(self, seat: str) -> SeatState:
        return self._seat(seat).state

    def seat_reason(self, seat: str) -> str:
        return self._seat(seat).reason

    def seat_registered(self, seat: str) -> bool:
        return self._seat(seat).registered

    def waiting(self, line: str, now: float) -> list[str]:
        """Call ids waiting on ``line``, next first."""
        return [c.id for c in self._line(line).queue.ordered(now)]

    def overflow_seats(self, line: str) -> tuple[str, ...]:
        self._line(line)
        return tuple(s.id for s in self._s.seats.values() if line in s.extra_lines)

    def overflow_active(self, line: str) -> bool:
        return self._line(line).overflow.active

    def call_state(self, call_id: str) -> CallState | None:
        call = self._s.calls.get(call_id)
        return None if call is None else call.state

    def tick_due(self) -> float:
        """The earliest time a Tick can move a call or a seat, judged just after a Tick.

        ``-inf`` while a line that pool seats may serve has callers waiting or its
        overflow on: every Tick counts there. Otherwise the earliest ring deadline or
        end of wrap-up, or ``inf``: until then, and until another event comes, a Tick
        offers no call and moves no seat. With nobody waiting and the overflow off,
        neither policy can switch on without a new arrival (``late`` needs a waiting
        caller; the arrival count behind ``short`` only falls while nobody calls), and a
        line no pool seat may serve has no seat for its overflow to move (its on/off
        state is then not followed between events). The simulator skips the other
        Ticks (a day of them costs seconds); the engine simply ticks.
        """
        config = self._s.config
        if self._pooled[0] is not config:  # the pool seats' may_serve, once per configuration
            self._pooled = (config, frozenset(line for seat in config.pool for line in seat.lines))
        pooled = self._pooled[1]
        for line_id, line in self._s.lines.items():
            if line_id in pooled and (len(line.queue) or line.overflow.active):
                return -math.inf
        due = [c.offer_deadline for c in self._s.ringing.values() if c.offer_deadline is not None]
        due += [s.wrap_until for s in self._s.seats.values()
                if s.state is SeatState.WRAP_UP and s.wrap_until is not None]
        return min(due, default=math.inf)

    # --- lookups --------------------------------------------------------------------
    def _seat(self, seat_id: str) -> Seat:
        seat = self._s.seats.get(seat_id)
        if seat is None:
            raise UnknownSeat(seat_id)
        return seat

    def _line(self, line_id: str) -> LineRuntime:
        line = self._s.lines.get(line_id)
        if line is None:
            raise UnknownLine(line_id)
        return line

    def _set(self, seat: Seat, state: SeatState, now: float, out: list[Action],
             reason: str = "") -> None:
        seat.state, seat.since, seat.reason = state, now, reason
        out.append(_changed(seat))

    # --- callers --------------------------------------------------------------------
    def _arrived(self, ev: CallArrived, now: float) -> None:
        line = self._line(ev.line)
        if ev.call_id in self._s.calls:
            return  # duplicate: the shell re-announced a call we already hold
        self._s.seq += 1
        call = Call(
            id=ev.call_id,
            line=ev.line,
            # a caller is never refused: an out-of-range priority is clamped
            priority=min(MAX_PRIORITY, max(MIN_PRIORITY, ev.priority)),
            arrived_at=ev.arrived_at,
            queued_at=now,
            escalated=ev.escalated,
            seq=self._s.seq,
            announced_at=now,
        )
        self._s.calls[call.id] = call
        self._join(line, call, now)

    def _join(self, line: LineRuntime, call: Call, now: float) -> None:
        line.counters.offered += 1
        line.arrivals.record(now)
        line.queue.add(call)
        self._fresh.append(call)

    def _transferred(self, ev: CallTransferred, now: float, out: list[Action]) -> None:
        target = self._line(ev.to_line)
        call = self._s.calls.get(ev.call_id)
        if call is None:
            return
        source = self._s.lines[call.line]
        if call.state is CallState.ON_CALL:
            seat = self._s.seats.get(call.seat or "")
            if seat is not None:
                self._release_after_call(call, seat, now, out)
        elif call.state is CallState.RINGING:
            seat = self._withdraw_offer(call, now, out, requeue=False)
            self._drop_if_retired(seat, now, out)
        else:
            source.queue.remove(call)
        source.counters.transferred_out += 1
        call.line = ev.to_line
        if ev.priority is not None:
            call.priority = min(MAX_PRIORITY, max(MIN_PRIORITY, ev.priority))
        call.escalated = ev.escalated
        call.state, call.seat, call.answered_at = CallState.WAITING, None, None
        call.queued_at = call.announced_at = now
        call.tried.clear()
        self._join(target, call, now)

    def _raise_priority(self, ev: RaisePriority) -> None:
        call = self._s.calls.get(ev.call_id)
        priority = min(MAX_PRIORITY, max(MIN_PRIORITY, ev.priority))
        if call is None or priority >= call.priority:
            return  # gone, or already as urgent: never lowered
        queue = self._s.lines[call.line].queue
        waiting = call.state is CallState.WAITING and call.id in queue
        if waiting:
            queue.remove(call)  # the queue groups callers by priority: out, change, back in
        call.priority = priority
        if waiting:
            queue.add(call)

    def _hung_up(self, call_id: str, now: float, out: list[Action]) -> None:
        call = self._s.calls.get(call_id)
        if call is None:
            return  # already gone: duplicate hang-up
        if call.state is CallState.ON_CALL:
            seat = self._s.seats.get(call.seat or "")
            del self._s.calls[call.id]
            if seat is not None:
                self._release_after_call(call, seat, now, out)
            return
        line = self._s.lines[call.line]
        line.counters.abandoned += 1
        if call.state is CallState.RINGING:
            seat = self._withdraw_offer(call, now, out, requeue=False)
            self._drop_if_retired(seat, now, out)
        else:
            line.queue.remove(call)
        del self._s.calls[call.id]

    # --- offers ---------------------------------------------------------------------
    def _dispatch(self, now: float, out: list[Action]) -> None:
        for line in self._s.lines.values():
            queue = line.queue
            while len(queue):
                call = queue.head(now)
                if call is None:
                    break
                seat = self._pick_seat(line.cfg.id, call)
                if seat is None:
                    break
                self._offer(line, call, seat, now, out)

    def _pick_seat(self, line_id: str, call: Call) -> Seat | None:
        best: Seat | None = None
        best_key: tuple[bool, bool, float, str] | None = None
        for seat in self._s.seats.values():
            if (
                seat.state is not SeatState.READY
                or not seat.registered
                or seat.retiring
                or not seat.serves(line_id)
            ):
                continue
            key = (seat.id in call.tried, seat.home != line_id, seat.idle_since, seat.id)
            if best_key is None or key < best_key:
                best, best_key = seat, key
        return best

    def _offer(
        self, line: LineRuntime, call: Call, seat: Seat, now: float, out: list[Action]
    ) -> None:
        line.queue.remove(call)
        timeout = line.cfg.ring_timeout_s
        call.state, call.seat, call.offer_deadline = CallState.RINGING, seat.id, now + timeout
        self._s.ringing[call.id] = call
        seat.call_id, seat.call_line = call.id, call.line
        out.append(Offer(call.id, seat.id, seat.endpoint, timeout, call.line))
        self._set(seat, SeatState.RINGING, now, out)

    def _answered(self, ev: OfferAnswered, now: float, out: list[Action]) -> None:
        call = self._s.ringing.get(ev.call_id)
        if call is None or call.seat != ev.seat:
            live = self._s.calls.get(ev.call_id)
            if live is not None and live.state is CallState.ON_CALL and live.seat == ev.seat:
                return  # duplicate answer report
            # lost a race (timed out, caller gone, offered elsewhere): drop that leg
            out.append(CancelOffer(ev.call_id, ev.seat))
            return
        seat = self._seat(ev.seat)
        line = self._s.lines[call.line]
        del self._s.ringing[call.id]
        call.state, call.answered_at, call.offer_deadline = CallState.ON_CALL, now, None
        wait = now - call.queued_at
        line.counters.answered += 1
        if wait <= line.cfg.target_s:
            line.counters.answered_in_target += 1
        seat.missed = 0
        out.append(Connect(call.id, seat.id, call.line, wait))
        self._set(seat, SeatState.ON_CALL, now, out)

    def _offer_failed(self, call: Call, now: float, out: list[Action]) -> None:
        """The seat did not take the offer: caller back at their place, miss counted."""
        seat = self._seat(call.seat or "")
        line = self._s.lines[call.line]
        line.counters.offers_failed += 1
        call.tried.add(seat.id)
        self._requeue(call)
        seat.call_id = seat.call_line = None
        seat.missed += 1
        seat.idle_since = now  # to the back of the idle order
        if seat.missed >= line.cfg.max_missed_offers:
            self._set(seat, SeatState.PAUSED, now, out, MISSED_OFFERS)
        else:
            self._set(seat, SeatState.READY, now, out)
        self._drop_if_retired(seat, now, out)

    def _withdraw_offer(
        self, call: Call, now: float, out: list[Action], *, requeue: bool
    ) -> Seat:
        """Cancel a ringing offer without blaming the seat; the seat is ready again."""
        seat = self._seat(call.seat or "")
        out.append(CancelOffer(call.id, seat.id))
        if requeue:
            self._requeue(call)
        else:
            del self._s.ringing[call.id]
        seat.call_id = seat.call_line = None
        self._set(seat, SeatState.READY, now, out)
        return seat

    def _requeue(self, call: Call) -> None:
        del self._s.ringing[call.id]
        call.state, call.seat, call.offer_deadline = CallState.WAITING, None, None
        self._s.lines[call.line].queue.add(call)

    # --- seats ----------------------------------------------------------------------
    def _release_after_call(
        self, call: Call, seat: Seat, now: float, out: list[Action]
    ) -> None:
        line = self._s.lines.get(call.line)
        if line is not None and call.answered_at is not None:
            line.talk.record(now - call.answered_at)
        seat.call_id = None
        wrap = line.cfg.wrap_up_s if line is not None else 0.0
        if wrap > 0:
            seat.wrap_until = now + wrap
            self._set(seat, SeatState.WRAP_UP, now, out)
        else:
            self._finish_wrap_up(seat, now, out)

    def _finish_wrap_up(self, seat: Seat, now: float, out: list[Action]) -> None:
        seat.wrap_until = None
        seat.call_line = None
        seat.idle_since = now
        pending, seat.pending = seat.pending, None
        if pending == "logout":
            self._set(seat, SeatState.LOGGED_OUT, now, out)
        elif pending == "pause":
            self._set(seat, SeatState.PAUSED, now, out, seat.pending_reason)
        else:
            self._set(seat, SeatState.READY, now, out)
        self._drop_if_retired(seat, now, out)

    def _login(self, seat: Seat, now: float, out: list[Action]) -> None:
        if seat.pending == "logout":
            seat.pending = None  # changed their mind during the call
            return
        if seat.state is SeatState.LOGGED_OUT:
            seat.missed = 0
            seat.idle_since = now
            self._set(seat, SeatState.READY, now, out)

    def _logout(self, seat: Seat, now: float, out: list[Action]) -> None:
        if seat.state in (SeatState.ON_CALL, SeatState.WRAP_UP):
            seat.pending, seat.pending_reason = "logout", ""
            return
        if seat.state is SeatState.RINGING:
            call = self._s.calls[seat.call_id or ""]
            self._withdraw_offer(call, now, out, requeue=True)
        if seat.state is not SeatState.LOGGED_OUT:
            self._set(seat, SeatState.LOGGED_OUT, now, out)
        self._drop_if_retired(seat, now, out)

    def _pause(self, seat: Seat, reason: str, now: float, out: list[Action]) -> None:
        if seat.state in (SeatState.ON_CALL, SeatState.WRAP_UP):
            seat.pending, seat.pending_reason = "pause", reason
            return
        if seat.state is SeatState.LOGGED_OUT:
            return
        if seat.state is SeatState.RINGING:
            call = self._s.calls[seat.call_id or ""]
            self._withdraw_offer(call, now, out, requeue=True)
        if seat.state is not SeatState.PAUSED or seat.reason != reason:
            self._set(seat, SeatState.PAUSED, now, out, reason)

    def _resume(self, seat: Seat, now: float, out: list[Action]) -> None:
        if seat.pending == "pause":
            seat.pending = None
        if seat.state is SeatState.PAUSED:
            seat.missed = 0
            self._set(seat, SeatState.READY, now, out)

    def _add_seat(self, ev: AddSeat, now: float, out: list[Action]) -> None:
        line = self._line(ev.line)
        seat = self._s.seats.get(ev.seat)
        if seat is None:
            problem = seat_name_problem(ev.seat) or seat_name_problem(ev.endpoint or ev.seat, "endpoint")
            if problem:
                raise AcdError(problem)
            seat = Seat(
                id=ev.seat,
                endpoint=ev.endpoint or ev.seat,
                home=None,
                may_serve=frozenset(),
                runtime=True,
                since=now,
            )
            self._s.seats[seat.id] = seat
            out.append(_changed(seat))
        seat.retiring = False
        if seat.home == ev.line or ev.line in seat.pinned_lines:
            return
        seat.pinned_lines.add(ev.line)
        out.append(self._overflow_changed(line, "supervisor"))

    def _remove_seat(self, ev: RemoveSeat, now: float, out: list[Action]) -> None:
        seat = self._seat(ev.seat)
        if ev.line is not None:
            self._line(ev.line)
            if ev.line == seat.home:
                raise AcdError(
                    f"{seat.id} is one of line {seat.home}'s own seats: log it out or "
                    "remove it from queues/lines.toml instead"
                )
        lines = [ev.line] if ev.line is not None else sorted(seat.extra_lines)
        for line_id in lines:
            if line_id in seat.extra_lines:
                seat.pinned_lines.discard(line_id)
                # the policy may assign a pool seat again while the line still needs it
                seat.overflow_lines.discard(line_id)
                out.append(self._overflow_changed(self._s.lines[line_id], "supervisor"))
        if seat.runtime and not seat.extra_lines:
            seat.retiring = True
            self._drop_if_retired(seat, now, out)

    def _drop_if_retired(self, seat: Seat, now: float, out: list[Action]) -> None:
        if not seat.retiring or seat.state not in (
            SeatState.LOGGED_OUT, SeatState.READY, SeatState.PAUSED
        ):
            return
        if seat.state is not SeatState.LOGGED_OUT:
            self._set(seat, SeatState.LOGGED_OUT, now, out, "removed")
        self._s.seats.pop(seat.id, None)

    def _reconfigure(self, config: LinesConfig, now: float, out: list[Action]) -> None:
        missing = [line for line in self._s.lines if line not in config.line_ids]
        if missing:
            raise AcdError(
                f"the new configuration drops line(s) {', '.join(missing)}; "
                "lines cannot be removed while the engine runs"
            )
        lines: dict[str, LineRuntime] = {}
        for cfg in config.lines:
            runtime = self._s.lines.get(cfg.id)
            if runtime is None:
                runtime = LineRuntime.new(cfg)
            else:
                runtime.reconfigure(cfg)
            lines[cfg.id] = runtime
        self._s.lines = lines
        self._s.config = config
        wanted = {seat.id: seat for seat in seats_from_config(config)}
        for seat_id, fresh in wanted.items():
            seat = self._s.seats.get(seat_id)
            if seat is None:
                fresh.since = now
                self._s.seats[seat_id] = fresh
                out.append(_changed(fresh))
                continue
            seat.endpoint, seat.home, seat.may_serve = fresh.endpoint, fresh.home, fresh.may_serve
            seat.runtime = seat.retiring = False
            seat.overflow_lines &= seat.may_serve
        for seat in list(self._s.seats.values()):
            if seat.id not in wanted and not seat.runtime:
                seat.retiring = True
                seat.overflow_lines.clear()
                self._drop_if_retired(seat, now, out)

    # --- time -----------------------------------------------------------------------
    def _tick(self, now: float, out: list[Action]) -> None:
        for call in list(self._s.ringing.values()):
            if call.offer_deadline is not None and call.offer_deadline <= now:
                out.append(CancelOffer(call.id, call.seat or ""))
                self._offer_failed(call, now, out)
        for seat in list(self._s.seats.values()):
            if (
                seat.state is SeatState.WRAP_UP
                and seat.wrap_until is not None
                and seat.wrap_until <= now
            ):
                self._finish_wrap_up(seat, now, out)
        loads = self._loads(now)
        for line in self._s.lines.values():
            self._evaluate_overflow(line, loads[line.cfg.id], now, out)
            if line.cfg.announce_interval_s is not None:
                self._announce(line, line.cfg.announce_interval_s, now, out)

    def _loads(self, now: float) -> dict[str, LineLoad]:
        """Every line's load in one pass over the seats (this runs on every Tick)."""
        own = dict.fromkeys(self._s.lines, 0)
        serving = dict.fromkeys(self._s.lines, 0)
        pool = dict.fromkeys(self._s.lines, 0)
        logged_out, paused = SeatState.LOGGED_OUT, SeatState.PAUSED
        for seat in self._s.seats.values():
            # STAFFED by identity: hashing an enum member calls Python code, and this runs
            # for every seat on every Tick
            state, home = seat.state, seat.home
            staffed = seat.registered and state is not logged_out and state is not paused
            if home is not None and home in own:
                if staffed:
                    own[home] += 1
                    serving[home] += 1
            else:
                for line_id in seat.may_serve:
                    if line_id in pool:
                        pool[line_id] += 1
            if staffed and (seat.overflow_lines or seat.pinned_lines):  # most seats: no set built
                for line_id in seat.extra_lines:
                    if line_id != seat.home and line_id in serving:
                        serving[line_id] += 1
        loads: dict[str, LineLoad] = {}
        for line_id, line in self._s.lines.items():
            oldest = line.queue.oldest_queued_at()
            loads[line_id] = LineLoad(
                oldest_wait_s=0.0 if oldest is None else max(0.0, now - oldest),
                arrivals_in_window=line.arrivals.count(now),
                window_s=line.arrivals.window_s,
                aht_s=line.aht_s,
                own_staffed=own[line_id],
                serving_staffed=serving[line_id],
                pool_size=pool[line_id],
            )
        return loads

    def _evaluate_overflow(
        self, line: LineRuntime, load: LineLoad, now: float, out: list[Action]
    ) -> None:
        line_id = line.cfg.id
        decision = decide(line.cfg, line.overflow, load, now)
        was_active = line.overflow.active
        line.overflow = decision.state
        line.predicted_sl = decision.predicted_sl
        if was_active and not decision.state.active:
            for seat in self._s.seats.values():
                # a seat on a call for this line finishes it: only new offers stop
                seat.overflow_lines.discard(line_id)
            out.append(self._overflow_changed(line, decision.trigger))
            return
        if not decision.state.active or (was_active and decision.wanted_seats <= 0):
            return  # off, or on and wanting no more seats: nothing joins, nothing to report
        assigned = [s for s in self._s.seats.values() if line_id in s.overflow_lines]
        working = sum(1 for s in assigned if s.state in STAFFED and s.registered)
        grow = decision.wanted_seats - working
        added = False
        if grow > 0:
            candidates = [
                s
                for s in self._s.seats.values()
                if s.home is None
                and line_id in s.may_serve
                and line_id not in s.overflow_lines
                and s.state in STAFFED
                and s.registered
                and not s.retiring
            ]
            # prefer seats no other line is using, so a shared pool is spread out
            candidates.sort(key=lambda s: (len(s.extra_lines), s.id))
            for seat in candidates[:grow]:
                seat.overflow_lines.add(line_id)
                added = True
        if added or not was_active:
            out.append(self._overflow_changed(line, decision.trigger or "seats"))

    def _overflow_changed(self, line: LineRuntime, trigger: str) -> OverflowChanged:
        seats = tuple(
            s.id for s in self._s.seats.values() if line.cfg.id in s.extra_lines
        )
        return OverflowChanged(line.cfg.id, line.overflow.active, seats, trigger)

    def _serving(self, line_id: str) -> int:
        return sum(
            1
            for s in self._s.seats.values()
            if s.state in STAFFED and s.registered and s.serves(line_id)
        )

    @staticmethod
    def _eta(line: LineRuntime, position: int, serving: int) -> int:
        # a rough figure for the caller: everyone ahead shares the serving seats
        return round(position * line.aht_s / max(1, serving))

    def _announce(
        self, line: LineRuntime, interval: float, now: float, out: list[Action]
    ) -> None:
        due = [c for c in line.queue if now - c.announced_at >= interval]
        if not due:
            return
        serving = self._serving(line.cfg.id)
        for call in due:
            position = line.queue.position(call, now)
            call.announced_at = now
            out.append(Announce(call.id, line.cfg.id, position, self._eta(line, position, serving)))

    def _report_queued(self, now: float, out: list[Action]) -> None:
        fresh, self._fresh = self._fresh, []
        for call in fresh:
            if call.state is not CallState.WAITING or call.id not in self._s.calls:
                continue  # offered at once: no need to queue-announce
            line = self._s.lines[call.line]
            position = line.queue.position(call, now)
            eta = self._eta(line, position, self._serving(call.line))
            out.append(CallQueued(call.id, call.line, position, eta))


def _changed(seat: Seat) -> SeatStateChanged:
    return SeatStateChanged(seat.id, seat.state, seat.reason, seat.registered)
