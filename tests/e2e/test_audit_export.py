"""`portcullis audit export --format opa-decision-log` over audit stores filled by real SDK traffic."""
from __future__ import annotations

import json
import re
from datetime import datetime

import anthropic
import httpx
import openai
import pytest

from gateway.audit.chain import row_from_store
from tests.e2e.test_audit_ops import ENV, MSG, cli, client
from tests.support import audit_backends
from tests.support.audit_backends import BACKENDS
from tests.support.harness import KEYS

# OPA's decision-log event, field by field, as documented in "Decision Log Service API":
# https://www.openpolicyagent.org/docs/management-decision-logs (the table "Decision log updates
# contain the following fields"). Type names are the doc's: object, string, any, array[string].
OPA_FIELDS = {
    "labels": "object", "decision_id": "string", "trace_id": "string", "span_id": "string",
    "revision": "string", "bundles": "object", "path": "string", "query": "string", "input": "any",
    "result": "any", "requested_by": "string", "timestamp": "string", "metrics": "object",
    "erased": "array[string]", "masked": "array[string]",
}
# What every exported event must carry (the issue: decision_id, path, input, result, bundles, timestamp).
REQUIRED = {"decision_id", "path", "input", "result", "bundles", "timestamp", "labels"}
PY_TYPES = {"object": dict, "string": str, "array[string]": list}
RFC3339_NANO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")


def check_opa_event(event: dict) -> None:
    assert REQUIRED <= event.keys(), sorted(REQUIRED - event.keys())
    assert event.keys() <= OPA_FIELDS.keys(), sorted(event.keys() - OPA_FIELDS.keys())
    for name, value in event.items():
        kind = OPA_FIELDS[name]
        if kind != "any":
            assert isinstance(value, PY_TYPES[kind]), (name, value)
        if kind == "array[string]":
            assert all(isinstance(v, str) for v in value), (name, value)
    # `[_].bundles[_].revision` string; labels and metrics are key-value pairs (strings; numbers).
    assert all(isinstance(b, dict) and isinstance(b.get("revision"), str) for b in event["bundles"].values())
    assert all(isinstance(v, str) for v in event["labels"].values())
    assert all(isinstance(v, int) and not isinstance(v, bool) for v in event.get("metrics", {}).values())
    assert RFC3339_NANO.match(event["timestamp"]), event["timestamp"]
    datetime.fromisoformat(event["timestamp"][:26] + "+00:00")  # a real instant (to microseconds)
    assert "erased" not in event and "masked" not in event


@pytest.fixture(params=BACKENDS)
def audit_backend(request, tmp_path, loop_thread):
    b = audit_backends.backend(request.param, tmp_path)
    yield b
    loop_thread.run(b.cleanup())


def traffic(gw) -> tuple[list[str], list[str]]:
    """(request ids the policy decided, request ids refused before any decision)."""
    decided, undecided = [], []
    raw = client(gw, "intern-bot").chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
    decided.append(raw.headers["x-request-id"])
    with pytest.raises(openai.PermissionDeniedError) as e:  # tier 1 may not use gpt-4o
        client(gw, "intern-bot").chat.completions.create(model="gpt-4o", messages=MSG)
    decided.append(e.value.response.headers["x-request-id"])
    msg = anthropic.Anthropic(base_url=gw.url, api_key=KEYS["architect"], max_retries=0).messages \
        .with_raw_response.create(model="claude-haiku-4-5", max_tokens=10, messages=MSG)
    decided.append(msg.headers["x-request-id"])
    with pytest.raises(openai.AuthenticationError) as e:
        client(gw, "pk-bogus").chat.completions.create(model="gpt-4o-mini", messages=MSG)
    undecided.append(e.value.response.headers["x-request-id"])
    undecided.append(httpx.get(gw.url + "/nope").headers["x-request-id"])
    return decided, undecided


def test_export_is_opa_decision_log_of_the_decided_rows(audit_backend, make_gateway, tmp_path):
    gw = make_gateway(**audit_backend.overrides)
    decided, undecided = traffic(gw)
    rows = {rid: row_from_store(gw.audit_row(rid)) for rid in decided + undecided}
    gw.stop()  # flushes the queue

    r = cli("audit", "export", "--format", "opa-decision-log", "--config", str(gw.config_path), env=ENV)
    assert r.returncode == 0, r.stderr
    assert "3 decisions written, 2 rows without a policy decision skipped (5 rows scanned)" in r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert [e["decision_id"] for e in events] == decided  # one chain: in seq order
    for event in events:
        check_opa_event(event)
        row = rows[event["decision_id"]]
        assert event["path"] == "portcullis/decision"
        assert event["input"] == row["policy_input"] and event["input"]["agent"]["id"] == row["agent_id"]
        assert event["bundles"] == {"portcullis": {"revision": row["policy_revision"]}}
        assert event["labels"]["id"] == row["chain_id"] and event["labels"]["version"]
        assert event["timestamp"][:26] == row["ts"][:26]  # same instant, UTC, to the microsecond
        assert event["result"]["reasons"] == row["reasons"] and event["result"]["outcome"] == row["decision"]
        assert event["metrics"]["timer_portcullis_request_ns"] == round(row["latency_ms"] * 1e6)
    assert [e["result"]["allow"] for e in events] == [True, False, True]
    assert events[1]["result"]["reasons"] == ["tier 1 may not use model gpt-4o"]
    assert events[2]["input"]["action"] == "llm.messages"

    # --out and the time window: everything since a day ago; nothing before the first row.
    out = tmp_path / "decisions.jsonl"
    r = cli("audit", "export", "--since", "1d", "--out", str(out), "--config", str(gw.config_path), env=ENV)
    assert r.returncode == 0 and r.stdout == "", r.stderr
    assert [json.loads(line) for line in out.read_text().splitlines()] == events
    first = min(row["ts"] for row in rows.values())
    r = cli("audit", "export", "--until", first, "--config", str(gw.config_path), env=ENV)
    assert r.returncode == 0 and r.stdout == "" and "0 decisions written" in r.stderr, r.stderr
    r = cli("audit", "export", "--since", "yesterday", "--config", str(gw.config_path), env=ENV)
    assert r.returncode == 2 and "bad time 'yesterday'" in r.stderr
