"""Limits from obligations: 429 with OpenAI's headers, exact reservation under concurrency."""
from __future__ import annotations

import asyncio
import time

import anthropic
import openai
import pytest

from tests.support.harness import KEYS
from tests.support.upstream_server import request_id

MSG = [{"role": "user", "content": "hi"}]


def test_requests_per_minute_gives_429_with_headers_and_audit(make_gateway):
    gw = make_gateway()
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS["observer"], max_retries=0)
    ok = 0
    t0 = time.monotonic()
    with pytest.raises(openai.RateLimitError) as e:
        for _ in range(100):
            c.embeddings.create(model="text-embedding-3-small", input="x")
            ok += 1
    # tier 0: 20 requests per minute, then refused; the bucket refills one request
    # every 3 s, which only a very slow run would see.
    assert 20 <= ok <= 20 + int((time.monotonic() - t0) / 3)
    h = e.value.response.headers
    assert int(h["retry-after"]) >= 1
    assert h["x-ratelimit-limit-requests"] == "20" and h["x-ratelimit-remaining-requests"] == "0"
    assert h["x-ratelimit-reset-requests"].endswith("s")
    row = gw.audit_row(h["x-request-id"])
    assert (row["decision"], row["status"]) == ("rate_limited", 429)
    assert "requests per minute" in row["error"]


def test_allowed_responses_carry_ratelimit_headers(make_gateway):
    gw = make_gateway()
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS["intern-bot"], max_retries=0)
    raw = c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
    assert raw.headers["x-ratelimit-limit-requests"] == "60"
    assert raw.headers["x-ratelimit-remaining-requests"] == "59"
    assert raw.headers["x-ratelimit-limit-tokens"] == "40000"


async def test_concurrent_token_reservations_cannot_overshoot(make_gateway, upstream):
    gw = make_gateway()
    c = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=KEYS["architect"], max_retries=0)
    tags = [request_id() for _ in range(80)]

    async def one(tag: str):
        try:
            # fault-slow holds every admitted request until the gateway's read
            # timeout (504), so no reservation is settled while others arrive.
            await c.chat.completions.create(model="fault-slow", messages=MSG, max_tokens=16384,
                                            extra_headers={"x-request-id": tag})
        except openai.RateLimitError as e:
            return e.code
        except openai.APIStatusError as e:
            return e.status_code

    t0 = time.monotonic()
    results = await asyncio.gather(*(one(tag) for tag in tags))
    elapsed = time.monotonic() - t0
    await c.close()
    admitted = results.count(504)
    # tier 4: 1,000,000 tokens/min; each request reserves 16384 output tokens plus
    # its input estimate, so 60 fit at once. The bucket refills ~16,667 tokens/s,
    # at most one more request per second of the run: never more than that.
    assert 60 <= admitted <= 60 + int(elapsed) + 1, (admitted, elapsed)
    assert results.count("rate_limit_exceeded") == 80 - admitted
    # exactly the admitted requests were forwarded, once each: nothing unreserved
    assert [len(upstream.received(t)) for t in tags] == [int(r == 504) for r in results]


def test_settled_usage_returns_unused_tokens(make_gateway):
    gw = make_gateway()
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS["intern-bot"], max_retries=0)
    first = c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG, max_tokens=2048)
    after_reserve = int(first.headers["x-ratelimit-remaining-tokens"])
    second = c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG, max_tokens=2048)
    # the first request used ~15 tokens, not the 2048+ reserved: the rest came back
    assert int(second.headers["x-ratelimit-remaining-tokens"]) > after_reserve - 2048


def test_request_bigger_than_budget_is_refused(make_gateway):
    gw = make_gateway(server__max_body_bytes=1_000_000)
    c = anthropic.Anthropic(base_url=gw.url, api_key=KEYS["observer"], max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError):  # a student may not chat at all
        c.messages.create(model="gpt-4o-mini", max_tokens=10, messages=MSG)
    big = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS["observer"], max_retries=0)
    with pytest.raises(openai.RateLimitError) as e:
        big.embeddings.create(model="text-embedding-3-small", input="word " * 20_000)
    assert e.value.code == "request_too_large"
