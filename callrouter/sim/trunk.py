"""The simulated carrier trunk: real SIP (and RTP) calls from SIPp into Asterisk.

Each run writes the calls as an injection CSV, runs SIPp once with
``sip-sim/scenarios/trunk-call.xml`` and reads back, per call, what happened (from the
scenario's <log> lines) and the INVITE->200 OK times (SIPp's rtd trace). The caller's
source address must be one of the trunk's identify addresses (127.0.0.1 by default).
"""

from __future__ import annotations

import csv
import math
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from callrouter.config import Settings

SCENARIO = "trunk-call.xml"
SCENARIO_AT = "trunk-call-at.xml"  # each caller waits CallSpec.start_s before its INVITE
SCENARIO_PROBE = "probe-call.xml"  # the far end's RTP goes to CallSpec.rtp_to (a probe socket)
# numbers no plan lists: they must still reach a person (line 96345, category unlisted)
UNLISTED_SAMPLES = ("12399", "05786999999", "+86 578 6999998", "4001234567", "999")


class SimError(Exception):
    pass


@dataclass(frozen=True)
class CallSpec:
    number: str
    caller: str
    hold_s: float  # seconds after answer before the caller hangs up; < 0: wait for BYE
    caller_name: str = ""  # the From display name (default: the caller number); no '"' or ';'
    start_s: float = 0.0  # with scenario SCENARIO_AT: seconds after launch before the INVITE
    # with scenario SCENARIO_PROBE: (IPv4 address, port) the caller's SDP asks the far end's
    # audio to be sent to (callrouter.sim.rtp.RtpProbes); None: the caller's own address
    rtp_to: tuple[str, int] | None = None


@dataclass
class CallResult:
    index: int
    number: str
    caller: str
    outcome: str  # answered -> completed | completed_by_far_end | rejected_<code> | failed

    @property
    def ok(self) -> bool:
        return self.outcome in ("completed", "completed_by_far_end")


@dataclass
class TrunkReport:
    calls: list[CallResult]
    rtt_ms: list[float]
    elapsed_s: float
    sipp_exit: int
    errors: list[str] = field(default_factory=list)
    # (SIPp's Date_ms column, INVITE->200 ms) per answered call, in file order: for
    # percentiles over a part of a long run (the first and last minutes of a soak)
    rtt_samples: list[tuple[float, float]] = field(default_factory=list)
    # call index -> when SIPp took its 200 OK (Unix time, s), for scenarios that log it
    # (SCENARIO_PROBE: the start of the caller's wait for audio)
    answered_at: dict[int, float] = field(default_factory=dict)

    @property
    def answered(self) -> int:
        return sum(1 for c in self.calls if c.outcome != "failed" and not c.outcome.startswith("rejected"))

    @property
    def failed(self) -> int:
        return sum(1 for c in self.calls if not c.ok)

    def percentile(self, p: float) -> float | None:
        return percentile(self.rtt_ms, p)

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": len(self.calls), "ok": len(self.calls) - self.failed, "failed": self.failed,
            "answered": self.answered, "elapsed_s": round(self.elapsed_s, 2), "sipp_exit": self.sipp_exit,
            "invite_to_200_ms": {"p50": self.percentile(50), "p90": self.percentile(90),
                                 "p99": self.percentile(99), "max": max(self.rtt_ms) if self.rtt_ms else None},
            "results": [{"index": c.index, "number": c.number, "caller": c.caller, "outcome": c.outcome}
                        for c in self.calls],
            "errors": self.errors[:20],
        }


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    # nearest rank: the smallest value with at least p % of the values at or below it
    k = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
    return round(ordered[k], 2)


def read_results(log_text: str) -> tuple[dict[int, str], dict[int, float]]:
    """What the scenario's <log> lines say: each call's last outcome ("RESULT;call;dialled;
    caller;outcome", answered then completed) and when its 200 OK was taken
    ("ANSWERED_AT;call;seconds;microseconds", SIPp's gettimeofday)."""
    outcomes: dict[int, str] = {}
    answered_at: dict[int, float] = {}
    for line in log_text.splitlines():
        parts = line.strip().split(";")
        try:
            if len(parts) >= 5 and parts[0].endswith("RESULT"):
                outcomes[int(parts[1])] = parts[4]  # the last word wins
            elif len(parts) >= 4 and parts[0].endswith("ANSWERED_AT"):
                answered_at[int(parts[1])] = float(parts[2]) + float(parts[3]) / 1e6
        except ValueError:
            continue  # a line cut short (SIPp killed mid-write)
    return outcomes, answered_at


