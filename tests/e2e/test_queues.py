"""The two lines end to end: real Asterisk, the engine process, SIPp callers AND SIPp seats.

Times in the lines configuration are shortened (wrap-up 1 s, overflow calm 5 s, ring
timeout 4 s) so each test finishes in seconds; everything else is the shipped config.
"""

from __future__ import annotations

import signal
import time

from callrouter.provision import asterisk as prov
from callrouter.sim.seats import SeatSims, SeatSpec, start_seats
from callrouter.sim.trunk import CallSpec, run_calls
from tests.conftest import wait_for
from tests.e2e.conftest import EngineFactory

SEATS_110 = [f"s110-{i:02d}" for i in range(1, 11)]
SEATS_96345 = [f"s96345-{i:02d}" for i in range(1, 11)]
POOL = [f"ovf-{i:02d}" for i in range(1, 7)]


def test_surge_of_300_callers_all_reach_a_seat(engines: EngineFactory, seats: list[SeatSims]) -> None:
    engines.use_lines(wrap_up_s=1, calm_s=5, wait_threshold_s=5)
    engines.start()
    specs_seats = [SeatSpec(s, answer_delay_s=0.3, talk_s=2.0, talk_dist="fixed") for s in SEATS_110 + SEATS_96345 + POOL]
    seats.append(start_seats(engines.settings, specs_seats))
    engines.login(*SEATS_110, *SEATS_96345, *POOL)
    # 300 callers in 15 s over both lines; each waits until the engine ends the call
    numbers = ["110", "119", "120", "122", "12345", "12315", "95598", "96345", "12333", "12369"]
    specs = [CallSpec(numbers[i % len(numbers)], f"1370{i:07d}", -1) for i in range(300)]
    thread, out = engines.calls_in_background(specs, 20)
    overflow_seen = wait_for(lambda: any(line["overflow_active"] for line in engines.status()["lines"].values()),
                             60, "overflow to switch on during the surge")
    assert overflow_seen
    thread.join(timeout=400)
    assert out, "the trunk simulator did not finish"
    report = out[0]
    failed = [c for c in report.calls if not c.ok]
    assert not failed, f"{len(failed)} calls failed: {failed[:5]} {report.errors[:5]}"
    assert len(report.rtt_ms) == 300, "every caller gets 200 OK"
    rows = wait_for(lambda: engines.closed_tickets(300), 60, "all 300 tickets closed")
    assert len(rows) == 300
    unseated = [r for r in rows if not r["seat"] or not r["seat_answered_at"]]
    assert not unseated, f"{len(unseated)} callers never reached a seat, e.g. {unseated[:2]}"
    assert all(r["outcome"] == "completed" for r in rows)
    assert any(str(r["seat"]).startswith("ovf-") for r in rows), "overflow seats took calls"
    wait_for(lambda: not any(line["overflow_active"] for line in engines.status()["lines"].values()), 60,
             "overflow to switch off once the lines are calm")


def test_fire_caller_arriving_last_is_answered_first(engines: EngineFactory, seats: list[SeatSims]) -> None:
    engines.use_lines(wrap_up_s=1, wait_threshold_s=600, calm_s=5)
    engines.start()
    seats.append(start_seats(engines.settings, [SeatSpec("s110-01", answer_delay_s=0.2, talk_s=3.0,
                                                         talk_dist="fixed")]))
    engines.login("s110-01")
    # the seat takes the first caller; three ordinary callers queue; a fire call comes last
    ordinary = [CallSpec("96110", f"1381000000{i}", -1) for i in range(4)]
    t1, out1 = engines.calls_in_background(ordinary, 4)
    wait_for(lambda: engines.status()["lines"]["110"]["waiting"] == 3, 15, "three ordinary callers waiting")
    fire = CallSpec("119", "13819999999", -1)
    t2, out2 = engines.calls_in_background([fire], 1)
    t1.join(timeout=60)
    t2.join(timeout=60)
    assert out1 and all(c.ok for c in out1[0].calls) and out2 and out2[0].calls[0].ok
    rows = wait_for(lambda: engines.closed_tickets(5), 30, "five tickets closed")
    by_seat_time = sorted(rows, key=lambda r: str(r["seat_answered_at"]))
    order = [r["caller"] for r in by_seat_time]
    assert order[1] == fire.caller, f"the fire caller must be answered right after the first caller: {order}"
    assert [r["priority"] for r in by_seat_time if r["caller"] == fire.caller] == [1]


def test_a_seat_that_never_answers_is_paused_and_its_call_moves_on(engines: EngineFactory,
                                                                   seats: list[SeatSims]) -> None:
    engines.use_lines(wrap_up_s=1, ring_timeout_s=4)
    engines.start()
    seats.append(start_seats(engines.settings, [SeatSpec("s110-01", mode="no_answer"),
                                                SeatSpec("s110-02", answer_delay_s=0.2, talk_s=1.0, talk_dist="fixed")]))
    engines.login("s110-01")  # logged in first: longest idle, so it is offered first
    time.sleep(0.5)
    engines.login("s110-02")
    specs = [CallSpec("110", "13820000001", -1)]
    report = run_calls(engines.settings, specs, rate=1)
    assert report.calls[0].ok, report.to_json()
    row = wait_for(lambda: engines.closed_tickets(1), 20, "the first ticket")[0]
    assert row["seat"] == "s110-02"
    # offered at arrival + answer delay; the bad seat rang 4 s: within ring timeout + 1 s
    waited = (_ts(row["seat_answered_at"]) - _ts(row["arrived_at"]))
    assert waited <= 4 + 1 + 0.5, f"reached the second seat after {waited:.1f} s"
    time.sleep(1.5)  # s110-02 finishes wrap-up
    report = run_calls(engines.settings, [CallSpec("110", "13820000002", -1)], rate=1)
    assert report.calls[0].ok
    seat = wait_for(lambda: (s := engines.status()["seats"]["s110-01"])["state"] == "paused" and s, 15,
                    "the silent seat to be paused")
    assert seat["reason"] == "missed_offers"


