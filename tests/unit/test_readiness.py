"""Readiness (gateway/readiness.py): cached, coalesced probes; reconnecting what was down at boot;
the probes of the Redis limiter and the PostgreSQL store; `*_env` secrets in the settings."""
from __future__ import annotations

import asyncio
import random
import traceback
from pathlib import Path

import pytest
import yaml

from adapters.audit.postgres import PostgresAuditStore
from adapters.ratelimit.redis import RedisRateLimiter
from gateway.audit.spool import SpoolFile
from gateway.audit.unchained import UnchainedRows
from gateway.errors import BackendError
from gateway.metrics import Metrics
from gateway.readiness import Check, Readiness, ReadinessSettings, Reconnector, backoff, dependency_checks
from gateway.settings import ConfigError, LimitsSettings, check, load_settings
from gateway.types import Limits
from tests.support.audit_rows import settings as audit_settings
from tests.support.harness import REPO, PROVIDER_KEYS, gateway_config
from tests.support.redis_process import RedisProcess, refusing_url
from tests.support.services import pg_dsn, redis_url
from tests.support.waiting import eventually_async

SECRET = "s3cret-Pw-readiness"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class CountingProbe:
    """A dependency's probe that counts its calls; `gate` holds a round open while callers pile up."""

    def __init__(self, answer: str | None = None) -> None:
        self.calls = 0
        self.answer = answer
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self) -> str | None:
        self.calls += 1
        await self.gate.wait()
        return self.answer


async def test_probes_are_cached_and_concurrent_callers_share_one_round():
    clock, redis_probe, pg_probe = Clock(), CountingProbe(), CountingProbe("postgres: refused")
    metrics = Metrics()
    r = Readiness([Check("redis", redis_probe), Check("postgres", pg_probe)], lambda: [],
                  ReadinessSettings(probe_cache_s=1.0), metrics, clock=clock)
    redis_probe.gate.clear()
    callers = [asyncio.create_task(r.report()) for _ in range(50)]  # kubelet, LB, Prometheus at once
    await asyncio.sleep(0)
    redis_probe.gate.set()
    reports = await asyncio.gather(*callers)
    assert (redis_probe.calls, pg_probe.calls) == (1, 1)
    assert reports[0] == {"status": "not ready", "problems": ["postgres: refused"],
                          "dependencies": {"redis": {"ok": True, "error": None},
                                           "postgres": {"ok": False, "error": "postgres: refused"}}}
    clock.now += 0.9
    await r.report()
    assert redis_probe.calls == 1  # still fresh
    clock.now += 0.2
    pg_probe.answer = None
    assert (await r.report())["status"] == "ready"
    assert (redis_probe.calls, pg_probe.calls) == (2, 2)
    text = metrics.render().decode()
    assert 'portcullis_dependency_up{dependency="redis"} 1.0' in text
    assert 'portcullis_dependency_up{dependency="postgres"} 1.0' in text


async def test_a_hanging_or_raising_probe_is_down_and_local_problems_are_fresh_each_time():
    async def hangs() -> str | None:
        await asyncio.sleep(3600)
        return None

    async def raises() -> str | None:
        raise RuntimeError("bug")

    local: list[str] = []
    r = Readiness([Check("opa", hangs), Check("x", raises)], lambda: list(local),
                  ReadinessSettings(probe_timeout_s=0.05, probe_cache_s=60))
    report = await r.report()
    assert report["dependencies"]["opa"] == {"ok": False, "error": "opa: no answer within 0.05s"}
    assert report["dependencies"]["x"] == {"ok": False, "error": "x: probe failed (RuntimeError)"}
    local.append("draining: shutting down")  # not cached: seen by the very next call
    assert (await r.report())["problems"][-1] == "draining: shutting down"


