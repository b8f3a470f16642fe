"""The real anthropic SDK (sync and async, streamed and not) through a real gateway."""
from __future__ import annotations

import anthropic
import pytest

from tests.support.harness import KEYS, PROVIDER_KEYS
from tests.support.upstream_server import request_id

MSG = [{"role": "user", "content": "hello claude"}]


def client(gw, agent):
    return anthropic.Anthropic(base_url=gw.url, api_key=KEYS[agent], max_retries=0)


def test_messages_non_streamed_with_injected_provider_key(gateway, upstream):
    tag = request_id()
    raw = client(gateway, "intern-bot").messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=200, messages=MSG, extra_headers={"x-request-id": tag})
    msg = raw.parse()
    assert msg.content[0].text == "You said: hello claude"
    [sent] = upstream.received(tag)
    assert sent.headers["x-api-key"] == PROVIDER_KEYS["TEST_ANTHROPIC_KEY"]
    assert "authorization" not in sent.headers
    row = gateway.audit_row(raw.headers["x-request-id"])
    assert (row["action"], row["api"], row["upstream"], row["decision"]) == \
        ("llm.messages", "anthropic", "anthropic", "allow")
    assert (row["input_tokens"], row["output_tokens"]) == (msg.usage.input_tokens, msg.usage.output_tokens)


def test_messages_stream_usage_recorded_from_start_and_delta(gateway):
    c = client(gateway, "intern-bot")
    with c.messages.stream(model="claude-haiku-4-5", max_tokens=200, messages=MSG) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
        rid = s.response.headers["x-request-id"]
    assert text == "You said: hello claude"
    row = gateway.audit_row(rid)
    assert row["stream"] == 1 and row["action"] == "llm.messages"
    assert (row["input_tokens"], row["output_tokens"]) == (final.usage.input_tokens, final.usage.output_tokens)


async def test_async_messages_stream(gateway):
    c = anthropic.AsyncAnthropic(base_url=gateway.url, api_key=KEYS["builder"], max_retries=0)
    async with c.messages.stream(model="claude-sonnet-4-6", max_tokens=100, messages=MSG) as s:
        text = "".join([t async for t in s.text_stream])
    assert text == "You said: hello claude"
    await c.close()


def test_denials_and_auth_errors_in_anthropic_format(gateway):
    with pytest.raises(anthropic.PermissionDeniedError) as e:
        client(gateway, "intern-bot").messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=MSG)
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "permission_error"
    assert "tier 1" in e.value.body["error"]["message"]
    assert e.value.body["request_id"] == e.value.response.headers["x-request-id"]
    bad = anthropic.Anthropic(base_url=gateway.url, api_key="pk-not-a-key", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as e:
        bad.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=MSG)
    assert e.value.body["error"]["type"] == "authentication_error"
    assert "pk-not-a-key" not in e.value.response.text


def test_models_list_in_anthropic_format(gateway):
    ids = [m.id for m in client(gateway, "builder").models.list()]
    assert "claude-sonnet-4-6" in ids and "gpt-4o" not in ids  # only what the SDK can call
