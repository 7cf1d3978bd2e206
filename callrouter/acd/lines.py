"""The lines as data: ``queues/lines.toml`` -> :class:`LinesConfig`.

Every problem in the file is collected and reported at once as ``file:line: problem``.
See ``queues/lines.toml`` for the annotated format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from callrouter.acd.errors import UnknownLine
from callrouter.acd.tomlsource import Problems, TableReader, TomlSource, dotted

MIN_PRIORITY = 1  # most urgent (life at risk)
MAX_PRIORITY = 9

OverflowPolicyName = Literal["wait_threshold", "predictive"]
POLICIES: tuple[OverflowPolicyName, ...] = ("wait_threshold", "predictive")
# what the staffing planner holds a line to: the share of callers answered within
# target_s, or the share answered at all ("connected", GB/T 33358's connection rate)
StaffingMeasure = Literal["within_target", "connected"]
STAFFING_MEASURES: tuple[StaffingMeasure, ...] = ("within_target", "connected")

# The naming rule for seat ids and their PJSIP endpoints, from lines.toml and at runtime
# alike: never '/', ':' or '@' (an endpoint "trunk/sip:x@host" would dial anywhere through
# the carrier) and never an endpoint that is not a seat.
SEAT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
NOT_SEAT_ENDPOINTS = frozenset({"trunk", "bench-trunk"})
LINE_ID = re.compile(r"[0-9]{2,15}")


@dataclass(frozen=True)
class OverflowConfig:
    """When the overflow pool joins a line and when it leaves."""

    policy: OverflowPolicyName = "predictive"
    # join when the oldest caller has waited longer than this (both policies)
    wait_threshold_s: float = 30.0
    # leave after the line has been calm this long (hysteresis)
    calm_s: float = 300.0
    # predictive: calm means the line's own seats alone predict target + margin
    margin: float = 0.03
    # predictive: arrivals counted over this sliding window give the live rate
    rate_window_s: float = 120.0
    # predictive: trust k - z*sqrt(k) of the k arrivals in the window (0: trust k)
    rate_confidence_z: float = 1.0


@dataclass(frozen=True)
class RecordingPolicy:
    """Whether a line's calls are recorded (wait, talk, transfers, until hang-up) and how
    many days a recording is kept after its call ended (then purged unless on legal hold)."""

    enabled: bool = False
    retention_days: int = 90


MAX_RETENTION_DAYS = 36500


@dataclass(frozen=True)
class SeatConfig:
    id: str
    endpoint: str


@dataclass(frozen=True)
class LineConfig:
    id: str
    name: str
    rank: int  # 1 is dispatched first when a seat serves several lines
    seats: tuple[SeatConfig, ...]
    ring_timeout_s: float
    wrap_up_s: float
    max_missed_offers: int
    target_s: float
    target_service_level: float
    ageing_step_s: float  # effective priority improves one level per step waited; 0: off
    ageing_floor: int  # ageing never lifts a caller above this priority
    aht_default_s: float  # talk time assumed before any call has ended
    aht_alpha: float  # weight of each finished call in the talk-time EWMA
    announce_interval_s: float | None  # position/ETA announcements; None: never
    overflow: OverflowConfig = field(default_factory=OverflowConfig)
    # the staffing planner's target (callrouter staffing): measure and level; the level
    # defaults to target_service_level
    staffing_measure: StaffingMeasure = "within_target"
    staffing_level: float | None = None
    # [line.<id>.recording]: absent, the line's calls are not recorded
    recording: RecordingPolicy = field(default_factory=RecordingPolicy)
    # the ticket rules (callrouter.tickets.machine.TicketRules): an abandoned call is
    # flagged for a call back; a request from another channel (web, WeChat) gets this priority.
    # Absent, a line calls back: a lines.toml from before the key loses no 110 callback (a
    # needless call back costs a seat a minute; a missing one may cost a life)
    callback_abandoned: bool = True
    intake_priority: int = 5

    @property
    def staffing_goal(self) -> tuple[StaffingMeasure, float]:
        """(measure, level) the staffing planner holds this line to."""
        level = self.staffing_level if self.staffing_level is not None else self.target_service_level
        return self.staffing_measure, level


@dataclass(frozen=True)
class PoolSeatConfig:
    id: str
    endpoint: str
    lines: tuple[str, ...]  # the lines this overflow seat may serve


@dataclass(frozen=True)
class LinesConfig:
    lines: tuple[LineConfig, ...]  # in rank order
    pool: tuple[PoolSeatConfig, ...] = ()
    source: str = "<memory>"

    def line(self, line_id: str) -> LineConfig:
        for line in self.lines:
            if line.id == line_id:
                return line
        raise UnknownLine(line_id)

    @property
    def line_ids(self) -> tuple[str, ...]:
        return tuple(line.id for line in self.lines)

    def with_policy(self, policy: OverflowPolicyName) -> LinesConfig:
        """The same lines with every line's overflow policy set to ``policy``."""
        return replace(
            self,
            lines=tuple(
                replace(ln, overflow=replace(ln.overflow, policy=policy)) for ln in self.lines
            ),
        )


