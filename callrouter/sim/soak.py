"""Soak traffic: hours of an ordinary day's calls, and what the system holds meanwhile.

Shared by ``scripts/bench_soak.py`` (an hour, start-versus-end figures) and
``tests/e2e/test_soak.py`` (ten minutes, resource counts asserted). The engine is started
by the caller (a benchmark engine or the e2e factory); this module places the calls
through the SIPp trunk, runs the seat softphones, and samples, from the outside:

- the engine's and Asterisk's RSS, threads and open files (``/proc/<pid>``);
- Asterisk's bridges and channels (ARI, :mod:`callrouter.sim.leftovers`);
- Redis ``used_memory`` (the whole server), the dispatch stream's length and memory;
- outbox rows sent and unsent, tickets and tickets still open (the ticket database).

The mix (:class:`SoakMix`): every caller is answered by the engine and hears the 17 s
greeting while a seat is sought. A share hang up during the greeting, a share are
impatient (they give up once the queue is long), the rest wait up to ``patience_s``.
26 seats (both lines' ten and the six overflow seats) answer after ``answer_delay_s``
and hang up after an exponential talk time; ``s110-01`` keys ``*9`` (the caller goes to
96345) and ``s110-02`` sends a SIP REFER to 96345 once answered: transfers. With the
defaults the seats can serve about 4 calls/s of the 5 offered, so waits build up and
most of the impatient fifth give up while waiting, some of them in a holding bridge
(after the greeting). A longer talk time (``talk_s``) overloads the lines instead: the
queue grows until the patient callers' ``patience_s`` bounds it.
"""

from __future__ import annotations

import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from callrouter.config import Settings
from callrouter.sim.leftovers import pbx_resources
from callrouter.sim.seats import SeatSims, SeatSpec, start_seats
from callrouter.sim.trunk import CallSpec, TrunkReport, run_calls
from callrouter.tickets import TicketStore
from callrouter.tickets.models import OutboxEvent, Ticket

SEATS_110 = tuple(f"s110-{i:02d}" for i in range(1, 11))
SEATS_96345 = tuple(f"s96345-{i:02d}" for i in range(1, 11))
POOL = tuple(f"ovf-{i:02d}" for i in range(1, 7))
ALL_SEATS = SEATS_110 + SEATS_96345 + POOL
NUMBERS_110 = ("110", "119", "120", "122")
NUMBERS_96345 = ("12345", "12315", "95598", "96345", "12333", "12369")
# lines.toml values of a soak (fast_lines): short wrap-up, overflow joins quickly
SOAK_LINES: dict[str, float] = {"wrap_up_s": 1, "calm_s": 5, "wait_threshold_s": 5}
GREETING_S = 17.0  # greeting-110/96345: callers join a holding bridge after it


@dataclass(frozen=True)
class SoakMix:
    rate: float = 5.0  # calls per second
    share_110: float = 0.4  # of the callers, dialling a 110-line number
    greeting_share: float = 0.1  # hang up 0.5-12 s after being answered (the greeting)
    impatient_share: float = 0.2  # give up 5-25 s after being answered unless a seat took them
    patience_s: float = 120.0  # the others hang up after this if no seat took them
    answer_delay_s: float = 1.0
    talk_s: float = 4.0  # mean (exponential)

    def __post_init__(self) -> None:
        if self.rate <= 0 or not 0 <= self.greeting_share + self.impatient_share <= 1:
            raise ValueError("need rate > 0 and greeting_share + impatient_share <= 1")

    def describe(self) -> str:
        return (f"{self.rate:g} calls/s, {self.share_110:.0%} to 110-line numbers; "
                f"{self.greeting_share:.0%} hang up 0.5-12 s after answer (greeting), "
                f"{self.impatient_share:.0%} give up after 5-25 s unless a seat took them, the rest "
                f"after {self.patience_s:g} s; 26 SIPp seats answer after {self.answer_delay_s:g} s and talk "
                f"exp. mean {self.talk_s:g} s; s110-01 transfers with *9, s110-02 with REFER to 96345; "
                f"wrap-up 1 s")


