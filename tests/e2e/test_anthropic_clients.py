"""What real Anthropic clients need: max_tokens clamping, count_tokens, Anthropic's headers, model listing."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import anthropic
import openai
import pytest

from tests.support.harness import KEYS, PROVIDER_KEYS, copy_policies
from tests.support.upstream_server import request_id

MSG = [{"role": "user", "content": "hello claude"}]
CLAMPED = "x-portcullis-max-tokens-clamped"


def client(gw, agent, **kw):
    # timeout: the SDK refuses a non-streamed max_tokens=64000 call under its default timeout
    return anthropic.Anthropic(base_url=gw.url, api_key=KEYS[agent], max_retries=0, timeout=30, **kw)


def oa_client(gw, agent):
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS[agent], max_retries=0)


# ---- max_tokens: clamp on /v1/messages by default ----------------------------------------

def test_model_maximum_max_tokens_is_clamped_to_the_tier_cap(gateway, upstream):
    tag = request_id()
    raw = client(gateway, "intern-bot").messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=64000, messages=MSG, extra_headers={"x-request-id": tag})
    assert raw.parse().content[0].text == "You said: hello claude"
    assert raw.headers[CLAMPED] == "64000->2048"
    [sent] = upstream.received(tag)
    assert sent.json()["max_tokens"] == 2048  # the tier 1 obligation reached the provider
    row = gateway.audit_row(raw.headers["x-request-id"])
    assert row["decision"] == "allow" and row["error"] is None
    assert json.loads(row["reasons"]) == ["max_tokens 64000 clamped to the 2048 allowed"]


def test_streamed_request_is_clamped_too(gateway):
    with client(gateway, "builder").messages.stream(model="claude-sonnet-4-6", max_tokens=64000,
                                                    messages=MSG) as s:
        assert "".join(s.text_stream) == "You said: hello claude"
        assert s.response.headers[CLAMPED] == "64000->4096"


def test_within_the_cap_is_not_marked_clamped(gateway):
    raw = client(gateway, "intern-bot").messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=2048, messages=MSG)
    assert CLAMPED not in raw.headers
    assert json.loads(gateway.audit_row(raw.headers["x-request-id"])["reasons"]) == []


def test_openai_surface_still_refuses_by_default(gateway):
    with pytest.raises(openai.BadRequestError) as e:
        oa_client(gateway, "intern-bot").chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5000)
    assert e.value.code == "max_output_tokens_exceeded"


def test_the_rule_is_per_surface_by_config(make_gateway, upstream):
    gw = make_gateway(policy__max_output_tokens={"anthropic": "refuse", "openai": "clamp"})
    with pytest.raises(anthropic.BadRequestError) as e:
        client(gw, "intern-bot").messages.create(model="claude-haiku-4-5", max_tokens=5000, messages=MSG)
    assert "max_tokens 5000 exceeds the 2048" in e.value.body["error"]["message"]
    tag = request_id()
    raw = oa_client(gw, "intern-bot").chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MSG, max_tokens=5000, extra_headers={"x-request-id": tag})
    assert raw.headers[CLAMPED] == "5000->2048"
    assert upstream.received(tag)[0].json()["max_tokens"] == 2048


# ---- POST /v1/messages/count_tokens ----------------------------------------------------------

def test_count_tokens_is_governed_and_forwarded(gateway, upstream):
    c = client(gateway, "intern-bot")
    tag = request_id()
    raw = c.messages.with_raw_response.count_tokens(
        model="claude-haiku-4-5", messages=MSG, system="be brief", extra_headers={"x-request-id": tag})
    counted = raw.parse().input_tokens
    msg = c.messages.create(model="claude-haiku-4-5", max_tokens=100, messages=MSG, system="be brief")
    assert counted == msg.usage.input_tokens  # the same count the messages call reports
    [sent] = upstream.received(tag)
    assert sent.path == "/v1/messages/count_tokens"
    assert sent.headers["x-api-key"] == PROVIDER_KEYS["TEST_ANTHROPIC_KEY"]
    assert "max_tokens" not in sent.json()
    row = gateway.audit_row(raw.headers["x-request-id"])
    assert (row["action"], row["resource_name"], row["upstream"], row["decision"], row["status"]) == \
        ("llm.count_tokens", "claude-haiku-4-5", "anthropic", "allow", 200)


def test_count_tokens_outside_the_tier_is_refused_in_anthropic_format(gateway, upstream):
    tag = request_id()
    with pytest.raises(anthropic.PermissionDeniedError) as e:
        client(gateway, "observer").messages.count_tokens(model="claude-haiku-4-5", messages=MSG,
                                                         extra_headers={"x-request-id": tag})
    assert e.value.body["error"]["type"] == "permission_error"
    assert "tier 0 may not use model claude-haiku-4-5" in e.value.body["error"]["message"]
    assert upstream.received(tag) == []
    row = gateway.audit_row(e.value.request_id)
    assert (row["action"], row["decision"], row["status"]) == ("llm.count_tokens", "deny", 403)


def test_count_tokens_answered_by_the_mock_upstream(gateway):
    n = client(gateway, "architect").messages.count_tokens(model="mock-claude", messages=MSG).input_tokens
    msg = client(gateway, "architect").messages.create(model="mock-claude", max_tokens=50, messages=MSG)
    assert n == msg.usage.input_tokens


# ---- Anthropic's response headers ------------------------------------------------------------

@pytest.fixture
def tight(make_gateway, tmp_path):
    """A gateway whose tier 1 may make 3 requests a minute."""
    policies = copy_policies(tmp_path / "policies")
    data_file = policies / "portcullis" / "config" / "data.json"
    data = json.loads(data_file.read_text())
    data["tiers"]["1"]["obligations"]["requests_per_minute"] = 3
    data_file.write_text(json.dumps(data))
    return make_gateway(policy_dir=policies)


def _instant(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_anthropic_ratelimit_headers_request_id_and_429(tight):
    c = client(tight, "intern-bot")
    before = datetime.now(timezone.utc).replace(microsecond=0)
    counted = c.messages.with_raw_response.count_tokens(model="claude-haiku-4-5", messages=MSG)
    h = counted.headers
    assert h["anthropic-ratelimit-requests-limit"] == "3" and h["anthropic-ratelimit-requests-remaining"] == "2"
    assert h["anthropic-ratelimit-tokens-limit"] == "40000"
    assert h["anthropic-ratelimit-tokens-remaining"] == "40000"  # counting reserves no tokens
    assert _instant(h["anthropic-ratelimit-requests-reset"]) >= before  # RFC 3339 instants, as Anthropic sends
    assert _instant(h["anthropic-ratelimit-tokens-reset"]) >= before
    assert not [k for k in h if k.startswith("x-ratelimit-")]  # not OpenAI's names on this surface

    raw = c.messages.with_raw_response.create(model="claude-haiku-4-5", max_tokens=100, messages=MSG)
    assert raw.headers["request-id"] == raw.headers["x-request-id"]
    assert raw.parse()._request_id == raw.headers["x-request-id"]
    assert raw.headers["anthropic-ratelimit-requests-remaining"] == "1"
    assert int(raw.headers["anthropic-ratelimit-tokens-remaining"]) < 40000 - 100  # reserved: input + max_tokens

    with c.messages.stream(model="claude-haiku-4-5", max_tokens=100, messages=MSG) as s:
        "".join(s.text_stream)
        assert s.request_id == s.response.headers["x-request-id"]
        assert s.response.headers["anthropic-ratelimit-requests-remaining"] == "0"

    with pytest.raises(anthropic.RateLimitError) as e:
        c.messages.create(model="claude-haiku-4-5", max_tokens=100, messages=MSG)
    h = e.value.response.headers
    assert e.value.body["error"]["type"] == "rate_limit_error"
    assert e.value.request_id == h["x-request-id"] == e.value.body["request_id"]
    assert int(h["retry-after"]) >= 1
    assert h["anthropic-ratelimit-requests-limit"] == "3" and h["anthropic-ratelimit-requests-remaining"] == "0"
    assert _instant(h["anthropic-ratelimit-requests-reset"]) > before
    assert not [k for k in h if k.startswith("x-ratelimit-")]
    assert tight.audit_row(e.value.request_id)["decision"] == "rate_limited"


def test_streamed_refusal_carries_the_request_id(gateway):
    with pytest.raises(anthropic.PermissionDeniedError) as e:
        with client(gateway, "intern-bot").messages.stream(model="claude-sonnet-4-6", max_tokens=10, messages=MSG):
            pass
    assert e.value.request_id and e.value.request_id == e.value.response.headers["x-request-id"]


def test_error_event_mid_stream_carries_the_request_id(gateway):
    c = client(gateway, "architect")  # tier 4 reaches the test upstream's fault models
    with pytest.raises(anthropic.APIStatusError) as e:
        with c.messages.stream(model="fault-die-midstream", max_tokens=100,
                               messages=[{"role": "user", "content": "one two three four five"}]) as s:
            "".join(s.text_stream)
    assert e.value.body["error"]["type"] == "api_error"
    assert e.value.request_id == e.value.body["request_id"] == e.value.response.headers["x-request-id"]
    assert e.value.response.headers["anthropic-ratelimit-requests-limit"] == "600"


def test_openai_routes_keep_openai_names(gateway):
    raw = oa_client(gateway, "intern-bot").chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
    assert raw.headers["x-ratelimit-limit-requests"] == "60"
    assert not [k for k in raw.headers if k.startswith("anthropic-ratelimit-")] and "request-id" not in raw.headers


# ---- GET /v1/models --------------------------------------------------------------------------

def test_anthropic_listing_has_only_anthropic_models(gateway):
    c = client(gateway, "architect")
    assert sorted(m.id for m in c.models.list()) == ["claude-haiku-4-5", "claude-sonnet-4-6"]
    assert c.models.retrieve("claude-sonnet-4-6").id == "claude-sonnet-4-6"
    with pytest.raises(anthropic.NotFoundError):
        c.models.retrieve("gpt-4o")  # reachable for architect, but not with the anthropic SDK


def test_mock_models_count_by_family_and_owned_by_hides_the_upstream(make_gateway):
    # The mock speaks both APIs: claude-* counts as Anthropic-shaped, the rest as OpenAI's;
    # owned_by names that family, never the internal upstream ("mock").
    gw = make_gateway(routes=[{"match": "*", "upstream": "mock",
                               "models": ["gpt-4o-mini", "claude-haiku-4-5", "claude-sonnet-4-6"]}])
    assert [m.id for m in client(gw, "builder").models.list()] == ["claude-haiku-4-5", "claude-sonnet-4-6"]
    owners = {m.id: m.owned_by for m in oa_client(gw, "builder").models.list()}
    assert owners == {"gpt-4o-mini": "openai", "claude-haiku-4-5": "anthropic", "claude-sonnet-4-6": "anthropic"}
