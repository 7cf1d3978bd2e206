"""The cluster's plan and Kamailio's replies, as pure functions (callrouter.provision.cluster)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from callrouter.config import Settings
from callrouter.provision import cluster
from callrouter.provision.asterisk import ProvisionError
from callrouter.provision.render import render_text

REPO = Path(__file__).resolve().parents[2]


def _settings(tmp_path: Path, **values: object) -> Settings:
    return dataclasses.replace(Settings(home=tmp_path, data_dir=REPO, asterisk_mode="chroot"), **values)


def test_nodes_follow_the_proxy_address_unless_named(tmp_path: Path) -> None:
    s = _settings(tmp_path, sip_bind="127.0.2.1")
    assert cluster.node_addresses(s) == ["127.0.2.2", "127.0.2.3"]
    assert cluster.node_addresses(s, 3) == ["127.0.2.2", "127.0.2.3", "127.0.2.4"]
    named = dataclasses.replace(s, cluster_nodes=("10.0.0.5", "10.0.0.6"))
    assert cluster.node_addresses(named) == ["10.0.0.5", "10.0.0.6"]
    with pytest.raises(ProvisionError, match="cluster_nodes"):
        cluster.node_addresses(named, 3)
    with pytest.raises(ProvisionError, match="0.0.0.0"):
        cluster.node_addresses(dataclasses.replace(s, sip_bind="0.0.0.0"))


def test_rtp_range_split_in_even_shares() -> None:
    assert cluster.rtp_ranges(50000, 53999, 2) == [(50000, 51999), (52000, 53999)]
    assert cluster.rtp_ranges(10000, 20000, 3) == [(10000, 13331), (13332, 16663), (16664, 19995)]
    with pytest.raises(ProvisionError, match="too small"):
        cluster.rtp_ranges(10000, 10100, 2)


def test_plan_gives_each_node_its_own_name_dirs_ports_and_home(tmp_path: Path) -> None:
    s = _settings(tmp_path, sip_bind="127.0.2.1", trunk_ips=("127.0.2.10",), rtp_start=50000, rtp_end=53999)
    plan = cluster.plan(s)
    n1, n2 = plan.nodes
    assert (n1.name, n1.address, n1.settings.http_port, n1.settings.trunk_ips) == (
        "node1", "127.0.2.2", s.http_port + 1, ("127.0.2.1",))
    assert n2.settings.http_bind == "127.0.2.3" and n2.settings.http_port == s.http_port + 2
    assert n1.target.paths.etc_dir == "/etc/asterisk-node1" and n2.target.paths.run_dir == "/run/asterisk-node2"
    assert n1.target.root == s.chroot == n2.target.root
    assert n1.target.command("-rx", "x")[-4:] == ["-C", "/etc/asterisk-node1/asterisk.conf", "-rx", "x"]
    assert n1.settings.home != n2.settings.home  # own ARI credentials
    assert cluster.dispatcher_list(plan).splitlines()[1:] == [
        "1 sip:127.0.2.2:5060 0 0 duid=node1", "1 sip:127.0.2.3:5060 0 0 duid=node2"]


def test_a_node_process_is_matched_by_its_chroot_not_only_its_command_line(tmp_path: Path) -> None:
    """Another home's cluster on the same machine runs the very same command line (the
    -C path is inside each chroot): `cluster down` here must never kill its nodes."""
    node1, node2 = cluster.plan(_settings(tmp_path, sip_bind="127.0.2.1")).nodes
    args = [b"/usr/sbin/asterisk", b"-C", b"/etc/asterisk-node1/asterisk.conf", b"-g"]
    assert cluster.is_node_process(node1, args, str(node1.target.root))
    assert not cluster.is_node_process(node1, args, "/var/lib/callrouter-other/asterisk-root")
    assert not cluster.is_node_process(node2, args, str(node2.target.root))
    assert not cluster.is_node_process(node1, [b"/usr/bin/python", *args[1:]], str(node1.target.root))


def test_kamailio_template_renders_every_placeholder(tmp_path: Path) -> None:
    s = _settings(tmp_path, sip_bind="127.0.2.1", trunk_ips=("127.0.2.10", "10.1.0.0/16"))
    plan = cluster.plan(s)
    values = cluster.kamailio_values(plan, "/usr/lib/kamailio/modules")
    text = render_text((REPO / "kamailio-conf" / "kamailio.cfg").read_text(), values, "kamailio.cfg")
    assert 'is_in_subnet("$si", "127.0.2.10/32,10.1.0.0/16")' in text
    assert "listen=udp:127.0.2.1:5060" in text
    assert 'if ($tU == "' in text  # the seats' passwords


def test_proxied_seats_are_reached_through_kamailio() -> None:
    text = cluster.proxied_seat_sections(["seat101"], "127.0.2.1:5060")
    assert "contact = sip:seat101@127.0.2.1:5060" in text and "auth" not in text


def test_dispatcher_and_registrations_read_from_kamailio_replies() -> None:
    reply = {"NRSETS": 1, "RECORDS": [{"SET": {"ID": 1, "TARGETS": [
        {"DEST": {"URI": "sip:127.0.2.2:5060", "FLAGS": "IP", "PRIORITY": 0, "ATTRS": {"DUID": "node1"}}},
        {"DEST": {"URI": "sip:127.0.2.3:5060", "FLAGS": "AX", "PRIORITY": 0, "ATTRS": {"DUID": "node2"}}}]}}]}
    assert [(d["name"], d["state"], d["probing"]) for d in cluster.parse_dispatcher(reply)] == [
        ("node1", "inactive", True), ("node2", "active", False)]
    ul = {"Domains": [{"Domain": {"Domain": "location", "AoRs": [
        {"Info": {"AoR": "seat101", "Contacts": [{"Contact": {"Address": "sip:seat101@127.0.0.1:5070"}}]}}]}}]}
    assert cluster.parse_registrations(ul) == [{"seat": "seat101", "contacts": ["sip:seat101@127.0.0.1:5070"]}]
    assert cluster.parse_dispatcher(None) == [] and cluster.parse_registrations({}) == []


def test_a_cluster_section_in_the_toml_file(tmp_path: Path) -> None:
    from callrouter.config import ConfigError, load_settings

    cfg = tmp_path / "c.toml"
    cfg.write_text('sip_bind = "10.0.0.1"\n[cluster]\nnodes = ["10.0.0.2", "10.0.0.3"]\nprobe_s = 3\n')
    s = load_settings(cfg, env={})
    assert (s.cluster_nodes, s.cluster_probe_s, s.sip_bind) == (("10.0.0.2", "10.0.0.3"), 3, "10.0.0.1")
    cfg.write_text("[cluster]\nnode = 1\n")
    with pytest.raises(ConfigError, match="cluster_node"):
        load_settings(cfg, env={})


def test_each_nodes_log_dir_is_its_own_on_one_machine_or_under_the_log_root(tmp_path: Path) -> None:
    """Where the engine reads a node's CEL file: the node's own log directory in the chroot,
    or <cluster_log_root>/<node> (each node's directory mounted from its machine)."""
    s = _settings(tmp_path, sip_bind="127.0.2.1")
    plan = cluster.plan(s)
    assert [cluster.node_log_dir(plan, n) for n in plan.nodes] == [
        s.chroot / "var/log/asterisk-node1", s.chroot / "var/log/asterisk-node2"]
    mounted = cluster.plan(dataclasses.replace(s, cluster_log_root=Path("/mnt/asterisk-logs")))
    assert [cluster.node_log_dir(mounted, n) for n in mounted.nodes] == [
        Path("/mnt/asterisk-logs/node1"), Path("/mnt/asterisk-logs/node2")]


def test_the_log_root_from_the_cluster_section_or_the_environment(tmp_path: Path) -> None:
    from callrouter.config import load_settings

    cfg = tmp_path / "c.toml"
    cfg.write_text('[cluster]\nlog_root = "/mnt/logs"\n')
    assert load_settings(cfg, env={}).cluster_log_root == Path("/mnt/logs")
    assert load_settings(env={"CALLROUTER_CLUSTER_LOG_ROOT": "/srv/x"}).cluster_log_root == Path("/srv/x")
    assert load_settings(env={}).cluster_log_root is None
