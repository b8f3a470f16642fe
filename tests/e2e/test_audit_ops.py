"""Audit rows for every outcome, `audit tail/verify` on them, hot reload, ops endpoints, CLI."""
from __future__ import annotations

import json
import subprocess
import sys

import httpx
import openai
import pytest

from tests.support import audit_backends
from tests.support.audit_backends import BACKENDS
from tests.support.harness import KEYS, PROVIDER_KEYS, REPO, copy_policies
from tests.support.waiting import eventually

MSG = [{"role": "user", "content": "audit me"}]
ENV = {"PATH": "/usr/bin:/bin", **PROVIDER_KEYS}  # the CLI gets no credentials of its own


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=60)


def client(gw, agent):
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS.get(agent, agent), max_retries=0)


def mixed_traffic(gw) -> list[str]:
    """One request per outcome; returns their request ids."""
    rids = []
    raw = client(gw, "intern-bot").chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
    rids.append(raw.headers["x-request-id"])
    for call in (lambda: client(gw, "intern-bot").chat.completions.create(model="gpt-4o", messages=MSG),
                 lambda: client(gw, "pk-bogus").chat.completions.create(model="gpt-4o-mini", messages=MSG),
                 lambda: client(gw, "architect").chat.completions.create(model="fault-500", messages=MSG)):
        with pytest.raises(openai.APIStatusError) as e:
            call()
        rids.append(e.value.response.headers["x-request-id"])
    rids.append(httpx.get(gw.url + "/nope").headers["x-request-id"])
    return rids


@pytest.fixture(params=BACKENDS)
def audit_backend(request, tmp_path, loop_thread):
    """Each audit store (PostgreSQL: the machine's, one table per test; a must under CI)."""
    b = audit_backends.backend(request.param, tmp_path)
    yield b
    loop_thread.run(b.cleanup())


def test_every_outcome_gets_one_row_without_secrets_and_chain_verifies(audit_backend, make_gateway, loop_thread):
    gw = make_gateway(**audit_backend.overrides)
    rids = mixed_traffic(gw)
    rows = [gw.audit_row(r) for r in rids]
    assert [(r["decision"], r["status"]) for r in rows] == [
        ("allow", 200), ("deny", 403), ("error", 401), ("allow", 500), ("error", 404)]
    deny = rows[1]
    assert json.loads(deny["reasons"]) == ["tier 1 may not use model gpt-4o"]
    assert json.loads(deny["policy_input"])["resource"] == {"type": "model", "name": "gpt-4o", "upstream": "openai"}
    assert deny["input_digest"] and deny["policy_revision"]
    assert [r["seq"] for r in gw.audit_rows()] == [1, 2, 3, 4, 5]
    gw.stop()  # flushes the queue

    stored = loop_thread.run(audit_backend.stored_bytes())
    assert all(rid.encode() in stored for rid in rids)  # the dump does hold the rows
    for secret in [*KEYS.values(), *PROVIDER_KEYS.values(), "pk-bogus"]:
        assert secret.encode() not in stored
    tail = cli("audit", "tail", "-n", "10", "--config", str(gw.config_path), env=ENV)
    assert tail.returncode == 0 and all(r in tail.stdout for r in rids), tail.stdout + tail.stderr
    ok = cli("audit", "verify", "--config", str(gw.config_path), env=ENV)
    assert ok.returncode == 0 and "chain test: 5 rows, ok" in ok.stdout, ok.stdout + ok.stderr

    def tamper(sql: str, *args) -> None:
        assert loop_thread.run(audit_backend.sql(sql, *args)) == 1

    tamper("UPDATE {t} SET decision = 'allow' WHERE request_id = $1", rids[1])
    bad = cli("audit", "verify", "--config", str(gw.config_path), env=ENV)
    assert bad.returncode == 1 and f"BROKEN at seq {deny['seq']}: edited" in bad.stdout, bad.stdout + bad.stderr
    tamper("UPDATE {t} SET decision = 'deny' WHERE request_id = $1", rids[1])
    assert cli("audit", "verify", "--config", str(gw.config_path), env=ENV).returncode == 0
    tamper("DELETE FROM {t} WHERE seq = 3")
    bad = cli("audit", "verify", "--config", str(gw.config_path), env=ENV)
    assert bad.returncode == 1 and "BROKEN at seq 4: deleted rows before seq 4" in bad.stdout, bad.stdout


def test_a_client_supplied_nul_does_not_wedge_the_audit(audit_backend, make_gateway):
    """PostgreSQL text refuses NUL; a 404 path or model name with one must still be stored."""
    gw = make_gateway(**audit_backend.overrides)
    nul = httpx.get(gw.url + "/nope%00x")  # no credential needed to reach the audit
    ok = client(gw, "architect").chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
    row = gw.audit_row(nul.headers["x-request-id"])
    assert row["status"] == 404
    gw.audit_row(ok.headers["x-request-id"])
    gw.stop()
    r = cli("audit", "verify", "--config", str(gw.config_path), env=ENV)
    assert r.returncode == 0 and "2 rows, ok" in r.stdout, r.stdout + r.stderr
    assert "/nope\x00x" in cli("audit", "tail", "--config", str(gw.config_path), env=ENV).stdout


