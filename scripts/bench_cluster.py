"""Benchmark: the cluster mode's capacity, one node against two, and Kamailio's added
post-dial delay (issue 11's figures), in one run on one machine.

    flock /work/notes/bench.lock .venv/bin/python scripts/bench_cluster.py \
        [--nodes 1,2] [--rates 20,50,100,150] [--seconds 15] [--hold 1] \
        [--pdd-rates 20,50] [--pdd-seconds 10] [--pdd-rounds 2] [--markdown FILE]

For each node count: `cluster up --nodes N` (after a `cluster down`, so every phase starts
from nothing), wait until Kamailio's probe has every node active, then the steps of that
phase; `cluster down` between phases and always at the end (an error, Ctrl-C or SIGTERM
included). No engine is connected to the nodes (not built yet): every caller takes the
nodes' plain answering path, `Answer(,i)` in [callrouter-engine], Stasis fails at once, the
fallback hold (MusicOnHold) until the caller hangs up --hold s after its 200 OK. That is
what Asterisk does for each call before an engine is involved; the engine's own cost is
in bench_answer's figures.

- *capacity* (every phase): trunk calls through Kamailio at each of --rates for --seconds
  (SIPp from the trunk address, one of trunk_ips): per node count and rate INVITE->200
  p50/p99/max (SIPp, 4 ms ticks), answered calls/s, failed calls, calls per node (each
  node's "calls processed"), each node's Asterisk CPU and Kamailio's (all its processes),
  and the whole machine's busy share (SIPp's own work included).
- *post-dial delay* (the 1-node phase): the same calls straight to node1 (from Kamailio's
  own address, the only trunk a node accepts, on another port) and through Kamailio to
  that one node, alternating (direct, Kamailio, then Kamailio, direct ...) at each of
  --pdd-rates. INVITE->200 is timed at the wire as well (kernel receive stamps of the SIP
  packets on the loopback interface, an AF_PACKET socket filtered to the SIP port): SIPp's
  own figure moves in 4 ms ticks, far coarser than what a proxy adds.

The machine's two cores limit both node counts (the nodes, Kamailio and SIPp share them):
two nodes cannot double the capacity here. The figure is the ratio of two nodes to one in
the same run. Other helpers may use the machine too: hold /work/notes/bench.lock and say
so with the figures. Addresses, ports and home come from the CALLROUTER_* settings:
sip_bind is Kamailio's, the nodes the next addresses, the trunk caller the first single
address of trunk_ips that is not sip_bind (or --trunk-ip).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import fcntl
import ipaddress
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import CpuSampler, fmt, machine, pct, stamp

from callrouter.config import Settings

PATH_KAMAILIO, PATH_DIRECT = "kamailio", "direct"
# bounds on the load one run may put on the shared machine
MAX_RATE, MAX_SECONDS, MAX_HOLD, MAX_NODES = 500.0, 30.0, 10.0, 4
MAX_CALLS = 25_000  # over the whole run
MAX_RUN_S = 20 * 60.0
MAX_RETRIES = 2  # a step whose node died from outside is repeated after `cluster up`
SETTLE_S = 1.0  # after the last caller's hang-up, inside the CPU window (the ends are part of the cost)
STEP_OVERHEAD_S = 4.0  # settling and counting between steps (for the estimate)
PHASE_OVERHEAD_S = 15.0  # cluster up, probe, down


# ------------------------------------------------------------------------ the plan (pure)
@dataclasses.dataclass(frozen=True)
class Step:
    nodes: int  # the phase's node count
    kind: str  # "capacity" or "pdd"
    path: str  # PATH_KAMAILIO or PATH_DIRECT (to node1)
    rate: float  # calls/s
    seconds: float

    @property
    def calls(self) -> int:
        return max(1, round(self.rate * self.seconds))


def parse_numbers(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise ValueError(f"{text!r}: a comma list of numbers") from exc
    if not values:
        raise ValueError(f"{text!r}: no value")
    return values


def plan_steps(node_counts: list[int], rates: list[float], seconds: float, pdd_rates: list[float],
               pdd_seconds: float, pdd_rounds: int) -> list[Step]:
    """Every step of one run, in order: per node count (as given), the post-dial delay
    pairs first (only with one node: Kamailio must have no other node to choose), then the
    capacity steps at rising rates."""
    steps: list[Step] = []
    for n in node_counts:
        if n == 1:
            for rate in pdd_rates:
                for r in range(pdd_rounds):
                    order = (PATH_DIRECT, PATH_KAMAILIO) if r % 2 == 0 else (PATH_KAMAILIO, PATH_DIRECT)
                    steps += [Step(1, "pdd", path, rate, pdd_seconds) for path in order]
        steps += [Step(n, "capacity", PATH_KAMAILIO, rate, seconds) for rate in sorted(rates)]
    return steps


def estimate_s(steps: list[Step], hold_s: float) -> float:
    phases = len({s.nodes for s in steps})
    return sum(s.seconds + hold_s + SETTLE_S + STEP_OVERHEAD_S for s in steps) + phases * PHASE_OVERHEAD_S


def check_plan(node_counts: list[int], steps: list[Step], hold_s: float) -> None:
    """The bounds of one run (ValueError with what is wrong)."""
    problems = []
    if not node_counts or any(not 1 <= n <= MAX_NODES for n in node_counts) or len(set(node_counts)) != len(node_counts):
        problems.append(f"node counts {node_counts}: distinct, each 1-{MAX_NODES}")
    if any(not 0 < s.rate <= MAX_RATE for s in steps):
        problems.append(f"rates in (0, {MAX_RATE:.0f}] calls/s")
    if any(not 1 <= s.seconds <= MAX_SECONDS for s in steps):
        problems.append(f"seconds per step in [1, {MAX_SECONDS:.0f}]")
    if not 0.2 <= hold_s <= MAX_HOLD:
        problems.append(f"--hold in [0.2, {MAX_HOLD:.0f}] s")
    if (total := sum(s.calls for s in steps)) > MAX_CALLS:
        problems.append(f"{total} calls in the run: at most {MAX_CALLS}")
    if (est := estimate_s(steps, hold_s)) > MAX_RUN_S:
        problems.append(f"about {est / 60:.0f} min: at most {MAX_RUN_S / 60:.0f}")
    if problems:
        raise ValueError("; ".join(problems))


# -------------------------------------------------------------------- figures (pure)
def answered_per_s(answer_ms: list[float], rate: float) -> float | None:
    """Answered calls per second from when SIPp took each 200 OK (its Date_ms): n answers
    spread over (last - first) + one interval of the offered rate (n answers at exactly
    the offered rate give the offered rate)."""
    if not answer_ms:
        return None
    span_s = (max(answer_ms) - min(answer_ms)) / 1000 + 1 / rate
    return len(answer_ms) / span_s


@dataclasses.dataclass
class StepResult:
    step: Step
    offered: int
    answered: int
    failed: int
    invite_ms: list[float]  # SIPp: INVITE -> 200 OK per answered call
    answered_per_s: float | None
    per_node: dict[str, int]  # calls processed by each node in the step
    node_cpu_s: dict[str, float]  # Asterisk CPU seconds per node over the step's window
    kamailio_cpu_s: float
    window_s: float
    machine_busy: float  # share of all cores busy over the window (0-1)
    wire_ms: list[float] | None = None  # INVITE -> 200 OK at the wire (pdd steps)
    wire_unmatched: int = 0  # answered calls the wire timer missed

    def cpu_pct(self, seconds: float) -> float:
        """CPU seconds over the window as % of one core."""
        return 100 * seconds / self.window_s if self.window_s > 0 else 0.0

    def cpu_ms_per_call(self, seconds: float) -> float:
        return 1000 * seconds / max(1, self.answered)


def _ms(values: list[float] | None, p: float, digits: int = 1) -> str:
    return fmt(pct(values, p) if values else None, digits)


def capacity_table(results: list[StepResult]) -> list[str]:
    out = [("| nodes | offered calls/s | calls | failed | INVITE→200 p50 / p99 / max ms | answered calls/s "
            "| calls per node | Asterisk CPU per node, % of a core (ms/call) | Kamailio CPU % (ms/call) "
            "| machine busy |"),
           "|---:|---:|---:|---:|---|---:|---|---|---|---:|"]
    for r in results:
        if r.step.kind != "capacity":
            continue
        nodes = " / ".join(str(v) for v in r.per_node.values())
        cpu = " / ".join(f"{r.cpu_pct(v):.0f} ({r.cpu_ms_per_call(v):.2f})" for v in r.node_cpu_s.values())
        out.append(f"| {r.step.nodes} | {r.step.rate:g} | {r.offered} | {r.failed} "
                   f"| {_ms(r.invite_ms, 50)} / {_ms(r.invite_ms, 99)} / {_ms(r.invite_ms, 100)} "
                   f"| {fmt(r.answered_per_s)} | {nodes} | {cpu} "
                   f"| {r.cpu_pct(r.kamailio_cpu_s):.0f} ({r.cpu_ms_per_call(r.kamailio_cpu_s):.2f}) "
                   f"| {100 * r.machine_busy:.0f}% |")
    return out


def ratio_table(results: list[StepResult]) -> list[str]:
    """N nodes against one at each rate, same run."""
    cap = {(r.step.nodes, r.step.rate): r for r in results if r.step.kind == "capacity"}
    others = sorted({n for n, _ in cap if n != 1})
    if not others or not any(n == 1 for n, _ in cap):
        return []
    out = [("| offered calls/s | nodes | INVITE→200 p99 ms, N nodes / 1 node | answered calls/s, N / 1 "
            "| failed, N / 1 | Asterisk CPU ms/call (all nodes), N / 1 |"),
           "|---:|---:|---|---|---|---|"]
    for (n, rate), r in sorted(cap.items()):
        one = cap.get((1, rate))
        if n == 1 or one is None:
            continue
        p99, p99_one = pct(r.invite_ms, 99), pct(one.invite_ms, 99)
        ratio = f" ({p99 / p99_one:.2f}x)" if p99 is not None and p99_one else ""
        rate_ratio = (f" ({r.answered_per_s / one.answered_per_s:.2f}x)"
                      if r.answered_per_s and one.answered_per_s else "")
        cpu, cpu_one = (x.cpu_ms_per_call(sum(x.node_cpu_s.values())) for x in (r, one))
        out.append(f"| {rate:g} | {n} | {fmt(p99)} / {fmt(p99_one)}{ratio} "
                   f"| {fmt(r.answered_per_s)} / {fmt(one.answered_per_s)}{rate_ratio} | {r.failed} / {one.failed} "
                   f"| {cpu:.2f} / {cpu_one:.2f} |")
    return out


def pdd_table(results: list[StepResult]) -> list[str]:
    """Direct to node1 against through Kamailio to node1, pooled over the rounds."""
    pooled: dict[tuple[float, str], list[StepResult]] = {}
    for r in results:
        if r.step.kind == "pdd":
            pooled.setdefault((r.step.rate, r.step.path), []).append(r)
    if not pooled:
        return []
    out = [("| calls/s | path | calls | failed | wire INVITE→200 p50 / p99 / max ms | SIPp INVITE→200 p50 / p99 ms "
            "| added by Kamailio p50 / p99 ms (wire) | node1 CPU ms/call | Kamailio CPU ms/call |"),
           "|---:|---|---:|---:|---|---|---|---:|---:|"]
    for rate in sorted({rate for rate, _ in pooled}):
        wire_direct = [v for r in pooled.get((rate, PATH_DIRECT), []) for v in (r.wire_ms or [])]
        for path in (PATH_DIRECT, PATH_KAMAILIO):
            rows = pooled.get((rate, path), [])
            if not rows:
                continue
            wire = [v for r in rows for v in (r.wire_ms or [])]
            sipp = [v for r in rows for v in r.invite_ms]
            answered = sum(r.answered for r in rows)
            added = ""
            if path == PATH_KAMAILIO and wire and wire_direct:
                added = (f"{_delta(pct(wire, 50), pct(wire_direct, 50))} / "
                         f"{_delta(pct(wire, 99), pct(wire_direct, 99))}")
            node_ms = 1000 * sum(sum(r.node_cpu_s.values()) for r in rows) / max(1, answered)
            kam_ms = 1000 * sum(r.kamailio_cpu_s for r in rows) / max(1, answered)
            unmatched = sum(r.wire_unmatched for r in rows)
            miss = f" ({unmatched} not seen)" if unmatched else ""
            out.append(f"| {rate:g} | {'through Kamailio' if path == PATH_KAMAILIO else 'direct to node1'} "
                       f"| {sum(r.offered for r in rows)} | {sum(r.failed for r in rows)} "
                       f"| {_ms(wire, 50, 2)} / {_ms(wire, 99, 2)} / {_ms(wire, 100, 2)}{miss} "
                       f"| {_ms(sipp, 50)} / {_ms(sipp, 99)} | {added} | {node_ms:.2f} | {kam_ms:.2f} |")
    return out


def _delta(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a - b:+.2f}"


# ----------------------------------------------------------- SIP at the wire (pure parts)
@dataclasses.dataclass(frozen=True)
class SipHead:
    method: str  # request method, or "" for a response
    status: int  # response code, or 0 for a request
    call_id: str
    cseq_method: str


def udp_of_frame(frame: bytes) -> tuple[str, int, str, int, bytes] | None:
    """(src, sport, dst, dport, payload) of an IPv4 UDP packet in a loopback (Ethernet-
    framed) frame; None for anything else."""
    if len(frame) < 14 + 20 + 8 or frame[12:14] != b"\x08\x00":
        return None
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    if ip[0] >> 4 != 4 or ip[9] != 17 or ihl < 20 or len(ip) < ihl + 8:
        return None
    if struct.unpack("!H", ip[6:8])[0] & 0x3FFF:  # a fragment (MF or an offset)
        return None
    sport, dport, length = struct.unpack("!HHH", ip[ihl:ihl + 6])
    payload = ip[ihl + 8:ihl + max(8, length)]
    return socket.inet_ntoa(ip[12:16]), sport, socket.inet_ntoa(ip[16:20]), dport, payload


def sip_head(payload: bytes) -> SipHead | None:
    """The start line, Call-ID and CSeq method of a SIP message (compact forms too)."""
    head = payload.split(b"\r\n\r\n", 1)[0].decode("utf-8", errors="replace")
    lines = head.split("\r\n")
    first = lines[0].split(" ", 2)
    if len(first) < 2:
        return None
    method, status = "", 0
    if first[0].startswith("SIP/2.0"):
        if not first[1].isdigit():
            return None
        status = int(first[1])
    elif len(first) == 3 and first[2].startswith("SIP/2.0"):
        method = first[0]
    else:
        return None
    call_id = cseq = ""
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            continue
        name = name.strip().lower()
        if name in ("call-id", "i"):
            call_id = value.strip()
        elif name == "cseq":
            cseq = value.split()[-1] if value.split() else ""
    if not call_id:
        return None
    return SipHead(method, status, call_id, cseq)


def pair_delays(invites: dict[str, int], oks: dict[str, int]) -> tuple[list[float], int]:
    """INVITE -> 200 OK in ms per Call-ID seen both ways (first INVITE, first 200), and
    how many 200s had no INVITE seen."""
    delays = [(oks[c] - invites[c]) / 1e6 for c in oks if c in invites and oks[c] >= invites[c]]
    return delays, len(oks) - len(delays)


# ------------------------------------------------------------------ the wire timer
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SO_ATTACH_FILTER = 26
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def _port_filter(port: int) -> list[tuple[int, int, int, int]]:
    """Classic BPF: IPv4 UDP, not a fragment, source or destination port ``port``."""
    return [
        (0x28, 0, 0, 12),  # ldh [12]            ethertype
        (0x15, 0, 10, 0x0800),  # jeq IPv4       else drop
        (0x30, 0, 0, 23),  # ldb [23]            protocol
        (0x15, 0, 8, 17),  # jeq UDP             else drop
        (0x28, 0, 0, 20),  # ldh [20]            flags + fragment offset
        (0x45, 6, 0, 0x1FFF),  # jset offset     -> drop
        (0xB1, 0, 0, 14),  # ldxb 4*([14]&0xf)   header length
        (0x48, 0, 0, 14),  # ldh [x+14]          source port
        (0x15, 2, 0, port),  # jeq port          -> accept
        (0x48, 0, 0, 16),  # ldh [x+16]          destination port
        (0x15, 0, 1, port),  # jeq port          else drop
        (0x06, 0, 0, 0x40000),  # accept
        (0x06, 0, 0, 0),  # drop
    ]


class WireTimer:
    """INVITE -> 200 OK of one caller address to one SIP target, from the kernel's receive
    stamps of the packets on the loopback interface (root: an AF_PACKET socket, filtered
    in the kernel to the target's SIP port, so RTP never reaches this process)."""

    def __init__(self, caller_ip: str, target: tuple[str, int], iface: str = "lo") -> None:
        self.caller_ip, self.target = caller_ip, target
        self.invites: dict[str, int] = {}
        self.oks: dict[str, int] = {}
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        code = _port_filter(target[1])
        buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *c) for c in code))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                             struct.pack("HL", len(code), ctypes.addressof(buf)))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((iface, ETH_P_ALL))
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wire-timer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        space = socket.CMSG_SPACE(16)
        while not self._stop.is_set():
            try:
                data, anc, _flags, addr = self.sock.recvmsg(65535, space)
            except TimeoutError:
                continue
            except OSError:
                return
            if addr[2] == PACKET_OUTGOING:  # loopback shows each packet twice: keep its arrival
                continue
            stamp_ns = None
            for level, kind, value in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                    sec, nsec = struct.unpack("qq", value[:16])
                    stamp_ns = sec * 1_000_000_000 + nsec
            udp = udp_of_frame(data)
            if stamp_ns is None or udp is None:
                continue
            src, sport, dst, dport, payload = udp
            head = sip_head(payload)
            if head is None:
                continue
            if head.method == "INVITE" and src == self.caller_ip and (dst, dport) == self.target:
                self.invites.setdefault(head.call_id, stamp_ns)
            elif (head.status == 200 and head.cseq_method == "INVITE" and (src, sport) == self.target
                  and dst == self.caller_ip):
                self.oks.setdefault(head.call_id, stamp_ns)

    def stop(self) -> tuple[list[float], int]:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        return pair_delays(self.invites, self.oks)


