"""Several engines on one Asterisk (callrouter.ha): calls offered by StasisBroadcast, the
lease holder claims them and runs the queues, a standby takes over when it dies.

Real Asterisk, SIPp callers and seats, Redis, each engine a real `callrouter run`
process with its own ARI application. Lines shortened (wrap-up 1 s); lease ttl 3 s.
"""

from __future__ import annotations

import signal
import time

from callrouter.sim.seats import SeatSims, SeatSpec, start_seats
from callrouter.sim.trunk import CallSpec
from tests.conftest import wait_for
from tests.e2e.conftest import Engine, EngineFactory, log_time
from tests.integration.servers import StoppableRedis

TTL_MS = 3000


def _leading(engine: Engine) -> bool:
    return "event=leading" in engine.log()


def _two_engines(engines: EngineFactory) -> tuple[Engine, Engine]:
    engines.use_ha(ttl_ms=TTL_MS)
    first = engines.start(ha="a")
    wait_for(lambda: _leading(first), 10, "the first engine to take the lease")
    second = engines.start(ha="b")
    time.sleep(TTL_MS / 1000)  # a standby tries the lease every ttl/3: it must stay one
    assert not _leading(second), second.log()
    return first, second


def test_two_engines_the_leader_answers_the_standby_claims_nothing_and_a_clean_stop_hands_over(engines: EngineFactory,
                                                                    seats: list[SeatSims]) -> None:
    engines.use_lines(wrap_up_s=1)
    first, second = _two_engines(engines)
    seats.append(start_seats(engines.settings, [SeatSpec("s110-01", answer_delay_s=0.2, talk_s=0.5,
                                                         talk_dist="fixed")]))
    engines.login("s110-01", engine=first)
    # the standby's API sends its users to the holder's: its live state is empty, and a
    # change made there would be lost
    assert engines.status(first)["ha"]["role"] == "leader"
    standby_status = engines.status(second)["ha"]
    assert standby_status["role"] == "standby" and standby_status["leader"]["api"] == first.api_url, standby_status
    for method, path in (("POST", "/api/seats/s110-02/login"), ("GET", "/api/calls"),
                         ("POST", "/api/lines/reload")):
        status, body = engines.api(method, path, engine=second)
        assert status == 503 and isinstance(body, dict) and body["error"] == "standby", (path, status, body)
        assert body["leader"]["app"] == first.app and body["leader"]["api"] == first.api_url, body
    thread, out = engines.calls_in_background([CallSpec("110", f"1390000000{i}", -1) for i in range(3)], 5)
    thread.join(timeout=60)
    assert out and all(c.ok for c in out[0].calls), out
    rows = wait_for(lambda: engines.closed_tickets(3), 20, "three tickets closed")
    assert len(rows) == 3 and all(r["seat"] == "s110-01" and r["outcome"] == "completed" for r in rows), rows
    assert first.log().count("event=call_connected") == 3
    assert "event=call_arrived" not in second.log(), "the standby handled a call"
    # a clean stop gives the lease up: the standby leads within a third of the ttl, not the ttl
    stopped_at = time.time()
    assert first.stop() == 0
    wait_for(lambda: _leading(second), 5, "the standby to take the released lease")
    assert "event=lease_released term=1" in first.log()
    assert log_time(second, "event=lease_taken") - stopped_at < TTL_MS / 1000, "released, not expired"


