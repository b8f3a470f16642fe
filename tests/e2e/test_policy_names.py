"""Model names and policy vocabularies through a real gateway, with the real SDKs.

- A name with a control character is refused at parse time with a 400 in each
  SDK's format (it used to reach the policy engine: an audited 503 with the
  interpreter, a different decision with the compiled program).
- Dotted names reach T4's `*` (glob delimiters are null, not [] = ["."]).
- A team's own tiers and maturity names run end to end.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import anthropic
import openai
import pytest

from tests.support.harness import KEYS
from tests.support.team_policy import team_policies

MSG = [{"role": "user", "content": "hi"}]


def oai(gw, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


@pytest.mark.parametrize("model", ["gpt-4o\x00mini", "gpt-4o-mini\n", "gpt-\x1b[31m", "gpt-4o\x7f", "gpt\x85"])
def test_openai_control_character_in_model_is_400(gateway, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai(gateway, KEYS["architect"]).chat.completions.create(model=model, messages=MSG)
    body = info.value.body
    assert body["code"] == "invalid_model" and body["param"] == "model"
    assert "control characters" in body["message"]
    row = gateway.audit_row(info.value.response.headers["x-request-id"])
    assert (row["status"], row["decision"]) == (400, "error")


@pytest.mark.parametrize("model", ["claude-haiku-4-5\x00", "claude\tsonnet"])
def test_anthropic_control_character_in_model_is_400(gateway, model: str) -> None:
    c = anthropic.Anthropic(base_url=gateway.url, api_key=KEYS["architect"], max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as info:
        c.messages.create(model=model, max_tokens=10, messages=MSG)
    assert info.value.body["error"]["type"] == "invalid_request_error"
    assert "control characters" in info.value.body["error"]["message"]


@pytest.mark.parametrize("model", ["gpt-4.1-nano", "gpt-4.5-preview", "gpt-4o:2024.08"])
def test_tier4_reaches_dotted_model_names(gateway, model: str) -> None:
    reply = oai(gateway, KEYS["architect"]).chat.completions.create(model=model, messages=MSG)
    assert reply.choices[0].message.content == "You said: hi"


def test_lower_tier_still_refused_dotted_names(gateway) -> None:
    with pytest.raises(openai.PermissionDeniedError) as info:
        oai(gateway, KEYS["builder"]).chat.completions.create(model="gpt-4.1-nano", messages=MSG)
    assert "tier 2 may not use model gpt-4.1-nano" in info.value.body["message"]


def test_a_team_vocabulary_runs_end_to_end(make_gateway, tmp_path: Path) -> None:
    policies = team_policies(tmp_path / "policies")
    keys = {"lead-bot": "pk-team-lead", "new-bot": "pk-team-new"}
    agents = tmp_path / "agents.yaml"
    agents.write_text(
        "workspaces: {team: {}}\n"
        "agents:\n"
        "  - {id: lead-bot, tier: 7, maturity: lead, workspace: team}\n"
        "  - {id: new-bot, tier: 1, maturity: trainee, workspace: team}\n"
        "keys:\n" + "".join(
            f"  - {{id: {a}, sha256: {hashlib.sha256(k.encode()).hexdigest()}, workspace: team, agent: {a}}}\n"
            for a, k in keys.items()))
    gw = make_gateway(policies, identity__agents_file=str(agents))
    reply = oai(gw, keys["lead-bot"]).chat.completions.create(model="gpt-4.1-nano", messages=MSG)
    assert reply.choices[0].message.content == "You said: hi"
    with pytest.raises(openai.PermissionDeniedError) as info:
        oai(gw, keys["new-bot"]).chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert "maturity trainee below required junior for llm.chat" in info.value.body["message"]
