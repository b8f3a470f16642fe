"""A Redis restart under a warm connection pool: the first request after it is served.

redis-py 8 skipped its stale-connection check (maintenance notifications "auto"), so every
pooled connection failed its next command once Redis was back, and those requests got 503s.
"""
from __future__ import annotations

import asyncio

from adapters.ratelimit.redis import RedisRateLimiter
from gateway.settings import LimitsSettings
from gateway.types import Limits, Reservation
from tests.support.redis_process import RedisProcess

WARM = 8  # pooled connections opened before the restart


async def _restart(server: RedisProcess) -> None:
    # In threads, as Redis restarts beside a running gateway: its event loop keeps running.
    await asyncio.to_thread(server.kill)
    await asyncio.to_thread(server.start)


async def _warm(lim: RedisRateLimiter, limits: Limits) -> None:
    # Concurrent reserves go out as one batch on a connection the limiter keeps between batches:
    # after the restart below, that kept connection is stale and must be checked before reuse.
    results = await asyncio.gather(*[lim.reserve(f"warm{i}", limits, 1) for i in range(WARM)])
    assert all(r.allowed for r in results)


async def test_first_requests_after_a_restart_are_served(tmp_path):
    server = RedisProcess(tmp_path).start()
    lim = RedisRateLimiter(LimitsSettings(redis_url=server.url, redis_timeout_s=5.0, settle_flush_ms=0))
    limits = Limits(requests_per_minute=1000, tokens_per_minute=100_000)
    try:
        await lim.start()
        await _warm(lim, limits)
        await _restart(server)  # same port, empty: every pooled connection was closed by the old one
        first = await lim.reserve("a", limits, 10)  # the very first request after the restart
        assert first.allowed and first.remaining_requests == 999
        # every other stale connection too, each used at once by a concurrent request
        burst = await asyncio.gather(*[lim.reserve(f"b{i}", limits, 1) for i in range(WARM)])
        assert all(r.allowed for r in burst)
        await _restart(server)
        assert first.reservation is not None
        await lim.settle(first.reservation, 4)  # a settle after a restart is applied too
    finally:
        await lim.aclose()
        server.kill()


async def test_batched_settles_after_a_restart_are_applied(tmp_path):
    server = RedisProcess(tmp_path).start()
    lim = RedisRateLimiter(LimitsSettings(redis_url=server.url, redis_timeout_s=5.0, settle_flush_ms=1))
    limits = Limits(tokens_per_minute=1000)
    try:
        await lim.start()
        await _warm(lim, limits)
        await _restart(server)
        r = await lim.reserve("a", limits, 500)
        assert r.allowed and r.remaining_tokens == 500
        await lim.settle(Reservation("a", 500, limits), 100)  # pipelined on a pooled connection
        await lim.aclose()  # flushes what is pending, raising if Redis refused it
        again = RedisRateLimiter(LimitsSettings(redis_url=server.url, redis_timeout_s=5.0))
        await again.start()
        try:
            after = await again.reserve("a", limits, 1)
            assert after.remaining_tokens is not None and after.remaining_tokens >= 899
        finally:
            await again.aclose()
    finally:
        await lim.aclose()
        server.kill()