def soak_specs(mix: SoakMix, seconds: float, seed: int = 1) -> list[CallSpec]:
    """The callers of ``seconds`` of traffic at ``mix.rate``."""
    rng = random.Random(seed)
    specs = []
    for i in range(max(1, round(seconds * mix.rate))):
        numbers = NUMBERS_110 if rng.random() < mix.share_110 else NUMBERS_96345
        kind = rng.random()
        if kind < mix.greeting_share:
            hold = rng.uniform(0.5, 12.0)
        elif kind < mix.greeting_share + mix.impatient_share:
            hold = rng.uniform(5.0, 25.0)
        else:
            hold = mix.patience_s
        specs.append(CallSpec(rng.choice(numbers), f"139{i:08d}", round(hold, 2)))
    return specs


def soak_seats(mix: SoakMix) -> list[SeatSpec]:
    def spec(seat: str) -> SeatSpec:
        if seat == "s110-01":
            return SeatSpec(seat, answer_delay_s=mix.answer_delay_s, mode="transfer", xfer_digit="9")
        if seat == "s110-02":
            return SeatSpec(seat, answer_delay_s=mix.answer_delay_s, mode="refer", refer_to="96345")
        return SeatSpec(seat, answer_delay_s=mix.answer_delay_s, talk_s=mix.talk_s, talk_dist="exponential")
    return [spec(s) for s in ALL_SEATS]


# --- sampling ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ProcFigures:
    rss_mb: float
    threads: int
    fds: int


class SoakError(Exception):
    """The soak cannot go on (a process it watches is gone)."""


def proc_figures(pid: int, what: str = "process") -> ProcFigures:
    rss, threads = 0.0, 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except FileNotFoundError as exc:
        raise SoakError(f"{what} (pid {pid}) is gone") from exc
    return ProcFigures(round(rss, 1), threads, fds)


@dataclass
class Sample:
    t_s: float  # seconds since the soak began
    engine: ProcFigures
    asterisk: ProcFigures
    pbx: dict[str, int]  # PbxResources.summary()
    redis_used_mb: float
    stream_len: int
    stream_mb: float
    outbox_sent: int
    outbox_unsent: int
    tickets: int
    open_tickets: int

    def row(self) -> dict[str, Any]:
        return {"t_s": round(self.t_s, 1), "engine": self.engine.__dict__, "asterisk": self.asterisk.__dict__,
                **self.pbx, "redis_used_mb": self.redis_used_mb, "stream_len": self.stream_len,
                "stream_mb": self.stream_mb, "outbox_sent": self.outbox_sent, "outbox_unsent": self.outbox_unsent,
                "tickets": self.tickets, "open_tickets": self.open_tickets}


class Sampler:
    """Takes :class:`Sample` s of one engine, one Asterisk, one Redis stream, one database."""

    def __init__(self, settings: Settings, engine_pid: int, asterisk_pid: int, db_url: str, redis_url: str,
                 stream: str) -> None:
        import redis

        self.settings = settings
        self.engine_pid = engine_pid
        self.asterisk_pid = asterisk_pid
        self.store = TicketStore(db_url)
        self.redis = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=10)
        self.stream = stream
        self.t0 = time.monotonic()

    def close(self) -> None:
        self.store.close()
        self.redis.close()

    def counts(self) -> tuple[int, int, int, int]:
        """(outbox sent, outbox unsent, tickets, open tickets)."""
        with self.store.engine.connect() as conn:
            sent, total = conn.execute(select(func.count(OutboxEvent.sent_at), func.count()).select_from(OutboxEvent)).one()
            tickets, ended = conn.execute(select(func.count(), func.count(Ticket.ended_at)).select_from(Ticket)).one()
        return int(sent), int(total) - int(sent), int(tickets), int(tickets) - int(ended)

    def sample(self) -> Sample:
        info = self.redis.info("memory")
        stream_len = int(self.redis.xlen(self.stream))
        stream_bytes = (self.redis.memory_usage(self.stream, samples=0) or 0) if stream_len else 0
        sent, unsent, tickets, open_tickets = self.counts()
        engine, asterisk = proc_figures(self.engine_pid, "the engine"), proc_figures(self.asterisk_pid, "Asterisk")
        try:
            pbx = pbx_resources(self.settings).summary()
        except OSError as exc:
            raise SoakError(f"ARI does not answer ({exc})") from exc
        return Sample(t_s=time.monotonic() - self.t0, engine=engine, asterisk=asterisk, pbx=pbx,
                      redis_used_mb=round(int(info["used_memory"]) / 2**20, 1), stream_len=stream_len,
                      stream_mb=round(int(stream_bytes) / 2**20, 2), outbox_sent=sent, outbox_unsent=unsent,
                      tickets=tickets, open_tickets=open_tickets)


