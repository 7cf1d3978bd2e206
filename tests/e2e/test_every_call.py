"""A ticket for every call, even those the engine never saw.

Callers held by the dialplan while the engine is down who hang up before it returns are
recorded from Asterisk's own channel event log (CEL) when the engine connects; callers
still there are handled by the engine as usual; nobody gets two tickets. A call whose
ticket ops a ``kill -9`` lost in the writer's linger window gets its ticket from the same
record.
"""

from __future__ import annotations

import signal
import time

from callrouter.provision import asterisk as prov
from callrouter.sim.trunk import CallSpec
from callrouter.tickets import TicketStore
from tests.conftest import wait_for
from tests.e2e.conftest import EngineFactory


def _held_by_dialplan(engines: EngineFactory) -> int:
    target = prov.select_target(engines.settings)
    out = prov.rx(target, "core show channels concise").stdout
    return sum(1 for line in out.splitlines() if "MusicOnHold" in line)


def _rows(engines: EngineFactory) -> list[dict[str, object]]:
    store = engines.store()
    try:
        return store.list(limit=1000)
    finally:
        store.close()


def test_callers_who_leave_while_the_engine_is_down_each_leave_one_ticket(engines: EngineFactory) -> None:
    gone = [CallSpec("119", "13900000001", 2.0), CallSpec("12345", "13900000002", 2.0),
            CallSpec("0578-6119119", "13900000003", 2.0)]
    staying = [CallSpec("110", "13900000004", 16.0), CallSpec("12315", "13900000005", 16.0)]
    thread, out = engines.calls_in_background(gone + staying, rate=20)
    wait_for(lambda: _held_by_dialplan(engines) == 5, 10, "the dialplan to hold all five callers")
    # the short ones hang up while nobody but the dialplan holds them
    wait_for(lambda: _held_by_dialplan(engines) == 2, 10, "three callers to give up")
    time.sleep(0.5)
    engine = engines.start()
    thread.join(timeout=40)
    assert out and all(c.ok for c in out[0].calls), out and out[0].to_json()
    rows = wait_for(lambda: engines.closed_tickets(5), 30, "five closed tickets")
    assert len(rows) == 5, [r["caller"] for r in rows]
    by_caller = {str(r["caller"]): r for r in rows}
    assert sorted(by_caller) == sorted(s.caller for s in gone + staying), "one ticket per caller"
    assert len({r["channel_id"] for r in rows}) == 5
    for spec in gone:
        ticket = by_caller[spec.caller]
        assert ticket["outcome"] == "abandoned" and ticket["held_by_dialplan"] is True, ticket
        # the wait from arrival (channel created) to hang-up: answered at once, 2 s of hold
        assert 1.8 <= float(ticket["duration_s"]) < 6.0, ticket
        assert ticket["answered_at"] and ticket["seat"] is None
        assert f"event=unseen_call_recorded ticket={ticket['id']}" in engine.log()
    assert by_caller["13900000001"]["line"] == "110" and by_caller["13900000001"]["category"] == "fire"
    assert by_caller["13900000003"]["number"] == "05786119119"
    assert by_caller["13900000001"]["callback_requested"] is True, "an abandoned 110 call is called back"
    for spec in staying:
        ticket = by_caller[spec.caller]
        # the engine adopted them, opened their tickets itself and closed them when they hung up
        assert f"event=call_arrived ticket={ticket['id']}" in engine.log()
        assert ticket["held_by_dialplan"] is True and ticket["outcome"] == "abandoned", ticket
        assert float(ticket["duration_s"]) > 14.0, ticket

    # a second engine on the same database and Asterisk record adds nothing
    wait_for(engines.recordings_settled, 10, "the 110 calls' recordings kept")
    engine.stop()
    events_before = len(TicketStore(engines.db_url).events())
    second = engines.start()
    wait_for(lambda: "event=cel_imported" in second.log(), 10, "the second engine's import")
    wait_for(lambda: "event=cel_import_not_drained" not in second.log(), 1, "its ops written")
    # calls the first engine closed may be submitted again (it stopped before its next
    # import): the store ignores them
    assert len(_rows(engines)) == 5
    assert len(TicketStore(engines.db_url).events()) == events_before


def test_kill_9_right_after_a_short_call_still_leaves_its_ticket_closed(engines: EngineFactory) -> None:
    first = engines.start()
    spec = CallSpec("122", "13900000009", 0.0)  # hangs up right after the answer
    thread, out = engines.calls_in_background([spec], rate=1)
    # kill the moment the call ended: the writer holds ticket ops up to 0.2 s in memory. The
    # dialplan answers before Stasis(), so a caller this quick may hang up before the engine
    # ever sees the call (no call_ended then): the caller's side ending counts too
    wait_for(lambda: "event=call_ended" in first.log() or not thread.is_alive(), 15, "the short call to end",
             interval=0.005)
    first.stop(signal.SIGKILL)
    thread.join(timeout=20)
    assert out and out[0].calls[0].ok, out and out[0].to_json()
    before = _rows(engines)
    # the next engine starts from nothing the first one kept (no snapshot, no Redis
    # state): only Asterisk's record can close the window
    engines.env["CALLROUTER_STATE_FILE"] = str(engines.tmp / "state-2.json")
    engines.env["CALLROUTER_REDIS_PREFIX"] += "-2"
    engines.env["CALLROUTER_CEL_IMPORT_S"] = "2"
    second = engines.start()
    rows = wait_for(lambda: engines.closed_tickets(1), 30, "the short call's ticket, closed")
    assert len(rows) == 1, rows
    ticket = rows[0]
    assert ticket["caller"] == spec.caller and ticket["line"] == "110" and ticket["category"] == "traffic_accident"
    assert ticket["outcome"] == "abandoned" and ticket["ended_at"] and ticket["held_by_dialplan"] is False
    if not before or not before[0]["ended_at"]:
        # the kill did land in the window: the record closed it
        assert "event=unseen_call_recorded" in second.log(), second.log()[-3000:]
    print(f"ticket before the restart: {'none' if not before else 'open' if not before[0]['ended_at'] else 'closed'}")
