"""Simulator scenarios: ``queues/scenarios/*.toml`` -> :class:`Scenario`.

A scenario says who calls (traffic streams with arrival rates over time), how long
they talk and how long they are willing to wait, which seats are staffed (all the
time, or in shifts) and how seats behave when they ring. Validated like the lines
file: every problem at once, as ``file:line: problem``. See
``queues/scenarios/storm-night.toml`` (rates per minute, linear in between) and
``queues/scenarios/normal-tuesday.toml`` (calls per hour, shifts) for the format.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from callrouter.acd.errors import ConfigFileError
from callrouter.acd.lines import MAX_PRIORITY, MIN_PRIORITY, LinesConfig, load_lines
from callrouter.acd.tomlsource import Problems, TableReader, TomlSource, dotted

Distribution = Literal["exponential", "lognormal"]
DISTRIBUTIONS: tuple[Distribution, ...] = ("exponential", "lognormal")
_FOREVER = 7 * 86400.0  # a constant rate holds for the whole run
MAX_HOURS = 7 * 24  # calls_per_hour: at most a week of hourly values
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.:/-]{0,63}")


@dataclass(frozen=True)
class Draw:
    """A positive random duration: its mean and shape."""

    mean_s: float
    distribution: Distribution = "exponential"
    sigma: float = 0.6  # lognormal only: the spread of the underlying normal


@dataclass(frozen=True)
class Stream:
    """One kind of caller: a Poisson stream whose rate follows ``rate_per_min``."""

    name: str
    line: str
    category: str
    priority: int
    # (time s, calls per minute) points; linear in between, no calls outside
    rate_per_min: tuple[tuple[float, float], ...]
    handle: Draw
    patience: Draw
    transfer_to: str | None = None  # some callers turn out to belong to the other line
    transfer_probability: float = 0.0
    escalate: bool = False  # the transfer goes to the front of its class
    # callers given one by one instead of drawn: (arrival s, handle s, patience s); for
    # replaying a recorded run (not in the TOML format)
    callers: tuple[tuple[float, float, float], ...] | None = None


def hourly_rates(calls_per_hour: tuple[float, ...], start_s: float = 0.0,
                 hour_s: float = 3600.0) -> tuple[tuple[float, float], ...]:
    """``rate_per_min`` points for a step curve: ``calls_per_hour[i]`` in hour ``i``.

    Each step is two points at the same time (the simulator skips the zero-length
    segment between them); no calls after the last hour.
    """
    points: list[tuple[float, float]] = []
    for i, calls in enumerate(calls_per_hour):
        rate = calls * 60.0 / hour_s
        points += [(start_s + i * hour_s, rate), (start_s + (i + 1) * hour_s, rate)]
    if points:
        points.append((points[-1][0], 0.0))
    return tuple(points)


@dataclass(frozen=True)
class SeatBehaviour:
    ring_delay_min_s: float = 2.0
    ring_delay_max_s: float = 6.0
    no_answer_probability: float = 0.0
    resume_after_s: float = 120.0  # a supervisor resumes an auto-paused seat


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    duration_s: float  # callers arrive in [0, duration); the run goes on until all leave
    seed: int
    lines: LinesConfig
    tick_s: float
    staffing: dict[str, int]  # line id -> own seats logged in; "overflow" -> pool seats
    seats: SeatBehaviour
    streams: tuple[Stream, ...]
    source: str
    # line id (or "overflow") -> ((from s, seats), ...): seats that change over time; a
    # key here overrides ``staffing``
    shifts: dict[str, tuple[tuple[float, int], ...]] = field(default_factory=dict)

    def shift(self, key: str, default: int) -> tuple[tuple[float, int], ...]:
        """The seats of ``key`` over time: ((from s, seats), ...), from 0."""
        return self.shifts.get(key) or ((0.0, self.staffing.get(key, default)),)


def load_scenario(path: str | Path, lines_override: str | Path | None = None) -> Scenario:
    """Load and check a scenario and the lines file it names (or ``lines_override``)."""
    source = TomlSource.read(path)
    doc = source.parse()
    problems = Problems(source)
    root = TableReader(doc, (), problems)
    base = Path(path).resolve().parent

    head = root.table("scenario", required=True)
    name = description = None
    duration = tick = None
    seed: int | None = None
    lines_path = base.parent / "lines.toml"
    if head is not None:
        name = head.string("name", pattern=NAME)
        description = head.string("description", default="")
        duration = head.number("duration_s", above=0, maximum=7 * 86400, unit=" seconds")
        seed = head.integer("seed", minimum=0)
        tick = head.number("tick_s", default=1.0, above=0, maximum=10, unit=" seconds")
        rel = head.string("lines", default="")
        if rel:
            lines_path = (base / rel).resolve()
            if not lines_path.is_file() and lines_override is None:
                problems.add(("scenario", "lines"), f"scenario.lines: no file {lines_path}")
        head.reject_unknown()

    staffing: dict[str, int] = {}
    shifts: dict[str, tuple[tuple[float, int], ...]] = {}
    staff = root.table("staffing")
    if staff is not None:
        for key in staff.data:
            if isinstance(staff.data[key], list):
                steps = _shifts(staff, key)
                if steps is not None:
                    shifts[key] = steps
                    staffing[key] = max(n for _, n in steps)
                continue
            count = staff.integer(key, minimum=0, maximum=1000)
            if count is not None:
                staffing[key] = count

    seats = SeatBehaviour()
    seat_t = root.table("seats")
    if seat_t is not None:
        lo = seat_t.number("ring_delay_min_s", default=seats.ring_delay_min_s, minimum=0)
        hi = seat_t.number("ring_delay_max_s", default=seats.ring_delay_max_s, minimum=0)
        p = seat_t.number(
            "no_answer_probability", default=seats.no_answer_probability, minimum=0,
            maximum=1,
        )
        resume = seat_t.number("resume_after_s", default=seats.resume_after_s, minimum=0)
        seat_t.reject_unknown()
        if lo is not None and hi is not None and lo > hi:
            problems.add(
                ("seats", "ring_delay_max_s"),
                "seats.ring_delay_max_s: must not be below ring_delay_min_s",
            )
        seats = SeatBehaviour(lo or 0.0, hi or 0.0, p or 0.0, resume or 0.0)

    streams: list[Stream] = []
    names: set[str] = set()
    traffic = root.tables("traffic")
    if not traffic:
        problems.add(("traffic",), "no [[traffic]] streams: add at least one")
    for t in traffic:
        stream = _stream(t, names)
        if stream is not None:
            streams.append(stream)
    root.reject_unknown(["scenario", "staffing", "seats", "traffic"])
    problems.raise_if_any()
    if name is None or duration is None or seed is None or tick is None or description is None:
        raise ConfigFileError([f"{source.name}:1: [scenario] is incomplete"])
    lines = load_lines(lines_override if lines_override is not None else lines_path)
    _check_lines(root, streams, staffing, lines, problems)
    problems.raise_if_any()
    return Scenario(
        name=name,
        description=description,
        duration_s=duration,
        seed=seed,
        lines=lines,
        tick_s=tick,
        staffing=staffing,
        seats=seats,
        streams=tuple(streams),
        source=source.name,
        shifts=shifts,
    )


def _shifts(t: TableReader, key: str) -> tuple[tuple[float, int], ...] | None:
    """``"110" = [[0, 3], [28800, 8], ...]``: from that second on, that many seats."""
    raw = t.raw(key)
    where = f"{dotted(t.path + (key,))}"
    steps: list[tuple[float, int]] = []
    ok = isinstance(raw, list) and bool(raw)
    for item in raw if isinstance(raw, list) else []:
        if (not isinstance(item, list) or len(item) != 2
                or isinstance(item[0], bool) or not isinstance(item[0], int | float) or item[0] < 0
                or isinstance(item[1], bool) or not isinstance(item[1], int) or not 0 <= item[1] <= 1000):
            ok = False
            break
        steps.append((float(item[0]), int(item[1])))
    if not ok:
        t.problems.add(t.path + (key,), f"{where}: a number of seats (0-1000) or a list of "
                       "[from_s, seats] pairs, e.g. [[0, 3], [28800, 8]]")
        return None
    if steps[0][0] != 0 or any(b[0] <= a[0] for a, b in itertools.pairwise(steps)):
        t.problems.add(t.path + (key,), f"{where}: the first shift starts at 0 and times increase")
        return None
    return tuple(steps)


def _check_lines(
    root: TableReader,
    streams: list[Stream],
    staffing: dict[str, int],
    lines: LinesConfig,
    problems: Problems,
) -> None:
    known = lines.line_ids
    for i, stream in enumerate(streams):
        for key, value in (("line", stream.line), ("transfer_to", stream.transfer_to)):
            if value is not None and value not in known:
                problems.add(
                    ("traffic", i, key),
                    f"traffic[{i + 1}].{key}: unknown line {value!r}; "
                    f"{lines.source} has {', '.join(known)}",
                )
    for key, count in staffing.items():
        if key == "overflow":
            available = len(lines.pool)
        elif key in known:
            available = len(lines.line(key).seats)
        else:
            problems.add(
                ("staffing", key),
                f"staffing.{key}: not a line of {lines.source} nor 'overflow'",
            )
            continue
        if count > available:
            problems.add(
                ("staffing", key),
                f"staffing.{key}: {count} seats staffed but only {available} configured",
            )


def _draw(t: TableReader, prefix: str) -> Draw | None:
    mean = t.number(f"{prefix}_mean_s", above=0, maximum=86400, unit=" seconds")
    dist = t.string(f"{prefix}_distribution", default="exponential", choices=DISTRIBUTIONS)
    sigma = t.number(f"{prefix}_sigma", default=0.6, above=0, maximum=3)
    if mean is None or dist is None or sigma is None:
        return None
    return Draw(mean, "lognormal" if dist == "lognormal" else "exponential", sigma)


def _stream(t: TableReader, names: set[str]) -> Stream | None:
    start = len(t.problems)
    name = t.string("name", pattern=NAME)
    if name is not None:
        if name in names:
            t.problems.add(t.path + ("name",), f"{dotted(t.path)}.name: {name!r} is used twice")
        names.add(name)
    line = t.string("line", pattern=re.compile(r"[0-9]{2,15}"))
    category = t.string("category", default="unlisted")
    priority = t.integer("priority", minimum=MIN_PRIORITY, maximum=MAX_PRIORITY)
    points = _rates(t)
    handle = _draw(t, "handle")
    patience = _draw(t, "patience")
    transfer_to = t.string("transfer_to", default="", pattern=re.compile(r"([0-9]{2,15})?"))
    transfer_p = t.number("transfer_probability", default=0.0, minimum=0, maximum=1)
    escalate = t.raw("escalate")
    if escalate is not None and not isinstance(escalate, bool):
        t.problems.add(t.path + ("escalate",), f"{dotted(t.path)}.escalate: must be true or false")
    if transfer_p and not transfer_to:
        t.problems.add(
            t.path + ("transfer_probability",),
            f"{dotted(t.path)}.transfer_probability: set transfer_to as well",
        )
    t.reject_unknown()
    if len(t.problems) > start:
        return None
    if (
        name is None
        or line is None
        or category is None
        or priority is None
        or points is None
        or handle is None
        or patience is None
        or transfer_p is None
    ):
        return None
    return Stream(
        name=name,
        line=line,
        category=category,
        priority=priority,
        rate_per_min=points,
        handle=handle,
        patience=patience,
        transfer_to=transfer_to or None,
        transfer_probability=transfer_p,
        escalate=bool(escalate),
    )


def _rates(t: TableReader) -> tuple[tuple[float, float], ...] | None:
    hourly = t.raw("calls_per_hour")
    raw = t.raw("rate_per_min")
    where = f"{dotted(t.path)}.rate_per_min"
    path = t.path + ("rate_per_min",)
    if hourly is not None:
        if raw is not None:
            t.problems.add(path, f"{where}: give rate_per_min or calls_per_hour, not both")
            return None
        return _hourly(t, hourly)
    if raw is None:
        t.problems.add(path, f"{where}: missing; add `rate_per_min = [[0, 3.0], [3600, 3.0]]` "
                       "or `calls_per_hour = [12, 8, ...]`")
        return None
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        if raw < 0:
            t.problems.add(path, f"{where}: must be >= 0 calls per minute")
            return None
        return ((0.0, float(raw)), (_FOREVER, float(raw)))
    points: list[tuple[float, float]] = []
    ok = isinstance(raw, list) and bool(raw)
    if ok and isinstance(raw, list):
        for item in raw:
            if (
                not isinstance(item, list)
                or len(item) != 2
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in item)
                or item[0] < 0
                or item[1] < 0
            ):
                ok = False
                break
            points.append((float(item[0]), float(item[1])))
    if not ok:
        t.problems.add(
            path,
            f"{where}: must be a number or a list of [time_s, calls_per_minute] pairs, "
            "both >= 0",
        )
        return None
    if any(b[0] <= a[0] for a, b in itertools.pairwise(points)):
        t.problems.add(path, f"{where}: times must increase")
        return None
    return tuple(points)


def _hourly(t: TableReader, raw: object) -> tuple[tuple[float, float], ...] | None:
    """``calls_per_hour = [12, 8, ...]``: that many calls (on average) in hour 0, 1, ..."""
    if (not isinstance(raw, list) or not 1 <= len(raw) <= MAX_HOURS
            or not all(isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 100_000
                       for v in raw)):
        t.problems.add(t.path + ("calls_per_hour",),
                       f"{dotted(t.path)}.calls_per_hour: a list of 1 to {MAX_HOURS} numbers of calls "
                       "(0-100000), one per hour from the start")
        return None
    return hourly_rates(tuple(float(v) for v in raw))