def seat_name_problem(value: object, what: str = "seat id") -> str | None:
    """Why ``value`` may not be a seat id or endpoint (None: it may)."""
    if not isinstance(value, str) or not SEAT_ID.fullmatch(value):
        return (f"{what} {str(value)[:80]!r} must be 1 to 64 letters, digits, '-', '_' or '.', "
                "starting with a letter or digit")
    if value in NOT_SEAT_ENDPOINTS:
        return f"{what} {value!r} is reserved: it names a PJSIP endpoint that is not a seat"
    return None


def load_lines(path: str | Path) -> LinesConfig:
    """Load and validate ``path``; raise ConfigFileError listing every problem."""
    return parse_lines_source(TomlSource.read(path))


def parse_lines(text: str, name: str = "<lines>") -> LinesConfig:
    return parse_lines_source(TomlSource(text, name))


def parse_lines_source(source: TomlSource) -> LinesConfig:
    doc = source.parse()
    problems = Problems(source)
    root = TableReader(doc, (), problems)
    lines: list[LineConfig] = []
    seat_owner: dict[str, str] = {}  # seat id -> where it was first defined

    line_tables = root.table("line", required=True)
    if line_tables is not None:
        if not line_tables.data:
            problems.add(("line",), "no lines defined; add a [line.110] table")
        for line_id in line_tables.data:
            sub = line_tables.table(line_id)
            if sub is None:
                continue
            if not LINE_ID.fullmatch(line_id):
                problems.add(sub.path, f"line id {line_id!r} must be the line's digits")
                continue
            parsed = _parse_line(line_id, sub, seat_owner)
            if parsed is not None:
                lines.append(parsed)

    ranks: dict[int, str] = {}
    for line in lines:
        if line.rank in ranks:
            problems.add(
                ("line", line.id, "rank"),
                f"line.{line.id}.rank: {line.rank} is also line {ranks[line.rank]}'s rank; "
                "give each line its own rank",
            )
        ranks[line.rank] = line.id

    pool: list[PoolSeatConfig] = []
    ovf = root.table("overflow")
    if ovf is not None:
        known_lines = {ln.id for ln in lines} | (
            set(line_tables.data) if line_tables is not None else set()
        )
        for seat in ovf.tables("seat"):
            parsed_seat = _parse_pool_seat(seat, seat_owner, known_lines)
            if parsed_seat is not None:
                pool.append(parsed_seat)
        ovf.reject_unknown(["seat"])
    root.reject_unknown(["line", "overflow"])
    problems.raise_if_any()
    return LinesConfig(
        lines=tuple(sorted(lines, key=lambda ln: ln.rank)),
        pool=tuple(pool),
        source=source.name,
    )


