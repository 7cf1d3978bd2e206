"""The lease in Redis: ``SET key me NX PX ttl`` plus a term from INCR, renewed by a
compare-and-renew script, and the shared snapshot written only by the current term.

Keys (``<prefix>:ha:lease``, ``<prefix>:ha:term``): the lease's value is the holder's
instance id; the term counter only grows, once per new holder. A holder whose lease
expired while Redis was away (nobody could take it) gets it back on its next renewal if
the term counter still shows its own term: nobody held it since.
"""

from __future__ import annotations

import logging
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("callrouter.ha")

ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return 0
"""

RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder == false and redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# the snapshot of the term that wrote it: a stalled former holder cannot overwrite the
# current one's
FENCED_SET = """
if redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[1])
  return 1
end
return 0
"""

LeaseErrors = (RedisError, OSError)


def lease_keys(prefix: str) -> tuple[str, str]:
    return f"{prefix}:ha:lease", f"{prefix}:ha:term"


def leader_key(prefix: str) -> str:
    """Where the holder says where it is (its API address), for the standbys' answers."""
    return f"{prefix}:ha:leader"


class RedisLease:
    def __init__(self, redis_url: str, prefix: str, instance: str, ttl_ms: int) -> None:
        self.redis_url = redis_url
        self.lease_key, self.term_key = lease_keys(prefix)
        self.leader_key = leader_key(prefix)
        self.instance = instance
        self.ttl_ms = ttl_ms
        self._redis: aioredis.Redis | None = None
        self._scripts: dict[str, Any] = {}

    def _client(self) -> aioredis.Redis:
        if self._redis is None:
            # a renewal that takes longer than a third of the lease is as good as none
            timeout = max(0.2, self.ttl_ms / 3000)
            self._redis = aioredis.Redis.from_url(self.redis_url, socket_connect_timeout=timeout,
                                                  socket_timeout=timeout)
        return self._redis

    def _script(self, text: str) -> Any:
        script = self._scripts.get(text)
        if script is None:
            script = self._scripts[text] = self._client().register_script(text)
        return script

    async def acquire(self) -> int | None:
        """The new term if the lease was free and is now ours, else None. Raises on no answer."""
        term = int(await self._script(ACQUIRE)(keys=[self.lease_key, self.term_key],
                                               args=[self.instance, self.ttl_ms]))
        return term or None

    async def renew(self, term: int) -> bool:
        return bool(await self._script(RENEW)(keys=[self.lease_key, self.term_key],
                                              args=[self.instance, self.ttl_ms, term]))

    async def fenced_set(self, key: str, value: str, term: int) -> bool:
        return bool(await self._script(FENCED_SET)(keys=[key, self.term_key], args=[value, term]))

    async def leader(self) -> str | None:
        """What the current holder published about itself (JSON), if anything."""
        value = await self._client().get(self.leader_key)
        return value.decode(errors="replace") if isinstance(value, bytes) else None

    async def release(self, term: int) -> None:
        """On a clean stop: let a standby take over at once instead of after the ttl."""
        script = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
        await self._script(script)(keys=[self.lease_key], args=[self.instance])

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