# --- the run ----------------------------------------------------------------------------
@dataclass
class SoakResult:
    specs: list[CallSpec]
    report: TrunkReport | None
    seats: list[dict[str, Any]]
    samples: list[Sample] = field(default_factory=list)
    traffic_s: float = 0.0  # the trunk's run: placing the calls, then the last ones ending
    placing_s: float = 0.0  # calls / rate
    aborted: str | None = None  # why the run stopped early (SoakError), else None

    def rtt_p99(self, first: bool, window_s: float = 300.0) -> float | None:
        """INVITE->200 p99 (ms) of the calls answered in the first/last ``window_s``.

        By position in SIPp's rtd trace (written as answers come, calls placed at a
        constant rate) rather than by its Date_ms column, whose unit and precision vary
        between SIPp builds.
        """
        from callrouter.sim.trunk import percentile

        if self.report is None or not self.report.rtt_samples or self.placing_s <= 0:
            return None
        rtts = [r for _, r in self.report.rtt_samples]
        n = max(1, math.ceil(len(rtts) * min(1.0, window_s / self.placing_s)))
        return percentile(rtts[:n] if first else rtts[-n:], 99)


def kill_child_sipp() -> None:
    """SIGKILL the SIPp processes this interpreter started (a trunk run left behind)."""
    me = os.getpid()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (proc / "cmdline").read_bytes().split(b"\0")[0]
        except (OSError, ValueError, IndexError):
            continue
        if ppid == me and cmd.endswith(b"sipp"):
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _unsettled(sampler: Sampler) -> bool:
    """A ticket still open, or an outbox row not yet marked sent: the relay marks what it
    published in one transaction a second, so the last close's row is marked up to a second
    after it is on the stream."""
    _, unsent, _, open_tickets = sampler.counts()
    return open_tickets > 0 or unsent > 0


def run_soak(settings: Settings, sampler: Sampler, specs: list[CallSpec], mix: SoakMix, *,
             sample_every_s: float = 60.0, seed: int = 1, settle_s: float = 60.0,
             login: Callable[[tuple[str, ...]], None] | None = None,
             on_sample: Callable[[Sample], None] | None = None) -> SoakResult:
    """Seats up (logged in through ``login``), ``specs`` placed at ``mix.rate``, a sample
    every ``sample_every_s`` and one before and after; after the trunk is done, up to
    ``settle_s`` for the last tickets to close and their outbox rows to be marked sent. Ends
    every process it started."""
    result = SoakResult(specs=specs, report=None, seats=[], placing_s=len(specs) / mix.rate)
    seats: SeatSims | None = None
    out: list[TrunkReport] = []
    errors: list[BaseException] = []

    def trunk() -> None:
        try:
            out.append(run_calls(settings, specs, rate=mix.rate))
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)

    def take() -> None:
        s = sampler.sample()
        result.samples.append(s)
        if on_sample is not None:
            on_sample(s)

    thread = threading.Thread(target=trunk, name="soak-trunk", daemon=True)
    try:
        seats = start_seats(settings, soak_seats(mix), seed=seed)
        if login is not None:
            login(ALL_SEATS)
        take()
        started = time.monotonic()
        thread.start()
        next_at = started + sample_every_s
        try:
            while thread.is_alive():
                thread.join(timeout=max(0.0, min(1.0, next_at - time.monotonic())))
                if time.monotonic() >= next_at:
                    take()
                    next_at += sample_every_s
        except SoakError as exc:
            result.aborted = f"{exc} after {time.monotonic() - started:.0f} s of traffic"
            result.traffic_s = time.monotonic() - started
            return result  # the finally below ends the seats and the trunk
        result.traffic_s = time.monotonic() - started
        if errors:
            raise errors[0]
        result.report = out[0] if out else None
        deadline = time.monotonic() + settle_s
        while time.monotonic() < deadline and _unsettled(sampler):
            time.sleep(1.0)
        take()
    finally:
        if seats is not None:
            result.seats = [r.to_json() for r in seats.stop()]
        kill_child_sipp()  # a trunk cut short (Ctrl-C, an error) leaves no caller behind
        thread.join(timeout=10)
    return result
