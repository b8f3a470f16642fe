"""The Redis limiter sends reserves made in one event-loop iteration together.

Real Redis throughout: the shared one for exact limits across replicas, throwaway
redis-servers (tests/support/redis_process.py) where a test counts connections or
kills the server under a batch.
"""
from __future__ import annotations

import asyncio
import selectors
from typing import Any

import pytest
import redis.asyncio

from adapters.ratelimit.redis import RedisRateLimiter
from gateway.errors import BackendError
from gateway.settings import LimitsSettings
from gateway.types import Limits
from tests.support.clock import Clock
from tests.support.redis_process import RedisProcess, delete_prefix
from tests.support.services import redis_url, unique


@pytest.mark.parametrize("clock", [Clock, None], ids=["test-clock", "redis-clock"])
async def test_200_concurrent_reserves_on_two_replicas_admit_exactly_the_limit(clock):
    url, prefix = redis_url(), unique("pc-test-batch:")
    shared = clock() if clock else None
    # rpm 50: Redis' own clock refills one request every 1.2 s, far longer than the burst
    limits = Limits(requests_per_minute=50, tokens_per_minute=5000)
    replicas = [RedisRateLimiter(LimitsSettings(redis_url=url, key_prefix=prefix, redis_timeout_s=10.0,
                                                settle_flush_ms=0), clock=shared) for _ in range(2)]
    try:
        for lim in replicas:
            await lim.start()
        results = await asyncio.gather(*(replicas[i % 2].reserve("hot", limits, 10) for i in range(200)))
        admitted = [r for r in results if r.allowed]
        assert len(admitted) == 50
        assert {r.reason for r in results if not r.allowed} == {"requests"}
        # each caller got its own reply: the admitted ones saw the bucket go down one at a time
        assert sorted(r.remaining_requests for r in admitted) == list(range(50))
        assert all(r.reservation is not None and r.reservation.key == "hot" for r in admitted)
    finally:
        for lim in replicas:
            await lim.aclose()
        delete_prefix(url, prefix)


async def test_one_iterations_reserves_share_one_connection(tmp_path):
    server = RedisProcess(tmp_path).start()
    lim = RedisRateLimiter(LimitsSettings(redis_url=server.url, redis_timeout_s=10.0))
    try:
        await lim.start()  # one pooled connection: PING and SCRIPT LOAD
        limits = Limits(requests_per_minute=1000)
        async with redis.asyncio.Redis.from_url(server.url) as probe:
            before = (await probe.info("stats"))["total_connections_received"]
            results = await asyncio.gather(*(lim.reserve(f"a{i % 7}", limits, 1) for i in range(100)))
            assert all(r.allowed for r in results)
            after = (await probe.info("stats"))["total_connections_received"]
            cmds = await probe.info("commandstats")
        # a pooled connection per reserve would have opened 31 more (the pool holds 32)
        assert after == before
        assert cmds["cmdstat_evalsha"]["calls"] == 100
    finally:
        await lim.aclose()
        server.kill()


async def test_a_batch_fails_every_caller_with_backend_error_when_redis_goes(tmp_path):
    server = RedisProcess(tmp_path, password="s3cret-pw").start()
    lim = RedisRateLimiter(LimitsSettings(redis_url=server.url, redis_timeout_s=1.0))
    limits = Limits(requests_per_minute=1000)
    try:
        await lim.start()
        assert all(r.allowed for r in await asyncio.gather(*(lim.reserve("a", limits, 1) for _ in range(20))))
        server.pause()  # answers nothing: every caller of the batch times out
        out = await asyncio.gather(*(lim.reserve("a", limits, 1) for _ in range(20)), return_exceptions=True)
        assert all(isinstance(e, BackendError) and "TimeoutError" in str(e) for e in out), out
        server.resume()
        server.kill()  # gone: refused
        out = await asyncio.gather(*(lim.reserve("a", limits, 1) for _ in range(20)), return_exceptions=True)
        assert all(isinstance(e, BackendError) and "ConnectionError" in str(e) for e in out), out
        assert all(f"127.0.0.1:{server.port}" in str(e) and "s3cret-pw" not in str(e) for e in out)
        server.start()  # back and empty: NOSCRIPT, the script is loaded again, the batch is served once
        out = await asyncio.gather(*(lim.reserve("b", limits, 1) for _ in range(20)))
        assert sorted(r.remaining_requests for r in out) == list(range(980, 1000))
    finally:
        await lim.aclose()
        server.kill()


async def test_one_reserves_script_error_fails_only_its_caller():
    url, prefix = redis_url(), unique("pc-test-batch:")
    lim = RedisRateLimiter(LimitsSettings(redis_url=url, key_prefix=prefix, redis_timeout_s=10.0))
    try:
        await lim.start()
        async with redis.asyncio.Redis.from_url(url) as client:
            await client.set(f"{prefix}{{broken}}:r", "not a hash")
        limits = Limits(requests_per_minute=5)
        out = await asyncio.gather(lim.reserve("x", limits, 1), lim.reserve("broken", limits, 1),
                                   lim.reserve("y", limits, 1), return_exceptions=True)
        assert isinstance(out[1], BackendError) and "WRONGTYPE" in str(out[1])
        assert out[0].allowed and out[2].allowed and out[0].remaining_requests == 4
    finally:
        await lim.aclose()
        delete_prefix(url, prefix)


async def test_a_cancelled_caller_does_not_stop_the_rest_of_its_batch():
    url, prefix = redis_url(), unique("pc-test-batch:")
    lim = RedisRateLimiter(LimitsSettings(redis_url=url, key_prefix=prefix, redis_timeout_s=10.0))
    try:
        await lim.start()
        limits = Limits(requests_per_minute=100)
        tasks = [asyncio.ensure_future(lim.reserve("c", limits, 1)) for _ in range(10)]
        await asyncio.sleep(0)  # every task is queued in this iteration's batch
        tasks[3].cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(done[3], asyncio.CancelledError)
        assert all(r.allowed for i, r in enumerate(done) if i != 3)
    finally:
        await lim.aclose()
        delete_prefix(url, prefix)


class _TimerLog(asyncio.SelectorEventLoop):
    """An event loop that logs the delay of every timer armed on it."""

    def __init__(self) -> None:
        super().__init__(selectors.DefaultSelector())
        self.delays: list[float] = []

    def call_at(self, when: float, callback: Any, *args: Any, context: Any = None) -> Any:
        self.delays.append(when - self.time())
        return super().call_at(when, callback, *args, context=context)


def test_a_lone_reserve_waits_for_no_timer():
    """Only the pool's and the socket's timeouts (30 s here) are armed: no batching window."""
    url, prefix = redis_url(), unique("pc-test-batch:")

    async def lone() -> list[float]:
        lim = RedisRateLimiter(LimitsSettings(redis_url=url, key_prefix=prefix, redis_timeout_s=30.0,
                                              redis_pool_wait_s=30.0, settle_flush_ms=0))
        await lim.start()
        try:
            await lim.reserve("warm", Limits(requests_per_minute=10), 1)
            loop.delays.clear()
            r = await lim.reserve("lone", Limits(requests_per_minute=10), 1)
            assert r.allowed and r.remaining_requests == 9
            return list(loop.delays)
        finally:
            await lim.aclose()

    loop = _TimerLog()
    try:
        delays = loop.run_until_complete(lone())
    finally:
        loop.close()
        delete_prefix(url, prefix)
    assert delays, "the socket read armed no timeout: this test no longer sees timers"
    assert min(delays) > 29.0, delays
