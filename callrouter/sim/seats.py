"""Simulated seat softphones: one SIPp process per seat, registered with Asterisk.

Each seat runs ``sip-sim/scenarios/seat-register.xml`` as SIPp's client scenario (REGISTER
with digest auth, refreshed before it expires, for as long as the process lives) and
``seat-answer.xml`` as its out-of-call scenario: every INVITE Asterisk sends to the
registered Contact starts a call there (ring, answer after a delay and hang up after a
drawn talk time; or ring until CANCEL; or 486 Busy). One process, one UDP port: the port
the seat registered from is the one Asterisk (rewrite_contact) sends calls to, and the
refresh never leaves a gap. On stop the process is terminated and the binding removed
with a one-shot REGISTER Expires: 0 from the same port.

Per-call outcomes come from the scenarios' <log> lines; passwords go to SIPp in a 0600
injection file, never on its command line. Every process is terminated on ``stop()``, at
interpreter exit (atexit) and, when started from the main thread, when this interpreter
dies (PR_SET_PDEATHSIG). Everything binds to 127.0.0.1 unless told otherwise.

Sync API: ``SeatSim`` / ``start_seats`` (Popen). Asyncio API: ``AsyncSeatSim`` /
``start_seats_async`` (asyncio subprocesses). CLI: ``add_seats_arguments`` +
``seats_main`` (``callrouter sim seats``). ``place_test_call`` / ``ari_test_call``
ring a seat from Asterisk through ARI, for checks and tests.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any, Literal, Self, get_args

from callrouter.config import Settings
from callrouter.sim.trunk import SimError, bind_failed, free_media_port, free_udp_port, scenario_path, sipp_binary

REGISTER_SCENARIO = "seat-register.xml"
ANSWER_SCENARIO = "seat-answer.xml"

Mode = Literal["answer", "no_answer", "busy", "transfer", "refer"]
TalkDist = Literal["exponential", "fixed"]
MODES: tuple[str, ...] = get_args(Mode)
TALK_DISTS: tuple[str, ...] = get_args(TalkDist)

DEFAULT_EXPIRES_S = 300
REFRESH_SHARE = 0.8  # re-REGISTER after this share of the Expires
STOP_GRACE_S = 5.0
REGISTER_TIMEOUT_S = 15.0

# call outcomes, as the scenario logs them; "ringing"/"talking" while open, "lost" if the
# process stopped (or the call broke) before the call ended
FINAL_OUTCOMES = ("completed", "completed_by_far_end", "cancelled", "rejected_486")


@dataclass(frozen=True)
class SeatSpec:
    seat: str
    answer_delay_s: float = 2.0
    talk_s: float = 30.0  # mean talk time; <= 0: never hang up, wait for the far end's BYE
    mode: Mode = "answer"
    talk_dist: TalkDist = "exponential"
    xfer_digit: str = "9"  # mode transfer: keys "*" then this digit once answered (*9: to 96345, *1: to 110)
    refer_to: str = "96345"  # mode refer: the number a blind transfer (SIP REFER) sends the caller to

    def __post_init__(self) -> None:
        if not self.seat or any(c in self.seat for c in ";\n\r\t @<>\""):
            raise SimError(f"seat {self.seat!r}: not a usable SIP user name")
        if self.mode not in MODES:
            raise SimError(f"seat {self.seat}: mode {self.mode!r}, use one of {', '.join(MODES)}")
        if self.talk_dist not in TALK_DISTS:
            raise SimError(f"seat {self.seat}: talk_dist {self.talk_dist!r}, use one of {', '.join(TALK_DISTS)}")
        if self.answer_delay_s < 0:
            raise SimError(f"seat {self.seat}: answer_delay_s must be >= 0")


@dataclass
class SeatCall:
    call_id: str
    offered_at: float
    outcome: str = "ringing"  # ringing | talking | completed | completed_by_far_end | cancelled | rejected_486 | lost
    answered_at: float | None = None
    ended_at: float | None = None

    @property
    def ring_s(self) -> float | None:
        end = self.answered_at if self.answered_at is not None else self.ended_at
        return None if end is None else round(end - self.offered_at, 3)

    @property
    def talk_s(self) -> float | None:
        if self.answered_at is None or self.ended_at is None:
            return None
        return round(self.ended_at - self.answered_at, 3)

    def to_json(self) -> dict[str, Any]:
        return {"call_id": self.call_id, "outcome": self.outcome, "offered_at": self.offered_at,
                "ring_s": self.ring_s, "talk_s": self.talk_s}


@dataclass
class SeatResult:
    seat: str
    mode: str
    port: int
    registrations: int = 0  # successful REGISTERs (first one and refreshes)
    register_failures: list[str] = field(default_factory=list)
    unregistered: bool = False
    calls: list[SeatCall] = field(default_factory=list)
    concurrent_offers: int = 0  # INVITEs that came while this seat already had a call
    running: bool = False
    sipp_exit: int | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def registered(self) -> bool:
        return self.registrations > 0 and not self.unregistered

    def count(self, *outcomes: str) -> int:
        return sum(1 for c in self.calls if c.outcome in outcomes)

    @property
    def offered(self) -> int:
        return len(self.calls)

    @property
    def answered(self) -> int:
        return sum(1 for c in self.calls if c.answered_at is not None)

    @property
    def completed(self) -> int:
        return self.count("completed", "completed_by_far_end")

    @property
    def cancelled(self) -> int:
        return self.count("cancelled")

    @property
    def rejected(self) -> int:
        return self.count("rejected_486")

    def to_json(self) -> dict[str, Any]:
        return {
            "seat": self.seat, "mode": self.mode, "port": self.port, "registered": self.registered,
            "registrations": self.registrations, "register_failures": self.register_failures,
            "unregistered": self.unregistered, "offered": self.offered, "answered": self.answered,
            "completed": self.completed, "completed_by_seat": self.count("completed"),
            "completed_by_far_end": self.count("completed_by_far_end"), "cancelled": self.cancelled,
            "rejected": self.rejected, "open": self.count("ringing", "talking"), "lost": self.count("lost"),
            "concurrent_offers": self.concurrent_offers, "running": self.running, "sipp_exit": self.sipp_exit,
            "calls": [c.to_json() for c in self.calls], "errors": self.errors[:20],
        }


def summary_json(results: Sequence[SeatResult], elapsed_s: float | None = None) -> dict[str, Any]:
    totals = {k: sum(int(r.to_json()[k]) for r in results)
              for k in ("offered", "answered", "completed", "completed_by_seat", "completed_by_far_end",
                        "cancelled", "rejected", "open", "lost", "concurrent_offers")}
    out: dict[str, Any] = {"seats": len(results), "registered_ok": sum(1 for r in results if r.registrations > 0),
                           **totals, "results": [r.to_json() for r in results]}
    if elapsed_s is not None:
        out["elapsed_s"] = round(elapsed_s, 2)
    return out


# ---------------------------------------------------------------------------------------
def _log_time(stamp: str) -> float:
    """SIPp's [timestamp] is 'date<TAB>time<TAB>epoch.usec': keep the epoch."""
    try:
        return float(stamp.split("\t")[-1])
    except ValueError:
        return 0.0


