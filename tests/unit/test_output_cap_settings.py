"""policy.max_output_tokens: the clamp-or-refuse rule per surface, and the older boolean."""
from __future__ import annotations

import pytest
import yaml

from gateway.settings import ConfigError, load_settings


def load(tmp_path, policy):
    cfg = {"policy": policy, "upstreams": {"mock": {"provider": "mock"}},
           "routes": [{"match": "*", "upstream": "mock"}]}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return load_settings(path, {}).policy


def test_default_clamps_anthropic_and_refuses_openai(tmp_path):
    p = load(tmp_path, {})
    assert p.clamps("anthropic") and not p.clamps("openai")
    assert not p.clamps("mcp")  # a surface with no rule refuses


@pytest.mark.parametrize("old,expected", [(True, True), (False, False)])
def test_older_boolean_sets_every_surface(tmp_path, old, expected):
    p = load(tmp_path, {"clamp_max_output_tokens": old})
    assert p.clamps("anthropic") is expected and p.clamps("openai") is expected


@pytest.mark.parametrize("policy,path,reason", [
    ({"max_output_tokens": {"anthropic": "trim"}}, "policy.max_output_tokens.anthropic", "'clamp' or 'refuse'"),
    ({"max_output_tokens": {"gemini": "clamp"}}, "policy.max_output_tokens.gemini", "Extra inputs"),
    ({"max_output_tokens": {"openai": "clamp"}, "clamp_max_output_tokens": True}, "policy", "not both"),
    ({"clamp_max_output_tokens": "yes"}, "policy", "true or false"),
])
def test_bad_rules_name_the_key_path(tmp_path, policy, path, reason):
    with pytest.raises(ConfigError) as e:
        load(tmp_path, policy)
    [(where, why)] = e.value.problems
    assert where == path and reason in why