def test_kill_9_of_the_leader_the_standby_adopts_waiting_and_talking_callers(engines: EngineFactory,
                                                                            seats: list[SeatSims]) -> None:
    engines.use_lines(wrap_up_s=1)
    first, second = _two_engines(engines)
    seats.append(start_seats(engines.settings, [SeatSpec("s110-01", answer_delay_s=0.2, talk_s=0),
                                                SeatSpec("s110-02", answer_delay_s=0.2, talk_s=0)]))
    engines.login("s110-01", "s110-02", engine=first)
    talkers = [CallSpec("110", f"1391000000{i}", 8.0) for i in range(2)]
    waiters = [CallSpec("110", f"1391000001{i}", 16.0) for i in range(2)]
    t1, out1 = engines.calls_in_background(talkers, 10)
    wait_for(lambda: first.log().count("event=call_connected") == 2, 15, "two calls talking")
    t2, out2 = engines.calls_in_background(waiters, 2)
    wait_for(lambda: engines.status(first)["lines"]["110"]["waiting"] == 2, 15, "two callers waiting")
    # the leader reloads a changed lines file: the new holder must take the file as it is now
    assert engines.lines is not None
    engines.lines.write_text(engines.lines.read_text().replace('name = "110 emergency"', 'name = "110 reloaded"'))
    status, body = engines.api("POST", "/api/lines/reload", engine=first)
    assert status == 200 and engines.status(first)["lines"]["110"]["name"] == "110 reloaded", body
    time.sleep(0.8)  # the state saver writes the shared snapshot
    killed_at = time.time()
    first.stop(signal.SIGKILL)
    wait_for(lambda: _leading(second), 10, "the standby to take over")
    assert engines.status(second)["lines"]["110"]["name"] == "110 reloaded", "the new holder took its old lines"
    took_over_s = log_time(second, "event=leading") - killed_at
    for t in (t1, t2):
        t.join(timeout=90)
    assert out1 and all(c.outcome == "completed" for c in out1[0].calls), "talking calls were not disturbed"
    assert out2 and all(c.ok for c in out2[0].calls), "waiting callers were answered"
    rows = wait_for(lambda: engines.closed_tickets(4), 30, "all four tickets closed")
    assert len(rows) == 4, "one ticket per call: the take-over made none twice"
    assert all(r["seat"] and r["outcome"] == "completed" for r in rows), rows
    waiting = sorted((r for r in rows if r["caller"] in {w.caller for w in waiters}),
                     key=lambda r: str(r["seat_answered_at"]))
    assert [r["caller"] for r in waiting] == [w.caller for w in waiters], "waiting callers kept their order"
    assert second.log().count("event=call_connected") == 2, "only the waiting callers were connected again"
    assert "event=call_adopted" in second.log()
    print(f"\nha: leader killed -> standby leading with its callers adopted in {took_over_s:.2f} s")


def test_a_stalled_leader_steps_down_and_does_nothing_twice(engines: EngineFactory,
                                                            seats: list[SeatSims]) -> None:
    engines.use_lines(wrap_up_s=1)
    first, second = _two_engines(engines)
    seats.append(start_seats(engines.settings, [SeatSpec("s110-01", answer_delay_s=0.2, talk_s=0)]))
    engines.login("s110-01", engine=first)
    thread, out = engines.calls_in_background([CallSpec("110", "13920000001", 6.0),
                                               CallSpec("110", "13920000002", 12.0)], 5)
    wait_for(lambda: engines.status(first)["lines"]["110"]["waiting"] == 1, 15, "one talking, one waiting")
    time.sleep(0.8)
    first.proc.send_signal(signal.SIGSTOP)
    wait_for(lambda: _leading(second), 10, "the standby to take over from the stalled leader")
    first.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: "event=lease_lost" in first.log(), 5, "the former leader to step down")
    thread.join(timeout=60)
    assert out and all(c.ok for c in out[0].calls), out
    rows = wait_for(lambda: engines.closed_tickets(2), 20, "both tickets closed")
    assert len(rows) == 2 and all(r["outcome"] == "completed" for r in rows), rows
    after = first.log().split("event=lease_lost", 1)[1]
    for mark in ("event=offer ", "event=call_connected", "event=call_ended", "event=hold"):
        assert mark not in after, f"the stepped-down engine acted: {mark}"
    assert "event=state_write_fenced" not in second.log()
    # the waiting caller was connected once, by the new leader
    assert first.log().count("event=call_connected") + second.log().count("event=call_connected") == 2


