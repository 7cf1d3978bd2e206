"""Who may make the queue decisions: the lease's rules, without I/O or a clock.

One lease for both lines: they share the overflow seats and the 110 -> 96345 transfer,
so they are one decision domain. The holder renews every third of the ttl; a renewal
counts from the moment it was *sent*, so the holder acts only while
``confirmed_sent_at + ttl`` lies ahead. A holder stalled past that (SIGSTOP, a frozen
VM) acts again only after a renewal sent after the stall says the lease is still its
own. An answer "not yours" steps it down at once.

A holder that cannot reach Asterisk (its ARI connection down for a whole ttl: a
partition between it and the PBX, not a blip) gives the lease up, so a standby that does
reach Asterisk takes the calls; it tries again only once connected.

Redis unreachable (no answer at all, not "not yours"): nobody can take the lease, so a
holder whose lease was still valid when Redis vanished keeps leading (calls go on as
with one engine), and a standby never takes over. A holder stalled past its ttl while
Redis is away stays idle until Redis answers (a double fault; the dialplan holds the
callers meanwhile).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Role(enum.Enum):
    STANDBY = "standby"
    LEADER = "leader"


@dataclass(frozen=True)
class Acquire:
    """Try to take the lease (SET NX PX, then a new term)."""


@dataclass(frozen=True)
class Renew:
    term: int


@dataclass(frozen=True)
class BecameLeader:
    term: int


@dataclass(frozen=True)
class SteppedDown:
    term: int
    reason: str


Step = Acquire | Renew | BecameLeader | SteppedDown


@dataclass
class LeaseLogic:
    ttl_s: float
    role: Role = Role.STANDBY
    term: int = 0
    valid_until: float = float("-inf")  # confirmed send time + ttl
    # Redis stopped answering while the lease was valid: keep leading until it answers
    degraded: bool = False
    last_attempt: float = float("-inf")
    in_flight: bool = False
    last_tick: float = float("-inf")
    # a standby that found Redis away tries again only a ttl after: when Redis returns, the
    # holder (renewing every third of it) gets its lease back first, with no take-over
    hold_off_until: float = float("-inf")
    # a holder's ARI connection down since (None while up)
    unready_since: float | None = None

    @property
    def every_s(self) -> float:
        return self.ttl_s / 3

    def may_act(self, now: float) -> bool:
        return self.role is Role.LEADER and (now < self.valid_until or self.degraded)

    def tick(self, now: float, *, ready: bool = True) -> list[Step]:
        """What to send now. ``ready``: the engine could lead (ARI connected)."""
        if now - self.last_tick > self.ttl_s:
            # this process stood still longer than a lease lasts (stopped, frozen): what it
            # believed about Redis is stale too; only an answer lets it act again
            self.degraded = False
        self.last_tick = now
        if self.role is Role.LEADER:
            if ready:
                self.unready_since = None
            elif self.unready_since is None:
                self.unready_since = now
            elif now - self.unready_since >= self.ttl_s:
                return self.step_down("ARI unreachable for a ttl")
        if self.in_flight or now - self.last_attempt < self.every_s:
            return []
        if self.role is Role.LEADER:
            self.last_attempt, self.in_flight = now, True
            return [Renew(self.term)]
        if not ready or now < self.hold_off_until:
            return []
        self.last_attempt, self.in_flight = now, True
        return [Acquire()]

    def acquired(self, sent_at: float, term: int | None) -> list[Step]:
        """The answer to Acquire: the new term, or None (held by another)."""
        self.in_flight = False
        if term is None or self.role is Role.LEADER:
            return []
        self.role, self.term, self.degraded = Role.LEADER, term, False
        self.valid_until = sent_at + self.ttl_s
        return [BecameLeader(term)]

    def renewed(self, sent_at: float, ours: bool) -> list[Step]:
        """The answer to Renew: still ours, or not (expired and taken, or never ours)."""
        self.in_flight = False
        if self.role is not Role.LEADER:
            return []
        if ours:
            self.valid_until = max(self.valid_until, sent_at + self.ttl_s)
            self.degraded = False
            return []
        return self.step_down("lease is not ours")

    def unanswered(self, sent_at: float) -> list[Step]:
        """Redis did not answer (unreachable, timeout)."""
        self.in_flight = False
        if self.role is Role.LEADER and sent_at < self.valid_until:
            self.degraded = True  # nobody can take it without Redis: go on leading
        elif self.role is Role.STANDBY:
            self.hold_off_until = sent_at + self.ttl_s
        return []

    def step_down(self, reason: str) -> list[Step]:
        if self.role is not Role.LEADER:
            return []
        term = self.term
        self.role, self.degraded, self.valid_until = Role.STANDBY, False, float("-inf")
        self.unready_since = None
        # a fresh attempt only after a full period: the new holder settles first
        return [SteppedDown(term, reason)]
