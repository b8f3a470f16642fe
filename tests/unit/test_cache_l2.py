"""The Redis L2 decision cache (adapters/cache/redis_l2.py) against real Redis.

Each test uses its own key prefix and deletes it afterwards. A Redis that refuses, hangs
(a paused redis-server) or holds garbage must turn into a miss, and a miss into an
evaluation: a deny stays a deny.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pytest
import redis

from adapters.cache.memory import MemoryDecisionCache
from adapters.cache.redis_l2 import RedisL2DecisionCache
from adapters.policy.regorus_engine import RegorusEngine
from gateway.configbase import ConfigError
from gateway.metrics import Metrics
from gateway.settings import CacheSettings, PolicySettings, load_settings
from gateway.settings_opa import L2CacheSettings
from gateway.stages.policy import PolicyStage
from gateway.types import Decision
from tests.support.redis_process import RedisProcess, delete_prefix, refusing_url
from tests.support.services import redis_url, unique
from tests.unit.test_policy_engine import POLICIES, model_input

DENY = Decision(allow=False, reasons=("no",), obligations={}, cache_ttl_s=30, revision="r1", cache_hit=True)
ALLOW = Decision(allow=True, reasons=(), obligations={"max_output_tokens": 2048, "requests_per_minute": 60},
                 cache_ttl_s=30, revision="r1", cache_hit=True)


@pytest.fixture
def prefix() -> Any:
    url = redis_url()
    p = unique("portcullis:test:l2:")
    yield p
    delete_prefix(url, p)


@pytest.fixture
async def caches(prefix: str) -> AsyncIterator[Callable[..., Any]]:
    made: list[RedisL2DecisionCache] = []

    async def make(url: str | None = None, clock: Callable[[], float] = time.time, **kw: Any) -> RedisL2DecisionCache:
        s = L2CacheSettings(redis_url=url or redis_url(), key_prefix=prefix, **kw)
        c = RedisL2DecisionCache(s, MemoryDecisionCache(CacheSettings()), clock=clock)
        await c.start()
        made.append(c)
        return c

    yield make
    for c in made:
        await c.aclose()


async def test_a_decision_set_by_one_replica_is_a_hit_for_another(caches, prefix):
    a, b = await caches(), await caches()
    assert await b.get("rev1:abc") is None
    await a.set("rev1:abc", ALLOW, 30)
    got = await b.get("rev1:abc")
    assert got == ALLOW and got.cache_hit  # every field survives the trip, marked as a hit
    # The hit went into b's L1: it no longer needs Redis for it.
    delete_prefix(redis_url(), prefix)
    assert await b.get("rev1:abc") == ALLOW


async def test_ttl_is_the_decisions_and_expired_entries_miss(caches, prefix):
    a = await caches()
    await a.set("rev1:ttl", DENY, 7)
    with redis.Redis.from_url(redis_url()) as r:
        ttl_ms = r.pttl(prefix + "rev1:ttl")
    assert 0 < ttl_ms <= 7000  # Redis expires it after the decision's cache_ttl_s
    # A replica whose clock is past the entry's expiry does not use it, even while Redis still has it.
    late = await caches(clock=lambda: time.time() + 8)
    assert await late.get("rev1:ttl") is None
    await a.set("rev1:zero", DENY, 0)  # ttl 0: never cached (a fail-open stand-in)
    with redis.Redis.from_url(redis_url()) as r:
        assert not r.exists(prefix + "rev1:zero")


async def test_garbage_in_redis_is_a_miss(caches, prefix):
    c = await caches()
    with redis.Redis.from_url(redis_url()) as r:
        r.set(prefix + "rev1:junk", b"not json")
        r.set(prefix + "rev1:planted", b'{"allow": "yes", "obligations": {}}')
    assert await c.get("rev1:junk") is None
    assert await c.get("rev1:planted") is None


async def test_redis_refusing_is_a_miss_and_never_leaks_the_password(caches, caplog):
    sock, url = refusing_url(password="sekret-l2-pass")
    try:
        c = await caches(url=url)
        with caplog.at_level(logging.DEBUG):
            await c.set("rev1:x", DENY, 30)  # no exception: the L1 still has it
            assert await c.get("rev1:x") == DENY
            assert await c.get("rev1:other") is None
        assert "failed" in caplog.text and "127.0.0.1" in caplog.text
        assert "sekret-l2-pass" not in caplog.text
        assert "sekret-l2-pass" not in repr(L2CacheSettings(redis_url=url))
    finally:
        sock.close()


async def _stage(policy_dir: Path, cache: Any) -> tuple[PolicyStage, RegorusEngine, Metrics]:
    engine = RegorusEngine(PolicySettings(hot_reload=False, evaluator="interpreter"), policy_dir)
    await engine.start()
    metrics = Metrics()
    return PolicyStage(engine, cache, metrics), engine, metrics


def _hits(m: Metrics) -> float:
    return m.cache_hit._value.get()


async def test_keys_carry_the_revision_across_replicas(caches, tmp_path):
    doc = model_input("intern-bot", "llm.chat", "gpt-4o-mini")
    other = tmp_path / "policies"
    shutil.copytree(POLICIES, other)
    data = other / "portcullis" / "config" / "data.json"
    data.write_text(data.read_text().replace('"cache_ttl_s": 60', '"cache_ttl_s": 59'))
    s1, e1, m1 = await _stage(POLICIES, await caches())
    s2, e2, m2 = await _stage(POLICIES, await caches())
    s3, e3, m3 = await _stage(other, await caches())
    try:
        d1, _ = await s1.decide(doc)
        d2, _ = await s2.decide(doc)  # same revision, another replica: from Redis
        d3, _ = await s3.decide(doc)  # another revision: evaluated, never the old decision
        assert (d1.cache_hit, d2.cache_hit, d3.cache_hit) == (False, True, False)
        assert (_hits(m2), _hits(m3)) == (1, 0)
        assert d2.revision == e1.revision != d3.revision == e3.revision and d3.cache_ttl_s == 59
    finally:
        for e in (e1, e2, e3):
            await e.aclose()


async def test_a_hung_redis_still_decides_and_a_deny_stays_a_deny(caches, tmp_path):
    doc = model_input("observer", "llm.chat", "gpt-4o")  # tier 0 may not use gpt-4o
    server = RedisProcess(tmp_path).start()
    try:
        c = await caches(url=server.url, timeout_s=0.05)
        stage, engine, metrics = await _stage(POLICIES, c)
        try:
            server.pause()  # Redis accepts connections but never answers: every call times out
            d, _ = await stage.decide(doc)
            assert not d.allow and not d.cache_hit  # evaluated, and denied
            other = await caches(url=server.url, timeout_s=0.05)  # a replica with an empty L1
            assert await other.get(engine.revision + ":" + "0" * 64) is None
            server.resume()
            await c.set("rev1:back", DENY, 30)  # it answers again: used again
            assert await other.get("rev1:back") == DENY
        finally:
            await engine.aclose()
    finally:
        server.kill()


def test_settings_resolve_the_url_from_the_environment(tmp_path):
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text("cache: {l2: {redis_url_env: L2_URL}}\n"
                   "upstreams: {mock: {provider: mock}}\nroutes: [{match: 'mock-*', upstream: mock}]\n")
    s = load_settings(cfg, {"L2_URL": "redis://:pw-from-env@127.0.0.1:6390/3"})
    assert s.cache.l2 is not None and s.cache.l2.redis_url == "redis://:pw-from-env@127.0.0.1:6390/3"
    assert "pw-from-env" not in repr(s)
    with pytest.raises(ConfigError) as e:
        load_settings(cfg, {})
    assert ("cache.l2.redis_url_env", "environment variable L2_URL is not set") in e.value.problems