# ------------------------------------------------------------------ the run
def lscpu_line() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return machine()
    info = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in out.splitlines())}
    return (f"{info.get('CPU(s)', '?')} CPUs ({info.get('Core(s) per socket', '?')} cores per socket, "
            f"{info.get('Thread(s) per core', '?')} thread per core), {info.get('Model name', '?')}, "
            f"{info.get('Hypervisor vendor', 'no')} hypervisor; {machine()}")


def commit_line() -> str:
    here = Path(__file__).resolve().parent
    run = lambda *a: subprocess.run(["git", "-C", str(here), *a], capture_output=True, text=True,
                                    check=False).stdout.strip()
    dirty = run("status", "--porcelain", "--untracked-files=no")
    return f"{run('rev-parse', '--short', 'HEAD')}{' (with uncommitted changes)' if dirty else ''}"


def loadavg() -> str:
    return " / ".join(Path("/proc/loadavg").read_text().split()[:3])


def busy_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all cores (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


class Bench:
    def __init__(self, settings: Settings, trunk_ip: str, hold_s: float, max_nodes: int) -> None:
        self.settings, self.trunk_ip, self.hold_s = settings, trunk_ip, hold_s
        self.max_nodes = max_nodes  # `down` plans this many (and stops any other node of this home)
        self.notes: list[str] = []

    # -- the cluster
    def down(self, size: int) -> None:
        from callrouter.provision import cluster as cl

        cl.down(self.settings, size)

    def up(self, size: int) -> Any:
        from callrouter.provision import cluster as cl

        self.down(self.max_nodes)  # from nothing: no node of an earlier phase or run left
        report = cl.up(self.settings, size)
        cluster = cl.plan(self.settings, size)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            states = {d["name"]: d["state"] for d in cl.dispatcher_state(cluster)}
            if len(states) == size and set(states.values()) == {"active"}:
                break
            time.sleep(0.2)
        else:
            raise SystemExit(f"{size} node(s) not all active at Kamailio within 20 s")
        self.notes.append(f"`cluster up --nodes {size}`: {report.seconds:.1f} s")
        return cluster

    # -- one step
    def run_step(self, cluster: Any, step: Step) -> StepResult:
        from callrouter.provision import asterisk as prov
        from callrouter.provision import cluster as cl
        from callrouter.sim.trunk import CallSpec

        node1 = cluster.nodes[0]
        if step.path == PATH_DIRECT:
            # a node's only trunk is Kamailio's address; SIPp binds it on a port of its own
            caller, target = self.settings.sip_bind, (node1.address, node1.settings.sip_port)
        else:
            caller, target = self.trunk_ip, (self.settings.sip_bind, self.settings.sip_port)
        specs = [CallSpec("110", f"139{int(step.rate):03d}{i:05d}", self.hold_s) for i in range(step.calls)]
        before = {n.name: cl.node_channels(n)["processed"] or 0 for n in cluster.nodes}
        pids = {n.name: prov.pid(n.target) for n in cluster.nodes}
        if any(p is None for p in pids.values()):
            raise NodeLost(f"a node is not running before a step: {pids}")
        node_cpu = {name: CpuSampler(pid) for name, pid in pids.items() if pid is not None}
        kam_cpu = [CpuSampler(pid) for pid in cl._own_kamailios(cluster)]
        wire = WireTimer(caller, target) if step.kind == "pdd" else None
        busy0, started = busy_jiffies(), time.monotonic()
        try:
            report = _run_calls_interruptible(self.settings, specs, step.rate, caller, f"{target[0]}:{target[1]}")
            time.sleep(SETTLE_S)
        finally:
            wire_result = wire.stop() if wire is not None else None
        window = time.monotonic() - started
        busy1 = busy_jiffies()
        node_s = {name: s.cpu_s() - s.c0 for name, s in node_cpu.items()}
        kam_s = sum(s.cpu_s() - s.c0 for s in kam_cpu)
        _wait_idle(cluster)
        after = {n.name: cl.node_channels(n)["processed"] or 0 for n in cluster.nodes}
        now = {n.name: prov.pid(n.target) for n in cluster.nodes}
        if now != pids:
            # killed from outside (another home's `cluster down` before the fix of
            # cluster._node_strays killed every chroot's node1/node2): this step says nothing
            raise NodeLost(f"{step.nodes} node(s) {step.kind} {step.path} {step.rate:g}/s: node pids {pids} -> {now}, "
                           f"{report.failed} of {len(report.calls)} calls failed")
        answer_times = [t for t, _ in report.rtt_samples]
        result = StepResult(step, len(report.calls), len(report.rtt_ms), report.failed, report.rtt_ms,
                            answered_per_s(answer_times, step.rate),
                            {name: after[name] - before[name] for name in after}, node_s, kam_s, window,
                            (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]))
        if wire_result is not None:
            result.wire_ms, unpaired = wire_result
            result.wire_unmatched = max(0, result.answered - len(result.wire_ms)) + unpaired
        if report.failed:
            outcomes: dict[str, int] = {}
            for c in report.calls:
                if not c.ok:
                    outcomes[c.outcome] = outcomes.get(c.outcome, 0) + 1
            self.notes.append(f"{step.nodes} node(s) {step.path} {step.rate:g}/s: failed {outcomes}; "
                              f"SIPp's last error: {_first_line(report.errors)}")
        return result