def _ts(value: object) -> float:
    from datetime import datetime

    return datetime.fromisoformat(str(value)).timestamp()


def test_kill_9_keeps_waiting_callers_in_order_and_talking_calls_up(engines: EngineFactory,
                                                                    seats: list[SeatSims]) -> None:
    engines.use_lines(wrap_up_s=1)
    first = engines.start()
    # two seats that talk until the caller hangs up; two callers talking when the engine
    # dies (they hang up after 8 s), two waiting (they hang up 20 s after the engine
    # answered them, so some 12 s after a seat did)
    seats.append(start_seats(engines.settings, [SeatSpec("s110-01", answer_delay_s=0.2, talk_s=0),
                                                SeatSpec("s110-02", answer_delay_s=0.2, talk_s=0)]))
    engines.login("s110-01", "s110-02")
    talkers = [CallSpec("110", f"1383000000{i}", 8.0) for i in range(2)]
    waiters = [CallSpec("110", f"1383000001{i}", 20.0) for i in range(2)]
    t1, out1 = engines.calls_in_background(talkers, 10)
    wait_for(lambda: first.log().count("event=call_connected") == 2, 15, "two calls talking")
    t2, out2 = engines.calls_in_background(waiters, 2)
    wait_for(lambda: engines.status()["lines"]["110"]["waiting"] == 2, 15, "two callers waiting")
    time.sleep(0.8)  # let the state saver write the snapshot
    first.stop(signal.SIGKILL)
    target = prov.select_target(engines.settings)
    bridges_before = prov.rx(target, "bridge show all").stdout
    assert bridges_before.count("callrouter-call-") == 2, bridges_before
    # a new caller while the engine is down is held by the dialplan, not declined
    t3, out3 = engines.calls_in_background([CallSpec("110", "13830000099", 25.0)], 1)
    time.sleep(1.5)
    second = engines.start()
    wait_for(lambda: "event=reconciled" in second.log(), 10, "the new engine to reconcile")
    for t in (t1, t2, t3):
        t.join(timeout=90)
    assert out1 and all(c.outcome == "completed" for c in out1[0].calls), "talking calls were not disturbed"
    assert out2 and all(c.ok for c in out2[0].calls) and out3 and out3[0].calls[0].ok
    rows = wait_for(lambda: engines.closed_tickets(5), 30, "all five tickets closed")
    assert len(rows) == 5, "one ticket per call, the restart made none twice"
    assert all(r["seat"] and r["outcome"] == "completed" for r in rows), rows
    waiting_order = sorted((r for r in rows if r["caller"] in {w.caller for w in waiters}),
                           key=lambda r: str(r["seat_answered_at"]))
    assert [r["caller"] for r in waiting_order] == [w.caller for w in waiters], "waiting callers kept their order"


def test_the_engine_follows_the_seats_endpoints_not_the_trunks(engines: EngineFactory,
                                                                seats: list[SeatSims]) -> None:
    """Endpoint events come from the seats' endpoints only: the trunk's EndpointStateChange
    lists every channel on the trunk at every arrival and departure (O(callers held) each).
    Seat registration still reaches the ACD: a registered, logged-in seat takes a call."""
    from callrouter.acd import load_lines
    from callrouter.sim.leftovers import _ari_get

    engine = engines.start()
    app = _ari_get(engines.settings, f"/applications/{engines.settings.ari_app}", 5)
    cfg = load_lines(engines.settings.lines_path)
    wanted = {f"PJSIP/{s.endpoint}" for line in cfg.lines for s in line.seats} | {f"PJSIP/{p.endpoint}" for p in cfg.pool}
    assert wanted <= set(app["endpoint_ids"]), app["endpoint_ids"]
    if "PJSIP" in app["endpoint_ids"]:
        # an earlier engine's subscription to every endpoint, which Asterisk keeps until it
        # restarts: the engine must say so
        assert "event=endpoint_subscription_wide" in engine.log()
    seats.append(start_seats(engines.settings, [SeatSpec("s96345-01", answer_delay_s=0.3, talk_s=1.0)]))
    engines.login("s96345-01")
    wait_for(lambda: engines.status()["seats"]["s96345-01"]["registered"], 15, "the seat's registration to be seen")
    report = run_calls(engines.settings, [CallSpec("12345", "13900000077", 8)], rate=1)
    assert report.failed == 0
    wait_for(lambda: bool(engines.closed_tickets(1)), 20, "the ticket to close")
    assert engines.closed_tickets(1)[0]["seat"] == "s96345-01"