def parse_log(text: str, result: SeatResult) -> None:
    """Fold the scenario <log> lines (REG;... and CALL;...) into ``result``."""
    calls: dict[str, SeatCall] = {}
    for line in text.splitlines():
        parts = line.rstrip("\n").split(";")
        if len(parts) < 4:
            continue
        kind, subject, event, stamp = parts[0], parts[1], parts[2], ";".join(parts[3:])
        if kind == "REG":
            if event == "registered":
                result.registrations += 1
            elif event == "unregistered":
                result.unregistered = True
            elif event.startswith("failed"):
                result.register_failures.append(event.removeprefix("failed_") or "failed")
        elif kind == "CALL":
            at = _log_time(stamp)
            call = calls.get(subject)
            if event == "offered" or call is None:
                if call is None and any(c.outcome in ("ringing", "talking") for c in calls.values()):
                    result.concurrent_offers += 1
                call = calls.setdefault(subject, SeatCall(subject, at))
            if event == "answered":
                call.answered_at, call.outcome = at, "talking"
            elif event in FINAL_OUTCOMES:
                call.ended_at, call.outcome = at, event
    result.calls = sorted(calls.values(), key=lambda c: c.offered_at)


_NOISE = ("out-of-call", "The following events occurred", "Resolving remote host", "GSL_RNG_SEED=")


def _tail(path: Path, lines: int = 20) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    keep = [ln.strip() for ln in text.splitlines()
            if ln.strip() and not any(noise in ln for noise in _NOISE)]
    return keep[-lines:]


