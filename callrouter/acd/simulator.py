"""Capacity simulator: the real ACD core on a virtual clock.

Discrete-event: callers arrive as Poisson streams whose rate follows the scenario's
curve, talk for a drawn handle time and hang up if not answered within their drawn
patience; seats answer after a drawn ring delay or not at all. Every input goes
through :meth:`Acd.handle` exactly as the shell would send it, and the simulator plays
the shell for the actions that come back. All randomness lives here, seeded: the same
scenario and seed give the same arrivals, handle times and patience whatever the
overflow policy, so policies are compared on identical traffic.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

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
    SeatRegistered,
    SeatResume,
    Tick,
)
from callrouter.acd.lines import LinesConfig, OverflowPolicyName
from callrouter.acd.model import SeatState
from callrouter.acd.scenario import Draw, Scenario, Stream

# event kinds, in the order they run when they fall on the same instant
_ARRIVE, _ANSWER, _NO_ANSWER, _END, _TRANSFER, _ABANDON, _RESUME, _TICK = range(8)
# share of a misrouted call spent with the first line's seat before the transfer
_TRANSFER_TALK_SHARE = 0.3
INTERVAL_S = 900  # the per-interval breakdown in the report: quarter hours


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


@dataclass
class LineTally:
    target_s: float
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
    # quarter hour -> [offered, answered within target]
    intervals: dict[int, list[int]] = field(default_factory=dict)

    def joined(self, at: float) -> None:
        self.offered += 1
        self.waiting_now += 1
        self.peak_waiting = max(self.peak_waiting, self.waiting_now)
        self.intervals.setdefault(int(at // INTERVAL_S), [0, 0])[0] += 1

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
    intervals: tuple[tuple[int, int, int], ...]  # (start s, offered, in target)

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
            "intervals": [
                {"start_s": s, "offered": o, "answered_in_target": a}
                for s, o, a in self.intervals
            ],
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
) -> SimResult:
    """Run ``scenario`` once; ``policy`` overrides every line's overflow policy."""
    config = lines if lines is not None else scenario.lines
    if policy is not None:
        config = config.with_policy(policy)
    run = _Run(
        scenario,
        config,
        scenario.seed if seed is None else seed,
        scenario.duration_s if duration_s is None else duration_s,
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
        self, scenario: Scenario, config: LinesConfig, seed: int, duration_s: float
    ) -> None:
        self.scenario = scenario
        self.config = config
        self.seed = seed
        self.duration_s = duration_s
        self.acd = Acd(config)
        self.heap: list[tuple[float, int, int, str, str, int]] = []
        self.seq = 0
        self.callers: dict[str, _Caller] = {}
        self.live = 0
        self.events = 0
        self.tally = {ln.id: LineTally(ln.target_s) for ln in config.lines}

    def push(self, at: float, kind: int, a: str = "", b: str = "", n: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (at, kind, self.seq, a, b, n))

    # --- traffic --------------------------------------------------------------------
    def _generate(self) -> int:
        count = 0
        for stream in self.scenario.streams:
            rng = random.Random(f"{self.seed}:{stream.name}")
            n = 0
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

    def _staff(self) -> None:
        for line in self.config.lines:
            wanted = self.scenario.staffing.get(line.id, len(line.seats))
            for seat in line.seats[:wanted]:
                self._feed(SeatRegistered(seat.id, True), 0.0)
                self._feed(SeatLogin(seat.id), 0.0)
        for pool_seat in self.config.pool[: self.scenario.staffing.get("overflow", 0)]:
            self._feed(SeatRegistered(pool_seat.id, True), 0.0)
            self._feed(SeatLogin(pool_seat.id), 0.0)

    # --- the loop -------------------------------------------------------------------
    def go(self, policy_label: str) -> SimResult:
        started = time.perf_counter()
        calls = self._generate()
        self._staff()
        tick = self.scenario.tick_s
        self.push(0.0, _TICK)
        now = 0.0
        while self.heap:
            now, kind, _, a, b, n = heapq.heappop(self.heap)
            if kind == _TICK:
                if now >= self.duration_s and self.live == 0:
                    break
                self.push(now + tick, _TICK)
                self._feed(Tick(), now)
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
            caller = self.callers[action.call_id]
            caller.waiting = False
            caller.offer = None
            tally = self.tally[action.line]
            tally.waiting_now -= 1
            tally.answered += 1
            tally.waits.append(action.wait_s)
            if action.wait_s <= tally.target_s:
                tally.answered_in_target += 1
                tally.intervals[int(caller.joined_at // INTERVAL_S)][1] += 1
            if caller.will_transfer and caller.line == caller.stream.line:
                self.push(now + caller.handle_s * _TRANSFER_TALK_SHARE, _TRANSFER, caller.id)
            else:
                self.push(now + caller.handle_s, _END, caller.id)
        elif isinstance(action, OverflowChanged):
            self.tally[action.line].overflow(now, action.active, len(action.seats))
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
                (k * INTERVAL_S, v[0], v[1]) for k, v in sorted(t.intervals.items())
            ),
        )
