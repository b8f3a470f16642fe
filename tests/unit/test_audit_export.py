"""Which audit rows `audit export` treats as policy decisions, and its time formats (pure functions)."""
from __future__ import annotations

import pytest

from gateway.audit.export import decided, decision_event, instant, rfc3339_nano

INPUT = {"agent": {"id": "a", "tier": 1, "maturity": "intern", "workspace": "w", "labels": {}, "auth": "api_key"},
         "action": "llm.chat", "resource": {"type": "model", "name": "m", "upstream": "openai"},
         "request": {"api": "openai", "stream": False}}


def row(**kw):
    base = {"chain_id": "c", "seq": 1, "ts": "2026-01-02T03:04:05.123456+00:00", "request_id": "r1",
            "decision": "allow", "reasons": [], "policy_revision": "rev1", "cache_hit": False, "status": 200,
            "latency_ms": 1.5, "upstream_ms": None, "client_ip": None, "trace_id": None, "policy_input": INPUT}
    return {**base, **kw}


def test_only_rows_the_policy_decided_are_exported() -> None:
    assert decided(row())
    assert decided(row(decision="deny", status=403))
    assert decided(row(decision="rate_limited", status=429))
    assert not decided(row(policy_input=None, policy_revision=None, status=401))  # refused before a decision
    assert not decided(row(policy_revision=None, decision="error", status=503))  # the policy failed closed
    assert not decided(row(policy_revision="bypass", decision="bypass"))  # nothing was evaluated
    lifecycle = {"actor": "ops", "rule": None, "change": "revoke", "old": {}, "new": {}, "reason": "x"}
    assert not decided(row(policy_input=lifecycle, policy_revision=None))  # an agent.lifecycle row


def test_event_fields() -> None:
    e = decision_event(row(decision="rate_limited", status=429, client_ip="10.0.0.1", upstream_ms=None),
                       {"app": "portcullis", "version": "1"})
    assert e["timestamp"] == "2026-01-02T03:04:05.123456000Z"
    assert e["result"]["allow"] is True and e["result"]["outcome"] == "rate_limited"  # the policy allowed it
    assert e["metrics"] == {"timer_portcullis_request_ns": 1_500_000}
    assert e["requested_by"] == "10.0.0.1" and "trace_id" not in e
    assert e["labels"] == {"app": "portcullis", "version": "1", "id": "c"}
    assert decision_event(row(decision="deny"), {})["result"]["allow"] is False


def test_times() -> None:
    assert rfc3339_nano(0.5) == "1970-01-01T00:00:00.500000000Z"
    now = 1_000_000.0
    assert instant("7d", now) == now - 7 * 86400
    assert instant("1970-01-01T00:01:00Z", now) == 60.0
    assert instant("120", now) == 120.0
    with pytest.raises(ValueError, match="bad time"):
        instant("last week", now)
