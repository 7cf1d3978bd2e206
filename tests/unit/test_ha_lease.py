"""The lease's rules (callrouter.ha.lease), pure: times in, steps out."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callrouter.ari import AriClient, AriError
from callrouter.config import ConfigError, Settings
from callrouter.ha.leader import check
from callrouter.ha.lease import Acquire, BecameLeader, LeaseLogic, Renew, Role, SteppedDown

TTL = 3.0


def leader(at: float = 0.0, term: int = 7) -> LeaseLogic:
    logic = LeaseLogic(TTL)
    assert logic.tick(at) == [Acquire()]
    assert logic.acquired(at, term) == [BecameLeader(term)]
    return logic


def test_a_standby_tries_every_third_of_the_ttl_and_only_when_ready() -> None:
    logic = LeaseLogic(TTL)
    assert logic.tick(0.0, ready=False) == []
    assert logic.tick(0.1) == [Acquire()]
    assert logic.tick(0.2) == [], "one attempt at a time"
    assert logic.acquired(0.1, None) == []
    assert logic.tick(0.5) == [], "not before a third of the ttl"
    assert logic.tick(1.1) == [Acquire()]
    assert not logic.may_act(1.1)


def test_the_holder_acts_from_the_send_time_of_its_last_confirmed_renewal() -> None:
    logic = leader(0.0)
    assert logic.may_act(2.9) and not logic.may_act(3.0)
    assert logic.tick(1.0) == [Renew(7)]
    assert logic.renewed(1.0, True) == []
    assert logic.may_act(3.9) and not logic.may_act(4.0)


def test_a_holder_cut_off_from_asterisk_for_a_ttl_gives_the_lease_up_a_blip_does_not() -> None:
    logic = leader(0.0)
    assert logic.tick(1.0, ready=False) == [Renew(7)], "a blip: still renewing"
    assert logic.renewed(1.0, True) == []
    assert logic.tick(2.0) == [Renew(7)], "back within the ttl: nothing happened"
    assert logic.renewed(2.0, True) == []
    assert logic.tick(2.5, ready=False) == []
    assert logic.tick(5.4, ready=False) == [Renew(7)], "down for 2.9 s, less than a ttl: renewing on"
    assert logic.renewed(5.4, True) == []
    steps = logic.tick(5.5, ready=False)
    assert steps == [SteppedDown(7, "ARI unreachable for a ttl")], steps
    assert not logic.may_act(5.5) and logic.role is Role.STANDBY
    assert logic.tick(9.0, ready=False) == [], "not connected: it does not try to lead again"
    assert logic.tick(9.1) == [Acquire()], "connected again: a standby like any other"


def test_an_answer_not_yours_steps_down_at_once() -> None:
    logic = leader(0.0)
    assert logic.tick(1.0) == [Renew(7)]
    assert logic.renewed(1.0, False) == [SteppedDown(7, "lease is not ours")]
    assert logic.role is Role.STANDBY and not logic.may_act(1.0)


def test_a_stalled_holder_waits_for_an_answer_before_acting() -> None:
    logic = leader(0.0)
    assert logic.tick(1.0) == [Renew(7)]
    # the answer to the renewal sent before the stall is read 10 s later: confirms nothing now
    assert logic.renewed(1.0, True) == []
    assert not logic.may_act(11.0)
    assert logic.tick(11.0) == [Renew(7)]
    assert not logic.may_act(11.001), "not before the answer"
    assert logic.renewed(11.0, True) == []
    assert logic.may_act(11.01)


def test_redis_away_the_holder_leads_on_and_a_standby_never_takes_over() -> None:
    logic = leader(0.0)
    assert logic.tick(1.0) == [Renew(7)]
    assert logic.unanswered(1.0) == []
    assert logic.degraded and logic.may_act(100.0)
    standby = LeaseLogic(TTL)
    for t in range(20):
        for step in standby.tick(float(t)):
            assert step == Acquire()
            standby.unanswered(float(t))
    assert standby.role is Role.STANDBY and not standby.may_act(20.0)


def test_a_stall_ends_the_benefit_of_the_doubt() -> None:
    logic = leader(0.0)
    logic.tick(1.0)
    logic.unanswered(1.0)
    assert logic.may_act(2.0)
    logic.tick(2.0)
    logic.unanswered(2.0)
    logic.tick(20.0)  # stood still 18 s
    assert not logic.may_act(20.0)
    # and Redis still away: the stale holder stays idle (unanswered after its validity)
    logic.unanswered(20.0)
    assert not logic.may_act(20.5)


def test_an_unanswered_renewal_sent_after_expiry_does_not_revive_the_holder() -> None:
    logic = leader(0.0)
    logic.tick(5.0)
    assert logic.unanswered(5.0) == []
    assert not logic.may_act(5.1)


# ---------------------------------------------------------------- two engines, one lease
@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.floats(0.01, 5.0),
                          st.sampled_from(["answer", "lost", "stall"])), max_size=60))
def test_two_engines_never_act_at_once_while_redis_answers(script: list[tuple[str, float, str]]) -> None:
    """A model of Redis's lease (expiry, SET NX, compare-and-renew) and two engines whose
    requests are answered at once, or lost (no answer), or whose process stalls; at no
    moment may both act, and every new holder has a higher term."""
    engines = {"a": LeaseLogic(TTL), "b": LeaseLogic(TTL)}
    holder, expires, term, now = "", 0.0, 0, 0.0
    terms: list[int] = []
    for who, dt, what in script:
        now += dt * (4 if what == "stall" else 1)
        if now >= expires:
            holder = ""
        logic = engines[who]
        for step in logic.tick(now):
            if what == "lost":
                logic.unanswered(now)
                continue
            if isinstance(step, Acquire):
                if not holder:
                    holder, expires, term = who, now + TTL, term + 1
                    terms.append(term)
                    logic.acquired(now, term)
                else:
                    logic.acquired(now, None)
            elif isinstance(step, Renew):
                if holder == who:
                    expires = now + TTL
                    logic.renewed(now, True)
                else:
                    logic.renewed(now, False)
        acting = [w for w, lg in engines.items() if lg.may_act(now) and not lg.degraded]
        assert len(acting) <= 1, (acting, now)
        if acting:
            assert holder == acting[0]
    assert terms == sorted(set(terms))


def test_when_redis_returns_the_holder_renews_before_a_standby_tries() -> None:
    holder, standby = leader(0.0), LeaseLogic(TTL)
    assert standby.tick(0.5) == [Acquire()]
    standby.acquired(0.5, None)
    # Redis away from 1.0 to 5.0: both fail
    holder.tick(1.0)
    holder.unanswered(1.0)
    assert standby.tick(1.5) == [Acquire()]
    standby.unanswered(1.5)
    assert standby.tick(2.6) == [] and standby.tick(4.4) == [], "no attempt for a ttl after a failure"
    assert standby.tick(4.6) == [Acquire()]
    standby.unanswered(4.6)
    # Redis back at 5.0: the holder's renewal (every ttl/3) comes before the standby's next try
    for t in (2.0, 3.0, 4.0):
        assert holder.tick(t) == [Renew(7)]
        holder.unanswered(t)
    assert holder.tick(5.1) == [Renew(7)]
    assert holder.renewed(5.1, True) == [] and holder.may_act(5.2) and not holder.degraded
    assert standby.tick(5.2) == []


def test_an_engine_whose_application_the_filter_misses_is_refused() -> None:
    check(Settings(ari_app="callrouter-a", ha_app_filter="^callrouter-"))
    check(Settings(ari_app="callrouter"))  # one engine: nothing to check
    with pytest.raises(ConfigError, match="does not match"):
        check(Settings(ari_app="callrouter", ha_app_filter="^callrouter-"))
    with pytest.raises(ConfigError, match="not a regular expression"):
        check(Settings(ari_app="callrouter-a", ha_app_filter="^callrouter-("))


def test_an_engine_not_sure_of_its_lease_sends_asterisk_nothing() -> None:
    async def run() -> None:
        ari = AriClient("http://127.0.0.1:9/ari", "u", "p", "callrouter-a")
        logic = leader(0.0)
        now = [1.0]
        ari.gate = lambda: logic.may_act(now[0])
        await ari.open()
        try:
            now[0] = 5.0  # past the ttl, no renewal answered
            with pytest.raises(AriError, match="does not lead now") as info:
                await ari.hangup("c1")
            assert info.value.status == 0 and not ari.requests, "nothing was sent"
        finally:
            await ari.close()
    asyncio.run(run())


def test_several_engines_across_a_cluster_pass_the_same_checks_as_on_one_asterisk() -> None:
    check(Settings(ari_app="callrouter", cluster_engine=True))  # one engine for the cluster
    check(Settings(ari_app="callrouter-a", ha_app_filter="^callrouter-", cluster_engine=True))
    with pytest.raises(ConfigError, match="does not match"):
        check(Settings(ari_app="other", ha_app_filter="^callrouter-", cluster_engine=True))
