"""The staffing planner against the real engine: a compressed day on Asterisk.

A :class:`Profile` is a day squeezed into minutes: calls per period on one line, talk
times, how fast the seats answer. The planner plans seats per period for it; this
module then places the callers through the SIPp trunk at times drawn like the
simulator draws them (a Poisson stream within each period, each caller launched with
its own wait before the INVITE), starts SIPp seats and logs them into the engine and out
again at every period boundary as planned (a free seat leaves first, as in the
simulator), and reads back from the tickets how long each caller waited.

:func:`replay` then asks the simulator about exactly those callers (their arrival and
talk times as they happened, the seat changes as they were made, the engine's 0.5 s
tick): the figures the planner's model gives when its inputs are right. The planner's
own prediction (Poisson callers it drew itself) differs from one real run by chance
too: :func:`seed_spread` says by how much.

Used by ``tests/e2e/test_staffing_reality.py`` (minutes) and ``scripts/bench_staffing.py``
(longer). Callers never hang up first (they wait for the seat's BYE): the measure is
the share answered within the line's target.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from callrouter.acd.lines import LinesConfig
from callrouter.capacity.scenario import Draw, Scenario, SeatBehaviour, Stream, hourly_rates
from callrouter.capacity.simulator import run_simulation
from callrouter.capacity.staffing import Figures, Staffing, evaluate
from callrouter.config import Settings
from callrouter.sim.seats import SeatSims, SeatSpec, start_seats
from callrouter.sim.trunk import SCENARIO_AT, CallSpec, TrunkReport, run_calls
from callrouter.tickets import TicketStore

Api = Callable[[str, str, "dict[str, object] | None"], "tuple[int, object]"]
NEVER = 1e9  # patience of callers who wait for the seat
LAUNCH_RATE = 40.0  # SIPp starts this many callers a second; each then waits its own time
LEAD_S = 4.0  # the first caller's INVITE comes this long after the launch begins
BUSY = ("ringing", "on_call", "wrap_up")


@dataclass(frozen=True)
class Profile:
    line: str
    number: str  # a number the plan routes to ``line``
    priority: int  # the plan's priority for it
    period_s: float  # a compressed hour
    calls: tuple[float, ...]  # expected callers per period
    talk_s: float  # mean talk time (exponential; each SIPp seat draws its own)
    answer_s: float  # a seat answers this long after its phone rings
    # the engine's signalling on top of answer_s (originate, 200 OK, the bridge): the
    # simulator's ring delay is answer_s plus a uniform draw from this range
    overhead_s: tuple[float, float] = (0.05, 0.35)

    @property
    def duration_s(self) -> float:
        return len(self.calls) * self.period_s

    def stream(self) -> Stream:
        return Stream("calls", self.line, "staffing-check", self.priority,
                      hourly_rates(self.calls, hour_s=self.period_s), Draw(self.talk_s), Draw(NEVER))

    def scenario(self, lines: LinesConfig, *, name: str = "compressed-day") -> Scenario:
        """The profile as the planner sees it (the engine's own 0.5 s tick)."""
        seats = SeatBehaviour(self.answer_s + self.overhead_s[0], self.answer_s + self.overhead_s[1], 0.0, 120.0)
        return Scenario(name=name, description=f"{sum(self.calls):.0f} calls on {self.line} in "
                        f"{len(self.calls)} periods of {self.period_s:g} s", duration_s=self.duration_s, seed=1,
                        lines=lines, tick_s=0.5, staffing={}, seats=seats, streams=(self.stream(),),
                        source="staffing check")


def draw_arrivals(profile: Profile, seed: int) -> list[float]:
    """Arrival times (s from the start): a Poisson stream at each period's rate."""
    rng = random.Random(f"staffing-check:{seed}")
    out: list[float] = []
    for p, calls in enumerate(profile.calls):
        if calls <= 0:
            continue
        t, end = p * profile.period_s, (p + 1) * profile.period_s
        while True:
            t += rng.expovariate(calls / profile.period_s)
            if t >= end:
                break
            out.append(t)
    return out


@dataclass(frozen=True)
class CallRecord:
    caller: str
    planned_s: float  # the arrival time drawn for this caller
    arrived_s: float  # from the run's time zero, as the ticket says
    seated_s: float | None
    ended_s: float | None

    @property
    def wait_s(self) -> float | None:
        return None if self.seated_s is None else self.seated_s - self.arrived_s

    @property
    def talk_s(self) -> float | None:
        return None if self.seated_s is None or self.ended_s is None else self.ended_s - self.seated_s


@dataclass
class RealRun:
    t0: float  # epoch of the run's time zero (the drawn arrival times count from it)
    calls: list[CallRecord]
    shifts: list[tuple[float, int]]  # (s from time zero, seats logged in) as they were made
    trunk: TrunkReport | None
    seats: dict[str, Any] = field(default_factory=dict)  # the SIPp seats' summary
    late_shifts_s: list[float] = field(default_factory=list)  # how late each change was made

    def figures(self, target_s: float, period_s: float, periods: int) -> list[Figures]:
        """Per period of arrival: offered, answered, answered within ``target_s``."""
        out = [Figures(runs=1)] * periods
        for c in self.calls:
            p = min(periods - 1, max(0, int(c.arrived_s // period_s)))
            wait = c.wait_s
            answered = wait is not None
            out[p] = out[p] + Figures(1, int(answered), int(answered and wait is not None and wait <= target_s),
                                      0, wait or 0.0)
        return out


def _epoch(value: object) -> float | None:
    return None if value is None else datetime.fromisoformat(str(value)).timestamp()


def _set_seats(api: Api, seats: Sequence[str], logged_in: list[str], count: int) -> None:
    """``count`` of ``seats`` logged in: as the simulator's shift change (a free seat
    leaves first, the last one first; a seat finishing a call stays before a fresh one joins)."""
    _, body = api("GET", "/api/status", None)
    states = {s: v.get("state") for s, v in (body.get("seats", {}) if isinstance(body, dict) else {}).items()}
    if len(logged_in) > count:
        order = sorted(range(len(logged_in)), key=lambda i: (states.get(logged_in[i]) in BUSY, -i))
        leaving = [logged_in[i] for i in order[: len(logged_in) - count]]
        for seat in leaving:
            code, reply = api("POST", f"/api/seats/{seat}/logout", None)
            if code != 200:
                raise RuntimeError(f"logout {seat}: {code} {reply}")
            logged_in.remove(seat)
        return
    free = sorted((s for s in seats if s not in logged_in), key=lambda s: states.get(s) not in BUSY)
    for seat in free[: count - len(logged_in)]:
        code, reply = api("POST", f"/api/seats/{seat}/login", None)
        if code != 200:
            raise RuntimeError(f"login {seat}: {code} {reply}")
        logged_in.append(seat)
    logged_in.sort(key=list(seats).index)


def _wait_registered(api: Api, seats: Sequence[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        _, body = api("GET", "/api/status", None)
        known = body.get("seats", {}) if isinstance(body, dict) else {}
        if all(known.get(s, {}).get("registered") for s in seats):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"seats not registered with the engine after {timeout_s:.0f} s: "
                               f"{[s for s in seats if not known.get(s, {}).get('registered')]}")
        time.sleep(0.2)


def run_real(settings: Settings, api: Api, db_url: str, profile: Profile, counts: Sequence[int],
             arrivals: Sequence[float], seats: Sequence[str], *, seed: int = 1,
             drain_timeout_s: float = 180.0) -> RealRun:
    """The compressed day on the running engine: seats as ``counts`` per period.

    ``seats``: SIPp seats to run (lines.toml's, at least max(counts)). Blocking; the
    engine must be running with the profile's lines.
    """
    if len(counts) != len(profile.calls):
        raise ValueError("one seat count per period")
    need = max(counts, default=0)
    if need > len(seats):
        raise ValueError(f"the plan needs {need} seats, {len(seats)} given")
    group: SeatSims = start_seats(settings, [SeatSpec(s, answer_delay_s=profile.answer_s, talk_s=profile.talk_s)
                                             for s in seats[:need]], seed=seed)
    used = list(seats[:need])
    logged_in: list[str] = []
    try:
        _wait_registered(api, used, 30.0)
        _set_seats(api, used, logged_in, counts[0])
        callers = [f"139{seed % 1000:03d}{i:05d}" for i in range(len(arrivals))]
        specs = [CallSpec(profile.number, caller, -1, start_s=LEAD_S + at - i / LAUNCH_RATE)
                 for i, (caller, at) in enumerate(zip(callers, arrivals, strict=True))]
        if any(s.start_s < 0 for s in specs):
            raise ValueError("too many callers too early for the launch rate: raise LEAD_S")
        out: list[TrunkReport] = []
        errors: list[Exception] = []

        def place() -> None:
            try:
                out.append(run_calls(settings, specs, LAUNCH_RATE, scenario=SCENARIO_AT,
                                     timeout_s=LEAD_S + profile.duration_s + drain_timeout_s))
            except Exception as exc:  # noqa: BLE001 - handed to the caller, raised there
                errors.append(exc)
        launched = time.time()
        thread = threading.Thread(target=place, name="staffing-check-trunk", daemon=True)
        thread.start()
        zero = launched + LEAD_S
        shifts = [(0.0, counts[0])]
        late: list[float] = []
        for p in range(1, len(counts)):
            due = zero + p * profile.period_s
            time.sleep(max(0.0, due - time.time()))
            late.append(time.time() - due)
            if counts[p] != counts[p - 1]:
                _set_seats(api, used, logged_in, counts[p])
            shifts.append((time.time() - zero, counts[p]))
        thread.join(timeout=LEAD_S + profile.duration_s + drain_timeout_s + 60)
        if errors:
            raise errors[0]
        report = out[0] if out else None
        rows = _closed_tickets(db_url, set(callers), drain_timeout_s)
    finally:
        summary = group.summary()
        group.stop()
    planned = dict(zip(callers, arrivals, strict=True))
    # time zero as the tickets saw it: SIPp's own start adds a few ms to every caller
    offset = statistics.median(_epoch(r["arrived_at"]) - (zero + planned[str(r["caller"])])  # type: ignore[operator]
                               for r in rows) if rows else 0.0
    t0 = zero + offset
    calls = []
    for r in rows:
        arrived, seated, ended = _epoch(r["arrived_at"]), _epoch(r["seat_answered_at"]), _epoch(r["ended_at"])
        assert arrived is not None
        calls.append(CallRecord(str(r["caller"]), planned[str(r["caller"])], max(0.0, arrived - t0),
                                None if seated is None else seated - t0, None if ended is None else ended - t0))
    calls.sort(key=lambda c: c.arrived_s)
    return RealRun(t0, calls, [(max(0.0, t - offset) if i else 0.0, n) for i, (t, n) in enumerate(shifts)], report,
                   summary, late)


def _closed_tickets(db_url: str, callers: set[str], timeout_s: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    with TicketStore(db_url) as store:
        while True:
            rows = [r for r in store.list(limit=100_000) if r["caller"] in callers]
            if len(rows) >= len(callers) and all(r["ended_at"] for r in rows):
                return rows
            if time.monotonic() > deadline:
                return rows
            time.sleep(0.5)


def replay(profile: Profile, lines: LinesConfig, run: RealRun, *, seed: int = 1) -> list[Figures]:
    """The simulator on the run's own callers and seat changes; figures per period."""
    callers = tuple((c.arrived_s, c.talk_s if c.talk_s is not None else profile.talk_s, NEVER) for c in run.calls)
    stream = dataclasses.replace(profile.stream(), rate_per_min=(), callers=callers)
    others = {ln.id: ((0.0, 0),) for ln in lines.lines if ln.id != profile.line}
    scenario = dataclasses.replace(
        profile.scenario(lines), streams=(stream,), staffing={},
        shifts={**others, profile.line: tuple(run.shifts), "overflow": ((0.0, 0),)},
        duration_s=max([profile.duration_s] + [c.arrived_s + 1 for c in run.calls]))
    result = run_simulation(scenario, seed=seed, interval_s=profile.period_s)
    periods = len(profile.calls)
    out = [Figures(runs=1)] * periods
    for iv in result.lines[profile.line].intervals:
        p = min(periods - 1, round(iv.start_s / profile.period_s))
        out[p] = out[p] + Figures(iv.offered, iv.answered, iv.answered_in_target, iv.abandoned, iv.longest_wait_s)
    return out


def seed_spread(profile: Profile, lines: LinesConfig, staffing: Staffing, seeds: Sequence[int]) -> list[float]:
    """The day's service level (within target) under the model, one value per seed: how
    much one run of this profile differs from another by chance alone."""
    scenario = profile.scenario(lines)
    out = []
    for seed in seeds:
        figures = evaluate(scenario, staffing, (seed,), tick_s=None).figures[profile.line]
        total = sum(figures, Figures())
        if total.offered:
            out.append(total.in_target / total.offered)
    return out