def test_redis_away_the_leader_leads_on_and_the_standby_never_takes_over(stoppable_redis: StoppableRedis,
                                                                         engines: EngineFactory,
                                                                         seats: list[SeatSims]) -> None:
    # (Redis first: torn down after the engines have stopped)
    engines.env["CALLROUTER_REDIS_URL"] = stoppable_redis.url
    engines.use_lines(wrap_up_s=1)
    first, second = _two_engines(engines)
    seats.append(start_seats(engines.settings, [SeatSpec("s110-01", answer_delay_s=0.2, talk_s=0.5,
                                                         talk_dist="fixed")]))
    engines.login("s110-01", engine=first)
    stoppable_redis.stop()
    wait_for(lambda: "event=lease_degraded" in first.log(), 5, "the leader to notice Redis is away")
    time.sleep(2 * TTL_MS / 1000)  # the lease has expired in nobody's Redis: nobody may take it
    thread, out = engines.calls_in_background([CallSpec("110", f"1393000000{i}", -1) for i in range(2)], 2)
    thread.join(timeout=60)
    assert out and all(c.ok for c in out[0].calls), out
    assert not _leading(second), "a standby took over without Redis"
    stoppable_redis.start()
    time.sleep(TTL_MS / 1000)
    # the lease expired while nobody could take it: the holder's renewal sets it again, same term
    assert "event=lease_lost" not in first.log() and not _leading(second)
    thread, out = engines.calls_in_background([CallSpec("110", "13930000009", -1)], 1)
    thread.join(timeout=60)
    assert out and out[0].calls[0].ok
    rows = wait_for(lambda: engines.closed_tickets(3), 20, "three tickets closed")
    assert len(rows) == 3 and all(r["seat"] == "s110-01" and r["outcome"] == "completed" for r in rows), rows
    assert first.log().count("event=call_connected") == 3


def test_a_leader_cut_off_from_asterisk_hands_the_lease_and_its_caller_to_the_standby(
        engines: EngineFactory, seats: list[SeatSims]) -> None:
    """The leader reaches Asterisk through a link the test cuts (a partition between it
    and the PBX, Redis still there): after a ttl it gives the lease up and the standby,
    which does reach Asterisk, adopts the waiting caller and has it answered."""
    from tests.integration.servers import CuttableLink

    engines.use_lines(wrap_up_s=1)
    engines.use_ha(ttl_ms=TTL_MS)
    link = CuttableLink(engines.settings.http_bind, engines.settings.http_port, host=engines.settings.http_bind)
    try:
        engines.env["CALLROUTER_HTTP_PORT"] = str(link.port)
        first = engines.start(ha="a")
        del engines.env["CALLROUTER_HTTP_PORT"]
        wait_for(lambda: _leading(first), 10, "the first engine to lead")
        second = engines.start(ha="b")
        thread, out = engines.calls_in_background([CallSpec("110", "13940000001", 20.0)], 1)
        wait_for(lambda: engines.status(first)["lines"]["110"]["waiting"] == 1, 15, "the caller waiting")
        time.sleep(0.8)  # the state saver writes the shared snapshot
        cut_at = time.time()
        link.cut()
        wait_for(lambda: _leading(second), 3 * TTL_MS / 1000, "the standby to take over")
        took_s = log_time(second, "event=leading") - cut_at
        assert "event=lease_lost" in first.log() and "ARI unreachable" in first.log(), first.log()[-2000:]
        assert "event=lease_released" not in second.log()
        seats.append(start_seats(engines.settings, [SeatSpec("s110-01", answer_delay_s=0.2, talk_s=0.5,
                                                             talk_dist="fixed")]))
        engines.login("s110-01", engine=second)
        thread.join(timeout=40)
    finally:
        link.cut()
    assert out and out[0].calls[0].ok, out
    rows = wait_for(lambda: engines.closed_tickets(1), 20, "the ticket closed")
    assert len(rows) == 1 and rows[0]["seat"] == "s110-01" and rows[0]["outcome"] == "completed", rows
    assert "event=call_connected" not in first.log() and second.log().count("event=call_connected") == 1
    print(f"\nha: leader cut off from Asterisk -> the standby leads with the caller adopted {took_s:.2f} s after")