def _first_line(errors: list[str]) -> str:
    """The first line of SIPp's last error that says something (not an echoed SIP line)."""
    for text in reversed(errors):
        for line in text.splitlines():
            if "Dead call" in line or "rror" in line or "ailed" in line:
                return line.strip()[:200]
    return (errors[-1].splitlines() or [""])[0][:200] if errors else "none"


class NodeLost(Exception):
    """A node's Asterisk died or was replaced during a step."""


def _run_calls_interruptible(settings: Settings, specs: list[Any], rate: float, local_ip: str, target: str) -> Any:
    """run_calls in a thread, so that Ctrl-C or SIGTERM ends SIPp (its cancel) before the
    cluster goes down."""
    from callrouter.sim.trunk import run_calls

    box: list[Any] = []
    cancel = threading.Event()

    def work() -> None:
        try:
            box.append(run_calls(settings, specs, rate, local_ip=local_ip, target=target, cancel=cancel))
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, raised there
            box.append(exc)

    thread = threading.Thread(target=work, name="sipp", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.2)
    except BaseException:
        cancel.set()
        thread.join(15)
        raise
    if not box or isinstance(box[0], BaseException):
        raise SystemExit(f"SIPp run failed: {box[0] if box else 'no report'}")
    return box[0]


def _wait_idle(cluster: Any, timeout_s: float = 15.0) -> None:
    """Until every node's callers are gone (the next step starts from an idle cluster)."""
    from callrouter.provision import cluster as cl

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all((cl.node_channels(n)["channels"] or 0) == 0 for n in cluster.nodes):
            return
        time.sleep(0.3)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def handler(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt("SIGTERM")

    previous: Callable[..., Any] | int | None = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_LOCK_FILES: list[Any] = []  # held until the process ends


def hold_bench_lock(path: str) -> str:
    """Hold the machine's benchmark lock for the run (as `flock FILE <command>` does); a
    `flock` parent holding it already counts. Returns what the figures should say."""
    if not path:
        return "no benchmark lock held"
    pid = os.getppid()
    for _ in range(8):  # `flock FILE sh -c '...'` holds it for everything below it
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        if args and args[0].endswith(b"flock") and path.encode() in args:
            return f"run under `flock {path}`"
        if ppid <= 1:
            break
        pid = ppid
    fh = open(path, "a")  # noqa: SIM115 - held open until the process ends
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"bench_cluster: waiting for {path} (another benchmark runs)", file=sys.stderr)
        fcntl.flock(fh, fcntl.LOCK_EX)
    _LOCK_FILES.append(fh)
    return f"held {path}"


