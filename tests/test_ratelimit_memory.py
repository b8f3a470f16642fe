"""In-process token buckets, driven by an injected clock (no sleeping, no timing asserts)."""
import asyncio

from adapters.ratelimit.memory import MemoryRateLimiter
from gateway.settings import LimitsSettings
from gateway.types import Limits


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def limiter(clock):
    return MemoryRateLimiter(LimitsSettings(), clock=clock)


async def test_requests_per_minute_admits_exactly_the_limit_then_refills():
    clock = Clock()
    lim = limiter(clock)
    limits = Limits(requests_per_minute=3, tokens_per_minute=None)
    results = [await lim.reserve("a", limits, 10) for _ in range(5)]
    assert [r.allowed for r in results] == [True, True, True, False, False]
    refused = results[3]
    assert refused.reason == "requests"
    assert 19.9 < refused.retry_after_s <= 20.0  # one request per 20 s at 3/min
    clock.t += 20.0
    assert (await lim.reserve("a", limits, 10)).allowed
    assert not (await lim.reserve("a", limits, 10)).allowed


async def test_agents_have_separate_buckets():
    lim = limiter(Clock())
    limits = Limits(requests_per_minute=1)
    assert (await lim.reserve("a", limits, 0)).allowed
    assert (await lim.reserve("b", limits, 0)).allowed
    assert not (await lim.reserve("a", limits, 0)).allowed


async def test_token_reservation_is_settled_against_real_usage():
    clock = Clock()
    lim = limiter(clock)
    limits = Limits(requests_per_minute=100, tokens_per_minute=1000)
    r1 = await lim.reserve("a", limits, 600)
    assert r1.allowed and r1.remaining_tokens == 400
    assert not (await lim.reserve("a", limits, 600)).allowed  # reservation holds the budget
    await lim.settle(r1.reservation, 100)  # used far less: 500 come back
    r2 = await lim.reserve("a", limits, 600)
    assert r2.allowed and r2.remaining_tokens == 300


async def test_overshoot_on_settle_is_paid_back_before_next_admission():
    lim = limiter(Clock())
    limits = Limits(tokens_per_minute=1000)
    r = await lim.reserve("a", limits, 100)
    await lim.settle(r.reservation, 1500)  # the upstream used more than reserved
    refused = await lim.reserve("a", limits, 1)
    assert not refused.allowed and refused.reason == "tokens"


async def test_request_bigger_than_the_whole_budget_is_refused_as_too_large():
    lim = limiter(Clock())
    r = await lim.reserve("a", Limits(tokens_per_minute=100), 101)
    assert not r.allowed and r.reason == "request_too_large"


async def test_concurrent_reservations_never_overshoot():
    lim = limiter(Clock())
    limits = Limits(requests_per_minute=1000, tokens_per_minute=10_000)
    results = await asyncio.gather(*(lim.reserve("a", limits, 300) for _ in range(100)))
    admitted = sum(r.allowed for r in results)
    assert admitted == 33  # floor(10000 / 300): never one more


async def test_headers_values_are_reported():
    lim = limiter(Clock())
    r = await lim.reserve("a", Limits(requests_per_minute=60, tokens_per_minute=6000), 100)
    assert (r.limit_requests, r.remaining_requests) == (60, 59)
    assert (r.limit_tokens, r.remaining_tokens) == (6000, 5900)
    assert r.reset_requests_s == 1.0 and r.reset_tokens_s == 1.0
