"""Limits from obligations: 429 with OpenAI's headers, exact reservation under concurrency."""
from __future__ import annotations

import asyncio

import anthropic
import openai
import pytest

from tests.harness import KEYS

MSG = [{"role": "user", "content": "hi"}]


def test_requests_per_minute_gives_429_with_headers_and_audit(make_gateway):
    gw = make_gateway()
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS["observer"], max_retries=0)
    ok = 0
    with pytest.raises(openai.RateLimitError) as e:
        for _ in range(100):
            c.embeddings.create(model="text-embedding-3-small", input="x")
            ok += 1
    assert ok == 20  # tier 0: 20 requests per minute, then refused
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


async def test_concurrent_token_reservations_cannot_overshoot(make_gateway):
    gw = make_gateway()
    c = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=KEYS["intern-bot"], max_retries=0)

    async def one():
        try:
            await c.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=2048)
            return "ok"
        except openai.RateLimitError as e:
            return e.code

    results = await asyncio.gather(*(one() for _ in range(40)))
    await c.close()
    # tier 1: 40,000 tokens/min; each request reserves 2048 output tokens plus its
    # estimated input, so at most 19 fit, however the 40 requests interleave.
    assert results.count("ok") == 19
    assert results.count("rate_limit_exceeded") == 21


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
