"""Carry the lease's decisions out for one engine (several engines, on one Asterisk or
each connected to every node of a cluster: the AriClient is then a NodesClient, and every
request below goes to the node its id names).

Only the holder claims broadcast calls (``POST /events/claim``) and runs the queues; the
others stay connected and subscribed, claim nothing and ignore every event (the stasis
router asks ``acting``). On becoming the holder: the shared snapshot (waiting order,
original arrivals, seat states) becomes the ACD, then every channel the other engines'
applications hold is moved into this one and reconciled (calls.recovery.take_over).
On losing it: every call is dropped from memory, untouched in Asterisk.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from callrouter.acd import Acd
from callrouter.ari import AriClient, AriError, Event
from callrouter.calls.recovery import reconcile, take_over
from callrouter.calls.service import CallService
from callrouter.calls.snapshot import StateStore
from callrouter.config import ConfigError, Settings
from callrouter.ha.lease import Acquire, BecameLeader, LeaseLogic, Renew, Role, Step, SteppedDown
from callrouter.ha.redis_lease import LeaseErrors, RedisLease
from callrouter.logs import q
from callrouter.tasks import TaskOwner

log = logging.getLogger("callrouter.ha")

Restore = Callable[[dict[str, Any] | None], Acd]


class Leadership:
    def __init__(self, service: CallService, ari: AriClient, lease: RedisLease, state: StateStore,
                 restore: Restore, app_filter: str, ttl_ms: int,
                 clock: Callable[[], float] = time.monotonic, api_url: str = "") -> None:
        self.service = service
        self.api_url = api_url  # published while leading: where a standby sends the API's users
        self.ari = ari
        self.lease = lease
        self.state = state
        self.restore = restore
        self.app_filter = app_filter
        self.logic = LeaseLogic(ttl_ms / 1000)
        self.clock = clock
        self.tasks = TaskOwner("ha")
        # between winning the lease and having adopted every caller: claim nothing yet
        # (an arrival then would race the reconcile); the dialplan offers it again
        self.taking_over = False
        self.ready = False  # the leader's reconcile is done
        # channels moved in whose StasisStart had not come by the take-over's reconcile
        self.pending: set[str] = set()
        self._late: asyncio.Task[None] | None = None
        self.early: set[str] = set()
        self._leading: asyncio.Task[None] | None = None
        self._was_degraded = False
        self.figures: dict[str, float] = {"terms": 0, "took_over_s": 0.0, "claimed": 0, "claims_lost": 0}
        # run once the take-over's reconcile is done (the CEL import, recordings)
        self.after_take_over: Callable[[], None] | None = None
        # run before the shared state is restored: the files as they are now (the former
        # holder may have reloaded the lines or the number plan since this engine started)
        self.before_take_over: Callable[[], Awaitable[None]] | None = None
        service.acting = self.acting
        service.leg_tag = f"{lease.instance[-6:]}-"
        state.fence = self._fenced_set
        # a standby saves nothing (its empty state would be the newest on take-over)
        state.gate = self.acting
        # fencing towards Asterisk: nothing of a call is touched unless the lease is sure,
        # so requests a stalled former holder had under way fail instead of acting
        ari.gate = self.acting

    def acting(self) -> bool:
        return self.logic.may_act(self.clock())

    async def _fenced_set(self, key: str, value: str) -> bool:
        """The shared snapshot, written only under the current term. A standby has no
        state of its own to share: it writes nothing (and that is no refusal)."""
        if not self.acting():
            return True
        return await self.lease.fenced_set(key, value, self.logic.term)

    # ------------------------------------------------------------ broadcast claims
    def on_broadcast(self, event: Event) -> None:
        if not self.ready or self.taking_over or not self.acting():
            return
        channel = event.raw.get("channel") or {}
        channel_id = str(channel.get("id", ""))
        if channel_id:
            self.tasks.spawn(self._claim(channel_id), name=f"claim:{channel_id}")

    async def _claim(self, channel_id: str) -> None:
        try:
            won = await self.ari.claim(channel_id)
        except AriError as exc:
            log.warning("event=claim_failed channel=%s error=%s", channel_id, q(exc))
            return
        self.figures["claimed" if won else "claims_lost"] += 1

    def on_adopted(self, channel_id: str) -> None:
        """A channel moved in from another engine's application arrived: one the
        take-over's reconcile did not see yet is adopted by a reconcile of its own (one at
        a time; arrivals meanwhile join the next)."""
        if channel_id in self.service.calls or channel_id in self.service.legs:
            return
        if not self.ready:
            self.early.add(channel_id)  # the take-over's reconcile may have listed before it came
            return
        self.pending.discard(channel_id)
        if self._late is None or self._late.done():
            self._late = self.tasks.spawn(self._reconcile_late(), name="ha-late-adopt")

    async def _reconcile_late(self) -> None:
        await asyncio.sleep(0.05)
        log.info("event=late_adoption pending=%d", len(self.pending))
        await reconcile(self.service, pending=frozenset(self.pending))

    async def on_connected(self) -> bool:
        """The events socket (re)connected: reconcile only as the holder."""
        return self.acting() and self.ready

    # ------------------------------------------------------------ the lease loop
    async def run(self) -> None:
        every = self.logic.ttl_s / 6
        while True:
            for step in self.logic.tick(self.clock(), ready=self.ari.connected.is_set()):
                if isinstance(step, SteppedDown):
                    # cut off from Asterisk: hand the lease to a standby that is not
                    self._step_down(step)
                    await self._release(step.term)
                else:
                    await self._send(step)
            await asyncio.sleep(every)

    async def _send(self, step: Step) -> None:
        sent_at = self.clock()
        try:
            if isinstance(step, Acquire):
                outcome = self.logic.acquired(sent_at, await self.lease.acquire())
            elif isinstance(step, Renew):
                outcome = self.logic.renewed(sent_at, await self.lease.renew(step.term))
            else:
                return
        except LeaseErrors as exc:
            was_degraded = self.logic.degraded
            outcome = self.logic.unanswered(sent_at)
            if self.logic.degraded and not was_degraded:
                log.warning("event=lease_degraded term=%d error=%r: Redis does not answer; leading on",
                            self.logic.term, exc)
        else:
            if self.logic.role is Role.LEADER and not self.logic.degraded and self._was_degraded:
                log.info("event=lease_confirmed term=%d: Redis answers again", self.logic.term)
        self._was_degraded = self.logic.degraded
        for follow in outcome:
            if isinstance(follow, BecameLeader):
                # beside the lease loop: renewals go on while the take-over works
                self._leading = self.tasks.spawn(self._lead(follow.term, sent_at), name="ha-take-over")
            elif isinstance(follow, SteppedDown):
                self._step_down(follow)

    async def _lead(self, term: int, since: float) -> None:
        log.info("event=lease_taken term=%d app=%s", term, self.ari.app)
        self.taking_over, self.ready = True, False
        self.figures["terms"] += 1
        readable, saved = await self._shared_state()
        if not readable:
            # without the holder's state this engine would lead with no seats logged in:
            # give the lease back and try again later
            for follow in self.logic.step_down("shared state unreadable"):
                if isinstance(follow, SteppedDown):
                    self._step_down(follow)
            await self._release(term)
            self.taking_over = False
            return
        try:
            if self.before_take_over is not None:
                await self.before_take_over()
            self.service.step_down(self.restore(saved))
            self.early.clear()
            self.pending = await take_over(self.service, self.app_filter)
            self.ready = True
            await self._publish(term)
            for channel_id in self.early:
                self.on_adopted(channel_id)
            if self.after_take_over is not None:
                self.after_take_over()
        except (AriError, OSError) as exc:
            # Asterisk away: the events socket's reconnect reconciles (on_connected)
            log.warning("event=take_over_failed term=%d error=%s", term, q(exc))
            self.ready = True
        finally:
            self.taking_over = False
        self.figures["took_over_s"] = self.clock() - since
        log.info("event=leading term=%d took_s=%.3f calls=%d", term, self.figures["took_over_s"],
                 len(self.service.calls))

    async def _publish(self, term: int) -> None:
        """Say where the API of this term's holder is (under the term: a stalled former
        holder cannot overwrite it)."""
        info = json.dumps({"app": self.ari.app, "api": self.api_url, "term": term})
        try:
            await self.lease.fenced_set(self.lease.leader_key, info, term)
        except LeaseErrors as exc:
            log.warning("event=leader_not_published term=%d error=%r", term, exc)

    async def status(self) -> dict[str, Any]:
        """For /api/status: this engine's role and, on a standby, where the holder is."""
        if self.acting():
            return {"role": "leader", "term": self.logic.term, "ready": self.ready, "app": self.ari.app}
        out: dict[str, Any] = {"role": "standby", "app": self.ari.app, "leader": None}
        try:
            published = await asyncio.wait_for(self.lease.leader(), 0.5)
            out["leader"] = json.loads(published) if published else None
        except (*LeaseErrors, TimeoutError, ValueError) as exc:
            out["leader_unknown"] = type(exc).__name__
        return out

    async def _release(self, term: int) -> None:
        try:
            await self.lease.release(term)
            log.info("event=lease_released term=%d", term)
        except LeaseErrors as exc:
            log.warning("event=lease_not_released term=%d error=%r: a standby takes over once it expires", term, exc)

    async def _shared_state(self, attempts: int = 5) -> tuple[bool, dict[str, Any] | None]:
        """(readable, the holder's last state from Redis or None if there is none)."""
        for attempt in range(attempts):
            try:
                return True, await self.state.load(shared=True)
            except (*LeaseErrors, ValueError) as exc:
                log.warning("event=shared_state_unreadable attempt=%d error=%r", attempt + 1, exc)
                await asyncio.sleep(0.1)
        return False, None

    def _step_down(self, step: SteppedDown) -> None:
        for task in (self._leading, self._late):
            if task is not None and not task.done() and task is not asyncio.current_task():
                task.cancel()  # a take-over under way must not go on acting
        self.ready = False
        dropped = self.service.step_down(self.restore(None))
        log.warning("event=lease_lost term=%d reason=%s dropped_calls=%d", step.term, q(step.reason), dropped)

    async def close(self) -> None:
        """A clean stop: give the lease up so a standby takes over at once."""
        await self.tasks.shutdown(timeout=0.5)
        log.info("event=ha_counts %s", " ".join(f"{k}={v:g}" for k, v in self.figures.items()))
        if self.acting():
            await self._release(self.logic.term)
        await self.lease.close()


def check(settings: Settings) -> None:
    """Refuse settings under which this engine would lead and claim nothing."""
    if not settings.ha_app_filter:
        return
    try:
        matches = re.search(settings.ha_app_filter, settings.ari_app) is not None
    except re.error as exc:
        raise ConfigError(f"ha_app_filter {settings.ha_app_filter!r}: not a regular expression ({exc})") from exc
    if not matches:
        # every call would wait in the dialplan's hold
        raise ConfigError(f"ari_app {settings.ari_app!r} does not match ha_app_filter {settings.ha_app_filter!r}: "
                          "give each engine its own application name matching the filter")


def build(settings: Settings, service: CallService, ari: AriClient, state: StateStore, restore: Restore) -> Leadership:
    """The engine's leadership for ``settings.ha_app_filter`` (several engines)."""
    instance = f"{settings.ari_app}:{os.getpid()}:{secrets.token_hex(3)}"
    lease = RedisLease(settings.redis_url, settings.redis_prefix, instance, settings.ha_lease_ttl_ms)
    return Leadership(service, ari, lease, state, restore, settings.ha_app_filter, settings.ha_lease_ttl_ms,
                      api_url=settings.api_url)
