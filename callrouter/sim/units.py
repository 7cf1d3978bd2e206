"""Simulated dispatch units: the people who take an order, over the real orders API.

Each unit acts with its own unit token (``--role unit --unit <id>``): it acknowledges a new
order after a short random delay (``POST /api/orders/{id}/ack``) and reports the matter
solved a little later (``POST /api/orders/{id}/report``), as a unit's duty officer on the
``/unit`` page would. What is new is seen on ``GET /api/orders`` with a supervisor's token
(one request for every unit, instead of one poller per unit); the acts themselves are the
units' own, so the API's rules (a unit acts only on its own orders, 409 on a wrong state)
apply to them as to a real unit. A request that fails (a timeout on a loaded machine) is
tried again from the order's state at the next look: an order acknowledged but not yet
reported is reported, never acknowledged twice.

Only orders of tickets that arrived ``since`` are taken (the demo's own calls); any other
open order is left to its unit. The tokens the simulation uses are kept in
``<home>/sim-tokens.json`` (mode 0600) and reused while they are valid, so running the demo
again does not pile up tokens.

:class:`ApiClient` is the small JSON client the simulated people share
(:mod:`callrouter.sim.follow_ups` uses it too).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Self

import aiohttp

from callrouter.api.tokens import TokenStore
from callrouter.config import Settings

log = logging.getLogger("callrouter.sim.units")

TOKENS_FILE = "sim-tokens.json"
REPORT_TEXT = "已到场处置，问题已解决（模拟单位）"  # what the simulated unit reports


class ApiError(Exception):
    def __init__(self, status: int, details: str) -> None:
        super().__init__(f"HTTP {status}: {details}")
        self.status = status
        self.details = details


class ApiClient:
    """JSON requests to the engine's API, each with the token of who makes it."""

    def __init__(self, base_url: str, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._http: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=self._timeout)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def call(self, method: str, path: str, token: str, body: dict[str, Any] | None = None,
                   params: Mapping[str, str] | None = None) -> Any:
        """The answer's JSON; :class:`ApiError` for any status but 2xx."""
        if self._http is None:
            raise RuntimeError("ApiClient.call before open()")
        async with self._http.request(method, self.base_url + path, params=params, json=body,
                                      headers={"Authorization": f"Bearer {token}"}) as resp:
            text = await resp.text()
            if not 200 <= resp.status < 300:
                raise ApiError(resp.status, text[:300])
            return json.loads(text) if text else None


