"""The engine's state, kept current for supervisors and for recovery after a crash.

Twice a second, when something changed, the ACD snapshot (lines, waiting callers in
order with original arrival, seats and their states) goes to Redis (key
``<prefix>:state``, read by `callrouter status` and supervisors' tools) and to a local
file written atomically (``state_file``, default ``<home>/state.json``). A restarted engine resumes from the
newer of the two; with neither it starts clean and still adopts every caller Asterisk
holds. Redis being down costs the supervisors' view, never a call: errors are logged
once per outage and the file keeps recovery working.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("callrouter.state")

def state_key(prefix: str) -> str:
    return f"{prefix}:state"


def _write_file(path: Path, text: str) -> None:
    # callers' numbers and waits: readable by the engine's user only, from the first byte
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)  # a tmp file left by an older version keeps its mode otherwise
    os.replace(tmp, path)


class StateStore:
    def __init__(self, redis_url: str, path: Path, prefix: str = "callrouter") -> None:
        self.redis_url = redis_url
        self.key = state_key(prefix)
        self.path = path
        self._redis: aioredis.Redis | None = None
        self._redis_ok = True
        # several engines (callrouter.ha): the key is written only by the lease's current
        # term (a compare-and-set in Redis), so a stalled former holder cannot overwrite
        # the current holder's state; None: written as it is (one engine)
        self.fence: Callable[[str, str], Awaitable[bool]] | None = None
        # several engines: False while this one does not lead (nothing of its own to keep)
        self.gate: Callable[[], bool] | None = None

    def _client(self) -> aioredis.Redis:
        if self._redis is None:
            self._redis = aioredis.Redis.from_url(self.redis_url, socket_connect_timeout=1.0, socket_timeout=1.0)
        return self._redis

    async def save(self, state: dict[str, Any]) -> None:
        if self.gate is not None and not self.gate():
            return
        text = json.dumps(state, separators=(",", ":"), default=str)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(_write_file, self.path, text)
        try:
            if self.fence is None:
                await self._client().set(self.key, text)
            elif not await self.fence(self.key, text):
                log.warning("event=state_write_fenced key=%s: another engine holds the lease now", self.key)
            if not self._redis_ok:
                log.warning("event=redis_recovered url=%s", self.redis_url)
            self._redis_ok = True
        except (RedisError, OSError) as exc:
            if self._redis_ok:
                log.warning("event=redis_unavailable url=%s error=%r (state kept in %s)", self.redis_url, exc,
                            self.path)
            self._redis_ok = False

    async def load(self, *, shared: bool = False) -> dict[str, Any] | None:
        """The newest saved state of Redis and the file, or None. ``shared``: Redis must
        answer (several engines: the holder's state is there, this engine's file is old);
        its errors are raised."""
        found: list[dict[str, Any]] = []
        try:
            raw = await self._client().get(self.key)
            if raw:
                found.append(json.loads(raw))
        except (RedisError, OSError, ValueError) as exc:
            if shared:
                raise
            log.warning("event=state_redis_unreadable error=%r", exc)
        try:
            found.append(json.loads(await asyncio.to_thread(self.path.read_text)))
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.warning("event=state_file_unreadable path=%s error=%r", self.path, exc)
        if not found:
            return None
        return max(found, key=lambda s: float(s.get("saved_at", 0)))

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None


async def read_state(redis_url: str, path: Path, prefix: str = "callrouter") -> dict[str, Any] | None:
    store = StateStore(redis_url, path, prefix)
    try:
        return await store.load()
    finally:
        await store.close()
