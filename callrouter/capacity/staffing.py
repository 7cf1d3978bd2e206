"""The staffing planner: the fewest seats per hour that meet each line's target.

A day (or a week) of traffic is a :class:`~callrouter.capacity.scenario.Scenario`: streams of
callers per line and category with their arrival rates, handle times and patience
(from a scenario file, or learned from the tickets by :mod:`callrouter.capacity.history`).
Each line's target comes from ``queues/lines.toml`` (``staffing_measure``,
``staffing_level``): 110 90 % answered within 15 s, 96345 95 % connected.

The search runs the real ACD core in the simulator over the WHOLE day with an hourly
schedule of seats, because hours interact: callers still waiting when an hour ends are
served by the next hour's seats. Erlang C (with the target shortened by the mean ring
delay, and the mean wait held below the callers' patience for "connected") gives the
first guess per hour; then every simulated day moves every hour one step at once: an
hour that misses its target gets seats, an hour that meets it tries one fewer, until
each hour sits one seat above a count that missed. The same seeds (the same callers)
are used for every candidate, so candidates differ only by their seats. The figures of
an hour are summed over the seeds before they are judged (the target is met on
average, not on one lucky day).

Then the overflow pool: the pool seats to keep at hand each hour so that the targets
still hold when traffic runs ``surge`` above the forecast (default +20 %), with the own
seats as planned. The seats the surge would need on top of the plan, line by line, are
the first guess; the search then runs with the pool and the lines' real overflow policy
(the pool joins a line only when the policy calls it in). A pool seat serves the lines
``lines.toml`` lets it serve; beyond the configured pool the planner adds seats that
serve every line, and says so.

:func:`what_if` runs any traffic with any schedule and reports each hour: service level,
connected share, abandons, longest wait.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from callrouter.acd import erlang
from callrouter.acd.lines import LineConfig, LinesConfig, PoolSeatConfig, SeatConfig, StaffingMeasure
from callrouter.capacity.scenario import Scenario, Stream
from callrouter.capacity.simulator import TRANSFER_TALK_SHARE, Interval, run_simulation

PERIOD_S = 3600.0
MAX_SEATS = 300  # per line and for the pool: a plan that needs more is refused
DEFAULT_SEEDS = (1, 2)
CHECK_SEED_OFFSET = 1000  # the plan is checked on other simulated days than it was searched on
# The simulated engine evaluates its overflow policy this often; seats end their wrap-up
# exactly when due whatever the tick (the engine ticks every 0.5 s), and rings end by
# events. Measured (3 seeds of normal-tuesday at +20 % with a 2-seat pool, and the storm
# night on top of it): ticks of 1, 2, 5 and 10 s give the same service level in every
# hour to 0.05 point; 20 s moves an hour by 0.7 points. 10 s costs a fifth of 1 s.
TICK_S = 10.0
DEFAULT_SURGE = 0.2
MAX_PERIODS = 7 * 24 * 4  # a week of quarter hours
MAX_SIMULATIONS = 60  # a search that has not settled by then returns its last plan that met every target
_EPS = 1e-9


# --- targets and figures ---------------------------------------------------------------
@dataclass(frozen=True)
class Goal:
    """What the planner holds one line to."""

    line: str
    measure: StaffingMeasure
    level: float
    target_s: float

    @classmethod
    def of(cls, line: LineConfig) -> Goal:
        measure, level = line.staffing_goal
        return cls(line.id, measure, level, line.target_s)

    def value(self, f: Figures) -> float | None:
        """The measured share (None: nobody called)."""
        if f.offered == 0:
            return None
        return (f.in_target if self.measure == "within_target" else f.answered) / f.offered

    def met(self, f: Figures) -> bool:
        value = self.value(f)
        return value is None or value >= self.level - _EPS

    @property
    def label(self) -> str:
        if self.measure == "within_target":
            return f"{100 * self.level:g} % answered within {self.target_s:g} s"
        return f"{100 * self.level:g} % connected"

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "measure": self.measure, "level": self.level, "target_s": self.target_s,
                "label": self.label}


@dataclass(frozen=True)
class Figures:
    """One line in one period, summed over the runs (seeds)."""

    offered: int = 0
    answered: int = 0
    in_target: int = 0
    abandoned: int = 0
    longest_wait_s: float = 0.0  # the longest of all runs
    runs: int = 0

    def __add__(self, other: Figures) -> Figures:
        return Figures(self.offered + other.offered, self.answered + other.answered,
                       self.in_target + other.in_target, self.abandoned + other.abandoned,
                       max(self.longest_wait_s, other.longest_wait_s), self.runs + other.runs)

    @property
    def service_level(self) -> float | None:
        return self.in_target / self.offered if self.offered else None

    @property
    def connected(self) -> float | None:
        return self.answered / self.offered if self.offered else None

    def per_run(self, count: int) -> float:
        return count / self.runs if self.runs else 0.0

    def as_dict(self) -> dict[str, Any]:
        def share(x: float | None) -> float | None:
            return None if x is None else round(x, 4)
        return {"offered": round(self.per_run(self.offered), 2), "service_level": share(self.service_level),
                "connected": share(self.connected), "abandoned": round(self.per_run(self.abandoned), 2),
                "longest_wait_s": round(self.longest_wait_s, 1), "runs": self.runs}


# --- schedules ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Staffing:
    """Seats per period: each line's own seats and the shared overflow pool."""

    period_s: float
    seats: Mapping[str, tuple[int, ...]]
    pool: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.period_s <= 0:
            raise ValueError("period_s must be > 0")
        lengths = {len(v) for v in self.seats.values()} | {len(self.pool)}
        if len(lengths) != 1:
            raise ValueError("every line and the pool need one count per period")
        if any(n < 0 or n > MAX_SEATS for v in (*self.seats.values(), self.pool) for n in v):
            raise ValueError(f"seat counts must be 0 to {MAX_SEATS}")

    @property
    def periods(self) -> int:
        return len(self.pool)

    @classmethod
    def constant(cls, periods: int, seats: Mapping[str, int], pool: int = 0,
                 period_s: float = PERIOD_S) -> Staffing:
        return cls(period_s, {k: (n,) * periods for k, n in seats.items()}, (pool,) * periods)

    def shifts(self) -> dict[str, tuple[tuple[float, int], ...]]:
        """The scenario's shifts: (from s, seats) where the count changes."""
        out: dict[str, tuple[tuple[float, int], ...]] = {}
        for key, counts in (*self.seats.items(), ("overflow", self.pool)):
            steps: list[tuple[float, int]] = []
            for p, n in enumerate(counts):
                if not steps or steps[-1][1] != n:
                    steps.append((p * self.period_s, n))
            out[key] = tuple(steps) or ((0.0, 0),)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"period_s": self.period_s, "seats": {k: list(v) for k, v in self.seats.items()},
                "pool": list(self.pool)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Staffing:
        """From :meth:`as_dict` (or a plan's JSON, which carries it as ``staffing``)."""
        data = data.get("staffing", data)
        try:
            seats = {str(k): tuple(_count(n) for n in v) for k, v in dict(data["seats"]).items()}
            return cls(float(data["period_s"]), seats, tuple(_count(n) for n in data["pool"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a staffing schedule ({exc}); expected {{\"period_s\": 3600, \"seats\": "
                             "{\"110\": [3, 3, ...], ...}, \"pool\": [0, 0, ...]}") from exc


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{value!r} is not a whole number of seats")
    return value


# --- the traffic -------------------------------------------------------------------------
@dataclass(frozen=True)
class Load:
    """Expected traffic of one line in one period."""

    calls: float  # callers who join the line (transfers in included)
    erlangs: float  # seat time they need (talk, wrap-up, ringing) per second
    patience_s: float  # calls-weighted mean patience


def expected_calls(stream: Stream, start_s: float, end_s: float) -> float:
    """Callers the stream brings in [start, end): the area under its rate curve."""
    if stream.callers is not None:
        return float(sum(1 for at, _, _ in stream.callers if start_s <= at < end_s))
    total = 0.0
    points = stream.rate_per_min
    for (t0, r0), (t1, r1) in itertools.pairwise(points):
        a, b = max(start_s, t0), min(end_s, t1)
        if b <= a or t1 <= t0:
            continue
        ra = r0 + (r1 - r0) * (a - t0) / (t1 - t0)
        rb = r0 + (r1 - r0) * (b - t0) / (t1 - t0)
        total += (ra + rb) / 2 * (b - a) / 60.0
    return total


def period_loads(scenario: Scenario, periods: int, period_s: float = PERIOD_S) -> dict[str, list[Load]]:
    """Each line's expected calls and seat time per period (transfers counted on both lines)."""
    ring = (scenario.seats.ring_delay_min_s + scenario.seats.ring_delay_max_s) / 2
    wrap = {line.id: line.wrap_up_s for line in scenario.lines.lines}
    calls = {lid: [0.0] * periods for lid in wrap}
    busy = {lid: [0.0] * periods for lid in wrap}
    patience = {lid: [0.0] * periods for lid in wrap}
    for stream in scenario.streams:
        h = stream.handle.mean_s
        p = stream.transfer_probability if stream.transfer_to is not None else 0.0
        for i in range(periods):
            n = expected_calls(stream, i * period_s, (i + 1) * period_s)
            if n <= 0:
                continue
            line = stream.line
            calls[line][i] += n
            patience[line][i] += n * stream.patience.mean_s
            busy[line][i] += n * ((1 - p) * h + p * TRANSFER_TALK_SHARE * h + wrap[line] + ring)
            if p and stream.transfer_to in calls:
                to = stream.transfer_to
                calls[to][i] += n * p
                patience[to][i] += n * p * stream.patience.mean_s
                busy[to][i] += n * p * (h + wrap[to] + ring)
    return {lid: [Load(c, b / period_s, (patience[lid][i] / c) if c else 0.0)
                  for i, (c, b) in enumerate(zip(calls[lid], busy[lid], strict=True))] for lid in calls}


def erlang_seats(goal: Goal, load: Load, ring_s: float, period_s: float = PERIOD_S,
                 max_seats: int = MAX_SEATS) -> int:
    """The first guess: Erlang C for the period's mean traffic.

    Within target: the target shortened by the mean ring delay (a caller's wait ends when
    the seat answers, not when it rings). Connected: the mean wait held below the share
    of the callers' patience they may lose, ``(1 - level) * patience`` (Erlang C has no
    patience; a caller with exponential patience gives up with about wait/patience).
    """
    if load.calls <= 0:
        return 0
    rate = load.calls / period_s
    aht = load.erlangs / rate
    if goal.measure == "within_target":
        return erlang.agents_needed(rate, aht, max(0.0, goal.target_s - ring_s), goal.level,
                                    max_agents=max_seats)
    allowed = (1 - goal.level) * max(load.patience_s, 1.0)
    n = max(1, math.floor(load.erlangs) + 1)
    while n < max_seats and erlang.average_speed_of_answer(rate, aht, n) > allowed:
        n += 1
    return n


def scaled(scenario: Scenario, factor: float) -> Scenario:
    """The same traffic, ``factor`` times as many callers at every moment."""
    if factor < 0:
        raise ValueError("factor must be >= 0")
    return dataclasses.replace(scenario, streams=tuple(
        dataclasses.replace(s, rate_per_min=tuple((t, r * factor) for t, r in s.rate_per_min))
        for s in scenario.streams))


def overlay(base: Scenario, extra: Scenario, at_s: float) -> Scenario:
    """``extra``'s callers on top of ``base``'s, ``extra`` starting at ``at_s`` of the day.

    Streams of ``extra`` are renamed ``<extra>: <stream>`` (their own random draws,
    whatever ``base`` calls its own streams).
    """
    if at_s < 0:
        raise ValueError("at_s must be >= 0")
    extra_lines = {s.line for s in extra.streams} | {s.transfer_to for s in extra.streams if s.transfer_to}
    missing = extra_lines - set(base.lines.line_ids)
    if missing:
        raise ValueError(f"{extra.name} has callers for line(s) {', '.join(sorted(missing))} that "
                         f"{base.lines.source} does not have")
    moved = tuple(
        dataclasses.replace(s, name=f"{extra.name}: {s.name}",
                            rate_per_min=tuple((t + at_s, r) for t, r in s.rate_per_min),
                            callers=None if s.callers is None else tuple(
                                (t + at_s, h, p) for t, h, p in s.callers))
        for s in extra.streams)
    end = max(base.duration_s, at_s + extra.duration_s)
    return dataclasses.replace(base, name=f"{base.name} + {extra.name}",
                               description=f"{base.description}; {extra.name} from {_clock(at_s)}",
                               duration_s=end, streams=base.streams + moved)


def drop_streams(scenario: Scenario, names: Iterable[str]) -> Scenario:
    """Without the named streams: a storm scenario carries its own ordinary evening,
    which the day it is laid on already has (``storm-night: 110 evening``)."""
    dropped = set(names)
    known = {s.name for s in scenario.streams}
    unknown = dropped - known
    if unknown:
        raise ValueError(f"no stream named {', '.join(sorted(unknown))}; streams: {', '.join(sorted(known))}")
    return dataclasses.replace(scenario, streams=tuple(s for s in scenario.streams if s.name not in dropped))


def _clock(seconds: float) -> str:
    s = round(seconds)
    day, s = divmod(s, 86400)
    text = f"{s // 3600:02d}:{s % 3600 // 60:02d}"
    return f"day {day + 1} {text}" if day else text


# --- the seats the simulator may staff ----------------------------------------------------
def expanded_lines(lines: LinesConfig, seats: Mapping[str, int], pool: int, *,
                   with_pool: bool = True) -> LinesConfig:
    """``lines`` with at least ``seats[line]`` seats per line and ``pool`` pool seats.

    Seats beyond ``lines.toml``'s are added for planning only (``<line>-extra-NNN``;
    pool seats ``pool-extra-NNN`` serve every line). ``with_pool=False`` leaves no pool
    at all: the overflow policy then moves no seat and the simulator skips its Ticks.
    """
    out: list[LineConfig] = []
    for line in lines.lines:
        want = seats.get(line.id, 0)
        extra = tuple(SeatConfig(f"{line.id}-extra-{i:03d}", f"{line.id}-extra-{i:03d}")
                      for i in range(len(line.seats) + 1, want + 1))
        out.append(dataclasses.replace(line, seats=line.seats + extra))
    pool_seats: tuple[PoolSeatConfig, ...] = ()
    if with_pool:
        every = tuple(lines.line_ids)
        pool_seats = lines.pool + tuple(PoolSeatConfig(f"pool-extra-{i:03d}", f"pool-extra-{i:03d}", every)
                                        for i in range(len(lines.pool) + 1, pool + 1))
    return dataclasses.replace(lines, lines=tuple(out), pool=pool_seats)


# --- evaluating a schedule ---------------------------------------------------------------
@dataclass(frozen=True)
class Evaluation:
    staffing: Staffing
    figures: dict[str, tuple[Figures, ...]]  # line -> per period, summed over the seeds
    seeds: tuple[int, ...]
    events: int
    wall_s: float


def _simulate(run: Scenario, seed: int, interval_s: float) -> tuple[int, dict[str, tuple[Interval, ...]]]:
    """One simulated horizon (a worker process may run it): events, intervals per line."""
    result = run_simulation(run, seed=seed, interval_s=interval_s, exact_wrap_up=True)
    return result.events, {lid: rep.intervals for lid, rep in result.lines.items()}


def evaluate(scenario: Scenario, staffing: Staffing, seeds: Sequence[int] = DEFAULT_SEEDS, *,
             with_pool: bool = True, tick_s: float | None = TICK_S, executor: Executor | None = None) -> Evaluation:
    """Simulate the whole horizon once per seed with this schedule; figures per period.

    ``tick_s``: the simulated engine's tick (None: the scenario's); wrap-ups end exactly.
    ``executor``: runs the seeds side by side (worker processes: the core is pure Python).
    """
    if not seeds:
        raise ValueError("at least one seed")
    started = time.perf_counter()
    most = {lid: max(v, default=0) for lid, v in staffing.seats.items()}
    lines = expanded_lines(scenario.lines, most, max(staffing.pool, default=0), with_pool=with_pool)
    run = dataclasses.replace(scenario, lines=lines, staffing={}, shifts=staffing.shifts(),
                              tick_s=scenario.tick_s if tick_s is None else tick_s)
    periods = staffing.periods
    sums = {lid: [Figures()] * periods for lid in lines.line_ids}
    events = 0
    if executor is None or len(seeds) == 1:
        results = [_simulate(run, seed, staffing.period_s) for seed in seeds]
    else:
        results = list(executor.map(_simulate, [run] * len(seeds), seeds, [staffing.period_s] * len(seeds)))
    for n, by_line in results:
        events += n
        for lid, intervals in by_line.items():
            row = [Figures(runs=1)] * periods
            for iv in intervals:
                # callers handed over after the last period still belong to the day
                p = min(periods - 1, max(0, round(iv.start_s / staffing.period_s)))
                row[p] = row[p] + Figures(iv.offered, iv.answered, iv.answered_in_target, iv.abandoned,
                                          iv.longest_wait_s)
            sums[lid] = [a + b for a, b in zip(sums[lid], row, strict=True)]
    return Evaluation(staffing, {lid: tuple(v) for lid, v in sums.items()}, tuple(seeds), events,
                      time.perf_counter() - started)


# --- the search ----------------------------------------------------------------------------
@dataclass
class _Search:
    """Counts per period for some keys (lines, or the pool), all moved once per simulated day.

    Per period it keeps the most seats seen to miss and the fewest seen to meet the
    target, and closes in between (a count that met the target under other neighbours
    and misses now is forgotten: the hours interact).
    """

    counts: dict[str, list[int]]
    lo: int
    hi: int
    failed_at: dict[str, list[int]] = field(default_factory=dict)  # lo - 1: none missed yet
    passed_at: dict[str, list[int | None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.failed_at = {k: [self.lo - 1] * len(v) for k, v in self.counts.items()}
        self.passed_at = {k: [None] * len(v) for k, v in self.counts.items()}

    def step(self, missed: Mapping[str, Sequence[float | None]]) -> bool:
        """One move per period from the last day's figures; False when nothing moves.

        ``missed[key][p]``: how far below the target (None: nobody called; <= 0: met).
        """
        moved = False
        for key, counts in self.counts.items():
            failed, passed = self.failed_at[key], self.passed_at[key]
            for p, gap in enumerate(missed[key]):
                n = counts[p]
                if gap is not None and gap > 0:
                    failed[p] = max(failed[p], n)
                    ok = passed[p]
                    if ok is not None and ok <= n:
                        ok = passed[p] = None
                    step = 1 if gap < 0.1 else 2 if gap < 0.3 else 3
                    new = min(self.hi, n + step) if ok is None else (failed[p] + ok + 1) // 2
                else:
                    passed[p] = n if passed[p] is None else min(n, passed[p] or n)
                    room = n - failed[p] - 1  # counts below n not yet seen to miss
                    if room <= 0 or n <= self.lo:
                        new = n
                    elif gap is None:
                        new = max(self.lo, failed[p] + 1)  # nobody called: nothing to miss
                    else:
                        new = max(self.lo, n - (2 if gap < -0.05 and room >= 2 else 1))
                moved |= new != n
                counts[p] = new
        return moved


def _gaps(goals: Mapping[str, Goal], ev: Evaluation) -> dict[str, list[float | None]]:
    out: dict[str, list[float | None]] = {}
    for lid, goal in goals.items():
        row: list[float | None] = []
        for f in ev.figures[lid]:
            value = goal.value(f)
            row.append(None if value is None else goal.level - value)
        out[lid] = row
    return out


def _all_met(goals: Mapping[str, Goal], ev: Evaluation) -> bool:
    return all(goal.met(f) for lid, goal in goals.items() for f in ev.figures[lid])


@dataclass
class _Budget:
    sims: int = 0
    events: int = 0

    def count(self, ev: Evaluation) -> Evaluation:
        self.sims += len(ev.seeds)
        self.events += ev.events
        return ev


def _search_seats(scenario: Scenario, goals: Mapping[str, Goal], start: Mapping[str, Sequence[int]],
                  pool: Sequence[int], seeds: Sequence[int], period_s: float, *, lo: int, hi: int,
                  budget: _Budget, with_pool: bool, executor: Executor | None) -> tuple[Staffing, Evaluation]:
    """Own seats per line and period; the pool stays as given."""
    search = _Search({k: list(v) for k, v in start.items()}, lo, hi)
    best: tuple[Staffing, Evaluation] | None = None
    while True:
        staffing = Staffing(period_s, {k: tuple(v) for k, v in search.counts.items()}, tuple(pool))
        ev = budget.count(evaluate(scenario, staffing, seeds, with_pool=with_pool, executor=executor))
        if _all_met(goals, ev):
            best = (staffing, ev)
        if not search.step(_gaps(goals, ev)) or budget.sims >= MAX_SIMULATIONS * len(seeds):
            break
    return best if best is not None else (staffing, ev)


def _search_pool(scenario: Scenario, goals: Mapping[str, Goal], seats: Mapping[str, tuple[int, ...]],
                 start: Sequence[int], seeds: Sequence[int], period_s: float, *, budget: _Budget,
                 rounds: int, executor: Executor | None) -> tuple[Staffing, Evaluation]:
    """Pool seats per period (one count shared by the lines); the own seats stay."""
    search = _Search({"pool": list(start)}, 0, MAX_SEATS)
    best: tuple[Staffing, Evaluation] | None = None
    for _ in range(rounds):
        staffing = Staffing(period_s, seats, tuple(search.counts["pool"]))
        ev = budget.count(evaluate(scenario, staffing, seeds, executor=executor))
        gaps = _gaps(goals, ev)
        worst = [max((g for g in col if g is not None), default=None) for col in zip(*gaps.values(), strict=True)]
        if all(g is None or g <= 0 for g in worst):
            best = (staffing, ev)
        if not search.step({"pool": worst}):
            break
    return best if best is not None else (staffing, ev)


# --- the report ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PeriodRow:
    """One line in one period of a plan or a what-if."""

    line: str
    period: int
    start_s: float
    calls: float  # expected callers (forecast)
    load_erl: float  # expected seat time per second
    seats: int
    pool: int  # shared by the lines: the same in every line's row
    predicted: Figures  # the simulator with these seats (a plan: own seats only, forecast traffic)
    erlang_seats: int | None = None  # a plan: Erlang C's first guess
    surge: Figures | None = None  # a plan: traffic +surge, own seats and the pool
    # a plan: the own seats on simulated days the search never saw (new callers). The
    # search stops at the fewest seats that meet the target on its own days, so there
    # the level sits just above the target; new days give the unbiased forecast
    check: Figures | None = None

    def as_dict(self, goal: Goal) -> dict[str, Any]:
        out: dict[str, Any] = {
            "line": self.line, "period": self.period, "start": _clock(self.start_s), "start_s": self.start_s,
            "calls": round(self.calls, 2), "load_erl": round(self.load_erl, 3), "seats": self.seats,
            "pool": self.pool, "predicted": self.predicted.as_dict(),
            "meets_target": goal.met(self.predicted)}
        if self.erlang_seats is not None:
            out["erlang_seats"] = self.erlang_seats
        if self.surge is not None:
            out["surge"] = {**self.surge.as_dict(), "meets_target": goal.met(self.surge)}
        if self.check is not None:
            out["check"] = self.check.as_dict()
        return out


@dataclass(frozen=True)
class StaffingReport:
    kind: Literal["plan", "what-if"]
    scenario: str
    description: str
    period_s: float
    goals: dict[str, Goal]
    rows: dict[str, tuple[PeriodRow, ...]]
    pool: tuple[int, ...]
    pool_lines: tuple[tuple[str, ...], ...]  # the lines each pool seat serves, first seat first
    configured: dict[str, int]  # seats in lines.toml per line, "overflow": the pool
    seeds: tuple[int, ...]
    surge: float
    simulations: int  # simulated runs of the whole horizon (one per seed and candidate)
    events: int  # events through the ACD core, all runs
    wall_s: float
    notes: tuple[str, ...] = ()
    check_seeds: tuple[int, ...] = ()

    @property
    def periods(self) -> int:
        return len(self.pool)

    def staffing(self) -> Staffing:
        return Staffing(self.period_s, {lid: tuple(r.seats for r in rows) for lid, rows in self.rows.items()},
                        self.pool)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "scenario": self.scenario, "description": self.description,
            "period_s": self.period_s, "periods": self.periods,
            "goals": {lid: g.as_dict() for lid, g in self.goals.items()},
            "staffing": self.staffing().as_dict(),
            "pool_lines": [list(x) for x in self.pool_lines], "configured": self.configured,
            "seeds": list(self.seeds), "check_seeds": list(self.check_seeds), "surge": self.surge,
            "simulations": self.simulations,
            "events": self.events, "wall_s": round(self.wall_s, 3), "notes": list(self.notes),
            "rows": {lid: [r.as_dict(self.goals[lid]) for r in rows] for lid, rows in self.rows.items()},
        }


def _periods(scenario: Scenario, period_s: float) -> int:
    if period_s <= 0:
        raise ValueError("period_s must be > 0")
    periods = max(1, math.ceil(scenario.duration_s / period_s - _EPS))
    if periods > MAX_PERIODS:
        raise ValueError(f"{periods} periods of {period_s:g} s: at most {MAX_PERIODS}")
    return periods


def _pool_lines(lines: LinesConfig, most: int) -> tuple[tuple[str, ...], ...]:
    every = tuple(lines.line_ids)
    return tuple(lines.pool[i].lines if i < len(lines.pool) else every for i in range(most))


def _notes(scenario: Scenario, staffing: Staffing, goals: Mapping[str, Goal], evs: Sequence[Evaluation],
           hi: int) -> list[str]:
    notes = []
    for line in scenario.lines.lines:
        most = max(staffing.seats[line.id], default=0)
        if most > len(line.seats):
            notes.append(f"line {line.id}: {most} seats at the busiest hour, but {scenario.lines.source} lists "
                         f"{len(line.seats)}: add seats (and softphones) before that day")
        capped = [p for p, n in enumerate(staffing.seats[line.id]) if n >= hi]
        if evs and any(not goals[line.id].met(evs[0].figures[line.id][p]) for p in capped):
            notes.append(f"line {line.id}: {hi} seats (--max-seats) are not enough in some hours")
    pool = max(staffing.pool, default=0)
    if pool > len(scenario.lines.pool):
        notes.append(f"overflow pool: {pool} seats at the busiest hour, but {scenario.lines.source} lists "
                     f"{len(scenario.lines.pool)}: the planner counted the others as serving every line")
    for ev in evs:
        if not _all_met(goals, ev):
            notes.append("some hours miss their target even with the most seats tried: see meets_target")
            break
    return notes


@contextmanager
def workers(jobs: int | None, seeds: Sequence[int]) -> Iterator[Executor | None]:
    """Worker processes for the seeds (``jobs`` None: one per core), or None for one."""
    count = min(len(seeds), jobs if jobs is not None else (os.cpu_count() or 1))
    if count <= 1:
        yield None
        return
    with ProcessPoolExecutor(max_workers=count) as pool:
        yield pool


def plan_staffing(scenario: Scenario, *, period_s: float = PERIOD_S, seeds: Sequence[int] = DEFAULT_SEEDS,
                  surge: float = DEFAULT_SURGE, min_seats: int = 1, max_seats: int = MAX_SEATS,
                  pool_rounds: int = 5, jobs: int | None = None,
                  check_seeds: Sequence[int] | None = None) -> StaffingReport:
    """The fewest own seats per line and period for the forecast, and the pool for +surge.

    ``jobs``: worker processes for the seeds (None: one per core, at most one per seed).
    ``check_seeds``: the simulated days the plan is checked on afterwards (default: as
    many as ``seeds``, others); () for none.
    """
    check = tuple(s + CHECK_SEED_OFFSET for s in seeds) if check_seeds is None else tuple(check_seeds)
    with workers(jobs, seeds) as executor:
        return _plan(scenario, period_s, seeds, surge, min_seats, max_seats, pool_rounds, executor, check)


def _plan(scenario: Scenario, period_s: float, seeds: Sequence[int], surge: float, min_seats: int,
          max_seats: int, pool_rounds: int, executor: Executor | None,
          check_seeds: Sequence[int]) -> StaffingReport:
    if not 0 <= min_seats <= max_seats <= MAX_SEATS:
        raise ValueError(f"need 0 <= min_seats <= max_seats <= {MAX_SEATS}")
    if not 0 <= surge <= 5:
        raise ValueError("surge must be 0 to 5 (+0 % to +500 %)")
    started = time.perf_counter()
    periods = _periods(scenario, period_s)
    goals = {line.id: Goal.of(line) for line in scenario.lines.lines}
    ring = (scenario.seats.ring_delay_min_s + scenario.seats.ring_delay_max_s) / 2
    loads = period_loads(scenario, periods, period_s)

    def guesses(ls: Mapping[str, list[Load]]) -> dict[str, list[int]]:
        return {lid: [min(max_seats, max(min_seats, erlang_seats(goals[lid], ld, ring, period_s, max_seats)))
                      for ld in ls[lid]] for lid in goals}

    first = guesses(loads)
    budget = _Budget()
    no_pool = [0] * periods
    own, forecast = _search_seats(scenario, goals, first, no_pool, seeds, period_s, lo=min_seats, hi=max_seats,
                                  budget=budget, with_pool=False, executor=executor)
    pool = tuple(no_pool)
    surged: Evaluation | None = None
    evaluations = [forecast]
    if surge > 0:
        heavy = scaled(scenario, 1 + surge)
        # the pool's first guess: the seats Erlang C adds for the surge, line by line
        more = guesses(period_loads(heavy, periods, period_s))
        extra = [sum(max(0, more[lid][p] - first[lid][p]) for lid in goals) for p in range(periods)]
        with_pool, surged = _search_pool(heavy, goals, own.seats, extra, seeds, period_s, budget=budget,
                                         rounds=pool_rounds, executor=executor)
        pool = with_pool.pool
        evaluations.append(surged)
    checked = None if not check_seeds else budget.count(
        evaluate(scenario, own, check_seeds, with_pool=False, executor=executor))
    rows = {lid: tuple(
        PeriodRow(lid, p, p * period_s, loads[lid][p].calls, loads[lid][p].erlangs, own.seats[lid][p], pool[p],
                  forecast.figures[lid][p], erlang_seats=first[lid][p],
                  surge=None if surged is None else surged.figures[lid][p],
                  check=None if checked is None else checked.figures[lid][p])
        for p in range(periods)) for lid in goals}
    final = Staffing(period_s, own.seats, pool)
    return StaffingReport(
        kind="plan", scenario=scenario.name, description=scenario.description, period_s=period_s, goals=goals,
        rows=rows, pool=pool, pool_lines=_pool_lines(scenario.lines, max(pool, default=0)),
        configured=_configured(scenario.lines), seeds=tuple(seeds), surge=surge, simulations=budget.sims,
        events=budget.events, wall_s=time.perf_counter() - started,
        notes=tuple(_notes(scenario, final, goals, evaluations, max_seats)), check_seeds=tuple(check_seeds))


def what_if(scenario: Scenario, staffing: Staffing, *, seeds: Sequence[int] = DEFAULT_SEEDS,
            jobs: int | None = None) -> StaffingReport:
    """This traffic with these seats: each period's figures per line."""
    started = time.perf_counter()
    periods = _periods(scenario, staffing.period_s)
    missing = set(scenario.lines.line_ids) - set(staffing.seats)
    if missing:
        raise ValueError(f"the schedule has no seats for line(s) {', '.join(sorted(missing))}")
    staffing = _fit(staffing, periods)
    goals = {line.id: Goal.of(line) for line in scenario.lines.lines}
    loads = period_loads(scenario, periods, staffing.period_s)
    with workers(jobs, seeds) as executor:
        ev = evaluate(scenario, staffing, seeds, executor=executor)
    rows = {lid: tuple(PeriodRow(lid, p, p * staffing.period_s, loads[lid][p].calls, loads[lid][p].erlangs,
                                 staffing.seats[lid][p], staffing.pool[p], ev.figures[lid][p])
                       for p in range(periods)) for lid in goals}
    return StaffingReport(
        kind="what-if", scenario=scenario.name, description=scenario.description, period_s=staffing.period_s,
        goals=goals, rows=rows, pool=staffing.pool,
        pool_lines=_pool_lines(scenario.lines, max(staffing.pool, default=0)),
        configured=_configured(scenario.lines), seeds=tuple(seeds), surge=0.0, simulations=len(ev.seeds),
        events=ev.events, wall_s=time.perf_counter() - started,
        notes=tuple(_notes(scenario, staffing, goals, [], MAX_SEATS + 1)))


def _fit(staffing: Staffing, periods: int) -> Staffing:
    """A schedule for ``periods``: a shorter one repeats its last count, a longer one is cut."""
    def fit(v: tuple[int, ...]) -> tuple[int, ...]:
        return (v + (v[-1],) * periods)[:periods] if v else (0,) * periods
    return Staffing(staffing.period_s, {k: fit(v) for k, v in staffing.seats.items()}, fit(staffing.pool))


def scenario_staffing(scenario: Scenario, period_s: float = PERIOD_S) -> Staffing:
    """The scenario's own [staffing] (shifts or constant counts) as a schedule per period.

    The count of a period is the one in force at its start.
    """
    periods = _periods(scenario, period_s)

    def counts(key: str, default: int) -> tuple[int, ...]:
        steps = scenario.shift(key, default)
        return tuple(next(n for t, n in reversed(steps) if t <= p * period_s + _EPS) for p in range(periods))
    return Staffing(period_s, {ln.id: counts(ln.id, len(ln.seats)) for ln in scenario.lines.lines},
                    counts("overflow", 0))


def _configured(lines: LinesConfig) -> dict[str, int]:
    return {**{ln.id: len(ln.seats) for ln in lines.lines}, "overflow": len(lines.pool)}