def _claim_seat(
    seat_id: str, where: str, reader: TableReader, key: str, owner: dict[str, str]
) -> bool:
    if not SEAT_ID.fullmatch(seat_id):
        reader.problems.add(
            reader.path + (key,),
            f"{dotted(reader.path + (key,))}: seat id {seat_id!r} must be letters, digits, "
            "'-', '_' or '.'",
            value=seat_id,
        )
        return False
    if seat_id in NOT_SEAT_ENDPOINTS:
        reader.problems.add(reader.path + (key,), f"{dotted(reader.path + (key,))}: "
                            f"{seat_name_problem(seat_id)}", value=seat_id)
        return False
    if seat_id in owner:
        reader.problems.add(
            reader.path + (key,),
            f"{dotted(reader.path + (key,))}: seat {seat_id!r} is already defined in "
            f"{owner[seat_id]}; a seat belongs to one line or to the pool",
            value=f'"{seat_id}"',
        )
        return False
    owner[seat_id] = where
    return True


def _parse_line(
    line_id: str, t: TableReader, seat_owner: dict[str, str]
) -> LineConfig | None:
    start = len(t.problems)
    name = t.string("name", default=line_id)
    rank = t.integer("rank", minimum=1, maximum=99)
    seat_ids = t.strings("seats")
    seats: list[SeatConfig] = []
    endpoints_t = t.table("endpoints")
    endpoints: dict[str, str] = {}
    if endpoints_t is not None:
        for seat_id in endpoints_t.data:
            ep = endpoints_t.string(seat_id, pattern=SEAT_ID)
            if ep in NOT_SEAT_ENDPOINTS:
                t.problems.add(t.path + ("endpoints", seat_id), f"{dotted(t.path)}.endpoints: "
                               f"{seat_name_problem(ep, 'endpoint')}")
            elif ep is not None:
                endpoints[seat_id] = ep
    if seat_ids is not None:
        if not seat_ids:
            t.problems.add(
                t.path + ("seats",), f"{dotted(t.path)}.seats: a line needs at least one seat"
            )
        for seat_id in seat_ids:
            if _claim_seat(seat_id, f"line.{line_id}", t, "seats", seat_owner):
                seats.append(SeatConfig(seat_id, endpoints.get(seat_id, seat_id)))
    for seat_id in endpoints:
        if seat_ids is not None and seat_id not in seat_ids:
            t.problems.add(
                t.path + ("endpoints", seat_id),
                f"{dotted(t.path)}.endpoints: {seat_id!r} is not one of this line's seats",
            )
    ring_timeout = t.number("ring_timeout_s", above=0, maximum=120, unit=" seconds")
    wrap_up = t.number("wrap_up_s", minimum=0, maximum=3600, unit=" seconds")
    max_missed = t.integer("max_missed_offers", minimum=1, maximum=100)
    target_s = t.number("target_s", above=0, maximum=600, unit=" seconds")
    target_sl = t.number("target_service_level", above=0, maximum=0.999)
    ageing_step = t.number("ageing_step_s", default=0.0, minimum=0, unit=" seconds")
    ageing_floor = t.integer(
        "ageing_floor", default=MIN_PRIORITY, minimum=MIN_PRIORITY, maximum=MAX_PRIORITY
    )
    aht = t.number("aht_default_s", above=0, maximum=7200, unit=" seconds")
    aht_alpha = t.number("aht_alpha", default=0.1, above=0, maximum=1)
    announce: float | None = None
    if t.has("announce_interval_s"):
        announce = t.number("announce_interval_s", minimum=10, maximum=3600, unit=" seconds")
    overflow = _parse_overflow(t.table("overflow", required=True))
    measure = t.string("staffing_measure", default="within_target", choices=STAFFING_MEASURES)
    staffing_level: float | None = None
    if t.has("staffing_level"):
        staffing_level = t.number("staffing_level", above=0, maximum=0.999)
    recording = _parse_recording(t.table("recording"))
    callback_abandoned = t.raw("callback_abandoned") if t.has("callback_abandoned") else True
    if not isinstance(callback_abandoned, bool):
        t.problems.add(t.path + ("callback_abandoned",), f"{dotted(t.path)}.callback_abandoned: "
                       f"must be true or false, got {callback_abandoned!r}")
    intake_priority = t.integer("intake_priority", default=5, minimum=MIN_PRIORITY, maximum=MAX_PRIORITY)
    t.reject_unknown()
    if len(t.problems) > start:
        return None
    if (
        name is None
        or rank is None
        or ring_timeout is None
        or wrap_up is None
        or max_missed is None
        or target_s is None
        or target_sl is None
        or ageing_step is None
        or ageing_floor is None
        or aht is None
        or aht_alpha is None
        or overflow is None
        or recording is None
        or intake_priority is None
        or not isinstance(callback_abandoned, bool)
        or not seats
    ):
        return None
    return LineConfig(
        id=line_id,
        name=name,
        rank=rank,
        seats=tuple(seats),
        ring_timeout_s=ring_timeout,
        wrap_up_s=wrap_up,
        max_missed_offers=max_missed,
        target_s=target_s,
        target_service_level=target_sl,
        ageing_step_s=ageing_step,
        ageing_floor=ageing_floor,
        aht_default_s=aht,
        aht_alpha=aht_alpha,
        announce_interval_s=announce,
        overflow=overflow,
        staffing_measure="connected" if measure == "connected" else "within_target",
        staffing_level=staffing_level,
        recording=recording,
        callback_abandoned=callback_abandoned,
        intake_priority=intake_priority,
    )


