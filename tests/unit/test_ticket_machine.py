"""The ticket state machine (callrouter.tickets.machine) without a database.

Tickets are plain rows (TicketRow); the rules that differ per line come from TicketRules.
About 2 s (hypothesis: 200 examples per property).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from callrouter.tickets import (
    AddNote,
    AddTransfer,
    AnswerTicket,
    CloseTicket,
    FollowUpDone,
    MarkSolved,
    OpenTicket,
    RecordCallback,
    RecordUnseenCall,
    RequestCallback,
    RequestFollowUp,
    SetSeat,
    TicketOp,
)
from callrouter.tickets.machine import Change, Loaded, TicketRules, apply_op

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=1)
RULES = TicketRules(callback_lines=frozenset({"110"}), intake_priority={"110": 2})


def opening(line: str = "110", ticket_id: str = "T1", channel: str = "chan-1") -> OpenTicket:
    return OpenTicket(id=ticket_id, dialled=line, number=line, caller="13800138000", caller_name="",
                      line=line, category="police" if line == "110" else "consultation",
                      department="", priority=1 if line == "110" else 5, listed=True,
                      channel_id=channel, arrived_at=T0)


def run(ops: list[TicketOp], rules: TicketRules = RULES, loaded: Loaded | None = None) -> tuple[Loaded, list[Change]]:
    loaded = loaded or Loaded({}, {})
    changes = [c for op in ops for c in apply_op(op, loaded, NOW, rules)]
    return loaded, changes


def test_a_call_from_open_to_close_records_each_change_once() -> None:
    ops: list[TicketOp] = [opening(), AnswerTicket("T1", T0 + timedelta(seconds=1)),
                           SetSeat("T1", "s110-01", T0 + timedelta(seconds=9)),
                           CloseTicket("T1", T0 + timedelta(seconds=70), "completed")]
    loaded, changes = run(ops)
    assert [c.kind for c in changes] == ["opened", "answered", "seated", "closed"]
    assert [c.outbox_kind for c in changes] == ["opened", "answered", "seated", "closed"]
    ticket = loaded.tickets["T1"]
    assert ticket.seat == "s110-01" and ticket.outcome == "completed" and ticket.duration_s == 70.0
    assert loaded.new == [ticket] and loaded.channel_owner == {"chan-1": "T1"}
    assert changes[-1].ticket["outcome"] == "completed", "each change carries the ticket after it"
    # the same batch again (a retry): nothing changes, nothing is recorded
    _, again = run(ops, loaded=loaded)
    assert again == []


def test_callbacks_follow_the_configured_lines_not_the_line_id() -> None:
    abandoned = CloseTicket("T1", T0 + timedelta(seconds=30), "abandoned")
    _, on_110 = run([opening("110"), abandoned])
    assert [(c.kind, c.outbox_kind) for c in on_110] == [
        ("opened", "opened"), ("closed", "abandoned"), ("callback_requested", "callback_requested")]
    _, on_96345 = run([opening("96345"), abandoned])
    assert [c.kind for c in on_96345] == ["opened", "closed"]
    # another configuration: 96345 calls back, 110 does not
    swapped = TicketRules(callback_lines=frozenset({"96345"}))
    assert [c.kind for c in run([opening("96345"), abandoned], swapped)[1]][-1] == "callback_requested"
    assert [c.kind for c in run([opening("110"), abandoned], swapped)[1]] == ["opened", "closed"]
    assert [c.kind for c in run([opening("110"), abandoned], TicketRules())[1]] == ["opened", "closed"]


def test_refusals_unknown_ticket_channel_opened_twice_and_stale_ops() -> None:
    assert run([AnswerTicket("nope", T0)])[1] == [], "an op for a ticket never opened is not recorded"
    loaded, changes = run([opening(), opening(ticket_id="T2")])
    assert [c.kind for c in changes] == ["opened"] and "T2" not in loaded.tickets
    transfer = AddTransfer("T1", "110", "96345", "s110-01", "not an emergency", T0 + timedelta(seconds=20))
    older = AddTransfer("T1", "96345", "110", "s96345-01", "", T0 + timedelta(seconds=10))
    loaded, changes = run([opening(), transfer, older])
    assert [c.kind for c in changes] == ["opened", "transferred"] and loaded.tickets["T1"].line == "96345"
    note = AddNote("T1", "s110-01", "火情已报", T0 + timedelta(seconds=5))
    assert [c.kind for c in run([opening(), note, note])[1]] == ["opened", "noted"]


def test_callback_attempts_and_follow_up_solving() -> None:
    ops: list[TicketOp] = [opening(), RequestCallback("T1", T0), RequestCallback("T1", T0),
                           RecordCallback("T1", T0 + timedelta(minutes=1), "s110-02", "no_answer"),
                           RecordCallback("T1", T0 + timedelta(minutes=2), "s110-02", "reached"),
                           RecordCallback("T1", T0 + timedelta(minutes=1), "s110-02", "reached")]
    loaded, changes = run(ops)
    assert [c.kind for c in changes] == ["opened", "callback_requested", "callback_done", "callback_done"]
    assert loaded.tickets["T1"].callback_attempts == 2
    follow: list[TicketOp] = [opening("96345"), RequestFollowUp("T1", T0, "O1"),
                              FollowUpDone("T1", "reached", "seat:s96345-01", "", T0 + timedelta(hours=1)),
                              MarkSolved("T1", "unit:u1", T0 + timedelta(hours=2))]
    loaded, changes = run(follow)
    assert [c.kind for c in changes] == ["opened", "follow_up_requested", "follow_up_done", "solved"]
    assert loaded.tickets["T1"].follow_up == "done"


def test_an_unseen_call_closes_the_engines_ticket_or_opens_one() -> None:
    unseen = RecordUnseenCall(id="U1", dialled="110", number="110", caller="139", caller_name="", line="110",
                              category="police", department="", priority=1, listed=True, channel_id="chan-1",
                              arrived_at=T0, ended_at=T0 + timedelta(seconds=40))
    loaded, changes = run([opening(), unseen])
    assert [c.kind for c in changes] == ["opened", "closed", "callback_requested"]
    assert "U1" not in loaded.tickets, "the engine's ticket of the channel is closed instead"
    loaded, changes = run([unseen, unseen])
    assert [c.kind for c in changes] == ["opened", "closed", "callback_requested"]
    assert loaded.tickets["U1"].outcome == "abandoned"


_seconds = st.integers(min_value=0, max_value=600).map(lambda s: T0 + timedelta(seconds=s))
_op = st.one_of(
    st.builds(AnswerTicket, st.just("T1"), _seconds),
    st.builds(SetSeat, st.just("T1"), st.sampled_from(["s110-01", "s96345-02"]), _seconds),
    st.builds(CloseTicket, st.just("T1"), _seconds, st.sampled_from(["completed", "abandoned"])),
    st.builds(AddTransfer, st.just("T1"), st.just("110"), st.just("96345"), st.just("s110-01"), st.just(""),
              _seconds),
    st.builds(RequestCallback, st.just("T1"), _seconds),
    st.builds(RecordCallback, st.just("T1"), _seconds, st.just("s110-02"),
              st.sampled_from(["reached", "no_answer"])),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_op, max_size=12), st.sampled_from(["110", "96345"]))
def test_any_sequence_applied_twice_changes_nothing_the_second_time(ops: list[TicketOp], line: str) -> None:
    loaded, first = run([opening(line), *ops])
    before = loaded.tickets["T1"].to_dict()
    _, second = run([opening(line), *ops], loaded=loaded)
    assert second == [], "idempotent: a retried batch records nothing"
    assert loaded.tickets["T1"].to_dict() == before
    kinds = [c.kind for c in first]
    assert kinds.count("closed") <= 1 and kinds.count("answered") <= 1 and kinds.count("callback_requested") <= 1
    closed = [c.ticket for c in first if c.kind == "closed"]
    if closed and closed[0]["outcome"] == "abandoned" and closed[0]["line"] == "110":
        assert loaded.tickets["T1"].callback_requested, "an abandoned 110 call is always flagged for a call back"
    for c in first:
        assert c.ticket["id"] == "T1" and c.outbox_kind


def test_the_shipped_rules_are_those_of_the_shipped_lines_file() -> None:
    from pathlib import Path

    from callrouter.acd.lines import load_lines
    from callrouter.tickets.machine import SHIPPED_RULES, rules_of

    lines = load_lines(Path(__file__).resolve().parents[2] / "queues" / "lines.toml")
    assert rules_of(lines) == SHIPPED_RULES


def test_a_ticket_row_has_the_ticket_tables_columns_and_the_same_dict() -> None:
    """The writer loads TicketRow from the tickets table and writes it back column by column."""
    import dataclasses

    from callrouter.tickets.models import Ticket, TicketRow

    assert [f.name for f in dataclasses.fields(TicketRow)] == [c.name for c in Ticket.__table__.columns]
    loaded, _ = run([opening(), AnswerTicket("T1", T0 + timedelta(seconds=1))])
    row = loaded.tickets["T1"]
    values = {f.name: getattr(row, f.name) for f in dataclasses.fields(TicketRow)}
    assert Ticket(**values).to_dict() == row.to_dict()
