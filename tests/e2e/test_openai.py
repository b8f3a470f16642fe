"""The real openai SDK (sync and async, streamed and not) through a real gateway."""
from __future__ import annotations

import openai
import pytest

from tests.support.harness import KEYS, PROVIDER_KEYS
from tests.support.upstream_server import request_id

MSG = [{"role": "user", "content": "hello from the tests"}]


def client(gw, agent):
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS[agent], max_retries=0)


def aclient(gw, agent):
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=KEYS[agent], max_retries=0)


def test_intern_chats_and_row_records_usage(gateway, upstream):
    tag = request_id()  # what this request sent upstream is found by it
    raw = client(gateway, "intern-bot").chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MSG, extra_headers={"x-request-id": tag})
    completion = raw.parse()
    assert completion.choices[0].message.content == "You said: hello from the tests"
    rid = raw.headers["x-request-id"]
    # the provider key was injected and the agent's own key never left the gateway
    [sent] = upstream.received(tag)
    assert sent.headers["authorization"] == "Bearer " + PROVIDER_KEYS["TEST_OPENAI_KEY"]
    assert KEYS["intern-bot"] not in repr(sent.headers)
    row = gateway.audit_row(rid)
    assert (row["agent_id"], row["tier"], row["maturity"], row["auth"]) == ("intern-bot", 1, "intern", "api_key")
    assert (row["action"], row["resource_name"], row["upstream"], row["decision"], row["status"]) == \
        ("llm.chat", "gpt-4o-mini", "openai", "allow", 200)
    assert (row["input_tokens"], row["output_tokens"]) == (completion.usage.prompt_tokens,
                                                           completion.usage.completion_tokens)
    assert row["policy_revision"] and row["input_digest"]


def test_obligation_caps_output_when_client_sets_none(gateway, upstream):
    tag = request_id()
    client(gateway, "intern-bot").chat.completions.create(model="gpt-4o-mini", messages=MSG,
                                                          extra_headers={"x-request-id": tag})
    [sent] = upstream.received(tag)
    assert sent.json()["max_completion_tokens"] == 2048  # tier 1 obligation


def test_stream_passes_chunks_and_hides_unrequested_usage(gateway):
    stream = client(gateway, "intern-bot").chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "You said: hello from the tests"
    assert len(chunks) > 3 and all(c.usage is None for c in chunks)


def test_stream_usage_chunk_when_asked_and_audited(gateway):
    raw = client(gateway, "intern-bot").chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MSG, stream=True, stream_options={"include_usage": True})
    assert raw.headers["x-accel-buffering"] == "no"
    chunks = list(raw.parse())
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens > 0
    row = gateway.audit_row(raw.headers["x-request-id"])
    assert row["stream"] == 1 and (row["input_tokens"], row["output_tokens"]) == \
        (usage.prompt_tokens, usage.completion_tokens)


async def test_async_client_streams(gateway):
    c = aclient(gateway, "builder")
    stream = await c.chat.completions.create(model="gpt-4o", messages=MSG, stream=True)
    text = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
    assert text == "You said: hello from the tests"
    await c.close()


async def test_async_completions_embeddings_responses(gateway):
    c = aclient(gateway, "builder")
    comp = await c.completions.create(model="gpt-4o", prompt="say hi")
    assert comp.choices[0].text and comp.usage.prompt_tokens > 0
    emb = await c.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) > 0
    resp = await c.responses.create(model="gpt-4o", input="respond please")
    assert resp.output_text == "You said: respond please"
    stream = await c.responses.create(model="gpt-4o", input="stream please", stream=True)
    kinds = [ev.type async for ev in stream]
    assert kinds[-1] == "response.completed" and "response.output_text.delta" in kinds
    await c.close()


def test_observer_lists_only_allowed_models_and_may_embed_but_not_chat(gateway):
    c = client(gateway, "observer")
    assert sorted(m.id for m in c.models.list()) == ["gpt-4o-mini", "text-embedding-3-small"]
    assert c.embeddings.create(model="text-embedding-3-small", input="x").data
    with pytest.raises(openai.PermissionDeniedError) as e:
        c.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert "student" in e.value.message and "llm.chat" in e.value.message


def test_model_visibility_widens_with_tier(gateway):
    seen = {a: {m.id for m in client(gateway, a).models.list()} for a in KEYS}
    assert seen["observer"] < seen["intern-bot"] < seen["builder"] < seen["executor"] <= seen["architect"]
    assert "gpt-4o" in seen["builder"] and "gpt-4o" not in seen["intern-bot"]
    assert client(gateway, "builder").models.retrieve("gpt-4o").id == "gpt-4o"
    with pytest.raises(openai.NotFoundError):
        client(gateway, "intern-bot").models.retrieve("gpt-4o")


@pytest.mark.parametrize("agent,model,allowed", [
    ("observer", "gpt-4o-mini", False),        # student may not chat
    ("intern-bot", "gpt-4o-mini", True),
    ("intern-bot", "gpt-4o", False),           # tier 1 does not reach gpt-4o
    ("builder", "gpt-4o", True),
    ("builder", "o3-mini", False),             # reasoning models start at tier 3
    ("executor", "o3-mini", True),
    ("architect", "gpt-4.1", True),
])
def test_each_quickstart_agent_allowed_and_denied(gateway, agent, model, allowed):
    c = client(gateway, agent)
    if allowed:
        raw = c.chat.completions.with_raw_response.create(model=model, messages=MSG)
        assert raw.parse().choices[0].message.content
        assert gateway.audit_row(raw.headers["x-request-id"])["decision"] == "allow"
    else:
        with pytest.raises(openai.PermissionDeniedError) as e:
            c.chat.completions.create(model=model, messages=MSG)
        row = gateway.audit_row(e.value.response.headers["x-request-id"])
        assert row["decision"] == "deny" and row["status"] == 403 and row["reasons"] != "[]"