def scenario_path(settings: Settings, name: str = SCENARIO) -> Path:
    path = settings.data_dir / "sip-sim" / "scenarios" / name
    if not path.exists():
        raise SimError(f"{path}: scenario missing")
    return path


# ports this process handed out lately: a SIPp started a moment ago may not have bound
# them yet, so a bind test alone would hand them out twice
_HANDED_OUT: dict[tuple[str, int], float] = {}
_HANDED_LOCK = threading.Lock()
HANDED_OUT_S = 120.0
# SIPp's media: audio RTP on -mp, RTCP +1, video RTP +2 (and +3): all must be free
SIPP_MEDIA_PORTS = 4


def free_udp_ports(host: str, count: int = 1, *, align: int = 1, attempts: int = 200) -> int:
    """The first of ``count`` consecutive UDP ports on ``host``, each bind-tested free now
    (all held at once while testing) and not handed out by this process in the last two
    minutes. The kernel proposes the first (its ephemeral range)."""
    now = time.monotonic()
    with _HANDED_LOCK:
        for key in [k for k, at in _HANDED_OUT.items() if now - at > HANDED_OUT_S]:
            del _HANDED_OUT[key]
        for _ in range(attempts):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.bind((host, 0))
                base = int(probe.getsockname()[1])
            base -= base % align
            ports = range(base, base + count)
            if ports[-1] > 65535 or any((host, p) in _HANDED_OUT for p in ports):
                continue
            held: list[socket.socket] = []
            try:
                for port in ports:
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    held.append(s)
                    s.bind((host, port))
            except OSError:
                continue
            finally:
                for s in held:
                    s.close()
            for port in ports:
                _HANDED_OUT[(host, port)] = now
            return base
    raise SimError(f"no {count} free consecutive UDP ports on {host} after {attempts} tries")


def free_udp_port(host: str) -> int:
    return free_udp_ports(host, 1)


def free_media_port(host: str) -> int:
    """A base for SIPp's ``-mp``: it binds this port and the next three."""
    return free_udp_ports(host, SIPP_MEDIA_PORTS, align=2)


def bind_failed(text: str) -> bool:
    """Did SIPp fail because a port it wanted was taken meanwhile (a race: retry)?"""
    return "errno = 98" in text or "Address already in use" in text


def sipp_binary() -> str:
    from callrouter.provision.asterisk import ensure_host_packages

    ensure_host_packages(["sipp"])
    found = shutil.which("sipp")
    if found is None:
        raise SimError("sipp not found after installing sip-tester")
    return found


