"""The replay's comparison (pure) and rendering, and a candidate that fails to decide some inputs
(the real embedded engine, in process, over a real SQLite audit store)."""
from __future__ import annotations

import json
import shutil
import time

from adapters.audit.sqlite import SQLiteAuditStore
from gateway.audit.writer import AuditWriter
from gateway.replay.command import replay
from gateway.replay.compare import Comparison, change_kind
from gateway.replay.render import render
from gateway.settings import load_settings
from gateway.stages.policy import digest
from gateway.types import Decision
from tests.support.audit_rows import event, settings
from tests.support.harness import REPO

OB = {"max_output_tokens": 2048}


def dec(allow: bool, reasons=(), obligations=OB, **kw) -> Decision:
    return Decision(allow=allow, reasons=tuple(reasons), obligations=dict(obligations), **kw)


def test_change_kind_takes_the_most_consequential_difference():
    assert change_kind(dec(True), dec(False, ["no"], {})) == "allow_to_deny"
    assert change_kind(dec(False, ["no"]), dec(True)) == "deny_to_allow"
    assert change_kind(dec(True), dec(True, obligations={"max_output_tokens": 1})) == "obligations"
    assert change_kind(dec(False, ["x"]), dec(False, ["x"], violation={"kind": "k", "severity": "HIGH"})) == "lifecycle"
    assert change_kind(dec(False, ["x"]), dec(False, ["x"], approval={"required": True, "reason": ""})) == "lifecycle"
    assert change_kind(dec(False, ["x"]), dec(False, ["x", "y"])) == "reasons"
    assert change_kind(dec(True, revision="a"), dec(True, revision="b", cache_ttl_s=5)) is None


def _doc(agent: str, model: str) -> dict:
    return {"agent": {"id": agent}, "action": "llm.chat", "resource": {"type": "model", "name": model}}


def test_comparison_weights_by_requests_and_keeps_the_busiest_examples():
    c = Comparison(limit=2)
    for i in range(30):  # 30 inputs flip; input i was sent i+1 times
        c.add(f"d{i:02}", _doc(f"a{i % 3}", f"m{i}"), i + 1, dec(True), dec(False, ["gone"]))
    c.add("same", _doc("a0", "m-same"), 100, dec(True), dec(True))
    c.add("rw", _doc("a1", "m-rw"), 7, dec(False, ["old"]), dec(False, ["new"]))
    rep = c.report()
    assert rep["changes"]["allow_to_deny"] == {"requests": sum(range(1, 31)), "inputs": 30}
    assert rep["changes"]["reasons"] == {"requests": 7, "inputs": 1}
    assert rep["unchanged"] == {"requests": 100, "inputs": 1}
    assert [e["input_digest"] for e in rep["examples"]["allow_to_deny"]] == ["d29", "d28"]
    agents = {r["key"]: r for r in rep["breakdown"]["agent"]}
    assert agents["a2"]["allow_to_deny"] == {"requests": sum(i + 1 for i in range(2, 30, 3)), "inputs": 10}
    assert agents["a1"]["reasons"] == {"requests": 7, "inputs": 1}
    assert c.failed("allow-to-deny") and not c.failed("deny-to-allow") and c.failed("any")
    only_reasons = Comparison()
    only_reasons.add("rw", _doc("a", "m"), 1, dec(False, ["old"]), dec(False, ["new"]))
    assert not only_reasons.failed("any")  # a reworded reason alone never fails a build


async def test_inputs_the_candidate_cannot_decide_count_as_fail_closed_denials(tmp_path):
    cand = tmp_path / "cand"
    shutil.copytree(REPO / "policies_rego", cand)
    with (cand / "portcullis" / "decision.rego").open("a") as f:  # a second value: an eval error
        f.write('\ndecision := {"allow": true} if input.action == "llm.embedding"\n')
    config = tmp_path / "gateway.yaml"
    config.write_text(json.dumps({
        "identity": {"agents_file": str(REPO / "config" / "agents.yaml")},
        "policy": {"dir": str(REPO / "policies_rego"), "hot_reload": False},
        "audit": {"path": str(tmp_path / "audit.db"), "spool_path": str(tmp_path / "audit.spool")},
        "lifecycle": {"path": str(tmp_path / "lifecycle.db")},
        "upstreams": {"mock": {"provider": "mock"}}, "routes": [{"match": "*", "upstream": "mock"}]}))
    s = load_settings(config, {})
    store = SQLiteAuditStore(s.audit, s.path(s.audit.path))
    await store.start()
    w = AuditWriter(store, settings(), tmp_path / "audit.spool")
    await w.start()
    agent = {"id": "builder", "tier": 2, "maturity": "supervised", "workspace": "quickstart", "labels": {},
             "auth": "api_key"}
    docs = [{"agent": agent, "action": action, "resource": {"type": "model", "name": model, "upstream": "mock"},
             "request": {"api": "openai", "stream": False}}
            for action, model in (("llm.chat", "gpt-4o"), ("llm.embedding", "text-embedding-3-small"))]
    for i, doc in enumerate(docs * 3):
        await w.record(event(i, ts=time.time(), policy_input=doc, input_digest=digest(doc)))
    await w.aclose()
    await store.aclose()

    rep = await replay(s, s.path(s.policy.dir), cand, limit=1, fail_on="allow-to-deny")
    assert rep["rows"] == 6 and rep["inputs"] == 2
    assert rep["errors"] == {"baseline": 0, "candidate": 1}
    assert rep["changes"]["allow_to_deny"] == {"requests": 3, "inputs": 1} and rep["failed"]
    [ex] = rep["examples"]["allow_to_deny"]
    assert ex["input"]["action"] == "llm.embedding"
    assert ex["candidate"]["reasons"][0].startswith("policy error: ")
    assert "the candidate set failed to decide 1 distinct input(s)" in render(rep, "table")
