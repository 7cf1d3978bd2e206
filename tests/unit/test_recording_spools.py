"""Recording spools in a cluster: one per node, the call's spool found by the node its
channel id names, and a node's disk trouble stopping only that node's recordings
(callrouter.recordings.recorder's pure helpers; the nodes' directories from the plan)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from callrouter.config import Settings, load_settings
from callrouter.provision import cluster
from callrouter.recordings.files import Disk, DiskState
from callrouter.recordings.recorder import (
    SINGLE,
    STORE,
    disk_name,
    disk_trouble,
    spool_key,
    spools_of,
    trouble_for,
)

REPO = Path(__file__).resolve().parents[2]
NODES = {"node1": Path("/spool/n1"), "node2": Path("/spool/n2")}


def test_one_asterisk_has_one_spool_and_every_call_uses_it() -> None:
    spools = spools_of(Path("/var/spool/rec"))
    assert spools == {SINGLE: Path("/var/spool/rec")}
    assert spool_key(spools, "1764590000.12") == SINGLE
    assert spool_key(spools, "node1-1764590000.12") == SINGLE  # no nodes: the id's parts mean nothing
    assert disk_name(SINGLE) == "spool"  # as before clusters: status and metrics unchanged


def test_a_clusters_call_uses_the_spool_of_the_node_its_id_names() -> None:
    spools = spools_of(NODES)
    assert spool_key(spools, "node1-1764590000.12") == "node1"
    assert spool_key(spools, "node2-1764590000.3") == "node2"
    assert spool_key(spools, "node3-1764590000.3") is None  # no such node
    assert spool_key(spools, "1764590000.3") is None
    assert [disk_name(k) for k in spools] == ["spool:node1", "spool:node2"]


@pytest.mark.parametrize("bad", [{}, {SINGLE: Path("/x")}, {SINGLE: Path("/x"), "node1": Path("/y")}])
def test_a_cluster_spool_needs_a_named_node(bad: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="one named node each"):
        spools_of(bad)


def test_a_full_node_spool_stops_only_that_nodes_recordings() -> None:
    spools = spools_of(NODES)
    troubles = {"spool:node1": ("disk_full", "/spool/n1: full", 0.0)}
    assert trouble_for(troubles, spools, "node1-1.1") == ("disk_full", "/spool/n1: full")
    assert trouble_for(troubles, spools, "node2-1.1") is None
    # the store takes every node's files: its trouble stops them all, and is said first
    troubles[STORE] = ("read_only", "/store: read_only", 0.0)
    assert trouble_for(troubles, spools, "node1-1.1") == ("read_only", "/store: read_only")
    assert trouble_for(troubles, spools, "node2-1.1") == ("read_only", "/store: read_only")
    reason, detail = trouble_for({}, spools, "nodeX-1.1") or ("", "")
    assert reason == "no_spool" and "nodeX-1.1" in detail


def test_one_asterisks_spool_trouble_stops_every_call() -> None:
    spools = spools_of(Path("/var/spool/rec"))
    troubles = {"spool": ("disk_full", "full", 0.0)}
    assert trouble_for(troubles, spools, "1764590000.12") == ("disk_full", "full")
    assert trouble_for({}, spools, "1764590000.12") is None


def test_disk_trouble_names_the_directory_and_the_figures() -> None:
    mb = 2**20
    assert disk_trouble(Path("/d"), Disk(DiskState.OK, 10 * mb), 256 * mb) is None
    assert disk_trouble(Path("/d"), Disk(DiskState.FULL, 10 * mb), 256 * mb) == (
        "disk_full", "/d: disk_full, 10 MB free (needs 256 MB)")
    reason, detail = disk_trouble(Path("/d"), Disk(DiskState.READ_ONLY, 900 * mb), 256 * mb) or ("", "")
    assert reason == "read_only" and detail.startswith("/d: ")


def _settings(tmp_path: Path, **values: object) -> Settings:
    return dataclasses.replace(Settings(home=tmp_path, data_dir=REPO, asterisk_mode="chroot"), sip_bind="127.0.2.1",
                               **values)


def test_each_chroot_node_records_into_its_own_directory_in_the_chroot(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    dirs = cluster.recording_dirs(cluster.plan(s))
    assert dirs == {"node1": s.chroot / "var/spool/asterisk-node1/callrouter-recording",
                    "node2": s.chroot / "var/spool/asterisk-node2/callrouter-recording"}
    # the same directory the node's dialplan is rendered with (CR_RECDIR)
    node1 = cluster.plan(s).nodes[0]
    assert node1.target.paths.recording_dir == "/var/spool/asterisk-node1/callrouter-recording"


def test_nodes_on_other_machines_are_read_where_they_are_mounted(tmp_path: Path) -> None:
    s = _settings(tmp_path, cluster_recording_dir="/mnt/rec-{node}")
    assert cluster.recording_dirs(cluster.plan(s)) == {"node1": Path("/mnt/rec-node1"),
                                                     "node2": Path("/mnt/rec-node2")}
    shared = cluster.recording_dirs(cluster.plan(_settings(tmp_path, cluster_recording_dir="/nfs/rec")))
    assert set(shared.values()) == {Path("/nfs/rec")}  # one directory: the channel ids keep files apart


def test_the_recording_dir_setting_is_read_from_the_cluster_table(tmp_path: Path) -> None:
    conf = tmp_path / "callrouter.toml"
    conf.write_text('[cluster]\nrecording_dir = "/mnt/rec-{node}"\n')
    assert load_settings(conf, env={}).cluster_recording_dir == "/mnt/rec-{node}"
    assert load_settings(None, env={"CALLROUTER_CLUSTER_RECORDING_DIR": "/x/{node}"}).cluster_recording_dir == (
        "/x/{node}")