# --- tokens ------------------------------------------------------------------------------
def sim_tokens(settings: Settings, units: Iterable[str] = (), seats: Iterable[str] = ()) -> dict[str, str]:
    """A token for each unit (``unit:<id>``) and each seat (``seat:<id>``, role agent), kept
    in ``<home>/sim-tokens.json`` (0600): one still known to the engine's token file is
    reused, any other is created (``callrouter tokens create``'s way). Blocking."""
    store = TokenStore(settings.home / "tokens.json", settings.secret("api_token"))
    path = settings.home / TOKENS_FILE
    try:
        kept: dict[str, str] = {str(k): str(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        kept = {}
    wanted = [(f"unit:{u}", "unit", None, u) for u in units] + [(f"seat:{s}", "agent", s, None) for s in seats]
    out: dict[str, str] = {}
    for key, role, seat, unit in wanted:
        token = kept.get(key, "")
        principal = store.lookup(token) if token else None
        if principal is None or principal.role != role or principal.seat != seat or principal.unit != unit:
            token = store.create(role, seat=seat, name="demo", unit=unit)
            kept[key] = token
        out[key] = token
    _write_private(path, kept)
    return out


def _write_private(path: Path, data: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1)
    tmp.replace(path)


async def pause(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` unless ``stop`` is set first; True when stopped."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max(0.0, seconds))
    return stop.is_set()


def arrived_since(row: Mapping[str, Any], since: datetime) -> bool:
    """Whether the ticket (``row["ticket"]`` of an order, or a ticket row) arrived at or after ``since``."""
    ticket = row.get("ticket") if isinstance(row.get("ticket"), Mapping) else row
    stamp = ticket.get("arrived_at") if isinstance(ticket, Mapping) else None
    if not isinstance(stamp, str):
        return False
    try:
        return datetime.fromisoformat(stamp) >= since
    except ValueError:
        return False


# --- the units ---------------------------------------------------------------------------
@dataclass
class UnitsTally:
    seen: int = 0
    acknowledged: int = 0
    reported: int = 0
    errors: list[str] = field(default_factory=list)


class SimUnits:
    """Every unit with a token in ``unit_tokens`` (unit id -> token) takes its new orders:
    acknowledged after ``ack_delay_s`` (a random draw in the range), reported solved
    ``report_delay_s`` later. ``watch_token``: a supervisor's, to see the open orders."""

    def __init__(self, api: ApiClient, watch_token: str, unit_tokens: Mapping[str, str], *, since: datetime,
                 ack_delay_s: tuple[float, float] = (0.3, 1.5), report_delay_s: tuple[float, float] = (0.5, 2.0),
                 poll_s: float = 0.5, seed: int | None = None) -> None:
        self.api = api
        self.watch_token = watch_token
        self.unit_tokens = dict(unit_tokens)
        self.since = since
        self.ack_delay_s = ack_delay_s
        self.report_delay_s = report_delay_s
        self.poll_s = poll_s
        self.rng = random.Random(seed)
        self.tally = UnitsTally()
        self._in_hand: set[str] = set()  # being acknowledged or reported now, or done
        self._seen: set[str] = set()

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: what an order in hand still needs is dropped at once then."""
        async with asyncio.TaskGroup() as tasks:
            while True:
                try:
                    orders = await self.api.call("GET", "/api/orders", self.watch_token,
                                                 params={"open": "1", "limit": "1000"})
                except (ApiError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    log.warning("event=sim_units_poll_failed error=%r", exc)
                    orders = []
                for order in orders if isinstance(orders, list) else []:
                    order_id = str(order.get("id", ""))
                    state = order.get("state")
                    if order_id in self._in_hand or state not in ("notified", "acknowledged") \
                            or not arrived_since(order, self.since):
                        continue
                    self._in_hand.add(order_id)
                    if order_id not in self._seen:
                        self._seen.add(order_id)
                        self.tally.seen += 1
                    tasks.create_task(self._take(order_id, str(order.get("unit", "")), state == "notified", stop))
                if await pause(stop, self.poll_s):
                    return

    async def _take(self, order_id: str, unit: str, needs_ack: bool, stop: asyncio.Event) -> None:
        token = self.unit_tokens.get(unit)
        if token is None:
            self.tally.errors.append(f"{order_id}: no token for unit {unit}")
            return  # stays in hand: no point asking again
        try:
            if needs_ack:
                if await pause(stop, self.rng.uniform(*self.ack_delay_s)):
                    return
                await self.api.call("POST", f"/api/orders/{order_id}/ack", token, {"by": "模拟值班员"})
                self.tally.acknowledged += 1
            if await pause(stop, self.rng.uniform(*self.report_delay_s)):
                return
            await self.api.call("POST", f"/api/orders/{order_id}/report", token,
                                {"result": REPORT_TEXT, "solved": True})
            self.tally.reported += 1
        except (ApiError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            # a refusal (409: escalated to the next unit meanwhile; that unit takes it) or a
            # request that failed: the next look at the open orders decides again, from the
            # order's state then (an acknowledgement that did go through is not repeated)
            self.tally.errors.append(f"{order_id}: {exc!r}"[:200])
            log.warning("event=sim_unit_failed order_id=%s unit=%s error=%r", order_id, unit, exc)
            self._in_hand.discard(order_id)
