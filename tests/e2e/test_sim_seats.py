"""The simulated seat softphones against the real Asterisk: SIPp seats register with
digest auth, show in `pjsip show contacts`, take calls Asterisk places to them (answer
after a delay and hang up after the talk time, wait for the far end, ring until
cancelled, or busy) and remove their binding when stopped.

Asterisk places the calls itself: `channel originate` on its CLI where res_clioriginate
is loaded, otherwise ARI (a Stasis application of the test's own, never the engine's).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from callrouter.config import Settings
from callrouter.provision import asterisk as prov
from callrouter.sim.seats import (
    SeatResult,
    SeatSims,
    SeatSpec,
    ari_test_call,
    cli_originate,
    cli_originate_available,
    place_test_call,
    start_seats,
    start_seats_async,
)
from tests.conftest import wait_for

# the end of the overflow pool: the seats other tests are least likely to hold
CANDIDATES = ("ovf-06", "ovf-05", "ovf-04", "ovf-03")


def _contacts(settings: Settings) -> str:
    return prov.rx(prov.select_target(settings), "pjsip show contacts").stdout


def _free_seats(settings: Settings, n: int) -> list[str]:
    """Seats no one has registered: a REGISTER would take the binding from its owner."""
    def free() -> list[str]:
        out = _contacts(settings)
        seats = [s for s in CANDIDATES if f"{s}/sip:" not in out]
        return seats if len(seats) >= n else []

    return wait_for(free, 30, f"{n} unregistered seats among {CANDIDATES}")[:n]


def _contact(seat: str, port: int) -> str:
    return f"{seat}/sip:{seat}@127.0.0.1:{port}"


def _completed(group: SeatSims, seat: str) -> SeatResult | None:
    res = group[seat].result()
    return res if res.completed else None


@pytest.fixture
def groups(asterisk: Settings) -> Iterator[list[SeatSims]]:
    started: list[SeatSims] = []
    yield started
    for group in started:
        group.stop()


def test_seats_register_answer_hang_up_and_unregister(asterisk: Settings, groups: list[SeatSims]) -> None:
    a, b = _free_seats(asterisk, 2)
    group = start_seats(asterisk, [SeatSpec(a, answer_delay_s=1.0, talk_s=2.0, talk_dist="fixed"),
                                   SeatSpec(b, answer_delay_s=0.3, talk_s=0)])
    groups.append(group)
    contacts = _contacts(asterisk)
    for seat in group.seats:
        assert _contact(seat.spec.seat, seat.port) in contacts, contacts

    # Asterisk rings seat a, which answers after 1 s and hangs up after 2 s (the prompt
    # played to it lasts 30 s)
    if cli_originate_available(asterisk):
        cli_originate(asterisk, a, "Playback", "demo-congrats")
    else:
        call = place_test_call(asterisk, a, play="sound:demo-congrats", timeout_s=30)
        assert call.answered and call.hung_up_by == "seat", call
    res = wait_for(lambda: _completed(group, a), 30, f"{a} to finish its call")
    assert res is not None
    assert (res.offered, res.answered, res.completed) == (1, 1, 1), res.to_json()
    first = res.calls[0]
    assert first.outcome == "completed", first
    assert first.ring_s is not None and 0.9 <= first.ring_s < 3.0, first
    assert first.talk_s is not None and 1.9 <= first.talk_s < 4.0, first

    # seat b talks until the far end hangs up: Asterisk does after 1.5 s
    call = place_test_call(asterisk, b, hold_s=1.5, play=None, timeout_s=30)
    assert call.answered and call.hung_up_by == "asterisk", call
    res_b = wait_for(lambda: _completed(group, b), 10, f"{b} to see the BYE")
    assert res_b is not None
    assert [c.outcome for c in res_b.calls] == ["completed_by_far_end"], res_b.to_json()

    results = group.stop()
    assert all(r.unregistered and not r.running for r in results), [r.to_json() for r in results]
    assert sum(r.count("lost") for r in results) == 0
    contacts = _contacts(asterisk)
    assert not any(f"{seat}/sip:" in contacts for seat in (a, b)), contacts


def test_no_answer_seat_rings_until_cancelled_and_busy_seat_rejects(asterisk: Settings,
                                                                     groups: list[SeatSims]) -> None:
    a, b = _free_seats(asterisk, 2)
    group = start_seats(asterisk, [SeatSpec(a, mode="no_answer"), SeatSpec(b, mode="busy")])
    groups.append(group)

    ringing = place_test_call(asterisk, a, ring_timeout_s=2, timeout_s=20)
    assert not ringing.answered and ringing.cause == 19, ringing  # no answer: Asterisk sent CANCEL
    busy = place_test_call(asterisk, b, timeout_s=20)
    assert not busy.answered and busy.cause == 17, busy  # user busy (486)

    wait_for(lambda: group[a].result().cancelled == 1 and group[b].result().rejected == 1, 10,
             "the seats to log the CANCEL and the 486")
    res_a, res_b = group.stop()
    assert [c.outcome for c in res_a.calls] == ["cancelled"] and res_a.answered == 0
    assert res_a.calls[0].ring_s is not None and res_a.calls[0].ring_s >= 1.5
    assert [c.outcome for c in res_b.calls] == ["rejected_486"] and res_b.answered == 0
    assert res_a.unregistered and res_b.unregistered


async def test_asyncio_seats(asterisk: Settings) -> None:
    (seat,) = _free_seats(asterisk, 1)
    group = await start_seats_async(asterisk, [SeatSpec(seat, answer_delay_s=0.2, talk_s=0.5, talk_dist="fixed")])
    try:
        assert _contact(seat, group[seat].port) in _contacts(asterisk)
        call = await ari_test_call(asterisk, seat, play=None, timeout_s=20)
        assert call.answered and call.hung_up_by == "seat", call
        for _ in range(100):  # the 200 OK to the seat's BYE may still be on its way
            if group[seat].result().completed:
                break
            await asyncio.sleep(0.05)
    finally:
        (res,) = await group.stop()
    assert [c.outcome for c in res.calls] == ["completed"] and res.unregistered, res.to_json()
    assert f"{seat}/sip:" not in _contacts(asterisk)
