"""Simulated seats' follow-up calls (回访), over the real API.

A 96345 ticket whose unit reported back waits on the seats' follow-up list until a seat
calls the citizen back. Each simulated seat reads its own list with its agent token
(``GET /api/follow-ups``: the tickets its seat took) and, after a short random delay,
records the call as ``reached`` (``POST /api/tickets/{id}/follow-up``), which solves the
ticket. Only tickets that arrived ``since`` are called back (the demo's own).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import aiohttp

from callrouter.sim.units import ApiClient, ApiError, arrived_since, pause

log = logging.getLogger("callrouter.sim.follow_ups")

NOTE = "已回访，市民对处理结果满意（模拟坐席）"


@dataclass
class FollowUpTally:
    done: int = 0
    errors: list[str] = field(default_factory=list)


class SimFollowUps:
    """``seat_tokens``: seat id -> its agent token. Each seat polls its list every ``poll_s``."""

    def __init__(self, api: ApiClient, seat_tokens: Mapping[str, str], *, since: datetime,
                 delay_s: tuple[float, float] = (0.3, 1.0), poll_s: float = 1.0, seed: int | None = None) -> None:
        self.api = api
        self.seat_tokens = dict(seat_tokens)
        self.since = since
        self.delay_s = delay_s
        self.poll_s = poll_s
        self.rng = random.Random(seed)
        self.tally = FollowUpTally()
        self._taken: set[str] = set()

    async def run(self, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tasks:
            for seat, token in self.seat_tokens.items():
                tasks.create_task(self._seat(seat, token, stop), name=f"follow-ups-{seat}")

    async def _seat(self, seat: str, token: str, stop: asyncio.Event) -> None:
        # the seats start their rounds at different moments, like people would
        if await pause(stop, self.rng.uniform(0, self.poll_s)):
            return
        while True:
            try:
                rows = await self.api.call("GET", "/api/follow-ups", token)
            except (ApiError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.warning("event=sim_follow_ups_poll_failed seat=%s error=%r", seat, exc)
                rows = []
            for row in rows if isinstance(rows, list) else []:
                ticket_id = str(row.get("id", ""))
                if ticket_id in self._taken or row.get("follow_up") != "pending" or not arrived_since(row, self.since):
                    continue
                self._taken.add(ticket_id)
                if await pause(stop, self.rng.uniform(*self.delay_s)):
                    return
                try:
                    await self.api.call("POST", f"/api/tickets/{ticket_id}/follow-up", token,
                                        {"outcome": "reached", "note": NOTE})
                    self.tally.done += 1
                except (ApiError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    # the next round calls again if the ticket still waits (a second
                    # 'reached' for one that did go through changes nothing)
                    self.tally.errors.append(f"{ticket_id}: {exc!r}"[:200])
                    log.warning("event=sim_follow_up_failed seat=%s ticket=%s error=%r", seat, ticket_id, exc)
                    self._taken.discard(ticket_id)
            if await pause(stop, self.poll_s):
                return
