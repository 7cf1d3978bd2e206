"""One engine over several Asterisk nodes (issue 11): which node an id belongs to, where
a request goes, and holding bridges per line AND node (pure parts)."""

from __future__ import annotations

import pytest

from callrouter.ari import AriClient, AriError
from callrouter.ari.nodes import NodesClient, node_of, path_id
from callrouter.calls.bridges import mixing_bridge_id
from callrouter.calls.holding import HOLD_RE, hold_bridge_id, hold_key, hold_line, pick_bridge, surplus_bridges

NODES = frozenset({"node1", "node2", "node10"})


def test_every_id_the_engine_makes_names_the_callers_node() -> None:
    caller = "node2-1764590000.17"  # Asterisk's id with systemname node2
    assert node_of(caller, NODES) == "node2"
    assert node_of(mixing_bridge_id(caller, 1), NODES) == "node2"
    assert node_of(f"greet-{caller}", NODES) == "node2"
    assert node_of(f"announce-{caller}-3", NODES) == "node2"
    assert node_of(f"notice-{caller}-1", NODES) == "node2"
    assert node_of("cr-leg-node2-7-1764590000", NODES) == "node2"
    assert node_of(f"cr-side-speech-{caller}-snoop", NODES) == "node2"
    assert node_of(hold_bridge_id("110", 0, "node10"), NODES) == "node10"
    # a part must be a whole node name: node1 is not node10's prefix match
    assert node_of("node10-1764590000.1", NODES) == "node10"


def test_single_node_ids_name_no_node_and_cost_nothing() -> None:
    assert node_of("1764590000.17", NODES) is None
    assert node_of("callrouter-110-hold-0", NODES) is None
    assert node_of("node1-1764590000.17", frozenset()) is None


def test_a_request_is_routed_by_the_id_in_its_path() -> None:
    assert path_id("/channels/node1-17.2/answer") == "node1-17.2"
    assert path_id("/bridges/callrouter-call-node2-1.1-1/addChannel", {"channel": "x"}) == "callrouter-call-node2-1.1-1"
    assert path_id("/playbacks/greet-node1-1.1") == "greet-node1-1.1"
    assert path_id("/channels", {"endpoint": "PJSIP/s110-01", "channelId": "cr-leg-node2-1-9"}) == "cr-leg-node2-1-9"
    assert path_id("/channels/externalMedia", {"channelId": "cr-side-speech-node1-1.1-media"}) == \
        "cr-side-speech-node1-1.1-media"
    assert path_id("/applications/callrouter/eventFilter") is None
    assert path_id("/channels/node1-17.2%3Bx/answer") == "node1-17.2;x"


def test_the_nodes_client_names_the_node_or_refuses() -> None:
    clients = {n: AriClient(f"http://127.0.0.{i}:8088/ari", "u", "p", "callrouter")
               for i, n in enumerate(["node1", "node2"], 2)}
    nodes = NodesClient(clients)
    assert nodes.client_for("node2-1.1") is clients["node2"]
    assert nodes.client_for("cr-leg-node1-3-4") is clients["node1"]
    nodes.playbacks["odd-playback"] = "node2"  # a playback remembered by id until it finished
    assert nodes.client_for("odd-playback") is clients["node2"]
    with pytest.raises(AriError, match="no node named"):
        nodes.client_for("callrouter-110-hold-0")
    assert nodes.status()["nodes"]["node1"] == {"connected": False, "lost": False, "connects": 0, "losses": 0}


def test_the_lease_gate_reaches_every_nodes_client_and_a_standby_sends_nothing() -> None:
    """Several engines across the nodes: the gate the leadership sets on the one client
    the shell sees must hold for every node's client (a request goes through those)."""
    import asyncio

    clients = {n: AriClient(f"http://127.0.0.{i}:8088/ari", "u", "p", "crtest-a")
               for i, n in enumerate(["node1", "node2"], 2)}
    nodes = NodesClient(clients)
    leading = [False]
    nodes.gate = lambda: leading[0]
    assert all(c.gate is not None and not c.gate() for c in clients.values())

    async def standby() -> None:
        for request in (nodes.hangup("node2-1.1"), nodes.claim("node1-2.2"), nodes.stop_playback("greet-node2-1.1")):
            with pytest.raises(AriError, match="does not lead now"):
                await request
    asyncio.run(standby())
    assert not any(c.requests for c in clients.values()), "a standby sent a request"
    leading[0] = True
    assert all(c.gate is not None and c.gate() for c in clients.values())
    # a leg of an engine with a tag (several engines) still names its caller's node
    assert node_of("cr-leg-node2-a1b2c3-7-1764590000", NODES) == "node2"


def test_holding_bridges_are_per_line_and_node() -> None:
    assert hold_bridge_id("110", 0) == "callrouter-110-hold-0"  # single node: as before
    assert hold_bridge_id("110", 3, "node2") == "callrouter-node2-110-hold-3"
    assert hold_key("callrouter-node2-110-hold-3") == ("node2", "110")
    assert hold_key("callrouter-110-hold-3") == (None, "110")
    assert hold_line("callrouter-node2-96345-hold-0") == "96345"
    # an older engine's ids still match (recovery adopts them)
    assert HOLD_RE.match("callrouter-96345-hold-12")
    assert hold_key("callrouter-call-node1-1.1-1") is None
    members = {hold_bridge_id("110", 0, "node1"): {"a"}, hold_bridge_id("110", 0, "node2"): {"b"}}
    # a caller on node2 never lands in node1's bridge, even with room there
    assert pick_bridge(members, "110", 2, (), "node2") == "callrouter-node2-110-hold-0"
    assert pick_bridge(members, "110", 1, (), "node2") == "callrouter-node2-110-hold-1"
    assert pick_bridge(members, "110", 1, (), "node1") == "callrouter-node1-110-hold-1"
    assert pick_bridge(members, "110", 1, ()) == "callrouter-110-hold-0"


def test_each_node_keeps_its_own_spare_holding_bridge() -> None:
    members: dict[str, set[str]] = {hold_bridge_id("110", n, node): set() for n in range(3)
                                    for node in ("node1", "node2")}
    since = dict.fromkeys(members, 0.0)
    gone = surplus_bridges(members, since, 40, now=10.0, idle_s=2.0)
    # per node: bound 1 (nobody waiting), hold-0 stays on each
    assert sorted(gone) == sorted(hold_bridge_id("110", n, node) for n in (1, 2) for node in ("node1", "node2"))


def test_what_speech_makes_for_a_caller_goes_to_the_callers_node() -> None:
    from callrouter.speech.service import side_ids

    clients = {n: AriClient(f"http://127.0.0.{i}:8088/ari", "u", "p", "callrouter")
               for i, n in enumerate(["node1", "node2", "node10"], 2)}
    nodes = NodesClient(clients)
    for caller, node in (("node2-1764590000.17", "node2"), ("node10-1764590000.3", "node10")):
        snoop, media, bridge = side_ids(caller)
        assert len({snoop, media, bridge}) == 3
        # the requests speech sends: snoop on the caller, media by its channelId, the bridge
        requests = [path_id(f"/channels/{caller}/snoop", {"snoopId": snoop}),
                    path_id("/channels/externalMedia", {"channelId": media}),
                    path_id(f"/bridges/{bridge}"), path_id(f"/bridges/{bridge}/addChannel"),
                    path_id(f"/channels/{snoop}"), path_id(f"/channels/{media}")]
        assert [nodes.node(r or "") for r in requests] == [node] * 6, requests