def test_hot_reload_swaps_policy_and_rejects_broken_set(make_gateway, tmp_path):
    pol = copy_policies(tmp_path / "policies")
    gw = make_gateway(policy_dir=pol, policy__hot_reload=True)
    c = client(gw, "intern-bot")
    with pytest.raises(openai.PermissionDeniedError):
        c.chat.completions.create(model="gpt-4o", messages=MSG)
    data_file = pol / "portcullis" / "config" / "data.json"
    data = json.loads(data_file.read_text())
    data["tiers"]["1"]["models"].append("gpt-4o")
    data_file.write_text(json.dumps(data))

    def allowed():
        try:
            c.chat.completions.create(model="gpt-4o", messages=MSG)
            return True
        except openai.PermissionDeniedError:
            return False

    eventually(allowed, "the reload letting tier 1 reach gpt-4o", interval=0.1)  # no cached denial survives
    metrics = httpx.get(gw.url + "/metrics").text
    revision_line = next(ln for ln in metrics.splitlines() if ln.startswith("portcullis_policy_info"))

    (pol / "portcullis" / "broken.rego").write_text("package portcullis\n\nthis is not rego {\n")
    eventually(lambda: 'portcullis_policy_reloads_total{result="rejected"}' in httpx.get(gw.url + "/metrics").text,
               "the broken set to be rejected and counted", interval=0.1)
    assert allowed()  # the last good set stays active
    now = httpx.get(gw.url + "/metrics").text
    assert revision_line in now


def test_ops_endpoints(gateway):
    assert httpx.get(gateway.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(gateway.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    client(gateway, "intern-bot").chat.completions.create(model="gpt-4o-mini", messages=MSG)
    m = httpx.get(gateway.url + "/metrics").text
    for name in ("portcullis_requests_total{", "portcullis_decision_cache_total{", "portcullis_policy_eval_seconds",
                 "portcullis_upstream_seconds", "portcullis_overhead_seconds", "portcullis_audit_queue_depth",
                 "portcullis_audit_write_failures_total", "portcullis_policy_info{revision="):
        assert name in m, name
    assert 'portcullis_requests_total{decision="allow",status="200",surface="openai"}' in m


def test_policy_engine_error_fails_closed_with_503_and_audit(make_gateway, tmp_path):
    pol = tmp_path / "policies" / "portcullis"
    pol.mkdir(parents=True)
    # Two complete rules that both match one model: a conflict, which is an evaluation error.
    (pol / "decision.rego").write_text(
        "package portcullis\n\n"
        'default decision := {"allow": true, "reasons": [], "obligations": {}, "cache_ttl_s": 0}\n\n'
        'decision := {"allow": true, "reasons": ["a"]} if input.resource.name == "gpt-4.1-mini"\n\n'
        'decision := {"allow": false, "reasons": ["b"]} if input.resource.name == "gpt-4.1-mini"\n')
    gw = make_gateway(policy_dir=pol.parent)
    assert client(gw, "intern-bot").chat.completions.create(model="gpt-4o-mini", messages=MSG).choices
    with pytest.raises(openai.APIStatusError) as e:
        client(gw, "intern-bot").chat.completions.create(model="gpt-4.1-mini", messages=MSG)
    assert e.value.status_code == 503  # fail closed: never an allow
    row = gw.audit_row(e.value.response.headers["x-request-id"])
    assert (row["decision"], row["status"]) == ("error", 503)


def test_check_config_names_key_paths(tmp_path):
    ok = cli("check-config", "config/quickstart.yaml")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: {port: 'eighty'}\npolicy: {fail: sometimes}\nupstreams: {x: {provider: openai}}\n"
                   "routes: [{match: 'gpt-*', upstream: nowhere}]\n")
    r = cli("check-config", str(bad))
    assert r.returncode != 0
    for path in ("server.port", "policy.fail", "upstreams.x"):
        assert path in r.stdout, r.stdout


def test_policy_test_command_runs_rego_tests():
    r = cli("policy", "test", "policies_rego")
    assert r.returncode == 0, r.stdout[-2000:]
    assert "PASS data.portcullis" in r.stdout and " 0 failed" in r.stdout.splitlines()[-1]


def test_keys_new_prints_key_and_matching_hash():
    import hashlib
    r = cli("keys", "new", "--workspace", "w", "--agent", "a")
    key = next(ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("key:"))
    digest = next(ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("sha256:"))
    assert hashlib.sha256(key.encode()).hexdigest() == digest
