"""The RateLimiter seam: one suite over every backend (memory, Redis), then Redis's own duties.

Semantics tests drive an injected clock (no sleeping, no timing asserts). The
Redis-only tests use Redis' own clock (TIME), several limiter instances with
separate connection pools, and redis-server processes that are paused and killed.
"""
from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest
import redis.asyncio
from pydantic import ValidationError

from adapters.ratelimit.memory import MemoryRateLimiter
from adapters.ratelimit.redis import RedisRateLimiter
from gateway.errors import BackendError
from gateway.settings import LimitsSettings
from gateway.types import Limits
from tests.support.clock import Clock
from tests.support.redis_process import RedisProcess, delete_prefix, refusing_url
from tests.support.services import redis_url, unique
from tests.support.waiting import eventually_async


class Limiters:
    """Started limiters of one backend; with Redis, all under one run-unique key prefix."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.url = redis_url() if backend == "redis" else ""
        self.prefix = unique("pc-test-limits:")
        self.made: list[Any] = []

    async def make(self, clock: Clock | None = None, **settings: Any) -> Any:
        if self.backend == "memory":
            lim: Any = MemoryRateLimiter(LimitsSettings(**settings), clock=clock or time.monotonic)
        else:
            # generous timeout: a loaded test machine is not what these tests are about
            settings.setdefault("settle_flush_ms", 0)  # settles applied at once, like memory's
            s = LimitsSettings(redis_url=self.url, key_prefix=self.prefix, redis_timeout_s=10.0, **settings)
            lim = RedisRateLimiter(s, clock=clock)
        await lim.start()
        self.made.append(lim)
        return lim

    async def close(self) -> None:
        for lim in self.made:
            await lim.aclose()
        if self.url:
            delete_prefix(self.url, self.prefix)


@pytest.fixture(params=["memory", "redis"])
async def limiters(request):
    ls = Limiters(request.param)
    yield ls
    await ls.close()


@pytest.fixture
async def redis_limiters():
    ls = Limiters("redis")
    yield ls
    await ls.close()


# ---- the same semantics on every backend ------------------------------------------

async def test_requests_per_minute_admits_exactly_the_limit_then_refills(limiters):
    clock = Clock()
    lim = await limiters.make(clock)
    limits = Limits(requests_per_minute=3, tokens_per_minute=None)
    results = [await lim.reserve("a", limits, 10) for _ in range(5)]
    assert [r.allowed for r in results] == [True, True, True, False, False]
    refused = results[3]
    assert refused.reason == "requests"
    assert 19.9 < refused.retry_after_s <= 20.0  # one request per 20 s at 3/min
    clock.t += 20.0
    assert (await lim.reserve("a", limits, 10)).allowed
    assert not (await lim.reserve("a", limits, 10)).allowed


async def test_agents_have_separate_buckets(limiters):
    lim = await limiters.make(Clock())
    limits = Limits(requests_per_minute=1)
    for agent in ("a", "b", "a}", "a%7D", "{a}"):  # braces cannot merge two agents' keys
        assert (await lim.reserve(agent, limits, 0)).allowed, agent
    assert not (await lim.reserve("a", limits, 0)).allowed
    assert not (await lim.reserve("a}", limits, 0)).allowed


async def test_token_reservation_is_settled_against_real_usage(limiters):
    lim = await limiters.make(Clock())
    limits = Limits(requests_per_minute=100, tokens_per_minute=1000)
    r1 = await lim.reserve("a", limits, 600)
    assert r1.allowed and r1.remaining_tokens == 400
    assert not (await lim.reserve("a", limits, 600)).allowed  # reservation holds the budget
    await lim.settle(r1.reservation, 100)  # used far less: 500 come back
    r2 = await lim.reserve("a", limits, 600)
    assert r2.allowed and r2.remaining_tokens == 300


async def test_overshoot_on_settle_is_paid_back_before_next_admission(limiters):
    clock = Clock()
    lim = await limiters.make(clock)
    limits = Limits(tokens_per_minute=1000)
    r = await lim.reserve("a", limits, 100)
    await lim.settle(r.reservation, 1500)  # the upstream used more than reserved: level -500
    refused = await lim.reserve("a", limits, 1)
    assert not refused.allowed and refused.reason == "tokens"
    assert refused.retry_after_s == pytest.approx(30.06)  # 501 tokens at 1000/min
    clock.t += 30.0
    assert not (await lim.reserve("a", limits, 1)).allowed  # 0 tokens: still paying back
    clock.t += 0.1
    assert (await lim.reserve("a", limits, 1)).allowed


async def test_request_bigger_than_the_whole_budget_is_refused_as_too_large(limiters):
    lim = await limiters.make(Clock())
    r = await lim.reserve("a", Limits(tokens_per_minute=100), 101)
    assert not r.allowed and r.reason == "request_too_large" and r.retry_after_s == 60.0
    assert (await lim.reserve("a", Limits(tokens_per_minute=100), 100)).allowed  # nothing was taken


async def test_a_refused_request_takes_nothing_from_either_bucket(limiters):
    lim = await limiters.make(Clock())
    limits = Limits(requests_per_minute=2, tokens_per_minute=1000)
    assert (await lim.reserve("a", limits, 900)).allowed
    refused = await lim.reserve("a", limits, 200)  # requests left, tokens not
    assert refused.reason == "tokens" and refused.remaining_requests == 1 and refused.reservation is None
    last = await lim.reserve("a", limits, 100)
    assert last.allowed and (last.remaining_requests, last.remaining_tokens) == (0, 0)


async def test_concurrent_reservations_never_overshoot(limiters):
    lim = await limiters.make(Clock())
    limits = Limits(requests_per_minute=1000, tokens_per_minute=10_000)
    results = await asyncio.gather(*(lim.reserve("a", limits, 300) for _ in range(100)))
    admitted = sum(r.allowed for r in results)
    assert admitted == 33  # floor(10000 / 300): never one more


async def test_headers_values_are_reported(limiters):
    lim = await limiters.make(Clock())
    r = await lim.reserve("a", Limits(requests_per_minute=60, tokens_per_minute=6000), 100)
    assert (r.limit_requests, r.remaining_requests) == (60, 59)
    assert (r.limit_tokens, r.remaining_tokens) == (6000, 5900)
    assert r.reset_requests_s == 1.0 and r.reset_tokens_s == 1.0


# ---- Redis: the same answers as memory, across replicas, on Redis' clock -----------

async def test_redis_gives_the_same_results_as_memory_over_a_random_run(redis_limiters):
    clock = Clock()
    mem = MemoryRateLimiter(LimitsSettings(), clock=clock)
    red = await redis_limiters.make(clock)
    # Refill rates (1/4, 32, 16 per second) and clock steps are binary fractions, so both
    # backends compute exactly; otherwise the last bit can differ (memory re-stores a bucket
    # on every call, Redis only when it changes) and move a level across an integer.
    agents = {"a": Limits(15, 1920), "b": Limits(None, 960), "c": Limits(15, None)}
    rng = random.Random(7)
    held: list[tuple[Any, Any]] = []
    seen: set[str] = set()
    for step in range(400):
        op = rng.random()
        if op < 0.2:
            clock.t += rng.choice([0.25, 1.0, 4.0])
        elif op < 0.4 and held:
            rm, rr = held.pop(rng.randrange(len(held)))
            used = rng.randrange(0, 700)
            await mem.settle(rm, used)
            await red.settle(rr, used)
        else:
            agent = rng.choice(sorted(agents))
            tokens = rng.randrange(0, 1000)
            m = await mem.reserve(agent, agents[agent], tokens)
            r = await red.reserve(agent, agents[agent], tokens)
            exact = ("allowed", "reason", "limit_requests", "remaining_requests", "limit_tokens",
                     "remaining_tokens", "reservation")
            assert [getattr(r, f) for f in exact] == [getattr(m, f) for f in exact], step
            for f in ("retry_after_s", "reset_requests_s", "reset_tokens_s"):
                assert getattr(r, f) == pytest.approx(getattr(m, f), abs=1e-6), (step, f)
            if m.allowed:
                held.append((m.reservation, r.reservation))
            seen.add(m.reason)
    assert seen == {"", "requests", "tokens", "request_too_large"}  # every path was taken


@pytest.mark.parametrize("clock", [Clock, None], ids=["test-clock", "redis-clock"])
@pytest.mark.parametrize("bucket, limits, tokens", [
    ("requests", Limits(requests_per_minute=200), 1),
    ("tokens", Limits(requests_per_minute=100_000, tokens_per_minute=6000), 30),
])
async def test_replicas_together_admit_exactly_the_limit(redis_limiters, clock, bucket, limits, tokens):
    shared = clock() if clock else None
    replicas = [await redis_limiters.make(shared) for _ in range(4)]  # four connection pools
    t0 = time.monotonic()
    results = await asyncio.gather(*(replicas[i % 4].reserve("hot", limits, tokens) for i in range(600)))
    elapsed = time.monotonic() - t0
    admitted = sum(r.allowed for r in results)
    refill = 0
    if shared is None:  # Redis' clock runs during the burst: 200 more per minute, at most
        refill = int(elapsed * 200 / 60)
    assert 200 <= admitted <= 200 + refill, (admitted, elapsed)
    assert {r.reason for r in results if not r.allowed} == {bucket}


async def test_buckets_refill_on_redis_clock_and_idle_keys_expire(redis_limiters):
    lim = await redis_limiters.make()  # no test clock: Redis' TIME
    limits = Limits(requests_per_minute=6, tokens_per_minute=60_000)  # tokens: 1000 per second
    assert (await lim.reserve("a", limits, 60_000)).allowed
    refused = await lim.reserve("a", limits, 500)
    assert refused.reason == "tokens" and 0 < refused.retry_after_s <= 0.5
    p = redis_limiters.prefix
    async with redis.asyncio.Redis.from_url(redis_limiters.url) as client:
        # each key lives until its bucket is full again: 10 s for 1 request, 60 s for 60,000 tokens
        assert 0 < await client.pttl(f"{p}{{a}}:r") <= 10_001
        assert 0 < await client.pttl(f"{p}{{a}}:t") <= 60_001

        async def refilled() -> bool:
            return (await lim.reserve("a", limits, 500)).allowed

        await eventually_async(refilled, "the tokens bucket to refill", interval=0.05)  # about half a second
        fast = Limits(requests_per_minute=60_000, tokens_per_minute=60_000)  # full again within ms
        assert (await lim.reserve("b", fast, 1)).allowed

        async def expired() -> bool:  # an idle bucket is no key
            return not await client.exists(f"{p}{{b}}:r", f"{p}{{b}}:t")

        await eventually_async(expired, "the idle bucket's keys to expire")


async def test_settling_back_to_full_deletes_the_key(redis_limiters):
    lim = await redis_limiters.make(Clock())
    r = await lim.reserve("a", Limits(tokens_per_minute=1000), 600)
    async with redis.asyncio.Redis.from_url(redis_limiters.url) as client:
        key = f"{redis_limiters.prefix}{{a}}:t"
        assert await client.exists(key)
        await lim.settle(r.reservation, 0)
        assert not await client.exists(key)


# ---- Redis failures become BackendError, without secrets --------------------------

async def test_batched_settles_arrive_summed_and_on_close(redis_limiters):
    """settle_flush_ms > 0: corrections wait a moment, then go in one pipelined round trip."""
    lim = await redis_limiters.make(Clock(), settle_flush_ms=50)
    limits = Limits(requests_per_minute=100, tokens_per_minute=1000)
    r1, r2 = await lim.reserve("a", limits, 600), await lim.reserve("a", limits, 300)
    await lim.settle(r1.reservation, 100)
    await lim.settle(r2.reservation, 100)  # 500 + 200 come back, later
    assert not (await lim.reserve("a", limits, 500)).allowed  # not yet: the wait only admits less

    async def admitted() -> Any:
        return (r := await lim.reserve("a", limits, 500)).allowed and r

    r = await eventually_async(admitted, "the batched settles to arrive", interval=0.02)
    assert r.remaining_tokens == 300  # 100 + 700 back - 500
    await lim.settle(r.reservation, 0)  # waiting at close: applied by aclose
    await lim.aclose()
    other = await redis_limiters.make(Clock(), settle_flush_ms=50)
    assert (await other.reserve("a", limits, 800)).remaining_tokens == 0


async def test_start_fails_clearly_when_redis_is_unreachable():
    sock, url = refusing_url("s3cret-pw")
    port = sock.getsockname()[1]
    with sock:
        lim = RedisRateLimiter(LimitsSettings(redis_url=url))
        with pytest.raises(BackendError) as e:
            await lim.start()
    assert f"Redis at 127.0.0.1:{port}/0" in str(e.value) and "ConnectionError" in str(e.value)
    assert "s3cret-pw" not in str(e.value)
    await lim.aclose()


def test_a_key_prefix_with_braces_is_a_config_error():
    with pytest.raises(ValidationError, match="key_prefix"):  # it would move the hash tag
        LimitsSettings(key_prefix="fleet{a}:")


async def test_an_invalid_url_fails_start():
    with pytest.raises(BackendError, match="not a usable Redis URL"):
        await RedisRateLimiter(LimitsSettings(redis_url="http://127.0.0.1:6379")).start()


async def test_a_script_error_becomes_backend_error(redis_limiters):
    lim = await redis_limiters.make()
    async with redis.asyncio.Redis.from_url(redis_limiters.url) as client:
        await client.set(f"{redis_limiters.prefix}{{a}}:r", "not a hash")
    with pytest.raises(BackendError, match="WRONGTYPE"):
        await lim.reserve("a", Limits(requests_per_minute=5), 1)


async def test_redis_paused_killed_and_back(tmp_path):
    server = RedisProcess(tmp_path, password="s3cret-pw").start()
    lim = RedisRateLimiter(LimitsSettings(redis_url=server.url, redis_timeout_s=1.0))
    limits = Limits(requests_per_minute=100)
    try:
        await lim.start()
        assert (await lim.reserve("a", limits, 1)).allowed
        server.pause()  # accepts nothing, answers nothing: a timeout
        with pytest.raises(BackendError, match="TimeoutError") as e:
            await lim.reserve("a", limits, 1)
        assert "s3cret-pw" not in str(e.value)
        server.resume()
        assert (await lim.reserve("a", limits, 1)).allowed
        server.kill()
        with pytest.raises(BackendError, match="ConnectionError") as e:
            await lim.reserve("a", limits, 1)
        assert f"127.0.0.1:{server.port}" in str(e.value) and "s3cret-pw" not in str(e.value)
        server.start()  # an empty Redis: the scripts are reloaded on NOSCRIPT
        r = await lim.reserve("a", limits, 1)
        assert r.allowed and r.remaining_requests == 99
    finally:
        await lim.aclose()
        server.kill()
