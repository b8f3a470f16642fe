"""Shadow mode (policy.shadow) through real gateways and real SDKs, on SQLite and PostgreSQL.

The same traffic (tests/e2e/test_policy_replay.py's) goes through a gateway without a shadow set
and one with a contrary shadow set: the replay test's candidate (tier 1 loses gpt-4.1-mini,
tier 2's max_output_tokens drops) plus tier 0 gaining gpt-4o: intern-bot's denied gpt-4o request would be
allowed (tiers add up), and the observer's gpt-4o request is still denied, for one reason fewer. Every answer must be the same; the audit rows, the metrics and
`policy shadow-report` must show exactly the disagreements the edits make.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from gateway.shadow.report import shadow_report
from tests.e2e.test_policy_replay import ENV, MSG, TRAFFIC, candidate
from tests.support import audit_backends
from tests.support.audit_backends import BACKENDS
from tests.support.harness import KEYS, REPO, eventually, gateway_config


def contrary(dst: Path) -> Path:
    candidate(dst)
    data_file = dst / "portcullis" / "config" / "data.json"
    data = json.loads(data_file.read_text())
    data["tiers"]["0"]["models"].append("gpt-4o")
    data_file.write_text(json.dumps(data, indent=2))
    return dst


TRAFFIC_PLUS = [*TRAFFIC, ("observer", "gpt-4o", 1, False)]  # a student may not chat: reasons only


def send(gw) -> list[tuple[str, str, int, str]]:
    """Every call's (agent, model, status, answer or error code), in order."""
    out = []
    for agent, model, times, _ in TRAFFIC_PLUS:
        c = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS[agent], max_retries=0)
        for _ in range(times):
            try:
                r = c.chat.completions.create(model=model, messages=MSG)
                out.append((agent, model, 200, r.choices[0].message.content))
            except openai.APIStatusError as e:
                out.append((agent, model, e.status_code, e.body.get("code") if isinstance(e.body, dict) else ""))
    return out


def report(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "policy", "shadow-report", "--config",
                           str(config), *args], capture_output=True, text=True, cwd=REPO, env=ENV, timeout=120,
                          check=False)


def metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_contrary_shadow_set_changes_no_answer_and_records_each_disagreement(
        backend, tmp_path, make_gateway, loop_thread):
    plain = make_gateway()
    without = send(plain)
    b = audit_backends.backend(backend, tmp_path)
    shadow_dir = contrary(tmp_path / "shadow")
    gw = make_gateway(**b.overrides, policy__shadow={"dir": str(shadow_dir)})
    try:
        with_shadow = send(gw)
        assert with_shadow == without  # the shadow set never changes an answer
        assert sorted({s for _, _, s, _ in with_shadow}) == [200, 403]

        shadow_rev = gw.app.state.services.shadow.revision
        assert shadow_rev
        eventually(lambda: metric(_metrics(gw), "portcullis_shadow_decisions_total", result="agree")
                   + metric(_metrics(gw), "portcullis_shadow_decisions_total", result="disagree") == 13,
                   "13 shadow decisions")
        m = _metrics(gw)
        assert metric(m, "portcullis_shadow_disagreements_total", action="llm.chat", kind="allow_to_deny") == 5
        assert metric(m, "portcullis_shadow_disagreements_total", action="llm.chat", kind="deny_to_allow") == 1
        assert metric(m, "portcullis_shadow_disagreements_total", action="llm.chat", kind="reasons") == 1
        assert metric(m, "portcullis_shadow_disagreements_total", action="llm.chat", kind="obligations") == 2
        assert metric(m, "portcullis_shadow_dropped_total") == 0
        assert f'portcullis_shadow_policy_info{{revision="{shadow_rev}"}} 1.0' in m
        gw.stop()  # every row flushed

        rows = [r for r in gw.audit_rows() if r["action"] == "llm.chat"]
        assert len(rows) == 13 and {r["shadow_revision"] for r in rows} == {shadow_rev}
        assert {r["policy_revision"] for r in rows} != {shadow_rev}
        kinds = {}
        for r in rows:
            doc = r["shadow_decision"]
            doc = json.loads(doc) if isinstance(doc, str) else doc
            kinds[doc["kind"] if doc else None] = kinds.get(doc["kind"] if doc else None, 0) + 1
            if doc and doc["kind"] == "deny_to_allow":
                assert r["agent_id"] == "intern-bot" and r["resource_name"] == "gpt-4o"
                assert r["decision"] == "deny" and r["status"] == 403
                assert doc["serving"]["allow"] is False and doc["decision"]["allow"] is True
        assert kinds == {"allow_to_deny": 5, "deny_to_allow": 1, "obligations": 2, "reasons": 1, None: 4}

        # The rows still chain: the shadow columns are part of each row's hash.
        verify = subprocess.run([sys.executable, "-m", "gateway.cli", "audit", "verify", "--config",
                                 str(gw.config_path)], capture_output=True, text=True, cwd=REPO, env=ENV,
                                timeout=120, check=False)
        assert verify.returncode == 0, verify.stdout + verify.stderr

        r = report(gw.config_path, "--format", "json")
        assert r.returncode == 0, r.stderr
        rep = json.loads(r.stdout)
        assert rep["rows"] == 13 and rep["candidate"]["revision"] == shadow_rev
        assert {k: v["requests"] for k, v in rep["changes"].items()} == {
            "allow_to_deny": 5, "deny_to_allow": 1, "obligations": 2, "lifecycle": 0, "reasons": 1}
        assert rep["unchanged"]["requests"] == 4
        [d2a] = rep["examples"]["deny_to_allow"]
        assert d2a["input"]["agent"]["id"] == "intern-bot" and d2a["input"]["resource"]["name"] == "gpt-4o"
        assert d2a["candidate"]["allow"] is True and d2a["baseline"]["allow"] is False
        [why] = rep["examples"]["reasons"]
        assert why["baseline"]["reasons"] != why["candidate"]["reasons"] == [
            "maturity student below required intern for llm.chat"]
        md = report(gw.config_path, "--format", "md", "--fail-on", "deny-to-allow")
        assert md.returncode == 1  # --fail-on: a deny -> allow was recorded
        assert md.stdout.startswith("## Shadow mode:") and "| deny → allow | 1 | 1 |" in md.stdout
        # The same report in process, narrowed by the store: architect's request agreed.
        only = loop_thread.run(shadow_report(gw.settings, agent="architect", fail_on="any"))
        assert (only["rows"], only["unchanged"]["requests"], only["failed"]) == (1, 1, False)
    finally:
        gw.stop()
        loop_thread.run(b.cleanup())


