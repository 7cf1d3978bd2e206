"""Calls the engine never saw: the store's RecordUnseenCall and the CEL importer, against
real databases and a real file rotated the way Asterisk's is."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from callrouter.calls.unseen import UnseenCallImporter
from callrouter.config import Settings
from callrouter.numberplan import load_plan
from callrouter.tickets import (
    CloseTicket,
    OpenTicket,
    RecordUnseenCall,
    SetSeat,
    TicketStore,
    TicketWriter,
    ticket_id_for_channel,
)
from callrouter.tickets.spool import op_from_json, op_to_json
from tests.integration.test_tickets import MakeStore

pytestmark = pytest.mark.integration

T0 = datetime(2026, 12, 1, 0, 33, 26, 794305, tzinfo=UTC)


def unseen(channel: str = "1796085206.0", at: datetime = T0, wait_s: float = 3.0, *, held: bool = True,
           ticket_id: str | None = None, line: str = "110") -> RecordUnseenCall:
    return RecordUnseenCall(
        id=ticket_id or ticket_id_for_channel(at, channel), dialled="119", number="119", caller="13911112222",
        caller_name="", line=line, category="fire", department="fire brigade", priority=1, listed=True,
        channel_id=channel, arrived_at=at, ended_at=at + timedelta(seconds=wait_s),
        answered_at=at + timedelta(milliseconds=1), held_by_dialplan=held)


def test_an_unseen_call_becomes_one_abandoned_ticket_however_often_it_is_recorded(
        backend: str, make_store: MakeStore) -> None:
    store, _ = make_store(backend)
    op = unseen()
    store.apply([op])
    store.apply([op, op])
    rows = store.list()
    assert len(rows) == 1
    ticket = rows[0]
    assert ticket["id"] == op.id and ticket["outcome"] == "abandoned" and ticket["held_by_dialplan"] is True
    assert ticket["duration_s"] == pytest.approx(3.0) and ticket["answered_at"] is not None
    assert ticket["callback_requested"] is True  # an abandoned 110 call is called back
    assert [e["kind"] for e in store.events()] == ["opened", "answered", "closed", "callback_requested"]
    assert [e["kind"] for e in store.outbox()] == ["opened", "answered", "abandoned", "callback_requested"]


def test_a_ticket_the_engine_opened_under_another_id_is_closed_not_doubled(
        backend: str, make_store: MakeStore) -> None:
    store, _ = make_store(backend)
    # the engine's arrival (from ARI) fell in the second before the record's
    engine_id = ticket_id_for_channel(T0 - timedelta(seconds=1), "1796085206.0")
    store.apply([OpenTicket(id=engine_id, dialled="119", number="119", caller="13911112222", caller_name="",
                            line="110", category="fire", department="fire brigade", priority=1, listed=True,
                            channel_id="1796085206.0", arrived_at=T0 - timedelta(seconds=1))])
    store.apply([unseen()])
    rows = store.list()
    assert [r["id"] for r in rows] == [engine_id]
    assert rows[0]["outcome"] == "abandoned" and rows[0]["ended_at"] is not None


def test_a_talking_call_closes_completed_and_a_closed_one_is_left_alone(backend: str, make_store: MakeStore) -> None:
    store, _ = make_store(backend)
    talking, closed = unseen("1.1", ticket_id="T-talking"), unseen("1.2", ticket_id="T-closed")
    store.apply([talking.opening(), SetSeat("T-talking", "s110-01", T0 + timedelta(seconds=1)),
                 closed.opening(), CloseTicket("T-closed", T0 + timedelta(seconds=9), "completed")])
    events = len(store.events())
    store.apply([talking, closed])
    assert store.get("T-talking")["outcome"] == "completed"  # type: ignore[index]
    assert store.get("T-closed")["duration_s"] == pytest.approx(9.0)  # type: ignore[index]
    assert len(store.events()) == events + 2  # answered + closed of the talking one only


def test_the_op_survives_the_spool() -> None:
    op = unseen()
    assert op_from_json(json.loads(json.dumps(op_to_json(op)))) == op
    no_answer = RecordUnseenCall(**{**{f: getattr(op, f) for f in op.__slots__}, "answered_at": None})
    assert op_from_json(json.loads(json.dumps(op_to_json(no_answer)))) == no_answer


# --- the importer: a real file, rotated, and a real writer on SQLite ----------------------
def cel(kind: str, at: float, uid: str, context: str = "from-trunk", app: str = "", exten: str = "119") -> str:
    return json.dumps({"eventtype": kind, "eventtime": f"{at:.6f}", "uniqueid": uid, "context": context,
                       "exten": exten, "channame": "PJSIP/trunk-1", "appname": app, "num": "13911112222",
                       "name": ""}) + "\n"


class Setup:
    def __init__(self, tmp: Path) -> None:
        self.file = tmp / "cel-custom" / "callrouter.json"
        self.file.parent.mkdir()
        self.state = tmp / "cel-import.json"
        self.store = TicketStore(f"sqlite:///{tmp / 'tickets.sqlite3'}")
        self.store.create_schema()
        self.writer = TicketWriter(self.store)
        self.plan = load_plan(Settings().numberplan_path)

    def importer(self) -> UnseenCallImporter:
        return UnseenCallImporter(self.file, self.state, self.plan, self.writer, grace_s=5.0)

    def append(self, *lines: str) -> None:
        with self.file.open("a") as fh:
            fh.writelines(lines)


@pytest.fixture
def setup(tmp_path: Path) -> Any:
    s = Setup(tmp_path)
    yield s
    s.store.close()


async def test_import_rotates_keeps_open_calls_and_records_them_when_they_end(setup: Setup) -> None:
    import asyncio

    runner = asyncio.create_task(setup.writer.run())
    try:
        imp = setup.importer()
        t = 1796085206.5
        setup.append(cel("CHAN_START", t, "a.1"), cel("APP_START", t + 1, "a.1", "callrouter-engine", "MusicOnHold"),
                     cel("CHAN_START", t, "seat.1", context="from-seat", exten="*11"), cel("CHAN_END", t + 1, "seat.1"),
                     cel("CHAN_START", t + 2, "b.1", exten="12345"))
        # b.1 is live in Asterisk, a.1 too: nothing ends yet
        assert await imp.run_once(live={"a.1", "b.1"}, engine_calls=set(), now=t + 3) == 0
        assert not setup.file.exists() and not imp.importing.exists(), "rotated, read, deleted"
        assert stat.S_IMODE(setup.state.stat().st_mode) == 0o600
        assert sorted(json.loads(setup.state.read_text()) and imp.calls) == ["a.1", "b.1"]
        # Asterisk starts a new file; a.1 hangs up; b.1 is now the engine's
        setup.append(cel("CHAN_END", t + 4, "a.1"))
        assert await imp.run_once(live={"b.1"}, engine_calls={"b.1"}, now=t + 6) == 0, "within the grace"
        again = setup.importer()  # a restarted engine: the state file carries a.1
        assert await again.run_once(live={"b.1"}, engine_calls={"b.1"}, now=t + 10) == 1
        rows = setup.store.list()
        assert len(rows) == 1 and rows[0]["channel_id"] == "a.1" and rows[0]["held_by_dialplan"] is True
        assert rows[0]["duration_s"] == pytest.approx(4.0)
        assert list(again.calls) == ["b.1"]
        # the engine closed b.1 itself: no record needed; its end is forgotten
        again.on_event("call_ended", {"call_id": "b.1"})
        setup.append(cel("CHAN_END", t + 20, "b.1"))
        assert await again.run_once(live=set(), engine_calls=set(), now=t + 30) == 0
        assert again.calls == {} and len(setup.store.list()) == 1
    finally:
        await setup.writer.close(timeout=5)
        await asyncio.gather(runner, return_exceptions=True)


async def test_a_call_asterisk_lost_without_an_end_is_recorded_at_the_second_miss(setup: Setup) -> None:
    import asyncio

    runner = asyncio.create_task(setup.writer.run())
    try:
        imp = setup.importer()
        t = 1796085206.5
        setup.append(cel("CHAN_START", t, "c.1"))
        assert await imp.run_once(live=None, engine_calls=set(), now=t + 60) == 0, "no channel list: no guess"
        assert await imp.run_once(live=set(), engine_calls=set(), now=t + 90) == 0, "first miss"
        assert await imp.run_once(live=set(), engine_calls=set(), now=t + 120) == 0, "ended now, grace"
        assert await imp.run_once(live=set(), engine_calls=set(), now=t + 130) == 1
        rows = setup.store.list()
        assert len(rows) == 1 and rows[0]["outcome"] == "abandoned" and rows[0]["held_by_dialplan"] is False
    finally:
        await setup.writer.close(timeout=5)
        await asyncio.gather(runner, return_exceptions=True)


def test_ticket_files_are_private(tmp_path: Path) -> None:
    store = TicketStore(f"sqlite:///{tmp_path / 'db' / 'tickets.sqlite3'}")
    try:
        store.create_schema()
        store.apply([unseen()])
        for path in (tmp_path / "db").iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    finally:
        store.close()
    old = tmp_path / "old.sqlite3"
    old.touch(mode=0o644)
    old.chmod(0o644)
    TicketStore(f"sqlite:///{old}").close()
    assert stat.S_IMODE(old.stat().st_mode) == 0o600


async def test_calls_that_ended_before_the_engine_connected_need_no_grace(setup: Setup) -> None:
    import asyncio

    runner = asyncio.create_task(setup.writer.run())
    try:
        imp = setup.importer()
        t = 1796085206.5
        setup.append(cel("CHAN_START", t, "d.1"), cel("CHAN_END", t + 1, "d.1"),
                     cel("CHAN_START", t + 1.5, "e.1"), cel("CHAN_END", t + 2.5, "e.1"))
        # connected at t + 2: d.1 had ended, e.1 ended after (the engine may be handling it)
        assert await imp.run_once(live=set(), engine_calls=set(), now=t + 3, settled_before=t + 2) == 1
        assert [r["channel_id"] for r in setup.store.list()] == ["d.1"]
        assert list(imp.calls) == ["e.1"]
    finally:
        await setup.writer.close(timeout=5)
        await asyncio.gather(runner, return_exceptions=True)


async def test_asterisk_is_asked_for_its_channels_only_when_a_call_is_undecided(setup: Setup) -> None:
    """The list of every channel (about 1 MB with 1,000+ held) is fetched only when a
    followed call is neither the engine's nor ended."""
    import asyncio

    runner = asyncio.create_task(setup.writer.run())
    asked: list[int] = []

    async def live() -> set[str] | None:
        asked.append(1)
        return set()

    try:
        imp = setup.importer()
        t = 1796085206.5
        setup.append(cel("CHAN_START", t, "d.1"), cel("CHAN_START", t, "e.1"), cel("CHAN_END", t + 1, "e.1"))
        # d.1 is the engine's, e.1 ended: nothing to ask Asterisk
        assert await imp.run_once(engine_calls={"d.1"}, now=t + 2, live_source=live) == 0
        assert asked == []
        # d.1 no longer the engine's and not ended: now Asterisk is asked (d.1 missing once)
        assert await imp.run_once(engine_calls=set(), now=t + 30, live_source=live) == 1
        assert asked == [1]
        assert [r["channel_id"] for r in setup.store.list()] == ["e.1"]
    finally:
        await setup.writer.close(timeout=5)
        await asyncio.gather(runner, return_exceptions=True)


