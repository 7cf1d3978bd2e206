"""Capacity simulator: the real ACD core on a virtual clock.

Discrete-event: callers arrive as Poisson streams whose rate follows the scenario's
curve, talk for a drawn handle time and hang up if not answered within their drawn
patience; seats answer after a drawn ring delay or not at all. Every input goes
through :meth:`Acd.handle` exactly as the shell would send it, and the simulator plays
the shell for the actions that come back. All randomness lives here, seeded: the same
scenario and seed give the same arrivals, handle times and patience whatever the
overflow policy or the staffing, so policies and staffing plans are compared on
identical traffic.

Seats log in and out as the scenario's shifts say (a seat on a call finishes it
first). The clock ticks every ``tick_s`` on a fixed grid, but a Tick that the core says
cannot change anything (:meth:`Acd.tick_due`: nobody waiting or ringing, overflow off,
no wrap-up ending) is skipped: the results are the same as ticking every time
(``every_tick=True``), and a quiet day costs a fraction of the time. With
``exact_wrap_up`` a seat's wrap-up ends exactly when due (WrapUpDone), not at the next
Tick: the engine ticks every 0.5 s, so a coarser simulated tick (cheaper when the
overflow policy is busy) then only delays the policy, never the seats.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from callrouter.acd.actions import (
    Action,
    CancelOffer,
    Connect,
    Offer,
    OverflowChanged,
    SeatStateChanged,
)
from callrouter.acd.core import MISSED_OFFERS, Acd
from callrouter.acd.events import (
    CallAbandoned,
    CallArrived,
    CallEnded,
    CallTransferred,
    Event,
    OfferAnswered,
    OfferFailed,
    SeatLogin,
    SeatLogout,
    SeatRegistered,
    SeatResume,
    Tick,
    WrapUpDone,
)
from callrouter.acd.lines import LinesConfig, OverflowPolicyName
from callrouter.acd.model import SeatState
from callrouter.capacity.scenario import Draw, Scenario, Stream

# event kinds, in the order they run when they fall on the same instant: a shift change
# before the callers of that instant, the Tick after everything else
_STAFF, _ARRIVE, _ANSWER, _NO_ANSWER, _END, _TRANSFER, _ABANDON, _RESUME, _WRAPPED, _TICK = range(10)
# share of a misrouted call spent with the first line's seat before the transfer
TRANSFER_TALK_SHARE = 0.3
INTERVAL_S = 900  # the per-interval breakdown in the report: quarter hours (run_simulation's default)


class Interval(NamedTuple):
    """The callers who joined a line in one interval, and what became of them."""

    start_s: float
    offered: int
    answered_in_target: int
    answered: int = 0
    abandoned: int = 0
    longest_wait_s: float = 0.0  # answered or abandoned, whichever waited longest

    def as_dict(self) -> dict[str, Any]:
        return {"start_s": self.start_s, "offered": self.offered,
                "answered_in_target": self.answered_in_target, "answered": self.answered,
                "abandoned": self.abandoned, "longest_wait_s": round(self.longest_wait_s, 1)}


@dataclass
class _Caller:
    id: str
    stream: Stream
    arrived_at: float
    handle_s: float
    patience_s: float
    will_transfer: bool
    line: str
    joined_at: float
    waiting: bool = True
    generation: int = 0  # bumps on transfer, so an old patience deadline is ignored
    offer: tuple[str, int] | None = None  # (seat, attempt) ringing now
    attempts: int = 0
    ring_rng: random.Random | None = None


# an interval's running figures: offered, in target, answered, abandoned, longest wait
_OFFERED, _IN_TARGET, _ANSWERED, _ABANDONED, _LONGEST = range(5)


@dataclass
class LineTally:
    target_s: float
    interval_s: float = INTERVAL_S
    offered: int = 0
    answered: int = 0
    answered_in_target: int = 0
    abandoned: int = 0
    transferred_out: int = 0
    waits: list[float] = field(default_factory=list)
    waiting_now: int = 0
    peak_waiting: int = 0
    overflow_seats_now: int = 0
    overflow_active: bool = False
    overflow_seat_s: float = 0.0
    overflow_active_s: float = 0.0
    overflow_changed_at: float = 0.0
    overflow_activations: int = 0
    overflow_first_on_s: float | None = None
    # interval index -> [offered, in target, answered, abandoned, longest wait]
    intervals: dict[int, list[float]] = field(default_factory=dict)

    def joined(self, at: float) -> None:
        self.offered += 1
        self.waiting_now += 1
        self.peak_waiting = max(self.peak_waiting, self.waiting_now)
        self.intervals.setdefault(int(at // self.interval_s), [0, 0, 0, 0, 0.0])[_OFFERED] += 1

    def left_queue(self, joined_at: float, wait_s: float, *, answered: bool) -> None:
        row = self.intervals[int(joined_at // self.interval_s)]
        if answered:
            row[_ANSWERED] += 1
            if wait_s <= self.target_s:
                row[_IN_TARGET] += 1
        else:
            row[_ABANDONED] += 1
        row[_LONGEST] = max(row[_LONGEST], wait_s)

    def overflow(self, at: float, active: bool, seats: int) -> None:
        span = at - self.overflow_changed_at
        self.overflow_seat_s += self.overflow_seats_now * span
        if self.overflow_active:
            self.overflow_active_s += span
        if active and not self.overflow_active:
            self.overflow_activations += 1
            if self.overflow_first_on_s is None:
                self.overflow_first_on_s = at
        self.overflow_active, self.overflow_seats_now = active, seats
        self.overflow_changed_at = at


@dataclass(frozen=True)
class LineReport:
    offered: int
    answered: int
    answered_in_target: int
    service_level: float  # answered within target_s / offered
    answer_rate: float  # answered / offered (the "connection rate")
    target_s: float
    wait_p50_s: float
    wait_p90_s: float
    wait_p99_s: float
    abandoned: int
    transferred_out: int
    peak_waiting: int
    overflow_seat_minutes: float
    overflow_active_minutes: float
    overflow_activations: int
    overflow_first_on_s: float | None
    intervals: tuple[Interval, ...]  # by the interval the callers joined the line in

    def as_dict(self) -> dict[str, Any]:
        return {
            "offered": self.offered,
            "answered": self.answered,
            "answered_in_target": self.answered_in_target,
            "service_level": round(self.service_level, 4),
            "answer_rate": round(self.answer_rate, 4),
            "target_s": self.target_s,
            "wait_p50_s": round(self.wait_p50_s, 1),
            "wait_p90_s": round(self.wait_p90_s, 1),
            "wait_p99_s": round(self.wait_p99_s, 1),
            "abandoned": self.abandoned,
            "transferred_out": self.transferred_out,
            "peak_waiting": self.peak_waiting,
            "overflow_seat_minutes": round(self.overflow_seat_minutes, 1),
            "overflow_active_minutes": round(self.overflow_active_minutes, 1),
            "overflow_activations": self.overflow_activations,
            "overflow_first_on_s": self.overflow_first_on_s,
            "intervals": [iv.as_dict() for iv in self.intervals],
        }


@dataclass(frozen=True)
class SimResult:
    scenario: str
    seed: int
    policy: str  # "predictive", "wait_threshold" or "as configured"
    simulated_s: float  # until the last caller left
    traffic_s: float  # the arrival window (scenario duration)
    wall_s: float
    events: int
    calls: int
    lines: dict[str, LineReport]
    core_counters: dict[str, dict[str, int]]  # the core's own counters, for cross-checks

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "seed": self.seed,
            "policy": self.policy,
            "simulated_s": round(self.simulated_s, 1),
            "traffic_s": self.traffic_s,
            "wall_s": round(self.wall_s, 3),
            "events": self.events,
            "calls": self.calls,
            "lines": {lid: rep.as_dict() for lid, rep in self.lines.items()},
        }


def run_simulation(
    scenario: Scenario,
    *,
    policy: OverflowPolicyName | None = None,
    seed: int | None = None,
    duration_s: float | None = None,
    lines: LinesConfig | None = None,
    interval_s: float = INTERVAL_S,
    every_tick: bool = False,
    exact_wrap_up: bool = False,
) -> SimResult:
    """Run ``scenario`` once; ``policy`` overrides every line's overflow policy.

    ``interval_s``: the length of the report's intervals. ``every_tick``: feed every
    Tick of the grid, even those the core says change nothing (same results, slower).
    ``exact_wrap_up``: seats end their wrap-up exactly when it is due, not at the Tick.
    """
    if interval_s <= 0:
        raise ValueError("interval_s must be > 0")
    config = lines if lines is not None else scenario.lines
    if policy is not None:
        config = config.with_policy(policy)
    run = _Run(
        scenario,
        config,
        scenario.seed if seed is None else seed,
        scenario.duration_s if duration_s is None else duration_s,
        interval_s=interval_s,
        every_tick=every_tick,
        exact_wrap_up=exact_wrap_up,
    )
    return run.go(policy or "as configured")


def _draw(rng: random.Random, draw: Draw) -> float:
    if draw.distribution == "lognormal":
        mu = math.log(draw.mean_s) - draw.sigma**2 / 2
        return rng.lognormvariate(mu, draw.sigma)
    return rng.expovariate(1.0 / draw.mean_s)


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class _Run:
    def __init__(
        self, scenario: Scenario, config: LinesConfig, seed: int, duration_s: float, *,
        interval_s: float = INTERVAL_S, every_tick: bool = False, exact_wrap_up: bool = False,
    ) -> None:
        self.scenario = scenario
        self.config = config
        self.seed = seed
        self.duration_s = duration_s
        self.every_tick = every_tick
        self.exact_wrap_up = exact_wrap_up
        self.seat_line: dict[str, str] = {}  # seat -> line of its last call (its wrap-up time)
        self.wrap_ends: dict[str, float] = {}  # seat -> when its wrap-up is due (exact_wrap_up)
        self.acd = Acd(config)
        self.heap: list[tuple[float, int, int, str, str, int]] = []
        self.seq = 0
        self.callers: dict[str, _Caller] = {}
        self.live = 0
        self.events = 0
        self.tally = {ln.id: LineTally(ln.target_s, interval_s) for ln in config.lines}
        self.logged_in: set[str] = set()  # seats the shifts logged in (and not out since)
        self.tick_ks: set[int] = set()  # grid indexes of the Ticks in the heap that count
        self.pooled = bool(config.pool)  # some line has pool seats: its overflow policy moves seats
        self.last_k = -1  # grid index of the last Tick fed

    def push(self, at: float, kind: int, a: str = "", b: str = "", n: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (at, kind, self.seq, a, b, n))

    # --- traffic --------------------------------------------------------------------
    def _generate(self) -> int:
        count = 0
        for stream in self.scenario.streams:
            rng = random.Random(f"{self.seed}:{stream.name}")
            n = 0
            if stream.callers is not None:
                count += self._replay(stream, rng)
                continue
            points = stream.rate_per_min
            for (a, ra), (b, rb) in itertools.pairwise(points):
                b = min(b, self.duration_s)
                peak = max(ra, rb) / 60.0
                if a >= b or peak <= 0:
                    continue
                t = a
                while True:
                    t += rng.expovariate(peak)
                    if t >= b:
                        break
                    rate = (ra + (rb - ra) * (t - a) / (b - a)) / 60.0
                    if rng.random() * peak > rate:
                        continue  # thinning: keep each candidate with rate(t) / peak
                    n += 1
                    caller = _Caller(
                        id=f"{stream.name}#{n}",
                        stream=stream,
                        arrived_at=t,
                        handle_s=_draw(rng, stream.handle),
                        patience_s=_draw(rng, stream.patience),
                        will_transfer=stream.transfer_to is not None
                        and rng.random() < stream.transfer_probability,
                        line=stream.line,
                        joined_at=t,
                    )
                    self.callers[caller.id] = caller
                    self.push(t, _ARRIVE, caller.id)
            count += n
        return count

    def _replay(self, stream: Stream, rng: random.Random) -> int:
        """Callers given one by one (a recorded run), not drawn."""
        n = 0
        for at, handle_s, patience_s in stream.callers or ():
            if at >= self.duration_s:
                continue
            n += 1
            caller = _Caller(
                id=f"{stream.name}#{n}", stream=stream, arrived_at=at, handle_s=handle_s,
                patience_s=patience_s,
                will_transfer=stream.transfer_to is not None
                and rng.random() < stream.transfer_probability,
                line=stream.line, joined_at=at,
            )
            self.callers[caller.id] = caller
            self.push(at, _ARRIVE, caller.id)
        return n

    def _staff(self) -> None:
        """Push every shift change: the line's own seats, then the pool ("overflow")."""
        for line in self.config.lines:
            for at, count in self.scenario.shift(line.id, len(line.seats)):
                self.push(at, _STAFF, line.id, "", count)
        for at, count in self.scenario.shift("overflow", 0):
            self.push(at, _STAFF, "overflow", "", count)

    def _shift(self, key: str, count: int, now: float) -> None:
        """``count`` seats of ``key`` logged in from now on.

        More: the first seats not logged in join (a seat still finishing its last call
        stays). Fewer: free seats leave before seats on a call (those finish the call and
        wrap-up first), the last seats of the list first: when the staffing drops, the
        agent who is free goes, as in a real shift change.
        """
        if key == "overflow":
            ids = [seat.id for seat in self.config.pool]
        else:
            ids = [seat.id for seat in self.config.line(key).seats]
        busy = (SeatState.RINGING, SeatState.ON_CALL, SeatState.WRAP_UP)
        staffed = [seat for seat in ids if seat in self.logged_in]
        if len(staffed) > count:
            order = sorted(range(len(staffed)), key=lambda i: (self.acd.seat_state(staffed[i]) in busy, -i))
            for i in order[: len(staffed) - count]:
                self.logged_in.discard(staffed[i])
                self._feed(SeatLogout(staffed[i]), now)  # after the call and wrap-up, if on one
            return
        free = [seat for seat in ids if seat not in self.logged_in]
        free.sort(key=lambda seat: self.acd.seat_state(seat) not in busy)  # stable: list order within
        for seat in free[: count - len(staffed)]:
            self.logged_in.add(seat)
            self._feed(SeatRegistered(seat, True), now)
            self._feed(SeatLogin(seat), now)

    def _want_tick(self, at: float, *, also: bool = False) -> None:
        """A Tick at the first grid point at or after ``at`` (and after the last Tick).

        Not when an earlier Tick is in the heap already (it decides about the next one),
        unless ``also``: the Tick at the end of the traffic window, where ticking on
        every grid point would stop the run.
        """
        tick = self.scenario.tick_s
        k = max(math.ceil(at / tick - 1e-9), self.last_k + 1)
        if k in self.tick_ks or (not also and self.tick_ks and min(self.tick_ks) <= k):
            return
        self.tick_ks.add(k)
        self.push(k * tick, _TICK, "", "", k)

    # --- the loop -------------------------------------------------------------------
    def go(self, policy_label: str) -> SimResult:
        started = time.perf_counter()
        calls = self._generate()
        self._staff()
        self._want_tick(0.0)
        self._want_tick(self.duration_s, also=True)
        now = 0.0
        while self.heap:
            now, kind, _, a, b, n = heapq.heappop(self.heap)
            if kind == _TICK:
                if n not in self.tick_ks:
                    continue  # superseded by an earlier Tick
                self.tick_ks.discard(n)
                self.last_k = n
                if now >= self.duration_s and self.live == 0:
                    break
                self._feed(Tick(), now)
                due = -math.inf if self.every_tick else self.acd.tick_due()
                if due < math.inf:
                    self._want_tick(max(due, now))
                continue
            if self.pooled:
                # the Tick that follows any event on the grid runs: it is what lets the
                # predictive policy see a new arrival
                self._want_tick(now)
            else:
                # no pool: a Tick only ends rings and wrap-ups (Acd.tick_due)
                due = self.acd.tick_due()
                if due < math.inf:
                    self._want_tick(max(due, now))
            if kind == _STAFF:
                self._shift(a, n, now)
            elif kind == _ARRIVE:
                caller = self.callers[a]
                self.live += 1
                self.tally[caller.line].joined(now)
                self.push(now + caller.patience_s, _ABANDON, a, "", caller.generation)
                s = caller.stream
                self._feed(CallArrived(a, s.line, s.priority, now), now)
            elif kind == _ANSWER or kind == _NO_ANSWER:
                caller = self.callers[a]
                if caller.offer == (b, n):
                    caller.offer = None
                    ev: Event = (
                        OfferAnswered(a, b) if kind == _ANSWER else OfferFailed(a, b, "no_answer")
                    )
                    self._feed(ev, now)
            elif kind == _ABANDON:
                caller = self.callers[a]
                if caller.waiting and caller.generation == n:
                    self._leave(caller, now, abandoned=True)
                    self._feed(CallAbandoned(a), now)
            elif kind == _END:
                self._leave(self.callers[a], now, abandoned=False)
                self._feed(CallEnded(a), now)
            elif kind == _TRANSFER:
                self._transfer(self.callers[a], now)
            elif kind == _RESUME and self.acd.seat_state(b) is SeatState.PAUSED:
                self._feed(SeatResume(b), now)
            elif (kind == _WRAPPED and self.wrap_ends.get(b) == now
                  and self.acd.seat_state(b) is SeatState.WRAP_UP):
                del self.wrap_ends[b]
                self._feed(WrapUpDone(b), now)
        wall = time.perf_counter() - started
        for tally in self.tally.values():
            tally.overflow(now, tally.overflow_active, tally.overflow_seats_now)
        snap = self.acd.snapshot(now)
        return SimResult(
            scenario=self.scenario.name,
            seed=self.seed,
            policy=policy_label,
            simulated_s=now,
            traffic_s=self.duration_s,
            wall_s=wall,
            events=self.events,
            calls=calls,
            lines={lid: self._report(t) for lid, t in self.tally.items()},
            core_counters={
                lid: {k: v for k, v in line["service"].items() if isinstance(v, int)}
                for lid, line in snap["lines"].items()
            },
        )

    def _feed(self, event: Event, now: float) -> None:
        self.events += 1
        for action in self.acd.handle(event, now):
            self._apply(action, now)

    # --- playing the shell ----------------------------------------------------------
    def _apply(self, action: Action, now: float) -> None:
        if isinstance(action, Offer):
            caller = self.callers[action.call_id]
            caller.attempts += 1
            caller.offer = (action.seat, caller.attempts)
            if caller.ring_rng is None:
                caller.ring_rng = random.Random(f"{self.seed}:{caller.id}:ring")
            rng = caller.ring_rng
            seats = self.scenario.seats
            delay = rng.uniform(seats.ring_delay_min_s, seats.ring_delay_max_s)
            if rng.random() < seats.no_answer_probability or delay >= action.timeout_s:
                # the shell's own report; the core may have timed the ring out first
                self.push(now + action.timeout_s, _NO_ANSWER, caller.id, action.seat,
                          caller.attempts)
            else:
                self.push(now + delay, _ANSWER, caller.id, action.seat, caller.attempts)
        elif isinstance(action, CancelOffer):
            caller = self.callers[action.call_id]
            if caller.offer is not None and caller.offer[0] == action.seat:
                caller.offer = None
        elif isinstance(action, Connect):
            self.seat_line[action.seat] = action.line
            caller = self.callers[action.call_id]
            caller.waiting = False
            caller.offer = None
            tally = self.tally[action.line]
            tally.waiting_now -= 1
            tally.answered += 1
            tally.waits.append(action.wait_s)
            if action.wait_s <= tally.target_s:
                tally.answered_in_target += 1
            tally.left_queue(caller.joined_at, action.wait_s, answered=True)
            if caller.will_transfer and caller.line == caller.stream.line:
                self.push(now + caller.handle_s * TRANSFER_TALK_SHARE, _TRANSFER, caller.id)
            else:
                self.push(now + caller.handle_s, _END, caller.id)
        elif isinstance(action, OverflowChanged):
            self.tally[action.line].overflow(now, action.active, len(action.seats))
        elif (isinstance(action, SeatStateChanged) and action.state is SeatState.WRAP_UP
              and self.exact_wrap_up and action.seat in self.seat_line):
            due = now + self.config.line(self.seat_line[action.seat]).wrap_up_s
            self.wrap_ends[action.seat] = due
            self.push(due, _WRAPPED, "", action.seat)
        elif (
            isinstance(action, SeatStateChanged)
            and action.state is SeatState.PAUSED
            and action.reason == MISSED_OFFERS
            and self.scenario.seats.resume_after_s > 0
        ):
            self.push(now + self.scenario.seats.resume_after_s, _RESUME, "", action.seat)
        # CallQueued and Announce only matter to callers' ears

    def _leave(self, caller: _Caller, now: float, *, abandoned: bool) -> None:
        self.live -= 1
        if abandoned:
            caller.waiting = False
            tally = self.tally[caller.line]
            tally.waiting_now -= 1
            tally.abandoned += 1
            tally.left_queue(caller.joined_at, now - caller.joined_at, answered=False)

    def _transfer(self, caller: _Caller, now: float) -> None:
        target = caller.stream.transfer_to
        if target is None:
            return
        self.tally[caller.line].transferred_out += 1
        caller.line = target
        caller.joined_at = now
        caller.waiting = True
        caller.generation += 1
        self.tally[target].joined(now)
        self.push(now + caller.patience_s, _ABANDON, caller.id, "", caller.generation)
        self._feed(CallTransferred(caller.id, target, escalated=caller.stream.escalate), now)

    def _report(self, t: LineTally) -> LineReport:
        waits = sorted(t.waits)
        offered = max(1, t.offered)
        return LineReport(
            offered=t.offered,
            answered=t.answered,
            answered_in_target=t.answered_in_target,
            service_level=t.answered_in_target / offered if t.offered else 1.0,
            answer_rate=t.answered / offered if t.offered else 1.0,
            target_s=t.target_s,
            wait_p50_s=_percentile(waits, 0.50),
            wait_p90_s=_percentile(waits, 0.90),
            wait_p99_s=_percentile(waits, 0.99),
            abandoned=t.abandoned,
            transferred_out=t.transferred_out,
            peak_waiting=t.peak_waiting,
            overflow_seat_minutes=t.overflow_seat_s / 60,
            overflow_active_minutes=t.overflow_active_s / 60,
            overflow_activations=t.overflow_activations,
            overflow_first_on_s=t.overflow_first_on_s,
            intervals=tuple(
                Interval(k * t.interval_s, int(v[_OFFERED]), int(v[_IN_TARGET]), int(v[_ANSWERED]),
                         int(v[_ABANDONED]), v[_LONGEST])
                for k, v in sorted(t.intervals.items())
            ),
        )
