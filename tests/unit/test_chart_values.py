"""values.yaml, values.schema.json and the chart README's table of values.

The schema refuses wrong types, unknown keys and secrets in plain text: provider keys, the
Redis URL and the PostgreSQL DSN may only be referenced (a Secret name and key, an *_env name).
"""
from __future__ import annotations

import json
import re
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.support.chart import CHART, RELEASE


BAD_VALUES = {
    "string replicaCount": {"replicaCount": "2"},
    "unknown top-level key": {"replicas": 2},
    "plain-text provider key in secrets": {"secrets": {"openaiApiKey": "sk-live-123"}},
    "plain-text provider key on an upstream": {"config": {"upstreams": {"openai": {
        "provider": "openai", "base_url": "https://api.openai.com", "api_key": "sk-live-123"}}}},
    "plain-text Redis URL": {"config": {"limits": {"redis_url": "redis://:hunter2@redis:6379/0"}}},
    "plain-text PostgreSQL DSN": {"config": {"audit": {"dsn": "postgresql://app:hunter2@pg/portcullis"}}},
    "plain-text tool key": {"config": {"tools": {"servers": {"orders": {"url": "http://o/mcp", "api_key": "k"}}}}},
    "plain-text L2 cache Redis URL": {"config": {"cache": {"l2": {"redis_url": "redis://:pw@redis:6379/1"}}}},
    "wrong type in a nested value": {"autoscaling": {"enabled": "yes"}},
    "unknown config section": {"config": {"polcy": {"fail": "open"}}},
    "git-sync without a repo": {"gitSync": {"enabled": True}},
    "an agent key in plain text": {"agents": {"content": {"keys": [{"id": "k", "key": "pk-123", "workspace": "w"}]}}},
    "the console secret in plain text": {"config": {"admin": {"console_secret": "s" * 40}}},
    "the admin listener off the pod's loopback": {"config": {"admin": {"host": "0.0.0.0"}}},
    "an admin token in plain text": {"config": {"admin": {"tokens": [{"name": "ops", "sha256": "pat-secret"}]}}},
}


@pytest.mark.parametrize("case", BAD_VALUES)
def test_schema_rejects_bad_values(case: str) -> None:
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema({})  # the defaults pass
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(BAD_VALUES[case])
        with pytest.raises(helm.HelmError):  # and an install would refuse them
            chart.render(BAD_VALUES[case], name=RELEASE, namespace="portcullis")


def test_schema_closes_every_object_of_the_top_level() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) <= set(schema["properties"])
    for key, sub in schema["properties"].items():
        if sub.get("type") == "object" and "properties" in sub and key != "config":
            assert sub.get("additionalProperties") is False, key


def _leaves(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict) and node:
        return [p for k, v in node.items() for p in _leaves(v, f"{prefix}.{k}" if prefix else k)]
    return [prefix]


def test_readme_has_a_row_for_every_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()
    rows = set(re.findall(r"^\| `([^`]+)` \|", readme, re.M))
    missing = [p for p in _leaves(values) if p not in rows]
    assert not missing, f"values without a row in charts/portcullis/README.md: {missing}"
    stale = sorted(r for r in rows if r not in _leaves(values))
    assert not stale, f"README rows for values that do not exist: {stale}"