def test_backoff_doubles_to_the_cap_with_jitter_below():
    delays = backoff(0.5, 4.0, random.Random(7))
    got = [next(delays) for _ in range(7)]
    for d, nominal in zip(got, [0.5, 1, 2, 4, 4, 4, 4]):
        assert 0.8 * nominal <= d <= nominal


def test_a_second_backend_of_one_kind_gets_its_own_check():
    class Limiter(RedisRateLimiter):
        pass

    checks = dependency_checks([RedisRateLimiter(LimitsSettings()), object(), Limiter(LimitsSettings())])
    assert [c.name for c in checks] == ["redis", "redis (Limiter)"]


async def test_a_dependency_down_at_start_is_reconnected_in_the_background(tmp_path):
    server = RedisProcess(tmp_path, password=SECRET)  # not started: refused
    lim = RedisRateLimiter(LimitsSettings(redis_url=server.url, key_prefix="pc_reconnect_test:"))
    metrics = Metrics()
    rc = Reconnector(ReadinessSettings(reconnect_initial_s=0.02, reconnect_max_s=0.1), metrics)
    try:
        await rc.start(lim)  # does not raise: a Dependency
        assert rc.pending == {"redis"}
        problem = await lim.probe()
        assert problem and f"127.0.0.1:{server.port}" in problem and SECRET not in problem
        with pytest.raises(BackendError) as e:  # what a request meets meanwhile: fail closed
            await lim.reserve("a", Limits(requests_per_minute=5), 1)
        assert SECRET not in "".join(traceback.format_exception(e.value))
        assert 'portcullis_dependency_up{dependency="redis"} 0.0' in metrics.render().decode()
        await asyncio.to_thread(server.start)
        await eventually_async(lambda: not rc.pending, "the limiter to be reconnected")
        assert await lim.probe() is None
        assert (await lim.reserve("a", Limits(requests_per_minute=5), 1)).allowed
        assert 'portcullis_dependency_up{dependency="redis"} 1.0' in metrics.render().decode()
    finally:
        await rc.aclose()
        await lim.aclose()
        server.kill()


async def test_a_backend_that_is_not_a_dependency_still_fails_the_start():
    class Local:  # embedded (no probe()): a local problem does not fix itself
        async def start(self) -> None:
            raise BackendError("disk full")

    rc = Reconnector(ReadinessSettings())
    with pytest.raises(BackendError, match="disk full"):
        await rc.start(Local())
    assert not rc.pending


async def test_redis_and_postgres_probes_answer_for_real_and_never_show_passwords():
    lim = RedisRateLimiter(LimitsSettings(redis_url=redis_url()))
    await lim.start()
    try:
        assert await lim.probe() is None
    finally:
        await lim.aclose()
    store = PostgresAuditStore(audit_settings(backend="postgres", dsn=pg_dsn(), table="probe_unused_t"))
    await store.start()
    try:
        assert await store.probe() is None
    finally:
        await store.aclose()
        from tests.support import pg
        await pg.drop_table(pg_dsn(), "probe_unused_t")
    sock, _ = refusing_url()
    with sock:
        port = sock.getsockname()[1]
        down = PostgresAuditStore(audit_settings(backend="postgres", timeout_s=1,
                                                 dsn=f"postgresql://postgres:{SECRET}@127.0.0.1:{port}/test"))
        with pytest.raises(BackendError):
            await down.start()
        problem = await down.probe()
    assert problem and f"127.0.0.1:{port}/test" in problem and SECRET not in problem


async def test_unchained_rows_already_in_the_spool_are_not_linked_twice(tmp_path):
    """A crash after linking held rows into the spool, before forgetting them: none is stored twice."""
    spool_path = tmp_path / "audit.spool"
    held = UnchainedRows(spool_path)
    await held.hold([{"request_id": "a", "status": 503}, {"request_id": "b", "status": 503}])
    SpoolFile(spool_path).append([{"request_id": "a", "status": 503, "chain_id": "c", "seq": 1,
                                   "prev_hash": "0" * 64, "hash": "h"}])
    again = UnchainedRows(spool_path)
    await again.load()
    assert again and again.count == 2
    rows, loose = await again.take(SpoolFile(spool_path))
    assert [r["request_id"] for r in rows] == ["b"] and loose == 0
    assert "seq" not in rows[0] and "hash" not in rows[0]


