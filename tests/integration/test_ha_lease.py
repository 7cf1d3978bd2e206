"""The lease in a real Redis (callrouter.ha.redis_lease): one holder, growing terms,
compare-and-renew, the snapshot written only by the current term. ~2 s."""

from __future__ import annotations

import asyncio
import secrets

from callrouter.ha.redis_lease import RedisLease
from tests.integration.servers import PrivateRedis


def test_one_holder_growing_terms_and_a_fenced_snapshot(private_redis: PrivateRedis) -> None:
    async def run() -> None:
        prefix = f"crtest-{secrets.token_hex(4)}"
        a = RedisLease(private_redis.url, prefix, "a", 300)
        b = RedisLease(private_redis.url, prefix, "b", 300)
        try:
            term_a = await a.acquire()
            assert term_a == 1
            assert await b.acquire() is None, "held: nobody else takes it"
            assert await a.renew(1) and not await b.renew(1)
            assert await a.fenced_set(f"{prefix}:state", "from a", 1)
            await asyncio.sleep(0.4)  # a stalls past its ttl
            term_b = await b.acquire()
            assert term_b == 2
            assert not await a.renew(1), "a's renewal after the take-over: not yours"
            assert not await a.fenced_set(f"{prefix}:state", "stale a", 1)
            assert await b.fenced_set(f"{prefix}:state", "from b", 2)
            client = b._client()
            assert await client.get(f"{prefix}:state") == b"from b"
            # b's lease expires while nobody takes it (Redis away for b, say): its renewal
            # gets it back under the same term
            await asyncio.sleep(0.4)
            assert await b.renew(2)
            assert await a.acquire() is None
            await b.release(2)
            assert await a.acquire() == 3
        finally:
            await a.close()
            await b.close()
    asyncio.run(run())
