"""Limits across a fleet: gateways sharing one Redis admit exactly the limit together,
and a Redis that goes away fails requests closed with a 503 that is audited."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Any

import httpx
import openai
import pytest

from tests.support.harness import KEYS, PROVIDER_KEYS, REPO, Gateway, free_socket, gateway_config
from tests.support.redis_process import RedisProcess, delete_prefix, refusing_url
from tests.support.services import redis_url, unique
from tests.support.upstream_server import request_id
from tests.support.waiting import at_least, eventually

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture
def fleet(make_gateway):
    """Two gateways (separate processes' worth of state) sharing one Redis key prefix."""
    url, prefix = redis_url(), unique("pc-test-fleet:")
    yield [make_gateway(limits__backend="redis", limits__redis_url=url, limits__key_prefix=prefix,
                        limits__redis_timeout_s=10.0)  # a loaded test machine is not an outage
           for _ in range(2)]
    delete_prefix(url, prefix)


def wait_for_rows(gws: list[Gateway], n: int) -> list[dict[str, Any]]:
    return eventually(at_least(n, lambda: [r for gw in gws for r in gw.audit_rows()]), f"{n} audit rows across the fleet")


async def test_two_gateways_sharing_redis_admit_exactly_the_requests_limit(fleet):
    clients = [openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=KEYS["observer"], max_retries=0)
               for gw in fleet]

    async def one(i: int) -> tuple[Gateway, openai.RateLimitError | None]:
        try:
            await clients[i % 2].embeddings.create(model="text-embedding-3-small", input="x")
            return fleet[i % 2], None
        except openai.RateLimitError as e:
            return fleet[i % 2], e

    t0 = time.monotonic()
    results = await asyncio.gather(*(one(i) for i in range(60)))
    elapsed = time.monotonic() - t0
    for c in clients:
        await c.close()
    ok = sum(e is None for _, e in results)
    # tier 0: 20 requests per minute for the agent, fleet-wide (each gateway alone would
    # admit 20); the shared bucket refills one request every 3 s of the run.
    assert 20 <= ok <= 20 + int(elapsed / 3), (ok, elapsed)
    for gw, e in results:
        if e is None:
            continue
        h = e.response.headers
        assert int(h["retry-after"]) >= 1
        assert h["x-ratelimit-limit-requests"] == "20" and h["x-ratelimit-remaining-requests"] == "0"
        row = gw.audit_row(h["x-request-id"])
        assert (row["decision"], row["status"]) == ("rate_limited", 429)
    rows = wait_for_rows(fleet, 60)
    assert sorted(r["decision"] for r in rows) == sorted(["allow"] * ok + ["rate_limited"] * (60 - ok))


async def test_two_gateways_sharing_redis_cannot_overshoot_the_token_budget(fleet, upstream):
    clients = [openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=KEYS["architect"], max_retries=0)
               for gw in fleet]
    tags = [request_id() for _ in range(100)]

    async def one(i: int) -> Any:
        try:
            # fault-slow holds every admitted request until the read timeout (504), so
            # nothing is settled while the others arrive.
            await clients[i % 2].chat.completions.create(model="fault-slow", messages=MSG, max_tokens=16384,
                                                         extra_headers={"x-request-id": tags[i]})
        except openai.RateLimitError as e:
            return e.code
        except openai.APIStatusError as e:
            return e.status_code

    t0 = time.monotonic()
    results = await asyncio.gather(*(one(i) for i in range(100)))
    elapsed = time.monotonic() - t0
    for c in clients:
        await c.close()
    admitted = results.count(504)
    # tier 4: 1,000,000 tokens/min; 60 reservations of 16384 + input fit, fleet-wide. The
    # bucket refills ~16,667 tokens/s: at most one more request per second of the run.
    assert 60 <= admitted <= 60 + int(elapsed) + 1, (admitted, elapsed)
    assert results.count("rate_limit_exceeded") == 100 - admitted
    # exactly the admitted requests were forwarded, once each: nothing unreserved
    assert [len(upstream.received(t)) for t in tags] == [int(r == 504) for r in results]


def test_losing_redis_gives_503_in_openai_format_audited_then_recovers(make_gateway, tmp_path):
    server = RedisProcess(tmp_path, password="s3cret-pw").start()
    try:
        gw = make_gateway(limits__backend="redis", limits__redis_url=server.url, limits__redis_timeout_s=10.0)
        c = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS["observer"], max_retries=0)
        c.embeddings.create(model="text-embedding-3-small", input="x")
        server.kill()
        with pytest.raises(openai.InternalServerError) as e:
            c.embeddings.create(model="text-embedding-3-small", input="x")
        err = e.value
        assert err.status_code == 503 and err.code == "rate_limiter_unavailable"
        assert err.body["message"].startswith("rate limiter unavailable: ")
        assert f"127.0.0.1:{server.port}" in err.body["message"]
        assert "s3cret-pw" not in err.response.text
        row = gw.audit_row(err.response.headers["x-request-id"])
        assert (row["decision"], row["status"]) == ("error", 503)
        assert row["error"].startswith("rate limiter unavailable") and "s3cret-pw" not in str(row)
        server.start()  # Redis is back (empty): the same gateway admits again
        c.embeddings.create(model="text-embedding-3-small", input="x")
    finally:
        server.kill()


def test_portcullis_serve_starts_not_ready_when_redis_is_unreachable_at_startup(tmp_path):
    # Issue 10 (fleet hardening): a replica comes up without Redis, not ready, and reconnects
    # (tests/e2e/test_degraded_boot.py has the audited 503s and the recovery).
    sock, url = refusing_url("s3cret-pw")
    port = sock.getsockname()[1]
    listen = free_socket()
    gw_port = listen.getsockname()[1]
    listen.close()
    config = gateway_config(tmp_path, "http://127.0.0.1:9", limits__backend="redis", limits__redis_url=url)
    with sock:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(config),
                                 "--port", str(gw_port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=REPO, env={**os.environ, **PROVIDER_KEYS})
        try:
            def not_ready() -> Any:
                if proc.poll() is not None:
                    raise AssertionError(f"serve exited {proc.returncode}")
                try:
                    r = httpx.get(f"http://127.0.0.1:{gw_port}/readyz")
                except httpx.TransportError:
                    return None
                return r if r.status_code == 503 else None

            ready = eventually(not_ready, "serve to answer /readyz", timeout=60)
            assert f"127.0.0.1:{port}/0" in ready.json()["dependencies"]["redis"]["error"]
        finally:
            proc.terminate()
            out, err = proc.communicate(timeout=60)
    assert f"connecting the rate limiter on Redis at 127.0.0.1:{port}/0 failed" in err
    assert "s3cret-pw" not in err + out + ready.text