def _parse_recording(t: TableReader | None) -> RecordingPolicy | None:
    if t is None:
        return RecordingPolicy()
    enabled = t.raw("enabled")
    if not t.has("enabled"):
        t.problems.add(t.path, f"{dotted(t.path)}.enabled: missing; add `enabled = true` (or false)")
    elif not isinstance(enabled, bool):
        t.problems.add(t.path + ("enabled",), f"{dotted(t.path)}.enabled: "
                       f"must be true or false, got {enabled!r}")
    days = t.integer("retention_days", minimum=1, maximum=MAX_RETENTION_DAYS)
    t.reject_unknown()
    if not isinstance(enabled, bool) or days is None:
        return None
    return RecordingPolicy(enabled=enabled, retention_days=days)


def _parse_overflow(t: TableReader | None) -> OverflowConfig | None:
    if t is None:
        return None
    policy = t.string("policy", choices=POLICIES)
    threshold = t.number("wait_threshold_s", above=0, maximum=3600, unit=" seconds")
    calm = t.number("calm_s", minimum=0, maximum=86400, unit=" seconds")
    margin = t.number("margin", default=0.03, minimum=0, maximum=0.5)
    window = t.number("rate_window_s", default=120.0, minimum=10, maximum=3600, unit=" seconds")
    z = t.number("rate_confidence_z", default=1.0, minimum=0, maximum=5)
    t.reject_unknown()
    if (
        policy is None
        or threshold is None
        or calm is None
        or margin is None
        or window is None
        or z is None
    ):
        return None
    return OverflowConfig(
        policy="predictive" if policy == "predictive" else "wait_threshold",
        wait_threshold_s=threshold,
        calm_s=calm,
        margin=margin,
        rate_window_s=window,
        rate_confidence_z=z,
    )


def _parse_pool_seat(
    t: TableReader, seat_owner: dict[str, str], known_lines: set[str]
) -> PoolSeatConfig | None:
    seat_id = t.string("id")
    endpoint = t.string("endpoint", default=seat_id or "", pattern=SEAT_ID)
    if endpoint in NOT_SEAT_ENDPOINTS:
        t.problems.add(t.path + ("endpoint",), f"{dotted(t.path)}.endpoint: "
                       f"{seat_name_problem(endpoint, 'endpoint')}")
        endpoint = None
    serves = t.strings("lines")
    t.reject_unknown()
    ok = seat_id is not None and _claim_seat(
        seat_id, f"overflow seat {seat_id}", t, "id", seat_owner
    )
    if serves is not None:
        if not serves:
            t.problems.add(
                t.path + ("lines",),
                f"{dotted(t.path)}.lines: an overflow seat must serve at least one line",
            )
            ok = False
        for line_id in serves:
            if line_id not in known_lines:
                t.problems.add(
                    t.path + ("lines",),
                    f"{dotted(t.path)}.lines: unknown line {line_id!r}; known: "
                    f"{', '.join(sorted(known_lines))}",
                    value=f'"{line_id}"',
                )
                ok = False
    if not ok or seat_id is None or endpoint is None or serves is None:
        return None
    return PoolSeatConfig(seat_id, endpoint or seat_id, tuple(dict.fromkeys(serves)))
