"""scripts/bench_cluster.py's pure parts: the plan and its bounds, the SIP packet reader of
its wire timer, the pairing of INVITEs with 200s, and the tables (no cluster, no SIPp)."""

from __future__ import annotations

import importlib.util
import socket
import struct
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _load() -> ModuleType:
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location("bench_cluster", SCRIPTS / "bench_cluster.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_cluster"] = module
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SCRIPTS))


bc = _load()


def test_plan_puts_the_delay_pairs_in_the_one_node_phase_alternating_then_rising_rates() -> None:
    steps = bc.plan_steps([1, 2], [100, 20], 10, [20], 5, 2)
    assert [(s.nodes, s.kind, s.path, s.rate) for s in steps] == [
        (1, "pdd", "direct", 20), (1, "pdd", "kamailio", 20),
        (1, "pdd", "kamailio", 20), (1, "pdd", "direct", 20),
        (1, "capacity", "kamailio", 20), (1, "capacity", "kamailio", 100),
        (2, "capacity", "kamailio", 20), (2, "capacity", "kamailio", 100)]
    assert [s.calls for s in steps] == [100, 100, 100, 100, 200, 1000, 200, 1000]
    # without a one-node phase there is no node to reach both ways
    assert all(s.kind == "capacity" for s in bc.plan_steps([2], [20], 10, [20], 5, 2))


def test_the_default_run_is_within_its_bounds_and_excess_is_refused() -> None:
    steps = bc.plan_steps([1, 2], [20, 50, 100, 150], 15, [20, 50], 10, 2)
    bc.check_plan([1, 2], steps, 1.0)
    assert 4 * 60 < bc.estimate_s(steps, 1.0) < 8 * 60
    with pytest.raises(ValueError, match="rates"):
        bc.check_plan([1], bc.plan_steps([1], [600], 10, [], 5, 0), 1.0)
    with pytest.raises(ValueError, match="calls in the run"):
        bc.check_plan([1, 2, 3, 4], bc.plan_steps([1, 2, 3, 4], [200] * 10, 30, [], 5, 0), 1.0)
    with pytest.raises(ValueError, match="node counts"):
        bc.check_plan([1, 1], bc.plan_steps([1, 1], [20], 10, [], 5, 0), 1.0)
    with pytest.raises(ValueError, match="hold"):
        bc.check_plan([1], bc.plan_steps([1], [20], 10, [], 5, 0), 60.0)
    with pytest.raises(ValueError):
        bc.parse_numbers("20,fast")


def test_answered_per_second_from_answer_times() -> None:
    # 100 answers 10 ms apart at an offered 100/s: 100/s
    assert bc.answered_per_s([i * 10.0 for i in range(100)], 100) == pytest.approx(100)
    # the same answers dragged out over twice the time: half
    assert bc.answered_per_s([i * 20.0 for i in range(100)], 100) == pytest.approx(50.25, rel=0.01)
    assert bc.answered_per_s([], 100) is None


def _frame(src: str, sport: int, dst: str, dport: int, payload: bytes, frag: int = 0) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + len(payload), 1, frag, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return b"\0" * 12 + b"\x08\x00" + ip + struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


INVITE = (b"INVITE sip:110@127.0.1.70:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.1.75:41000\r\n"
          b"Call-ID: 7-1@127.0.1.75\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
OK = (b"SIP/2.0 200 OK\r\nv: SIP/2.0/UDP 127.0.1.75:41000\r\ni: 7-1@127.0.1.75\r\nCSeq: 1 INVITE\r\n"
      b"Content-Type: application/sdp\r\n\r\nv=0\r\nCall-ID: not-this\r\n")


def test_sip_packets_are_read_from_loopback_frames() -> None:
    udp = bc.udp_of_frame(_frame("127.0.1.75", 41000, "127.0.1.70", 5060, INVITE))
    assert udp is not None and udp[:4] == ("127.0.1.75", 41000, "127.0.1.70", 5060)
    assert bc.sip_head(udp[4]) == bc.SipHead("INVITE", 0, "7-1@127.0.1.75", "INVITE")
    # compact headers; the body's lines are not headers
    assert bc.sip_head(OK) == bc.SipHead("", 200, "7-1@127.0.1.75", "INVITE")
    assert bc.sip_head(b"SIP/2.0 100 Trying\r\nCSeq: 1 INVITE\r\n\r\n") is None  # no Call-ID
    assert bc.sip_head(b"\x80\x00RTP audio") is None
    assert bc.udp_of_frame(_frame("127.0.1.75", 1, "127.0.1.70", 5060, INVITE, frag=0x2000)) is None
    tcp = bytearray(_frame("127.0.1.75", 1, "127.0.1.70", 5060, INVITE))
    tcp[14 + 9] = 6
    assert bc.udp_of_frame(bytes(tcp)) is None


def test_invites_pair_with_their_first_200() -> None:
    invites = {"a": 1_000_000_000, "b": 2_000_000_000}
    oks = {"a": 1_002_500_000, "c": 3_000_000_000}
    delays, unpaired = bc.pair_delays(invites, oks)
    assert delays == [2.5] and unpaired == 1


def _result(nodes: int, rate: float, invite_ms: list[float], per_s: float, kind: str = "capacity",
            path: str = "kamailio", wire: list[float] | None = None) -> object:
    step = bc.Step(nodes, kind, path, rate, 10)
    per_node = {f"node{i + 1}": 100 // nodes for i in range(nodes)}
    return bc.StepResult(step, 100, 100, 0, invite_ms, per_s, per_node, dict.fromkeys(per_node, 0.5), 0.1, 10.0,
                         0.4, wire_ms=wire)


def test_tables_give_the_two_node_ratio_and_kamailios_added_delay() -> None:
    results = [
        _result(1, 20, [1.0, 2.0, 4.0], 20, "pdd", "direct", [1.0, 1.5, 2.0]),
        _result(1, 20, [1.0, 2.0, 4.0], 20, "pdd", "kamailio", [1.5, 2.0, 3.0]),
        _result(1, 100, [4.0] * 98 + [40.0, 40.0], 99.0),
        _result(2, 100, [4.0] * 98 + [20.0, 20.0], 99.5),
    ]
    capacity = bc.capacity_table(results)
    assert len(capacity) == 4  # header, rule, one row per capacity step
    assert "| 2 | 100 | 100 | 0 | 4.0 / 20.0 / 20.0 | 99.5 | 50 / 50 | 5 (5.00) / 5 (5.00) | 1 (1.00) | 40% |" in capacity
    ratios = bc.ratio_table(results)
    assert ratios[2] == "| 100 | 2 | 20.0 / 40.0 (0.50x) | 99.5 / 99.0 (1.01x) | 0 / 0 | 10.00 / 5.00 |"
    pdd = bc.pdd_table(results)
    assert pdd[2].startswith("| 20 | direct to node1 | 100 | 0 | 1.50 / 2.00 / 2.00 |")
    assert "| +0.50 / +1.00 |" in pdd[3]
    text = bc.report_text(results, ["Machine: test"], ["a note"])
    assert text.startswith("Machine: test") and text.endswith("- a note")