def _metrics(gw) -> str:
    import httpx
    return httpx.get(gw.url + "/metrics", timeout=10).text


def test_sampling_dropping_alerting_and_hot_reload_of_the_shadow_set(tmp_path, make_gateway):
    shadow_dir = contrary(tmp_path / "shadow")
    gw = make_gateway(policy__shadow={"dir": str(shadow_dir), "sample": 1.0,
                                      "alert": {"rate": 0.2, "min_disagreements": 3, "window_s": 3600}},
                      policy__hot_reload=True)
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS["intern-bot"], max_retries=0)
    for _ in range(4):  # allowed now, denied by the shadow set: 4 disagreements of 4
        c.chat.completions.create(model="gpt-4.1-mini", messages=MSG)
    gw.lifecycle_flush()

    def alert():
        events = gw.loop.run(gw.lifecycle.manager.events(since=0.0))
        return [e for e in events if e.event_type == "policy.shadow_disagreements"]
    [event] = eventually(alert, "the shadow disagreement event")
    assert event.severity == "MEDIUM" and event.details["disagreements"] >= 3
    assert event.details["kinds"] == {"allow_to_deny": event.details["disagreements"]}

    # The shadow set is hot-reloaded: give tier 1 its model back and the disagreements stop.
    old = gw.app.state.services.shadow.revision
    data_file = shadow_dir / "portcullis" / "config" / "data.json"
    data = json.loads(data_file.read_text())
    data["tiers"]["1"]["models"].append("gpt-4.1-mini")
    data_file.write_text(json.dumps(data, indent=2))
    new = eventually(lambda: gw.app.state.services.shadow.revision != old and gw.app.state.services.shadow.revision,
                     "the shadow set reloaded")
    before = metric(_metrics(gw), "portcullis_shadow_disagreements_total", kind="allow_to_deny")
    rid = c.chat.completions.with_raw_response.create(model="gpt-4.1-mini", messages=MSG).headers["x-request-id"]
    row = gw.audit_row(rid)
    assert row["shadow_revision"] == new and row["shadow_decision"] is None
    assert metric(_metrics(gw), "portcullis_shadow_disagreements_total", kind="allow_to_deny") == before
    assert metric(_metrics(gw), "portcullis_shadow_reloads_total", result="ok") == 1


def test_unsampled_requests_have_no_shadow_columns(tmp_path, make_gateway):
    gw = make_gateway(policy__shadow={"dir": str(contrary(tmp_path / "shadow")), "sample": 0.0})
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS["intern-bot"], max_retries=0)
    rid = c.chat.completions.with_raw_response.create(model="gpt-4.1-mini", messages=MSG).headers["x-request-id"]
    row = gw.audit_row(rid)
    assert row["decision"] == "allow" and row["shadow_revision"] is None and row["shadow_decision"] is None
    assert metric(_metrics(gw), "portcullis_shadow_decisions_total", result="agree") == 0


def test_a_broken_shadow_set_is_refused_by_check_config_and_at_start(tmp_path, upstream):
    shadow_dir = contrary(tmp_path / "shadow")
    (shadow_dir / "portcullis" / "broken.rego").write_text("package portcullis\n\nallow if {\n")
    config = gateway_config(tmp_path, upstream.url, policy__shadow={"dir": str(shadow_dir)})
    checked = subprocess.run([sys.executable, "-m", "gateway.cli", "check-config", str(config)],
                             capture_output=True, text=True, cwd=REPO, env=ENV, timeout=60, check=False)
    assert checked.returncode == 1
    assert "policy.shadow.dir: portcullis/broken.rego:4: Rego syntax error" in checked.stdout, checked.stdout
    served = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", "0"],
                            capture_output=True, text=True, cwd=REPO, env=ENV, timeout=60, check=False)
    assert served.returncode != 0 and "broken.rego" in served.stderr, served.stderr[-2000:]


def test_rows_queued_for_a_shadow_decision_are_written_when_the_gateway_stops(tmp_path, make_gateway):
    gw = make_gateway(policy__shadow={"dir": str(contrary(tmp_path / "shadow"))})
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS["builder"], max_retries=0)
    ids = [c.chat.completions.with_raw_response.create(model="gpt-4o", messages=MSG).headers["x-request-id"]
           for _ in range(3)]
    gw.stop()
    rows = {r["request_id"]: r for r in gw.audit_rows()}
    assert all(rows[i]["shadow_revision"] for i in ids)
