"""The dispatch outbox: written with every ticket change, in the same transaction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from callrouter.tickets import (
    AddTransfer,
    AnswerTicket,
    CloseTicket,
    OpenTicket,
    Reclassify,
    RecordCallback,
    RequestCallback,
    SetSeat,
    TicketOp,
    TicketStore,
)

pytestmark = pytest.mark.integration

MakeStore = Callable[..., tuple[TicketStore, Any]]
T0 = datetime(2026, 11, 29, 5, 33, 1, 250000, tzinfo=UTC)


def open_op(ticket_id: str, line: str = "110", at: datetime = T0) -> OpenTicket:
    return OpenTicket(
        id=ticket_id, dialled="119" if line == "110" else "12345",
        number="119" if line == "110" else "12345", caller="13800138000", caller_name="",
        line=line, category="fire" if line == "110" else "consultation",
        department="fire brigade" if line == "110" else "government service",
        priority=1 if line == "110" else 5, listed=True, channel_id=f"chan-{ticket_id}",
        arrived_at=at)


def s(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def kinds(store: TicketStore, ticket_id: str | None = None) -> list[str]:
    return [row["kind"] for row in store.outbox()
            if ticket_id is None or row["ticket_id"] == ticket_id]


def test_every_change_leaves_an_outbox_row_with_the_ticket_after_it(
        backend: str, make_store: MakeStore) -> None:
    store, _ = make_store(backend)
    ops: list[TicketOp] = [
        open_op("T1", "110"),
        AnswerTicket("T1", s(0.1)),
        SetSeat("T1", "s110-03", s(8)),
        AddTransfer("T1", "110", "96345", "s110-03", "noise complaint, not an emergency",
                    s(40)),
        SetSeat("T1", "s96345-02", s(55)),
        Reclassify("T1", "noise", s(70), "s96345-02"),
        CloseTicket("T1", s(200), "completed"),
    ]
    store.apply(ops)

    rows = store.outbox()
    assert [r["kind"] for r in rows] == ["opened", "answered", "seated", "transferred",
                                         "seated", "reclassified", "closed"]
    assert [r["seq"] for r in rows] == sorted(r["seq"] for r in rows)
    assert len({r["event_id"] for r in rows}) == len(rows)
    assert all(len(r["event_id"]) == 32 and r["ticket_id"] == "T1" for r in rows)
    assert all(r["sent_at"] is None for r in rows)
    assert [r["at"] for r in rows] == [T0.isoformat()] + [
        o.at.isoformat() for o in ops[1:] if not isinstance(o, OpenTicket)]

    # each payload is the whole ticket as it was right after that change
    by_kind = {r["kind"]: r["ticket"] for r in rows}
    assert rows[0]["ticket"]["answered_at"] is None and rows[0]["ticket"]["line"] == "110"
    assert by_kind["answered"]["answered_at"] == s(0.1).isoformat()
    assert rows[2]["ticket"]["seat"] == "s110-03"
    moved = by_kind["transferred"]
    assert moved["line"] == "96345" and moved["seat"] == "s110-03"
    assert moved["transfers"] == [{"from_line": "110", "to_line": "96345", "seat": "s110-03",
                                   "reason": "noise complaint, not an emergency",
                                   "at": s(40).isoformat()}]
    assert rows[4]["ticket"]["seat"] == "s96345-02"
    assert by_kind["reclassified"]["category"] == "noise"
    assert by_kind["closed"]["outcome"] == "completed"
    assert by_kind["closed"] == {**store.get("T1"), "updated_at": by_kind["closed"]["updated_at"]}
    # ticket_events and the outbox record the same changes
    assert [e["kind"] for e in store.events()] == [r["kind"] for r in rows]


def test_a_failed_transaction_leaves_neither_ticket_nor_outbox_row(
        backend: str, make_store: MakeStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store, _ = make_store(backend)
    store.apply([open_op("T0")])
    before = store.outbox()

    # every outbox row of the next batch gets the same event id: the database refuses
    # the second one at commit time, after the ticket rows were flushed
    same = uuid.uuid4()
    monkeypatch.setattr("callrouter.tickets.store.uuid.uuid4", lambda: same)
    with pytest.raises(IntegrityError):
        store.apply([open_op("T1"), AnswerTicket("T1", s(1)), AnswerTicket("T0", s(1))])
    monkeypatch.undo()

    assert store.get("T1") is None
    t0 = store.get("T0")
    assert t0 is not None and t0["answered_at"] is None
    assert store.outbox() == before
    assert [e["kind"] for e in store.events()] == ["opened"]

    # the writer's retry of the same batch then writes it all
    store.apply([open_op("T1"), AnswerTicket("T1", s(1)), AnswerTicket("T0", s(1))])
    assert kinds(store) == ["opened", "opened", "answered", "answered"]


def test_reapplying_adds_no_outbox_rows(backend: str, make_store: MakeStore) -> None:
    store, _ = make_store(backend)
    batch: list[TicketOp] = [
        open_op("T1", "96345"), AnswerTicket("T1", s(0.1)), SetSeat("T1", "s96345-01", s(5)),
        AddTransfer("T1", "96345", "110", "s96345-01", "gas smell", s(30)),
        Reclassify("T1", "gas leak", s(50), "s110-02"),
        CloseTicket("T1", s(90), "completed"),
        open_op("T2", "110"), CloseTicket("T2", s(4), "abandoned"),
        RequestCallback("T2", s(5)),
        RecordCallback("T2", s(600), "s110-01", "no_answer"),
    ]
    store.apply(batch)
    outbox, ticket = store.outbox(), store.get("T1")
    assert kinds(store, "T2") == ["opened", "abandoned", "callback_requested", "callback_done"]

    store.apply(batch)  # a retried batch whose commit the writer could not see
    for op in batch:
        store.apply([op])  # a spool replayed op by op
    # older changes than what is recorded are no-ops too
    store.apply([AddTransfer("T1", "110", "96345", "s110-09", "late", s(29)),
                 Reclassify("T1", "other", s(49), "s110-02"),
                 RecordCallback("T2", s(599), "s110-01", "reached"),
                 RequestCallback("T1", s(100)), RequestCallback("T1", s(101))])

    # the one new change: T1's first callback request
    assert store.outbox()[:len(outbox)] == outbox
    assert [(r["ticket_id"], r["kind"]) for r in store.outbox()[len(outbox):]] == \
        [("T1", "callback_requested")]
    after = store.get("T1")
    assert after is not None and ticket is not None
    assert (after["line"], after["category"], len(after["transfers"])) == ("110", "gas leak", 1)


def test_only_abandoned_110_calls_are_flagged_for_callback(backend: str,
                                                           make_store: MakeStore) -> None:
    store, _ = make_store(backend)
    store.apply([
        open_op("E1", "110"), CloseTicket("E1", s(4), "abandoned"),
        open_op("E2", "110", s(1)), AnswerTicket("E2", s(1.1)),
        CloseTicket("E2", s(60), "completed"),
        open_op("P1", "96345", s(2)), CloseTicket("P1", s(20), "abandoned"),
    ])
    assert kinds(store, "E1") == ["opened", "abandoned", "callback_requested"]
    assert kinds(store, "E2") == ["opened", "answered", "closed"]
    assert kinds(store, "P1") == ["opened", "abandoned"]
    e1 = store.get("E1")
    assert e1 is not None and e1["callback_requested"] is True
    assert e1["callback_requested_at"] == s(4).isoformat()
    callback_event = store.outbox()[2]
    assert callback_event["ticket"]["callback_requested"] is True
    assert [t["id"] for t in store.callbacks()] == ["E1"]

    # an unanswered call back stays pending; a reached one leaves the list
    store.apply([RecordCallback("E1", s(300), "s110-04", "no_answer")])
    pending = store.callbacks()
    assert [(t["id"], t["callback_attempts"], t["callback_outcome"]) for t in pending] == \
        [("E1", 1, "no_answer")]
    store.apply([RecordCallback("E1", s(900), "s110-04", "reached")])
    assert store.callbacks() == []
    done = store.callbacks(pending_only=False)
    assert [(t["id"], t["callback_attempts"], t["callback_seat"]) for t in done] == \
        [("E1", 2, "s110-04")]
    assert kinds(store, "E1")[-2:] == ["callback_done", "callback_done"]


def test_claims_are_exclusive_until_the_lease_ends(backend: str, make_store: MakeStore) -> None:
    store, _ = make_store(backend)
    store.apply([open_op(f"T{i}", at=s(i)) for i in range(10)])

    first = store.claim_outbox("relay-a", 4, lease_s=30)
    second = store.claim_outbox("relay-b", 100, lease_s=30)
    assert [r["ticket_id"] for r in first] == ["T0", "T1", "T2", "T3"]
    assert [r["ticket_id"] for r in second] == [f"T{i}" for i in range(4, 10)]
    assert store.claim_outbox("relay-c", 100, lease_s=30) == []
    # a relay may take its own claims again (it failed to publish them)
    assert [r["event_id"] for r in store.claim_outbox("relay-a", 100, 30)] == \
        [r["event_id"] for r in first]

    # only the owner marks rows sent
    assert store.mark_sent("relay-b", [r["event_id"] for r in first]) == 0
    assert store.mark_sent("relay-a", [r["event_id"] for r in first]) == 4
    assert store.outbox_backlog()[0] == 6

    # a dead relay's lease ends: its rows are claimed by another
    store.claim_outbox("relay-b", 100, lease_s=-1)
    assert len(store.claim_outbox("relay-c", 100, lease_s=30)) == 6
    store.release_claims("relay-c")
    assert len(store.claim_outbox("relay-d", 100, lease_s=30)) == 6


def test_create_schema_upgrades_an_older_database(backend: str, make_store: MakeStore) -> None:
    store, database = make_store(backend)
    store.apply([open_op("T1")])
    with store.engine.begin() as conn:
        for column in ("transfers", "callback_requested", "callback_attempts",
                       "callback_outcome", "reclassified_at"):
            conn.execute(text(f"ALTER TABLE tickets DROP COLUMN {column}"))
        conn.execute(text("DROP TABLE outbox"))
    store.close()

    with TicketStore(database.url) as again:
        again.create_schema()
        again.apply([CloseTicket("T1", s(3), "abandoned")])
        ticket = again.get("T1")
        assert ticket is not None
        assert (ticket["transfers"], ticket["callback_requested"]) == ([], True)
        assert kinds(again) == ["abandoned", "callback_requested"]


def test_callback_commands(backend: str, make_store: MakeStore, tmp_path: Path) -> None:
    store, database = make_store(backend)
    store.apply([open_op("E1", "110"), CloseTicket("E1", s(4), "abandoned"),
                 open_op("P1", "96345", s(2)), CloseTicket("P1", s(20), "abandoned")])
    env = {**os.environ, "CALLROUTER_HOME": str(tmp_path), "CALLROUTER_DB_URL": database.url}

    def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "callrouter.cli", "tickets", *args],
                              env=env, capture_output=True, text=True, timeout=30,
                              check=check)

    assert [t["id"] for t in json.loads(cli("callbacks", "--json").stdout)] == ["E1"]
    assert "E1" in cli("callbacks").stdout
    done = json.loads(cli("callback-done", "E1", "--seat", "s110-02", "--outcome",
                          "reached").stdout)
    assert (done["callback_outcome"], done["callback_seat"]) == ("reached", "s110-02")
    assert json.loads(cli("callbacks", "--json").stdout) == []
    assert cli("callback-done", "T-none", "--seat", "s", "--outcome", "reached",
               check=False).returncode == 1
    assert kinds(store, "E1")[-1] == "callback_done"