async def test_in_a_cluster_each_node_reads_its_own_file_and_state_and_follows_only_its_calls(
        setup: Setup, tmp_path: Path) -> None:
    """Two nodes' importers on one writer: each rotates its own file, keeps its own state,
    takes only its own node's ``call_ended``; a node that cannot list its channels (None)
    keeps its open call while the other node's missing call is counted."""
    import asyncio

    from callrouter.calls.unseen import metrics_text, node_state_path

    runner = asyncio.create_task(setup.writer.run())
    try:
        files = {}
        importers = {}
        for node in ("node1", "node2"):
            files[node] = tmp_path / node / "cel-custom" / "callrouter.json"
            files[node].parent.mkdir(parents=True)
            importers[node] = UnseenCallImporter(files[node], node_state_path(setup.state, node), setup.plan,
                                                 setup.writer, node=node, grace_s=5.0)
        one, two = importers["node1"], importers["node2"]
        t = 1796085206.5
        files["node1"].write_text(cel("CHAN_START", t, "node1-7.1") + cel("CHAN_START", t, "node1-7.2")
                                  + cel("CHAN_END", t + 2, "node1-7.2"))
        files["node2"].write_text(cel("CHAN_START", t, "node2-7.1") + cel("CHAN_START", t, "node2-7.2"))
        # the engine closed node1-7.2 and node2-7.2 itself: each importer takes its own only
        for imp in (one, two):
            imp.on_event("call_ended", {"call_id": "node1-7.2"})
            imp.on_event("call_ended", {"call_id": "node2-7.2"})
        assert one.closed_here == {"node1-7.2"} and two.closed_here == {"node2-7.2"}
        assert await one.run_once(live=set(), engine_calls=set(), now=t + 30) == 0, "7.2 closed here; 7.1 missed once"
        assert await two.run_once(live=None, engine_calls={"node2-7.2"}, now=t + 30) == 0
        assert await one.run_once(live=set(), engine_calls=set(), now=t + 60) == 0, "7.1 ended now: grace"
        assert await two.run_once(live=None, engine_calls={"node2-7.2"}, now=t + 60) == 0
        assert await one.run_once(live=set(), engine_calls=set(), now=t + 70) == 1
        assert await two.run_once(live=None, engine_calls={"node2-7.2"}, now=t + 70) == 0, "node2 unasked: kept"
        assert [r["channel_id"] for r in setup.store.list()] == ["node1-7.1"]
        assert not any(f.exists() for f in files.values()), "each node's file rotated and read"
        assert json.loads(node_state_path(setup.state, "node1").read_text()) == {"calls": []}
        assert [c["uniqueid"] for c in json.loads(node_state_path(setup.state, "node2").read_text())["calls"]] == [
            "node2-7.1", "node2-7.2"]
        assert not setup.state.exists(), "the single-node state file is not used"
        text = metrics_text(importers.values())
        assert 'callrouter_unseen_calls_recorded_total{node="node1"} 1' in text
        assert 'callrouter_unseen_calls_recorded_total{node="node2"} 0' in text
        assert text.count("# TYPE callrouter_unseen_calls_recorded_total counter") == 1
        assert "callrouter_unseen_calls_recorded_total 0" in metrics_text([setup.importer()])
    finally:
        await setup.writer.close(timeout=5)
        await asyncio.gather(runner, return_exceptions=True)