def _guarded(cmd: list[str]) -> list[str]:
    """Run ``cmd`` so that it gets SIGTERM when this interpreter dies (PR_SET_PDEATHSIG,
    via util-linux setpriv). PDEATHSIG fires when the creating *thread* ends, so only
    commands started from the main thread are tied to it."""
    setpriv = shutil.which("setpriv")
    if setpriv and sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread():
        return [setpriv, "--pdeathsig", "TERM", "--", *cmd]
    return cmd


# every seat with a process or a binding still to remove: cleaned up at interpreter exit
_LIVE: set[_SeatBase] = set()
_LIVE_LOCK = threading.Lock()


def _cleanup_at_exit() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for seat in live:
        with contextlib.suppress(Exception):
            seat._shutdown_at_exit()


atexit.register(_cleanup_at_exit)


class _SeatBase:
    """What the sync and asyncio seats share: files, SIPp command lines, results."""

    def __init__(self, settings: Settings, spec: SeatSpec, *, local_ip: str = "127.0.0.1", port: int | None = None,
                 target: str | None = None, expires_s: int = DEFAULT_EXPIRES_S, seed: int | None = None,
                 keep_logs: bool = False) -> None:
        if expires_s < 1:
            raise SimError("expires_s must be >= 1 (Asterisk's seat AORs want at least 30)")
        self.settings = settings
        self.spec = spec
        self.local_ip = local_ip
        self.target = target or f"{settings.sip_bind}:{settings.sip_port}"
        self.expires_s = expires_s
        self.seed = seed
        self.keep_logs = keep_logs
        self.port = port or 0
        self.workdir: Path | None = None
        self._sipp = ""
        self._stderr: IO[bytes] | None = None
        self._final: SeatResult | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec.seat} {self.local_ip}:{self.port} {self.spec.mode}>"

    # --- files and command lines ------------------------------------------------------
    def _password(self) -> str:
        password = self.settings.secrets().get(f"seat:{self.spec.seat}")
        if not password:
            raise SimError(f"{self.spec.seat}: no password in {self.settings.secrets_path}; is it a seat in "
                           "queues/lines.toml, and has `callrouter asterisk up` run?")
        return password

    def _prepare(self) -> None:
        self._sipp = sipp_binary()
        scenario_path(self.settings, REGISTER_SCENARIO)
        scenario_path(self.settings, ANSWER_SCENARIO)
        password = self._password()
        self.workdir = Path(tempfile.mkdtemp(prefix=f"callrouter-seat-{self.spec.seat}-"))  # mode 0700
        fd = os.open(self.workdir / "seat.csv", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"SEQUENTIAL\n{self.spec.seat};{password}\n")
        if not self.port:
            self.port = free_udp_port(self.local_ip)

    def _common(self, log_name: str, err_name: str) -> list[str]:
        assert self.workdir is not None
        return ["-inf", str(self.workdir / "seat.csv"), "-key", "seat", self.spec.seat,
                # -bind_local: SIP on local_ip only; -ci: SIPp's UDP control socket (8888+)
                # too, it would listen on every address otherwise
                "-i", self.local_ip, "-p", str(self.port), "-bind_local", "-ci", self.local_ip,
                # media ports of its own (-mp and the three after it, bind-tested): SIPp's
                # default (6000 and up) races between seats started together
                "-mp", str(free_media_port(self.local_ip)),
                "-t", "u1", "-nostdin",
                "-trace_logs", "-log_file", str(self.workdir / log_name),
                "-trace_err", "-error_file", str(self.workdir / err_name)]

    def serve_command(self) -> list[str]:
        """The long-running process: REGISTER + refresh, calls as out-of-call scenario."""
        spec = self.spec
        refresh_ms = max(1000, int(self.expires_s * 1000 * REFRESH_SHARE))
        return [self._sipp, self.target,
                "-sf", str(scenario_path(self.settings, REGISTER_SCENARIO)),
                "-oocsf", str(scenario_path(self.settings, ANSWER_SCENARIO)),
                *self._common("seat.log", "errors.log"),
                "-key", "expires", str(self.expires_s), "-key", "refresh_ms", str(refresh_ms),
                "-key", "mode", spec.mode, "-key", "answer_ms", str(round(spec.answer_delay_s * 1000)),
                "-key", "talk_ms", str(round(spec.talk_s * 1000) if spec.talk_s > 0 else 0),
                "-key", "talk_dist", spec.talk_dist, "-key", "xfer_digit", spec.xfer_digit,
                "-key", "refer_to", spec.refer_to,
                "-m", "1", "-aa"]

    def register_command(self, expires_s: int) -> list[str]:
        """One REGISTER (Expires 0: remove the binding) and exit."""
        return [self._sipp, self.target, "-sf", str(scenario_path(self.settings, REGISTER_SCENARIO)),
                *self._common("register.log", "register-errors.log"),
                "-key", "expires", str(expires_s), "-key", "refresh_ms", "0", "-m", "1",
                "-timeout", "20s"]

    def _env(self) -> dict[str, str]:
        # SIPp draws talk times with GSL, whose default seed is fixed: without a seed of
        # its own every seat would draw the same sequence
        seed = self.seed if self.seed is not None else random.SystemRandom().randrange(1, 2**31)
        return {**os.environ, "GSL_RNG_SEED": str(seed)}

    def _open_stderr(self) -> IO[bytes]:
        assert self.workdir is not None
        self._stderr = (self.workdir / "stderr.txt").open("wb")
        return self._stderr

    def _log_text(self, name: str = "seat.log") -> str:
        if self.workdir is None:
            return ""
        try:
            return (self.workdir / name).read_text(errors="replace")
        except OSError:
            return ""

    # --- results ----------------------------------------------------------------------
    def _returncode(self) -> int | None:
        raise NotImplementedError

    def _alive(self) -> bool:
        raise NotImplementedError

    def result(self) -> SeatResult:
        """What the seat did so far (final after ``stop()``)."""
        if self._final is not None:
            return self._final
        res = SeatResult(self.spec.seat, self.spec.mode, self.port)
        parse_log(self._log_text(), res)
        res.running = self._alive()
        res.sipp_exit = None if res.running else self._returncode()
        if self.workdir is not None:
            res.errors = _tail(self.workdir / "errors.log") + _tail(self.workdir / "stderr.txt", 5)
        return res

    def _registration_state(self) -> str | None:
        """'registered', 'failed_<why>', 'exited' or None (still waiting)."""
        res = SeatResult(self.spec.seat, self.spec.mode, self.port)
        parse_log(self._log_text(), res)
        if res.registrations:
            return "registered"
        if res.register_failures:
            return f"failed_{res.register_failures[0]}"
        if not self._alive():
            return "exited"
        return None

    def _start_error(self, state: str) -> SimError:
        detail = ""
        if self.workdir is not None:
            detail = "; ".join((_tail(self.workdir / "stderr.txt", 5) + _tail(self.workdir / "errors.log", 5))[-6:])
        return SimError(f"{self.spec.seat}: REGISTER did not succeed ({state}) from {self.local_ip}:{self.port} "
                        f"to {self.target}{': ' + detail if detail else ''}")

    def _finish(self, unregister_log: str) -> SeatResult:
        res = self.result()
        res.running = False
        res.sipp_exit = self._returncode()
        for call in res.calls:
            if call.outcome in ("ringing", "talking"):
                call.outcome = "lost"
        if unregister_log:
            extra = SeatResult(res.seat, res.mode, res.port)
            parse_log(unregister_log, extra)
            res.unregistered = extra.unregistered
            res.register_failures += [f"unregister_{f}" for f in extra.register_failures]
        self._final = res
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        if self.workdir is not None and not self.keep_logs:
            shutil.rmtree(self.workdir, ignore_errors=True)
        with _LIVE_LOCK:
            _LIVE.discard(self)
        return res

    def _begin_unregister(self) -> subprocess.Popen[bytes] | None:
        if self.workdir is None or not self.port:
            return None
        return subprocess.Popen(_guarded(self.register_command(0)), cwd=self.workdir, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def _end_unregister(self, proc: subprocess.Popen[bytes], timeout: float = 25.0) -> str:
        try:
            proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return self._log_text("register.log")

    def _unregister_sync(self) -> str:
        proc = self._begin_unregister()
        if proc is None:
            return ""
        try:
            return self._end_unregister(proc)
        except subprocess.TimeoutExpired:
            return ""

    def _had_binding(self) -> bool:
        return ";registered;" in self._log_text()

    def _shutdown_at_exit(self) -> None:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------
class SeatSim(_SeatBase):
    """One seat softphone as a background SIPp process (subprocess.Popen)."""

    proc: subprocess.Popen[bytes] | None = None

    def start(self, *, wait: bool = True, timeout: float = REGISTER_TIMEOUT_S) -> Self:
        self.launch()
        if wait:
            self.wait_registered(timeout)
        return self

    def launch(self) -> None:
        if self.proc is not None:
            raise SimError(f"{self.spec.seat}: already started")
        self._prepare()
        assert self.workdir is not None
        with _LIVE_LOCK:
            _LIVE.add(self)
        self.proc = subprocess.Popen(_guarded(self.serve_command()), cwd=self.workdir, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self._open_stderr(), env=self._env(),
                                     start_new_session=True)

    def wait_registered(self, timeout: float = REGISTER_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while (state := self._registration_state()) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if state != "registered":
            err = self._start_error(state or "timeout")
            self.stop(unregister=False)
            raise err

    def _alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def _terminate(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_GRACE_S)

    def stop(self, *, unregister: bool = True) -> SeatResult:
        """Terminate SIPp, then remove the binding (REGISTER Expires: 0). Idempotent."""
        if self._final is not None:
            return self._final
        log = ""
        try:
            self._terminate()
            if unregister and self._had_binding():
                log = self._unregister_sync()
        finally:  # also when interrupted: close files, remove the directory, forget the seat
            result = self._finish(log)
        return result

    def _shutdown_at_exit(self) -> None:
        self.stop()

    def __enter__(self) -> Self:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SeatSims:
    """Several seats started together (``start_seats``); a context manager."""

    def __init__(self, seats: list[SeatSim]) -> None:
        self.seats = seats
        self.started_at = time.monotonic()

    def __getitem__(self, seat: str) -> SeatSim:
        for s in self.seats:
            if s.spec.seat == seat:
                return s
        raise KeyError(seat)

    def results(self) -> list[SeatResult]:
        return [s.result() for s in self.seats]

    def stop(self, *, unregister: bool = True) -> list[SeatResult]:
        """Terminate every seat, then remove all the bindings at once. Idempotent."""
        pending = [s for s in self.seats if s._final is None]
        procs: dict[SeatSim, subprocess.Popen[bytes] | None] = {}
        logs: dict[SeatSim, str] = {}
        try:
            for s in pending:  # SIGTERM to all, then wait for each
                if s.proc is not None and s.proc.poll() is None:
                    s.proc.terminate()
            for s in pending:
                with contextlib.suppress(Exception):
                    s._terminate()
            if unregister:
                procs = {s: s._begin_unregister() for s in pending if s._had_binding()}
                for s, proc in procs.items():
                    if proc is not None:
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            logs[s] = s._end_unregister(proc)
        finally:
            for proc in procs.values():
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait()
            for s in pending:
                s._finish(logs.get(s, ""))
        return [s.result() for s in self.seats]

    def summary(self) -> dict[str, Any]:
        return summary_json(self.results(), time.monotonic() - self.started_at)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _seed_for(seed: int | None, index: int) -> int | None:
    return None if seed is None else seed + index


def start_seats(settings: Settings, specs: Sequence[SeatSpec], *, expires_s: int = DEFAULT_EXPIRES_S,
                seed: int | None = None, local_ip: str = "127.0.0.1", target: str | None = None,
                timeout: float = REGISTER_TIMEOUT_S, keep_logs: bool = False) -> SeatSims:
    """Start one softphone per spec and wait until every one is registered.

    If any fails to register, all are stopped and SimError names the first failure.
    ``seed`` makes the talk-time draws repeatable (seat i uses seed + i).
    """
    names = [s.seat for s in specs]
    if len(set(names)) != len(names):
        raise SimError(f"a seat may run only once: {names}")
    seats = [SeatSim(settings, spec, local_ip=local_ip, target=target, expires_s=expires_s,
                     seed=_seed_for(seed, i), keep_logs=keep_logs) for i, spec in enumerate(specs)]
    group = SeatSims(seats)
    try:
        for s in seats:
            s.launch()
        deadline = time.monotonic() + timeout
        for i, s in enumerate(seats):
            for attempt in range(3):
                try:
                    s.wait_registered(max(0.1, deadline - time.monotonic()))
                    break
                except SimError as exc:
                    # a port taken between our bind test and SIPp's bind: again, new ports
                    if attempt == 2 or not bind_failed(str(exc)):
                        raise
                    s = seats[i] = SeatSim(settings, s.spec, local_ip=local_ip, target=target, expires_s=expires_s,
                                           seed=_seed_for(seed, i), keep_logs=keep_logs)
                    s.launch()
    except BaseException:
        group.stop()
        raise
    group.started_at = time.monotonic()
    return group


# ---------------------------------------------------------------------------------------
class AsyncSeatSim(_SeatBase):
    """One seat softphone as an asyncio subprocess."""

    aproc: asyncio.subprocess.Process | None = None

    async def start(self, *, wait: bool = True, timeout: float = REGISTER_TIMEOUT_S) -> Self:
        await self.launch()
        if wait:
            await self.wait_registered(timeout)
        return self

    async def launch(self) -> None:
        if self.aproc is not None:
            raise SimError(f"{self.spec.seat}: already started")
        await asyncio.to_thread(self._prepare)  # may install SIPp (apt-get)
        assert self.workdir is not None
        with _LIVE_LOCK:
            _LIVE.add(self)
        self.aproc = await asyncio.create_subprocess_exec(
            *_guarded(self.serve_command()), cwd=self.workdir, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=self._open_stderr(), env=self._env(), start_new_session=True)

    async def wait_registered(self, timeout: float = REGISTER_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while (state := self._registration_state()) is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if state != "registered":
            err = self._start_error(state or "timeout")
            await self.stop(unregister=False)
            raise err

    def _alive(self) -> bool:
        return self.aproc is not None and self.aproc.returncode is None

    def _returncode(self) -> int | None:
        return None if self.aproc is None else self.aproc.returncode

    async def _terminate(self) -> None:
        if self.aproc is None or self.aproc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.aproc.terminate()
        try:
            await asyncio.wait_for(self.aproc.wait(), STOP_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.aproc.kill()
            await self.aproc.wait()

    async def stop(self, *, unregister: bool = True) -> SeatResult:
        if self._final is not None:
            return self._final
        log = ""
        try:
            await self._terminate()
            if unregister and self._had_binding() and self.workdir is not None:
                proc = await asyncio.create_subprocess_exec(
                    *_guarded(self.register_command(0)), cwd=self.workdir, stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
                try:
                    await asyncio.wait_for(proc.wait(), 25)
                except BaseException:  # timed out or cancelled: leave no process behind
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    with contextlib.suppress(BaseException):
                        await asyncio.shield(proc.wait())
                    raise
                log = self._log_text("register.log")
        except TimeoutError:
            pass
        finally:
            result = self._finish(log)
        return result

    def _shutdown_at_exit(self) -> None:
        # the event loop is gone: signal the process by pid and reap it ourselves
        proc = self.aproc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_S
            while time.monotonic() < deadline:
                try:
                    pid, _ = os.waitpid(proc.pid, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid:
                    break
                time.sleep(0.05)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
        self._finish(self._unregister_sync() if self._had_binding() else "")

    async def __aenter__(self) -> Self:
        if self.aproc is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class AsyncSeatSims:
    def __init__(self, seats: list[AsyncSeatSim]) -> None:
        self.seats = seats
        self.started_at = time.monotonic()

    def __getitem__(self, seat: str) -> AsyncSeatSim:
        for s in self.seats:
            if s.spec.seat == seat:
                return s
        raise KeyError(seat)

    def results(self) -> list[SeatResult]:
        return [s.result() for s in self.seats]

    async def stop(self, *, unregister: bool = True) -> list[SeatResult]:
        return list(await asyncio.gather(*(s.stop(unregister=unregister) for s in self.seats)))

    def summary(self) -> dict[str, Any]:
        return summary_json(self.results(), time.monotonic() - self.started_at)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def start_seats_async(settings: Settings, specs: Sequence[SeatSpec], *, expires_s: int = DEFAULT_EXPIRES_S,
                            seed: int | None = None, local_ip: str = "127.0.0.1", target: str | None = None,
                            timeout: float = REGISTER_TIMEOUT_S, keep_logs: bool = False) -> AsyncSeatSims:
    """``start_seats`` for asyncio callers."""
    names = [s.seat for s in specs]
    if len(set(names)) != len(names):
        raise SimError(f"a seat may run only once: {names}")
    seats = [AsyncSeatSim(settings, spec, local_ip=local_ip, target=target, expires_s=expires_s,
                          seed=_seed_for(seed, i), keep_logs=keep_logs) for i, spec in enumerate(specs)]
    group = AsyncSeatSims(seats)
    try:
        for s in seats:
            await s.launch()
        await asyncio.gather(*(s.wait_registered(timeout) for s in seats))
    except BaseException:
        await group.stop()
        raise
    group.started_at = time.monotonic()
    return group


# ---------------------------------------------------------------------------------------
@dataclass
class TestCall:
    """A call Asterisk placed to a seat through ARI (``ari_test_call``)."""

    __test__ = False  # not a pytest test class

    seat: str
    channel_id: str
    answered: bool
    cause: int | None
    cause_txt: str
    hung_up_by: str  # seat | asterisk | unanswered
    ring_s: float | None
    talk_s: float | None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


async def ari_test_call(settings: Settings, seat: str, *, ring_timeout_s: int = 30, hold_s: float | None = None,
                        play: str | None = "sound:demo-congrats", timeout_s: float = 120.0) -> TestCall:
    """Ring ``PJSIP/<seat>`` from Asterisk and follow the call to its end.

    The channel goes to a Stasis application of its own (never the engine's). Once
    answered it plays ``play``; Asterisk hangs up after ``hold_s`` (None: only when the
    seat does, or at ``timeout_s``). Needs nothing but ARI (unlike `channel originate`,
    which needs res_clioriginate).
    """
    import aiohttp

    app = f"seatsim-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    base = settings.ari_url.rstrip("/")
    ws_url = base.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + f"/events?app={app}"
    token = base64.b64encode(f"{settings.ari_user}:{settings.ari_password}".encode()).decode()
    headers = {"Authorization": f"Basic {token}"}
    started = time.monotonic()
    answered_at: float | None = None
    ended_at: float | None = None
    cause: int | None = None
    cause_txt = ""
    we_hung_up = False
    async with (aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=15)) as http,
                http.ws_connect(ws_url) as ws):
        async with http.post(f"{base}/channels", params={
                "endpoint": f"PJSIP/{seat}", "app": app, "timeout": str(ring_timeout_s),
                "callerId": "seatsim <900>"}) as resp:
            body = await resp.text()
            if resp.status >= 300:
                raise SimError(f"ARI originate to {seat}: {resp.status} {body}")
            channel_id = str(json.loads(body)["id"])

        async def hang_up() -> None:
            nonlocal we_hung_up
            we_hung_up = True
            async with http.delete(f"{base}/channels/{channel_id}"):
                pass

        hold_deadline: float | None = None
        deadline = started + timeout_s
        try:
            while ended_at is None:
                now = time.monotonic()
                wake = min(deadline, hold_deadline) if hold_deadline is not None else deadline
                if now >= wake:
                    if we_hung_up:
                        break  # asked, but no ChannelDestroyed: give up
                    await hang_up()
                    deadline = now + 10
                    hold_deadline = None
                    continue
                try:
                    # short slices: the deadlines are checked whatever the socket does
                    msg = await ws.receive(timeout=min(1.0, wake - now))
                except TimeoutError:
                    continue
                if msg.type != aiohttp.WSMsgType.TEXT:
                    if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        raise SimError(f"ARI events socket closed during the call to {seat}")
                    continue
                event = json.loads(msg.data)
                chan = event.get("channel") or {}
                if chan.get("id") != channel_id:
                    continue
                if event.get("type") == "StasisStart":
                    answered_at = time.monotonic()
                    if play:
                        async with http.post(f"{base}/channels/{channel_id}/play", params={"media": play}):
                            pass
                    if hold_s is not None:
                        hold_deadline = answered_at + hold_s
                elif event.get("type") == "ChannelDestroyed":
                    ended_at = time.monotonic()
                    cause = int(event.get("cause", 0))
                    cause_txt = str(event.get("cause_txt", ""))
        finally:
            if ended_at is None and not we_hung_up:
                with contextlib.suppress(Exception):
                    await hang_up()
    answered = answered_at is not None
    return TestCall(
        seat=seat, channel_id=channel_id, answered=answered, cause=cause, cause_txt=cause_txt,
        hung_up_by=("asterisk" if we_hung_up else "seat") if answered else "unanswered",
        ring_s=round((answered_at or ended_at or time.monotonic()) - started, 3),
        talk_s=round(ended_at - answered_at, 3) if answered_at is not None and ended_at is not None else None)


def place_test_call(settings: Settings, seat: str, **kwargs: Any) -> TestCall:
    """``ari_test_call`` for sync callers (runs its own event loop)."""
    return asyncio.run(ari_test_call(settings, seat, **kwargs))


def cli_originate(settings: Settings, seat: str, application: str = "Playback",
                  data: str = "demo-congrats") -> None:
    """`channel originate PJSIP/<seat> application ...` on the Asterisk CLI (30 s ring
    timeout, fixed by Asterisk). Needs res_clioriginate.so loaded."""
    from callrouter.provision.asterisk import rx, select_target

    out = rx(select_target(settings), f"channel originate PJSIP/{seat} application {application} {data}".strip())
    text = (out.stdout + out.stderr).strip()
    if out.returncode != 0 or "No such command" in text:
        raise SimError(f"channel originate to {seat} failed: {text or out.returncode} "
                       "(is res_clioriginate.so loaded?)")


def cli_originate_available(settings: Settings) -> bool:
    from callrouter.provision.asterisk import rx, select_target

    out = rx(select_target(settings), "core show help channel originate")
    return out.returncode == 0 and "No such command" not in out.stdout and "channel originate" in out.stdout


# ---------------------------------------------------------------------------------------
def add_seats_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `callrouter sim seats`."""
    p.add_argument("seats", nargs="+", metavar="SEAT", help="seat ids, e.g. s110-01 (queues/lines.toml)")
    p.add_argument("--answer-delay", type=float, default=2.0, metavar="S", help="ringing before answer (s)")
    p.add_argument("--talk", type=float, default=30.0, metavar="S",
                   help="mean talk time before the seat hangs up (s); 0: wait for the far end")
    p.add_argument("--talk-dist", choices=TALK_DISTS, default="exponential",
                   help="talk time per call: exponential with mean --talk, or fixed")
    p.add_argument("--mode", choices=MODES, default="answer",
                   help="answer | no_answer (ring until cancelled) | busy (486)")
    p.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S s (default: Ctrl-C)")
    p.add_argument("--expires", type=int, default=DEFAULT_EXPIRES_S, metavar="S",
                   help="REGISTER Expires; refreshed after 80 %%")
    p.add_argument("--seed", type=int, default=None, help="repeatable talk-time draws")
    p.add_argument("--keep-logs", action="store_true", help="keep each seat's SIPp files (path in stderr)")


def seats_main(args: argparse.Namespace, settings: Settings) -> int:
    """`callrouter sim seats SEAT... [--answer-delay S] [--talk S] [--mode M] [--duration S]`.

    Registers the seats, serves calls until Ctrl-C / SIGTERM / --duration, unregisters
    and prints a JSON summary on stdout. Exit 0 when every seat registered and was
    unregistered, 1 otherwise, 2 when the seats could not start.
    """
    try:
        specs = [SeatSpec(seat, args.answer_delay, args.talk, args.mode, args.talk_dist) for seat in args.seats]
        group = start_seats(settings, specs, expires_s=args.expires, seed=args.seed, keep_logs=args.keep_logs)
    except SimError as exc:
        print(f"callrouter: {exc}", file=sys.stderr)
        return 2

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term) if threading.current_thread() is threading.main_thread() else None
    started = time.monotonic()
    try:
        ports = ", ".join(f"{s.spec.seat}@{s.local_ip}:{s.port}" for s in group.seats)
        print(f"seats registered: {ports}; {'Ctrl-C to stop' if args.duration is None else f'{args.duration:g} s'}",
              file=sys.stderr)
        if args.keep_logs:
            for s in group.seats:
                print(f"{s.spec.seat}: {s.workdir}", file=sys.stderr)
        end = None if args.duration is None else started + args.duration
        with contextlib.suppress(KeyboardInterrupt):
            while end is None or time.monotonic() < end:
                time.sleep(0.2 if end is None else max(0.0, min(0.2, end - time.monotonic())))
                dead = [s.spec.seat for s in group.seats if not s._alive()]
                if dead:
                    print(f"callrouter: SIPp ended for {', '.join(dead)}", file=sys.stderr)
                    break
    finally:
        if previous is not None:  # a second SIGTERM must not cut the unregistering short
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            results = group.stop()
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    out = summary_json(results, time.monotonic() - started)
    json.dump(out, sys.stdout, ensure_ascii=False, indent=2 if sys.stdout.isatty() else None)
    sys.stdout.write("\n")
    ok = all(r.registrations > 0 and r.unregistered for r in results)
    return 0 if ok else 1


def iter_contacts(settings: Settings) -> Iterator[str]:
    """The Contact lines of `pjsip show contacts` ("aor/uri")."""
    from callrouter.provision.asterisk import rx, select_target

    for line in rx(select_target(settings), "pjsip show contacts").stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "Contact:" and "/" in parts[1] and not parts[1].startswith("<"):
            yield parts[1]
