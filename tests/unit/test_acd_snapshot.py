"""Snapshot for supervisors and restore after a kill -9."""

from __future__ import annotations

import json
from typing import Any

import pytest

from callrouter.acd import (
    Acd,
    AddSeat,
    CallArrived,
    CallEnded,
    CallState,
    Offer,
    OfferAnswered,
    SeatPause,
    SeatState,
    SnapshotError,
    Tick,
)
from tests.unit.test_acd_core import Desk, make_config


def busy_desk() -> Desk:
    d = Desk(policy="wait_threshold", threshold=20, wrap=30)
    d.staff("a1", "a2", "a3", "b1", "p1")
    d.answer_all(d.call("talk-1"))  # a1
    d.answer_all(d.at(1).call("talk-2"))  # a2
    d.at(2).call("ringing")  # a3 rings
    d.at(3).call("w-low", priority=6)
    d.at(4).call("w-high", priority=2)
    d.at(5).do(CallArrived("w-esc", "110", 6, arrived_at=4.5, escalated=True))
    d.answer_all(d.at(6).call("s-talk", "96345"))  # b1
    d.at(7).call("s-wait", "96345")
    d.at(8).do(SeatPause("p1", "meeting"))
    d.do(AddSeat("b1", "110"))
    return d


def roundtrip(acd: Acd, now: float) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(json.dumps(acd.snapshot(now)))
    return data


def test_snapshot_summary_per_line() -> None:
    d = busy_desk()
    snap = roundtrip(d.acd, 10)
    l110 = snap["lines"]["110"]
    assert l110["waiting"] == 3
    assert l110["longest_wait_s"] == 7.0  # w-low, queued at 3
    assert l110["seats"]["on_call"] == 3  # a1, a2 and b1 (added by the supervisor)
    assert l110["seats"]["ringing"] == 1
    assert l110["seats"]["paused"] == 0  # p1 may serve 110 but is not assigned to it
    assert l110["overflow_active"] is False
    assert l110["overflow_seats"] == ["b1"]
    assert l110["service"]["offered"] == 6
    assert l110["service"]["answered"] == 2
    assert l110["service"]["answered_in_target"] == 2
    assert l110["service"]["abandoned"] == 0
    assert snap["seats"]["p1"]["state"] == "paused"
    assert snap["seats"]["p1"]["reason"] == "meeting"
    assert snap["seats"]["a1"]["call_id"] == "talk-1"
    assert [c["call_id"] for c in snap["calls"] if c["state"] == "waiting"] == [
        "w-high", "w-esc", "w-low", "s-wait"
    ]


def test_restore_keeps_waiting_order_talking_seats_and_overflow() -> None:
    d = busy_desk()
    d.at(30).do(Tick())  # 110 overflow on (w-low waited 27 s): p1 paused, so no seat
    assert d.acd.overflow_active("110")
    snap = roundtrip(d.acd, 30)

    restored = Acd.from_snapshot(make_config(policy="wait_threshold", threshold=20, wrap=30),
                                 snap)
    # the ringing offer died with the engine: its caller waits again at the front of
    # its class (arrived at 2), and a3 is ready for it
    assert restored.waiting("110", 30) == ["w-high", "ringing", "w-esc", "w-low"]
    assert restored.seat_state("a3") is SeatState.READY
    assert restored.seat_state("a1") is SeatState.ON_CALL
    assert restored.call_state("talk-1") is CallState.ON_CALL
    assert restored.overflow_active("110")
    assert restored.overflow_seats("110") == ("b1",)
    # the restored engine carries on: the next event offers the head caller to a3
    out = restored.handle(Tick(), 30.5)
    assert [(a.call_id, a.seat) for a in out if isinstance(a, Offer)] == [("w-high", "a3")]
    restored.handle(OfferAnswered("w-high", "a3"), 31)
    # a talking call ends as usual; its seat wraps up for the line's time
    restored.handle(CallEnded("talk-1"), 40)
    assert restored.seat_state("a1") is SeatState.WRAP_UP
    for a in restored.handle(Tick(), 70):
        if isinstance(a, Offer):
            restored.handle(OfferAnswered(a.call_id, a.seat), 70.5)
    assert restored.seat_state("a1") is SeatState.ON_CALL

    again = roundtrip(Acd.from_snapshot(restored.config, roundtrip(restored, 71)), 71)
    assert again == roundtrip(restored, 71)


def test_restored_engine_serves_in_the_same_order_as_the_original() -> None:
    def serve_all(acd: Acd, t0: float) -> list[str]:
        served: list[str] = []
        t = t0
        for _ in range(40):
            t += 5
            for a in acd.handle(Tick(), t):
                if isinstance(a, Offer):
                    served.append(a.call_id)
                    for b in acd.handle(OfferAnswered(a.call_id, a.seat), t):
                        assert not isinstance(b, Offer)
                    acd.handle(CallEnded(a.call_id), t + 1)
        return served

    original = busy_desk()
    original.at(9).do(OfferAnswered("ringing", "a3"))
    snap = roundtrip(original.acd, 9)
    restored = Acd.from_snapshot(original.acd.config, snap)
    assert serve_all(restored, 9) == serve_all(original.acd, 9)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s.update(version=99), "version"),
        (lambda s: s["seats"]["a1"].update(state="asleep"), "seats.a1.state"),
        (lambda s: s["calls"][0].update(arrived_at="yesterday"), "arrived_at"),
        (lambda s: s["calls"][0].update(line="12345"), "no longer has"),
        (lambda s: s["lines"]["110"]["service"].update(answered=None), "service.answered"),
        # a runtime seat read back from Redis follows the naming rule like one from the API
        (lambda s: s["seats"].update(rt=dict(s["seats"]["a1"], runtime=True, endpoint="trunk/sip:1@x")),
         "seats.rt: endpoint 'trunk/sip:1@x'"),
        (lambda s: s["seats"].update(rt=dict(s["seats"]["a1"], runtime=True, endpoint="trunk")),
         "reserved"),
        (lambda s: s["seats"].update({"r/t": dict(s["seats"]["a1"], runtime=True, endpoint="ok")}),
         "seat id 'r/t'"),
    ],
)
def test_malformed_snapshot_is_refused_with_the_field(mutate: Any, message: str) -> None:
    d = busy_desk()
    snap = roundtrip(d.acd, 10)
    mutate(snap)
    with pytest.raises(SnapshotError, match=message):
        Acd.from_snapshot(d.acd.config, snap)