def pick_trunk_ip(settings: Settings, given: str | None) -> str:
    if given:
        if not any(ipaddress.ip_address(given) in ipaddress.ip_network(t, strict=False) for t in settings.trunk_ips):
            raise SystemExit(f"--trunk-ip {given} is not in trunk_ips {settings.trunk_ips}: Kamailio would refuse it")
        return given
    for t in settings.trunk_ips:
        net = ipaddress.ip_network(t, strict=False)
        if net.num_addresses == 1 and str(net.network_address) != settings.sip_bind:
            return str(net.network_address)
    raise SystemExit(f"no single trunk address other than sip_bind in trunk_ips {settings.trunk_ips}: "
                     "set CALLROUTER_TRUNK_IPS (e.g. 127.0.1.75) or --trunk-ip")


def report_text(results: list[StepResult], header: list[str], notes: list[str]) -> str:
    lines = [*header, "", "Capacity (through Kamailio, round robin over the nodes):", "", *capacity_table(results)]
    if ratios := ratio_table(results):
        lines += ["", "Two nodes against one (same run, same machine; the nodes share its cores):", "", *ratios]
    if pdd := pdd_table(results):
        lines += ["", "Kamailio's added post-dial delay (one node; direct and through Kamailio alternating):",
                  "", *pdd]
    lines += ["", *(f"- {n}" for n in notes)]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--nodes", default="1,2", help="node counts, one phase each (default 1,2)")
    ap.add_argument("--rates", default="20,50,100,150", help="capacity steps, calls/s")
    ap.add_argument("--seconds", type=float, default=15.0, help="per capacity step")
    ap.add_argument("--hold", type=float, default=1.0, help="a caller hangs up this long after its 200 OK")
    ap.add_argument("--pdd-rates", default="20,50", help="post-dial delay pairs, calls/s (1-node phase); '' for none")
    ap.add_argument("--pdd-seconds", type=float, default=10.0)
    ap.add_argument("--pdd-rounds", type=int, default=2, help="direct/Kamailio pairs per rate (alternating order)")
    ap.add_argument("--trunk-ip", help="the trunk caller's address (default: the first single address of trunk_ips)")
    ap.add_argument("--markdown", help="write the report to this file too")
    ap.add_argument("--lock", default=os.environ.get("CALLROUTER_BENCH_LOCK", "/work/notes/bench.lock"),
                    help="the machine's benchmark lock (held through the run; '' for none)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and its bounds, start nothing")
    args = ap.parse_args()
    try:
        node_counts = [int(n) for n in parse_numbers(args.nodes)]
        steps = plan_steps(node_counts, parse_numbers(args.rates), args.seconds,
                           parse_numbers(args.pdd_rates) if args.pdd_rates.strip() else [], args.pdd_seconds,
                           max(0, args.pdd_rounds))
        check_plan(node_counts, steps, args.hold)
    except ValueError as exc:
        raise SystemExit(f"bench_cluster: {exc}") from None
    est = estimate_s(steps, args.hold)
    print(f"{len(steps)} steps, {sum(s.calls for s in steps)} calls, about {est / 60:.1f} min", file=sys.stderr)
    if args.dry_run:
        for s in steps:
            print(f"  {s.nodes} node(s) {s.kind:8} {s.path:8} {s.rate:g}/s x {s.seconds:g} s = {s.calls} calls")
        return 0
    if os.geteuid() != 0:
        raise SystemExit("bench_cluster: needs root (the cluster, the wire timer's packet socket)")
    from callrouter.config import load_settings

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    settings = load_settings()
    trunk_ip = pick_trunk_ip(settings, args.trunk_ip)
    bench = Bench(settings, trunk_ip, args.hold, max(node_counts))
    lock_note = hold_bench_lock(args.lock)
    header = [f"Machine: {lscpu_line()}", f"Date: {stamp()}; commit {commit_line()}",
              (f"Kamailio {settings.sip_bind}:{settings.sip_port}, nodes from the next addresses, trunk caller "
               f"{trunk_ip}; callers hang up {args.hold:g} s after their 200 OK (the nodes' fallback hold, no "
               "engine); probe and SIP timer as configured "
               f"({settings.cluster_probe_s} s / {settings.cluster_sip_timer_s} s)"),
              ("The machine's cores are shared by the nodes, Kamailio and SIPp, and the machine by other users "
               f"({lock_note}; others' work outside benchmarks still runs): two nodes cannot double capacity "
               "here; the ratios of the same run are the figure."),
              f"Load average (1 / 5 / 15 min) at the start: {loadavg()}"]
    results: list[StepResult] = []
    started = time.monotonic()
    interrupted = False
    with sigterm_as_interrupt():
        try:
            for n in dict.fromkeys(s.nodes for s in steps):
                phase_started = time.monotonic()
                cluster = bench.up(n)
                for step in (s for s in steps if s.nodes == n):
                    for attempt in range(MAX_RETRIES + 1):
                        try:
                            r = bench.run_step(cluster, step)
                            break
                        except NodeLost as exc:
                            if attempt == MAX_RETRIES:
                                raise SystemExit(f"bench_cluster: {exc}; gave up after {MAX_RETRIES} retries") from None
                            bench.notes.append(f"step repeated: {exc}")
                            print(f"bench_cluster: {exc}: cluster up again, step repeated", file=sys.stderr)
                            cluster = bench.up(n)
                    results.append(r)
                    wire = f", wire p50/p99 {_ms(r.wire_ms, 50, 2)}/{_ms(r.wire_ms, 99, 2)} ms" if r.wire_ms else ""
                    print(f"{n} node(s) {step.kind} {step.path} {step.rate:g}/s: {r.offered} calls, {r.failed} failed, "
                          f"INVITE->200 p50/p99 {_ms(r.invite_ms, 50)}/{_ms(r.invite_ms, 99)} ms{wire}, "
                          f"answered {fmt(r.answered_per_s)}/s, per node {r.per_node}", file=sys.stderr)
                bench.down(n)
                bench.notes.append(f"phase with {n} node(s): {time.monotonic() - phase_started:.0f} s "
                                   f"(load average after it: {loadavg()})")
        except KeyboardInterrupt:
            interrupted = True
            print("bench_cluster: interrupted; bringing the cluster down", file=sys.stderr)
        finally:
            bench.down(bench.max_nodes)
    bench.notes.append(f"whole run {time.monotonic() - started:.0f} s; load average at the end: {loadavg()}"
                       + ("; INTERRUPTED: partial figures" if interrupted else ""))
    text = report_text(results, header, bench.notes)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if interrupted:
        return 130
    return 0 if all(r.failed == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
