"""A day's traffic learned from the ticket history: streams per line and category.

For each line (the line the caller dialled: a ticket handed over keeps its first line
here) and category, over the last ``weeks`` weeks before ``until``:

* arrivals: tickets per hour of day on the same weekday as the planned day, divided by
  the number of those weekdays in the window (Tuesdays plan a Tuesday);
* handle time: the talk time of answered calls (seat answered -> ended), as a lognormal
  with the sample mean and the spread of the logarithms, from every day of the window;
* patience: callers who gave up tell how long they waited, callers who were answered
  only that they would have waited at least as long (censored). An exponential patience
  with mean = (every waiting second, answered or not) / (callers who gave up) is the
  maximum-likelihood estimate; the plain mean wait of those who gave up would be far too
  short (only the impatient give up);
* hand-overs: the share of the group's callers handed to the other line.

Hours are local to ``tz`` (the county's clock, not UTC). Fewer than ``MIN_SAMPLES``
talk times or no caller who gave up: the line's defaults (``aht_default_s``; patience
``DEFAULT_PATIENCE_S``), named in the notes.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, tzinfo
from typing import Any

from sqlalchemy import select

from callrouter.acd.lines import LinesConfig
from callrouter.capacity.scenario import Draw, Scenario, SeatBehaviour, Stream, hourly_rates
from callrouter.tickets.models import Ticket, utc
from callrouter.tickets.store import TicketStore

MIN_SAMPLES = 5
DEFAULT_PATIENCE_S = 300.0
MAX_WEEKS = 52
_HOUR = 3600.0


@dataclass(frozen=True)
class TicketRow:
    """What the planner needs of one ticket (times aware, any zone)."""

    line: str  # the line the caller dialled (before any hand-over)
    category: str
    priority: int
    arrived_at: datetime
    seat_answered_at: datetime | None
    ended_at: datetime | None
    outcome: str | None
    handed_to: str | None = None  # the line the caller was handed to, if any

    @property
    def abandoned(self) -> bool:
        return self.seat_answered_at is None and self.ended_at is not None

    @classmethod
    def from_ticket(cls, t: dict[str, Any]) -> TicketRow:
        """From ``Ticket.to_dict()`` (ISO times)."""
        transfers = t.get("transfers") or []
        first = str(transfers[0].get("from_line")) if transfers else str(t["line"])

        def when(key: str) -> datetime | None:
            value = t.get(key)
            return None if value is None else utc(datetime.fromisoformat(str(value)))
        arrived = when("arrived_at")
        if arrived is None:
            raise ValueError(f"ticket {t.get('id')!r} has no arrived_at")
        return cls(first, str(t["category"]), int(t["priority"]), arrived, when("seat_answered_at"),
                   when("ended_at"), t.get("outcome"), str(t["line"]) if transfers and t["line"] != first else None)


def read_rows(store: TicketStore, since: datetime, until: datetime, *, batch: int = 2000) -> Iterator[TicketRow]:
    """The tickets arrived in [since, until), oldest first, read in batches (blocking)."""
    columns = (Ticket.line, Ticket.category, Ticket.priority, Ticket.arrived_at, Ticket.seat_answered_at,
               Ticket.ended_at, Ticket.outcome, Ticket.transfers)
    stmt = (select(*columns).where(Ticket.arrived_at >= since, Ticket.arrived_at < until)
            .order_by(Ticket.arrived_at).execution_options(yield_per=batch))
    with store.engine.connect() as conn:
        for line, category, priority, arrived, seated, ended, outcome, transfers in conn.execute(stmt):
            moved = [t for t in (transfers or []) if isinstance(t, dict)]
            first = str(moved[0].get("from_line", line)) if moved else str(line)
            yield TicketRow(first, str(category), int(priority), utc(arrived), None if seated is None else utc(seated),
                            None if ended is None else utc(ended), outcome,
                            str(line) if moved and line != first else None)


@dataclass
class _Group:
    rows: int = 0
    priorities: Counter[int] = field(default_factory=Counter)
    handed: Counter[str] = field(default_factory=Counter)
    talks: list[float] = field(default_factory=list)
    waited_s: float = 0.0  # every waiting second: answered and given up
    gave_up: int = 0
    hours: list[float] = field(default_factory=list)  # calls per planned hour (summed over the weeks)


@dataclass(frozen=True)
class Learned:
    scenario: Scenario
    window: tuple[datetime, datetime]
    tickets: int
    weeks: int
    notes: tuple[str, ...]


def learn_scenario(rows: Iterable[TicketRow], lines: LinesConfig, *, day: date, until: date, tz: tzinfo,
                   weeks: int = 4, days: int = 1, seats: SeatBehaviour | None = None, seed: int = 1) -> Learned:
    """A scenario of ``days`` days from ``day`` (local midnight) learned from ``rows``.

    ``rows`` may hold more than the window: only tickets arrived in the ``weeks`` weeks
    before ``until`` count.
    """
    if not 1 <= weeks <= MAX_WEEKS:
        raise ValueError(f"weeks must be 1 to {MAX_WEEKS}")
    if not 1 <= days <= 7:
        raise ValueError("days must be 1 to 7")
    start = _midnight(until - timedelta(weeks=weeks), tz)
    end = _midnight(until, tz)
    # the planned hour (day offset, hour) each window day maps to: same weekday only
    planned = {(day + timedelta(days=d)).weekday(): d for d in range(days)}
    groups: dict[tuple[str, str], _Group] = defaultdict(lambda: _Group(hours=[0.0] * (24 * days)))
    known = set(lines.line_ids)
    count = 0
    skipped: Counter[str] = Counter()
    for row in rows:
        if not start <= row.arrived_at < end:
            continue
        if row.line not in known:
            skipped[row.line] += 1
            continue
        count += 1
        g = groups[(row.line, row.category)]
        g.rows += 1
        g.priorities[row.priority] += 1
        if row.handed_to is not None and row.handed_to in known:
            g.handed[row.handed_to] += 1
        if row.seat_answered_at is not None:
            g.waited_s += max(0.0, (row.seat_answered_at - row.arrived_at).total_seconds())
            if row.ended_at is not None:
                g.talks.append(max(0.0, (row.ended_at - row.seat_answered_at).total_seconds()))
        elif row.ended_at is not None:
            g.waited_s += max(0.0, (row.ended_at - row.arrived_at).total_seconds())
            g.gave_up += 1
        local = row.arrived_at.astimezone(tz)
        d = planned.get(local.weekday())
        if d is not None:
            g.hours[24 * d + local.hour] += 1
    notes: list[str] = []
    if skipped:
        notes.append(f"{sum(skipped.values())} tickets of lines {', '.join(sorted(skipped))} not in "
                     f"{lines.source}: left out")
    streams = []
    for (line_id, category), g in sorted(groups.items()):
        line = lines.line(line_id)
        talk = _handle(g.talks, line.aht_default_s)
        if len(g.talks) < MIN_SAMPLES:
            notes.append(f"{line_id}/{category}: {len(g.talks)} talk times, assumed {line.aht_default_s:g} s")
        if g.gave_up:
            patience = Draw(max(1.0, g.waited_s / g.gave_up))
        else:
            patience = Draw(DEFAULT_PATIENCE_S)
            notes.append(f"{line_id}/{category}: nobody gave up, patience assumed {DEFAULT_PATIENCE_S:g} s")
        to, handed = (g.handed.most_common(1)[0] if g.handed else (None, 0))
        streams.append(Stream(
            name=f"{line_id} {category}", line=line_id, category=category,
            priority=g.priorities.most_common(1)[0][0], rate_per_min=hourly_rates(tuple(n / weeks for n in g.hours)),
            handle=talk, patience=patience, transfer_to=to, transfer_probability=handed / g.rows if to else 0.0))
    if not streams:
        raise ValueError(f"no tickets between {start.isoformat()} and {end.isoformat()}: nothing to learn from")
    label = day.strftime("%A").lower() if days == 1 else f"{days} days from {day.isoformat()}"
    scenario = Scenario(
        name=f"history-{label}", description=f"learned from {count} tickets, {weeks} weeks before {until.isoformat()}",
        duration_s=days * 24 * _HOUR, seed=seed, lines=lines, tick_s=1.0, staffing={}, seats=seats or SeatBehaviour(),
        streams=tuple(streams), source="ticket history")
    return Learned(scenario, (start, end), count, weeks, tuple(notes))


def _handle(talks: Sequence[float], default_s: float) -> Draw:
    positive = [t for t in talks if t > 0]
    if len(positive) < MIN_SAMPLES:
        return Draw(default_s)
    mean = statistics.fmean(positive)
    sigma = statistics.pstdev([math.log(t) for t in positive])
    return Draw(max(1.0, mean), "lognormal", min(3.0, max(0.05, sigma)))


def _midnight(d: date, tz: tzinfo) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=tz)
