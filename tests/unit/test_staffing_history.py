"""Learning a day's traffic from ticket rows (pure: rows built here, no database)."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callrouter.acd.lines import load_lines
from callrouter.capacity.history import DEFAULT_PATIENCE_S, TicketRow, learn_scenario
from callrouter.capacity.staffing import expected_calls

ROOT = Path(__file__).resolve().parents[2]
LINES = load_lines(ROOT / "queues" / "lines.toml")
SHANGHAI = ZoneInfo("Asia/Shanghai")
UNTIL = date(2026, 12, 1)  # a Tuesday: the four weeks before it hold four of each weekday
TUESDAY = date(2026, 12, 8)


def local(d: date, hour: int, minute: int = 0) -> datetime:
    return datetime(d.year, d.month, d.day, hour, minute, tzinfo=SHANGHAI)


def answered(at: datetime, *, wait: float = 5.0, talk: float = 100.0, line: str = "110",
             category: str = "police", priority: int = 1, handed_to: str | None = None) -> TicketRow:
    seated = at + timedelta(seconds=wait)
    return TicketRow(line, category, priority, at, seated, seated + timedelta(seconds=talk), "completed", handed_to)


def gave_up(at: datetime, *, wait: float, line: str = "110", category: str = "police") -> TicketRow:
    return TicketRow(line, category, 1, at, None, at + timedelta(seconds=wait), "abandoned")


def tuesdays() -> list[date]:
    return [UNTIL - timedelta(days=7 * k) for k in range(1, 5)]


def learn(rows: list[TicketRow], **kw: object) -> object:
    return learn_scenario(rows, LINES, day=TUESDAY, until=UNTIL, tz=SHANGHAI, **kw)  # type: ignore[arg-type]


def test_tuesdays_of_the_last_four_weeks_make_the_hours_of_a_tuesday() -> None:
    rows = []
    for d in tuesdays():
        rows += [answered(local(d, 9, m)) for m in range(0, 60, 5)]  # 12 calls at 09:00
        rows += [answered(local(d, 21, 30))]  # 1 at 21:00
    monday = tuesdays()[0] - timedelta(days=1)
    rows += [answered(local(monday, 9, m)) for m in range(60)]  # a busy Monday: not a Tuesday
    rows += [answered(local(UNTIL, 9))]  # after the window
    rows += [answered(local(UNTIL - timedelta(days=35), 9))]  # before it
    learned = learn(rows)
    scenario = learned.scenario  # type: ignore[attr-defined]
    assert learned.tickets == 4 * 13 + 60 and scenario.duration_s == 86400  # type: ignore[attr-defined]
    (police,) = scenario.streams
    assert (police.line, police.category, police.priority) == ("110", "police", 1)
    assert expected_calls(police, 9 * 3600, 10 * 3600) == pytest.approx(12.0)
    assert expected_calls(police, 21 * 3600, 22 * 3600) == pytest.approx(1.0)
    assert expected_calls(police, 0, 86400) == pytest.approx(13.0)


def test_hours_are_the_countys_not_utc() -> None:
    # 23:30 UTC on a Monday is 07:30 on Tuesday in Shanghai
    rows = [answered(datetime(d.year, d.month, d.day, 23, 30, tzinfo=UTC) - timedelta(days=1)) for d in tuesdays()]
    (stream,) = learn(rows).scenario.streams  # type: ignore[attr-defined]
    assert expected_calls(stream, 7 * 3600, 8 * 3600) == pytest.approx(1.0)


def test_patience_counts_the_callers_who_waited_and_were_answered_too() -> None:
    rows = []
    d = tuesdays()[0]
    rows += [gave_up(local(d, 10, i), wait=30.0) for i in range(10)]
    rows += [answered(local(d, 11, i % 60), wait=10.0) for i in range(90)]
    (stream,) = learn(rows).scenario.streams  # type: ignore[attr-defined]
    # (10 x 30 s + 90 x 10 s) / 10 who gave up: 120 s, not the 30 s the impatient ones waited
    assert stream.patience.mean_s == pytest.approx(120.0)
    assert stream.patience.distribution == "exponential"


def test_handle_times_are_a_lognormal_of_the_talk_times() -> None:
    talks = [60.0, 80.0, 100.0, 120.0, 140.0, 200.0]
    rows = [answered(local(tuesdays()[1], 14, i), talk=t) for i, t in enumerate(talks)]
    (stream,) = learn(rows).scenario.streams  # type: ignore[attr-defined]
    assert stream.handle.mean_s == pytest.approx(sum(talks) / len(talks))
    assert stream.handle.distribution == "lognormal"
    logs = [math.log(t) for t in talks]
    mean = sum(logs) / len(logs)
    assert stream.handle.sigma == pytest.approx(math.sqrt(sum((x - mean) ** 2 for x in logs) / len(logs)))


def test_few_samples_fall_back_to_the_lines_defaults_and_say_so() -> None:
    rows = [answered(local(tuesdays()[0], 3), line="96345", category="water_repair", priority=4)]
    learned = learn(rows)
    (stream,) = learned.scenario.streams  # type: ignore[attr-defined]
    assert stream.handle.mean_s == LINES.line("96345").aht_default_s
    assert stream.patience.mean_s == DEFAULT_PATIENCE_S
    assert any("96345/water_repair: 1 talk times" in n for n in learned.notes)  # type: ignore[attr-defined]
    assert any("nobody gave up" in n for n in learned.notes)  # type: ignore[attr-defined]


def test_callers_handed_over_stay_with_the_line_they_dialled() -> None:
    d = tuesdays()[2]
    rows = [answered(local(d, 16, i), category="public_service", priority=5, handed_to="96345") for i in range(3)]
    rows += [answered(local(d, 17, i), category="public_service", priority=5) for i in range(7)]
    rows += [TicketRow("12345", "x", 5, local(d, 18), None, None, None)]  # a line lines.toml does not have
    learned = learn(rows)
    (stream,) = learned.scenario.streams  # type: ignore[attr-defined]
    assert (stream.line, stream.transfer_to) == ("110", "96345")
    assert stream.transfer_probability == pytest.approx(0.3)
    assert any("lines 12345" in n for n in learned.notes)  # type: ignore[attr-defined]


def test_a_week_plans_each_weekday_from_its_own_history() -> None:
    rows = []
    for week in range(1, 5):
        for day in range(7):
            d = UNTIL - timedelta(days=7 * week) + timedelta(days=day)  # Tuesday .. Monday
            rows += [answered(local(d, 12, i)) for i in range(day + 1)]  # day + 1 calls at noon
    scenario = learn(rows, days=7).scenario  # type: ignore[attr-defined]
    assert scenario.duration_s == 7 * 86400
    (stream,) = scenario.streams
    # the plan starts on TUESDAY: Tuesdays had 1 call at noon, Wednesdays 2, ... Mondays 7
    assert [round(expected_calls(stream, (24 * d + 12) * 3600.0, (24 * d + 13) * 3600.0), 6)
            for d in range(7)] == [1, 2, 3, 4, 5, 6, 7]


def test_learning_needs_tickets_and_sane_arguments() -> None:
    with pytest.raises(ValueError, match="no tickets"):
        learn([])
    with pytest.raises(ValueError, match="weeks"):
        learn([answered(local(tuesdays()[0], 9))], weeks=0)
    with pytest.raises(ValueError, match="days"):
        learn([answered(local(tuesdays()[0], 9))], days=8)


def test_a_ticket_dict_becomes_a_row() -> None:
    row = TicketRow.from_ticket({
        "id": "T1", "line": "96345", "category": "public_service", "priority": 5,
        "arrived_at": "2026-11-24T01:00:00+00:00", "seat_answered_at": "2026-11-24T01:00:20+00:00",
        "ended_at": "2026-11-24T01:02:00+00:00", "outcome": "completed",
        "transfers": [{"from_line": "110", "to_line": "96345", "seat": "s110-01", "reason": "", "at": "x"}]})
    assert (row.line, row.handed_to, row.abandoned) == ("110", "96345", False)
    assert row.arrived_at == datetime(2026, 11, 24, 1, tzinfo=UTC)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 23), st.integers(0, 59)), min_size=1, max_size=80))
def test_every_tuesday_call_is_counted_once_over_the_weeks(calls: list[tuple[int, int, int]]) -> None:
    rows = [answered(local(tuesdays()[week], hour, minute)) for week, hour, minute in calls]
    (stream,) = learn(rows).scenario.streams  # type: ignore[attr-defined]
    assert expected_calls(stream, 0, 86400) * 4 == pytest.approx(len(calls))
    for hour in range(24):
        n = sum(1 for _, h, _ in calls if h == hour)
        assert expected_calls(stream, hour * 3600.0, (hour + 1) * 3600.0) * 4 == pytest.approx(n)
