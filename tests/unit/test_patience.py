"""The benchmark callers' patience: who gives up at its deadline (callrouter.sim.patience, pure part)."""

from __future__ import annotations

from datetime import UTC, datetime

from callrouter.sim.patience import (
    Caller,
    ari_time,
    callers_of,
    decide,
    due,
    is_seat,
    seat_prefixes,
    unconnected_answers,
    unknown_members,
    with_seat,
)

SEATS = seat_prefixes(["s110-01", "s110-10", "ovf-01"])


def test_ari_time_keeps_milliseconds_and_zone() -> None:
    assert ari_time("2026-12-01T14:38:00.123+0000") == datetime(2026, 12, 1, 14, 38, 0, 123000, UTC).timestamp()
    assert ari_time("2026-12-01T22:38:00.500+0800") == datetime(2026, 12, 1, 14, 38, 0, 500000, UTC).timestamp()


def test_seat_names_match_whole_endpoint_names_only() -> None:
    assert is_seat("PJSIP/s110-01-0000002a", SEATS)
    assert is_seat("PJSIP/ovf-01-00000001", SEATS)
    # s110-1 is not s110-10's prefix the other way round, nor a trunk caller a seat
    assert not is_seat("PJSIP/s110-1-0000002a", SEATS)
    assert not is_seat("PJSIP/s110-100-0000002a", seat_prefixes(["s110-10"]))
    assert not is_seat("PJSIP/trunk-00000003", SEATS)
    assert not is_seat("Announcer/ARI_MOH-00000001;1", SEATS)


def test_callers_are_the_bench_numbers_not_the_seats_legs_carrying_them() -> None:
    channels = [
        {"id": "1.1", "name": "PJSIP/trunk-00000001", "caller": {"number": "13710000001"},
         "creationtime": "2026-12-01T14:38:00.000+0000"},
        # app_queue's and the engine's leg to a seat shows the caller's number as its caller id
        {"id": "1.2", "name": "PJSIP/s110-01-00000002", "caller": {"number": "13710000001"},
         "creationtime": "2026-12-01T14:38:05.000+0000"},
        {"id": "1.3", "name": "PJSIP/trunk-00000003", "caller": {"number": "13900000000"},
         "creationtime": "2026-12-01T14:38:01.000+0000"},
        {"id": "1.4", "name": "Announcer/ARI_MOH-1;1", "caller": {"number": ""},
         "creationtime": "2026-12-01T14:38:00.000+0000"},
    ]
    assert callers_of(channels, "1371", SEATS) == [
        Caller("1.1", "13710000001", ari_time("2026-12-01T14:38:00.000+0000"))]


def test_due_when_patience_ran_out_once_each_oldest_first() -> None:
    a, b, c = Caller("a", "1", 100.0), Caller("b", "2", 90.0), Caller("c", "3", 101.0)
    assert due([a, b, c], [], 159.9, 60) == [b]
    assert due([a, b, c], [], 160.0, 60) == [b, a]  # exactly at the deadline: due
    assert due([a, b, c], ["b"], 161.0, 60) == [a, c]
    assert due([a, b, c], ["a", "b", "c"], 1000.0, 60) == []


def test_a_caller_with_a_seat_is_kept_whatever_else_is_bridged() -> None:
    names = {"seat": "PJSIP/s110-01-0000000a", "x": "PJSIP/trunk-1", "y": "PJSIP/trunk-2",
             "moh": "Announcer/ARI_MOH-1;1", "ringing": "PJSIP/ovf-01-00000003"}
    caller = Caller("x", "13710000001", 0.0)
    # the engine's mixing bridge or app_queue's basic bridge: caller + seat
    assert with_seat("x", [["y", "moh"], ["x", "seat"]], names, SEATS)
    assert decide(caller, [["x", "seat"]], names, SEATS) == "keep"
    # a holding bridge full of callers and its announcer is no seat
    assert not with_seat("x", [["x", "y", "moh"]], names, SEATS)
    assert decide(caller, [["x", "y", "moh"]], names, SEATS) == "hangup"
    # app_queue's waiting caller is in no bridge; a seat ringing (not bridged) does not count
    assert decide(caller, [["ringing"]], names, SEATS) == "hangup"
    assert decide(caller, [], names, SEATS) == "hangup"
    # a member whose name is unknown is not taken for a seat
    assert decide(caller, [["x", "unknown"]], names, SEATS) == "hangup"


def test_unknown_members_are_only_those_of_the_due_callers_bridges() -> None:
    names = {"x": "PJSIP/trunk-1", "y": "PJSIP/trunk-2"}
    bridges = [["x", "s1"], ["y", "s2"], ["z", "s3"], ["x2", "y"]]
    assert unknown_members(["x", "x2"], bridges, names) == {"s1"}
    assert unknown_members(["z"], bridges, names) == {"s3"}
    assert unknown_members([], bridges, names) == set()


def test_a_seat_answer_the_caller_never_heard_is_an_abandon_at_the_hang_up() -> None:
    callers = [
        # the seat answered at 60.05 s, the keeper found the caller still unbridged at 60.10 s
        {"channel": "c1", "answered": True, "wait_s": 60.05, "arrived": 1000.0, "seat": "s96345-01"},
        # kept: bridged with its seat at the deadline
        {"channel": "c2", "answered": True, "wait_s": 59.9, "arrived": 1001.0, "seat": "ovf-05"},
        # an ordinary abandon the keeper hung up; one whose channel had gone; one without an id
        {"channel": "c3", "answered": False, "wait_s": 60.1, "arrived": 1002.0, "seat": None},
        {"channel": "c4", "answered": True, "wait_s": 12.0, "arrived": 1003.0, "seat": "s110-01"},
        {"answered": True, "wait_s": 60.05, "arrived": 1004.0, "seat": "s110-02"},
    ]
    decisions = [
        {"id": "c1", "at": 1060.1, "action": "hangup", "result": "ok"},
        {"id": "c2", "at": 1061.1, "action": "keep", "result": ""},
        {"id": "c3", "at": 1062.1, "action": "hangup", "result": "ok"},
        {"id": "c4", "at": 1063.1, "action": "hangup", "result": "gone"},
    ]
    out = unconnected_answers(callers, decisions)
    assert out[0]["answered"] is False and out[0]["seat"] is None
    assert out[0]["unconnected_seat"] == "s96345-01" and out[0]["seat_answered_s"] == 60.05
    assert abs(out[0]["wait_s"] - 60.1) < 1e-9
    assert out[1:] == callers[1:]  # kept, already abandoned, gone before its deadline, no id: unchanged
    assert callers[0]["answered"] is True  # the input is not changed
