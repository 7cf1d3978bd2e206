"""The backbone end to end: real Asterisk, the engine as a process, SIPp as the trunk.

Every number in the plan and a few unlisted ones are dialled; each call must get
200 OK and leave exactly one ticket with the right line and category, closed with an
end time and outcome after hang-up. A caller who dials while the engine is down is held
by the dialplan (never declined) and handled once the engine returns; a caller held
while the engine is killed keeps their ticket when the next engine adopts them.
"""

from __future__ import annotations

import signal
import time

from callrouter.numberplan import load_plan
from callrouter.provision import asterisk as prov
from callrouter.sim.trunk import UNLISTED_SAMPLES, CallSpec, run_calls
from tests.conftest import wait_for
from tests.e2e.conftest import EngineFactory


def _channels_in(engines: EngineFactory, needle: str) -> int:
    target = prov.select_target(engines.settings)
    out = prov.rx(target, "core show channels concise").stdout
    return sum(1 for line in out.splitlines() if needle in line)


def test_every_number_reaches_the_engine_and_leaves_one_ticket(engines: EngineFactory) -> None:
    engines.start()
    plan = load_plan(engines.settings.numberplan_path)
    # mobile callers dial the area code before short codes; carriers may deliver +86 forms
    area_forms = {"0578110": "110", "0578119": "110", "+86578120": "110", "0086578122": "110", "057812345": "96345"}
    numbers = [e.number for e in plan.entries] + list(UNLISTED_SAMPLES) + list(area_forms)
    specs = [CallSpec(number, f"1390{i:07d}", 1.5) for i, number in enumerate(numbers)]

    report = run_calls(engines.settings, specs, rate=20)

    failed = [c for c in report.calls if not c.ok]
    assert not failed, f"{len(failed)} calls failed: {failed[:5]}; sipp errors: {report.errors[:5]}"
    assert len(report.rtt_ms) == len(specs), "every call's INVITE must get a 200 OK"
    rows = wait_for(lambda: engines.closed_tickets(len(specs)), 30, "every ticket to be closed")
    assert len(rows) == len(specs), "exactly one ticket per call"
    by_caller = {str(r["caller"]): r for r in rows}
    assert len(by_caller) == len(specs)
    for spec in specs:
        ticket = by_caller[spec.caller]
        route = plan.route(spec.number)
        assert (ticket["line"], ticket["category"]) == (route.line, route.category), spec
        assert ticket["dialled"] == spec.number.replace(" ", "")
        assert ticket["answered_at"] is not None
        assert ticket["ended_at"] is not None and ticket["outcome"] == "abandoned"
        assert float(ticket["duration_s"]) >= 1.0
    for spec in specs:
        if spec.number in area_forms:
            ticket = by_caller[spec.caller]
            assert ticket["line"] == area_forms[spec.number] and ticket["category"] != "unlisted", ticket
    unlisted = [by_caller[s.caller] for s in specs if s.number in UNLISTED_SAMPLES]
    assert unlisted and all(t["line"] == "96345" and t["category"] == "unlisted" for t in unlisted)


def test_a_call_while_the_engine_is_down_is_held_then_handled(engines: EngineFactory) -> None:
    spec = CallSpec("119", "13911112222", 8.0)
    thread, out = engines.calls_in_background([spec], 1)
    # held by the dialplan with music, not declined
    wait_for(lambda: _channels_in(engines, "MusicOnHold") == 1, 10, "the dialplan to hold the caller")
    time.sleep(1.5)
    engine = engines.start()
    thread.join(timeout=30)
    assert out and out[0].calls[0].ok, out and out[0].to_json()
    rows = wait_for(lambda: engines.closed_tickets(1), 20, "the held caller's ticket")
    assert len(rows) == 1
    ticket = rows[0]
    assert ticket["caller"] == spec.caller and ticket["line"] == "110" and ticket["category"] == "fire"
    # the wait counts from when the caller reached Asterisk, not from when the engine saw them
    assert float(ticket["duration_s"]) > 7.0
    assert "held_by_dialplan=" in engine.log() and "held_by_dialplan=0" not in engine.log()


def test_a_killed_engine_is_replaced_and_keeps_the_ticket(engines: EngineFactory) -> None:
    first = engines.start()
    spec = CallSpec("12345", "13922223333", 10.0)
    thread, out = engines.calls_in_background([spec], 1)
    wait_for(lambda: "event=call_answered" in first.log(), 10, "the first engine to answer")
    first.stop(signal.SIGKILL)
    time.sleep(1.0)
    second = engines.start()
    wait_for(lambda: "event=call_adopted" in second.log(), 10, "the second engine to adopt the caller")
    first_ticket = next(line.split("ticket=")[1].split()[0] for line in first.log().splitlines()
                        if "event=call_arrived" in line)
    assert f"event=call_adopted ticket={first_ticket}" in second.log(), "adopted under the ticket the first opened"
    thread.join(timeout=30)
    assert out and out[0].calls[0].ok, out and out[0].to_json()
    rows = wait_for(lambda: engines.closed_tickets(1), 20, "the caller's ticket to close")
    assert len(rows) == 1, "the adopted caller keeps the ticket the killed engine opened"
    assert rows[0]["caller"] == spec.caller and rows[0]["outcome"] == "abandoned"