# ---- settings: secrets by environment variable name --------------------------------------

def fleet_config(tmp_path: Path, **limits_audit: object) -> Path:
    path = gateway_config(tmp_path, "http://127.0.0.1:9", limits__backend="redis", audit__backend="postgres",
                          **limits_audit)
    return path


def test_env_secrets_are_resolved_and_never_in_repr(tmp_path):
    path = fleet_config(tmp_path, limits__redis_url_env="PORTCULLIS_REDIS_URL", audit__dsn_env="PORTCULLIS_PG_DSN")
    url, dsn = f"redis://:{SECRET}@redis.internal:6379/2", f"postgresql://gw:{SECRET}@pg.internal:5432/audit"
    s = load_settings(path, {**PROVIDER_KEYS, "PORTCULLIS_REDIS_URL": url, "PORTCULLIS_PG_DSN": dsn})
    assert (s.limits.redis_url, s.audit.dsn) == (url, dsn)
    assert SECRET not in repr(s) and SECRET not in str(s)
    # Written in the file itself (not recommended), the password is kept out of repr as well.
    doc = yaml.safe_load(path.read_text())
    doc["limits"] = {"backend": "redis", "redis_url": url}
    doc["audit"] = {**doc["audit"], "dsn": dsn}
    del doc["audit"]["dsn_env"]
    path.write_text(yaml.safe_dump(doc))
    assert SECRET not in repr(load_settings(path, PROVIDER_KEYS))


def test_an_unset_env_variable_is_a_config_error_naming_the_key(tmp_path):
    path = fleet_config(tmp_path, limits__redis_url_env="PORTCULLIS_REDIS_URL", audit__dsn_env="PORTCULLIS_PG_DSN")
    with pytest.raises(ConfigError) as e:
        load_settings(path, {**PROVIDER_KEYS, "PORTCULLIS_PG_DSN": ""})
    assert e.value.problems == [("limits.redis_url_env", "environment variable PORTCULLIS_REDIS_URL is not set"),
                                ("audit.dsn_env", "environment variable PORTCULLIS_PG_DSN is not set")]
    assert ("audit.dsn_env", "environment variable PORTCULLIS_PG_DSN is not set") in check(path, PROVIDER_KEYS)


def test_the_quickstart_needs_no_env_secrets():
    assert check(REPO / "config" / "quickstart.yaml", {}) == []


def test_webhook_urls_come_from_the_environment_and_never_show(tmp_path):
    hook = f"https://hooks.slack.example/services/T0/B0/{SECRET}"
    path = gateway_config(tmp_path, "http://127.0.0.1:9", lifecycle__webhooks=[
        {"url_env": "PORTCULLIS_SLACK_URL", "format": "slack"}, {"url": "http://127.0.0.1:9/hook"}])
    s = load_settings(path, {**PROVIDER_KEYS, "PORTCULLIS_SLACK_URL": hook})
    assert [w.url for w in s.lifecycle.webhooks] == [hook, "http://127.0.0.1:9/hook"]
    assert SECRET not in repr(s)
    with pytest.raises(ConfigError) as e:
        load_settings(path, PROVIDER_KEYS)
    assert e.value.problems == [("lifecycle.webhooks.0.url_env", "environment variable PORTCULLIS_SLACK_URL is not set")]
    doc = yaml.safe_load(path.read_text())
    doc["lifecycle"]["webhooks"] = [{"format": "json"}]
    path.write_text(yaml.safe_dump(doc))
    assert any(k == "lifecycle.webhooks.0" and "url or url_env" in r for k, r in check(path, PROVIDER_KEYS))