def run_calls(settings: Settings, specs: list[CallSpec], rate: float, *, local_ip: str = "127.0.0.1",
              target: str | None = None, max_concurrent: int = 2000, timeout_s: float | None = None,
              scenario: str = SCENARIO, cancel: threading.Event | None = None) -> TrunkReport:
    """Place ``specs`` at ``rate`` calls/s through SIPp and wait for all to finish.
    ``cancel`` set: SIPp is terminated at once (the report has what it got to)."""
    if not specs:
        raise SimError("no calls to place")
    if rate <= 0:
        raise SimError("rate must be > 0 calls/s")
    sipp = sipp_binary()
    target = target or f"{settings.sip_bind}:{settings.sip_port}"
    longest_hold = max(s.hold_s for s in specs)
    if timeout_s is None:
        waits_bye = any(s.hold_s < 0 for s in specs)
        timeout_s = (len(specs) / rate + max(longest_hold, 0) + max(s.start_s for s in specs)
                     + (120 if waits_bye else 30))
    with tempfile.TemporaryDirectory(prefix="callrouter-sim-") as tmpdir:
        tmp = Path(tmpdir)
        inf = tmp / "calls.csv"
        with inf.open("w", newline="") as fh:
            fh.write("SEQUENTIAL\n")
            w = csv.writer(fh, delimiter=";", lineterminator="\n")
            for spec in specs:
                hold_ms = -1 if spec.hold_s < 0 else int(spec.hold_s * 1000)
                # SIPp fields cannot hold ';' and the URI user part no spaces
                name = (spec.caller_name or spec.caller).replace(";", "").replace('"', "")
                rtp_ip, rtp_port = spec.rtp_to or (local_ip, 0)
                w.writerow([spec.number.replace(" ", "").replace(";", ""), spec.caller, hold_ms, name,
                            max(0, int(spec.start_s * 1000)), rtp_ip, rtp_port])
        logs, errs = tmp / "results.log", tmp / "errors.log"
        for attempt in range(3):
            cmd = [sipp, target, "-sf", str(scenario_path(settings, scenario)), "-inf", str(inf),
                   # -r calls per -rp ms: calls per 1000 s, so fractional rates work
                   "-m", str(len(specs)), "-r", str(max(1, int(rate * 1000))), "-rp", "1000000",
                   "-l", str(max_concurrent), "-i", local_ip, "-bind_local", "-ci", local_ip,
                   "-p", str(free_udp_port(local_ip)), "-mp", str(free_media_port(local_ip)), "-t", "u1", "-nostdin",
                   "-trace_logs", "-log_file", str(logs), "-trace_err", "-error_file", str(errs),
                   "-trace_rtt", "-rtt_freq", "1", "-timeout", f"{int(timeout_s)}s", "-timeout_error",
                   "-max_recv_loops", "10000", "-aa"]
            started = time.monotonic()
            proc = subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            stderr = _wait_sipp(proc, timeout_s + 30, cancel)
            # a port taken between the bind test and SIPp's bind (another process): new ports
            bind_race = proc.returncode != 0 and not logs.exists() and bind_failed(
                stderr + (errs.read_text(errors="replace") if errs.exists() else ""))
            if not bind_race or attempt == 2:
                break
            errs.unlink(missing_ok=True)
        elapsed = time.monotonic() - started
        outcomes, answered_at = read_results(logs.read_text(errors="replace") if logs.exists() else "")
        rtts: list[float] = []
        samples: list[tuple[float, float]] = []
        for f in tmp.glob("*_rtt.csv"):
            for row in f.read_text().splitlines()[1:]:
                cols = row.split(";")
                if len(cols) >= 3 and cols[1]:
                    try:
                        rtts.append(float(cols[1]))
                        samples.append((float(cols[0] or "nan"), rtts[-1]))
                    except ValueError:
                        pass
        errors = errs.read_text(errors="replace").splitlines()[-50:] if errs.exists() else []
        if stderr.strip():
            errors.append(stderr.strip()[-2000:])
    calls = []
    for i, spec in enumerate(specs, 1):
        outcome = outcomes.get(i, "failed")
        if outcome == "answered":
            outcome = "failed"  # answered but never completed: the call broke mid-way
        calls.append(CallResult(i, spec.number, spec.caller, outcome))
    return TrunkReport(calls=calls, rtt_ms=rtts, elapsed_s=elapsed, sipp_exit=proc.returncode, errors=errors,
                       rtt_samples=samples, answered_at=answered_at)


def _wait_sipp(proc: subprocess.Popen[str], timeout_s: float, cancel: threading.Event | None) -> str:
    """SIPp's stderr once it ended (``subprocess.run``'s timeout: killed, TimeoutExpired);
    terminated as soon as ``cancel`` is set."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return proc.communicate(timeout=0.2 if cancel is not None else timeout_s)[1] or ""
        except subprocess.TimeoutExpired:
            cancelled = cancel is not None and cancel.is_set()
            if not cancelled and time.monotonic() < deadline:
                continue
            if cancelled:
                proc.terminate()
            else:
                proc.kill()
            try:
                err = proc.communicate(timeout=5)[1] or ""
            except subprocess.TimeoutExpired:
                proc.kill()
                err = proc.communicate()[1] or ""
            if not cancelled:
                raise subprocess.TimeoutExpired(proc.args, timeout_s, stderr=err) from None
            return err


def plan_numbers(settings: Settings) -> list[str]:
    from callrouter.numberplan import load_plan

    return [e.number for e in load_plan(settings.numberplan_path).entries]


def storm_specs(settings: Settings, count: int, hold: float, seed: int,
                unlisted_share: float = 0.05) -> list[CallSpec]:
    rng = random.Random(seed)
    numbers = plan_numbers(settings)
    specs = []
    for i in range(count):
        number = rng.choice(UNLISTED_SAMPLES) if rng.random() < unlisted_share else rng.choice(numbers)
        caller = f"13{rng.randrange(10**8, 10**9)}"
        specs.append(CallSpec(number, caller, hold))
    return specs


def storm(settings: Settings, rate: float, count: int, hold: float, seed: int = 1) -> TrunkReport:
    return run_calls(settings, storm_specs(settings, count, hold, seed), rate)
