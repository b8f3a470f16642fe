"""langchain-anthropic's ChatAnthropic, unmodified, through the gateway: it sends the model's
maximum max_tokens (64,000) by default, and counts tokens with /v1/messages/count_tokens."""
from __future__ import annotations

import anthropic
import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.messages import HumanMessage

from tests.support.harness import KEYS
from tests.support.upstream_server import request_id


def chat(gw, agent="intern-bot", **kw):
    return ChatAnthropic(model="claude-haiku-4-5", base_url=gw.url, api_key=KEYS[agent], max_retries=0, **kw)


def test_default_max_tokens_works_clamped_to_the_tier_cap(gateway, upstream):
    tag = request_id()
    model = chat(gateway, default_headers={"x-request-id": tag})
    assert model.max_tokens == 64000  # what a refusing gateway turns into a 400 out of the box
    reply = model.invoke("hello langchain")
    assert reply.content == "You said: hello langchain"
    assert reply.usage_metadata["output_tokens"] > 0
    [sent] = upstream.received(tag)
    assert sent.json()["max_tokens"] == 2048  # the tier 1 cap, enforced


def test_streaming_and_token_counting(gateway):
    model = chat(gateway)
    assert "".join(c.content for c in model.stream("hello stream")) == "You said: hello stream"
    n = model.get_num_tokens_from_messages([HumanMessage("hello count")])
    assert n == model.invoke("hello count").usage_metadata["input_tokens"]


def test_refusal_reaches_langchain_as_the_sdk_error(gateway):
    with pytest.raises(anthropic.PermissionDeniedError):
        chat(gateway, "observer").invoke("hi")
