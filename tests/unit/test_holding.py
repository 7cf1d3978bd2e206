"""Holding-bridge bookkeeping (pure parts): which bridge a caller joins, which go, which errors are the caller's."""

from __future__ import annotations

from callrouter.ari import AriError
from callrouter.calls.holding import channel_gone, hold_bound, hold_bridge_id, pick_bridge, surplus_bridges


def err(status: int, message: str) -> AriError:
    return AriError("POST", "/bridges/callrouter-110-hold-0/addChannel", status, message)


def test_a_caller_who_hung_up_is_not_the_bridges_fault() -> None:
    assert channel_gone(err(400, "Channel not found"))
    assert channel_gone(err(404, "Channel not found"))
    assert channel_gone(err(422, "Channel not in Stasis application"))


def test_a_bridge_error_is_the_bridges() -> None:
    assert not channel_gone(err(404, "Bridge not found"))
    assert not channel_gone(err(409, "Bridge not in Stasis application"))
    assert not channel_gone(err(500, "Internal Server Error"))
    assert not channel_gone(err(0, "ClientConnectorError: channel"))


def test_bound_is_one_spare_beyond_full_shards() -> None:
    assert hold_bound(0, 40) == 1
    assert hold_bound(1, 40) == 2
    assert hold_bound(40, 40) == 2
    assert hold_bound(41, 40) == 3


def test_the_lowest_bridge_with_room_is_filled_first() -> None:
    members = {hold_bridge_id("110", 0): {"a", "b"}, hold_bridge_id("110", 1): {"c"},
               hold_bridge_id("96345", 0): set()}
    assert pick_bridge(members, "110", 2, ()) == "callrouter-110-hold-1"
    assert pick_bridge(members, "96345", 2, ()) == "callrouter-96345-hold-0"
    members["callrouter-110-hold-1"].add("d")
    assert pick_bridge(members, "110", 2, ()) == "callrouter-110-hold-2"


def test_a_refused_id_is_skipped_and_a_gap_refilled() -> None:
    members = {"callrouter-110-hold-1": {"a"}}
    assert pick_bridge(members, "110", 40, ()) == "callrouter-110-hold-1"
    assert pick_bridge({}, "110", 40, {"callrouter-110-hold-0"}) == "callrouter-110-hold-1"
    full = {"callrouter-110-hold-1": {"a"}}
    assert pick_bridge(full, "110", 1, ()) == "callrouter-110-hold-0"


def test_empty_bridges_beyond_the_bound_go_after_idle_highest_first() -> None:
    members: dict[str, set[str]] = {hold_bridge_id("110", n): set() for n in range(5)}
    members["callrouter-110-hold-2"] = {"x"}
    since = {b: 0.0 for b in members if not members[b]}
    # one waiting: bound 2, five bridges: three empty ones go, never hold-0 nor the busy one
    assert surplus_bridges(members, since, 40, now=10.0, idle_s=2.0) == [
        "callrouter-110-hold-4", "callrouter-110-hold-3", "callrouter-110-hold-1"]
    # not idle long enough: nothing goes yet
    assert surplus_bridges(members, since, 40, now=1.0, idle_s=2.0) == []


def test_bridges_within_the_bound_stay() -> None:
    members = {"callrouter-110-hold-0": set(), "callrouter-96345-hold-0": set(),
               "callrouter-96345-hold-1": {"y"}}
    since = {"callrouter-110-hold-0": 0.0, "callrouter-96345-hold-0": 0.0}
    assert surplus_bridges(members, since, 40, now=99.0, idle_s=2.0) == []
