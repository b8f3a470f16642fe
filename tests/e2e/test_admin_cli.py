"""`portcullis agents | events | report | ...` as subprocesses against a running gateway's
admin listener (and, with --direct, against its stores)."""
from __future__ import annotations

import dataclasses

import json
import os
import signal
import subprocess
import sys

import openai
import pytest

from tests.support.admin_api import (
    READ_TOKEN,
    WRITE_TOKEN,
    WRITER,
    admin_overrides,
    admin_url,
)
from tests.support.harness import (
    KEYS,
    PROVIDER_KEYS,
    REPO,
    Gateway,
    copy_policies,
    gateway_config,
)
from tests.support.waiting import eventually

MSG = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def gw(loop_thread, upstream, tmp_path_factory):
    g = Gateway(loop_thread, gateway_config(tmp_path_factory.mktemp("admin-cli"), upstream.url,
                                            **admin_overrides())).start()
    yield g
    g.stop()


def cli(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PORTCULLIS_ADMIN_TOKEN"}
    env.update(PROVIDER_KEYS)  # --direct loads the config, which names the provider key variables
    if token is not None:
        env["PORTCULLIS_ADMIN_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], check=False, capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=120)


def ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def chat(gw: Gateway, agent: str):
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS[agent], max_retries=0)
    return c.chat.completions.create(model="gpt-4o-mini", messages=MSG)


def test_agents_revoke_reinstate_events_end_to_end(gw) -> None:
    url = admin_url(gw)
    table = ok(cli("agents", "list", "--url", url, token=READ_TOKEN))
    header, *lines = table.splitlines()
    assert header.split()[:5] == ["AGENT", "WORKSPACE", "TIER", "MATURITY", "STATE"]
    rows = {line.split()[0]: line.split() for line in lines}
    assert rows["executor"][1:5] == ["quickstart", "3", "supervised", "active"]

    out = ok(cli("agents", "revoke", "executor", "--reason", "cli drill", "--url", url, token=WRITE_TOKEN))
    assert "revoked executor" in out
    with pytest.raises(openai.PermissionDeniedError) as denied:
        chat(gw, "executor")
    assert denied.value.code == "agent_revoked"
    shown = json.loads(ok(cli("agents", "show", "executor", "--json", "--url", url, "--token", READ_TOKEN)))
    assert shown["state"] == "revoked" and "cli drill" in shown["revoked_reason"]

    ok(cli("agents", "reinstate", "executor", "--reason", "drill over", "--url", url, token=WRITE_TOKEN))
    assert chat(gw, "executor").choices[0].message.content == "You said: hello"

    gw.lifecycle_flush()
    events = ok(cli("events", "--since", "1h", "--agent", "executor", "--url", url, token=READ_TOKEN))
    assert [line.split()[3] for line in events.splitlines()[1:]] == ["agent.revoked", "agent.reinstated"]
    high = json.loads(ok(cli("events", "--since", "1h", "--agent", "executor", "--min-severity", "high",
                             "--json", "--url", url, token=READ_TOKEN)))
    assert [e["event_type"] for e in high] == ["agent.revoked"]
    rows = eventually(lambda: gw.audit_rows("action = 'admin.agents.revoke' AND resource_name = 'executor'"),
                      "the revoke's audit row")
    assert [r["decision"] for r in rows] == ["allow"] and WRITER in rows[0]["reasons"]


def test_report_markdown_to_a_file(gw, tmp_path) -> None:
    out = tmp_path / "weekly.md"
    r = cli("report", "--period", "7d", "--format", "md", "--out", str(out), "--url", admin_url(gw),
            token=WRITE_TOKEN)
    ok(r)
    text = out.read_text()
    assert text.startswith("#") and "report" in r.stderr
    stored = json.loads(ok(cli("report", "--period", "1d", "--format", "json", "--url", admin_url(gw),
                               token=WRITE_TOKEN)))
    assert stored["kind"] == "portcullis.governance_report"


def test_direct_reads_the_stores_without_the_api(gw) -> None:
    config = str(gw.config_path)
    ok(cli("agents", "revoke", "observer", "--reason", "direct check", "--url", admin_url(gw), token=WRITE_TOKEN))
    try:
        listed = json.loads(ok(cli("agents", "list", "--direct", "--json", "--config", config)))
        state = {a["id"]: a["state"] for a in listed}
        assert state["observer"] == "revoked" and state["builder"] == "active"
        gw.lifecycle_flush()
        events = json.loads(ok(cli("events", "--direct", "--json", "--since", "1h", "--agent", "observer",
                                   "--config", config)))
        assert "agent.revoked" in [e["event_type"] for e in events]
        html = ok(cli("report", "--direct", "--period", "1d", "--format", "html", "--config", config))
        assert "<html" in html.lower() and "observer" in html
    finally:
        ok(cli("agents", "reinstate", "observer", "--reason", "done", "--url", admin_url(gw), token=WRITE_TOKEN))


def test_exit_codes_and_messages(gw) -> None:
    url = admin_url(gw)
    missing = cli("agents", "list", "--url", url)
    assert missing.returncode == 2 and "PORTCULLIS_ADMIN_TOKEN" in missing.stderr
    wrong = cli("agents", "list", "--url", url, "--token", "pat-wrong-token-123")
    assert wrong.returncode == 1 and "401" in wrong.stderr and "unauthorized" in wrong.stderr
    assert "pat-wrong-token-123" not in wrong.stderr + wrong.stdout
    readonly = cli("agents", "revoke", "builder", "--reason", "x", "--url", url, token=READ_TOKEN)
    assert readonly.returncode == 1 and "forbidden" in readonly.stderr
    unknown = cli("agents", "show", "nobody", "--url", url, token=READ_TOKEN)
    assert unknown.returncode == 1 and "not_found" in unknown.stderr
    assert cli("agents", "revoke", "builder", "--url", url, token=WRITE_TOKEN).returncode == 2  # --reason
    assert cli("events", "--since", "soon", "--url", url, token=READ_TOKEN).returncode == 2


def test_admin_token_new_prints_a_working_entry(make_gateway) -> None:
    out = ok(cli("admin-token", "new", "--name", "carol", "--scope", "read"))
    token = next(line.split()[1] for line in out.splitlines() if line.startswith("token:"))
    digest = next(line.split()[1] for line in out.splitlines() if line.startswith("sha256:"))
    assert f"sha256: {digest}" in out.split("admin.tokens", 1)[1] and "scopes: [read]" in out
    g = make_gateway(admin__port=0, admin__tokens=[{"name": "carol", "sha256": digest, "scopes": ["read"]}])
    assert ok(cli("agents", "list", "--url", admin_url(g), token=token)).startswith("AGENT")
    assert cli("bypass", "on", "--reason", "x", "--url", admin_url(g), token=token).returncode == 1


def test_serve_runs_the_admin_listener_and_sigterm_still_drains(tmp_path, upstream) -> None:
    from tests.e2e.test_sigterm_drain import ServeProcess, free_port

    port = free_port()
    proc = ServeProcess(tmp_path, upstream.url, drain_timeout_s=5, **{**admin_overrides(), "admin__port": port})
    try:
        # No --url: the CLI finds the listener from the config's admin.host/admin.port.
        out = ok(cli("agents", "list", "--config", str(proc.config), token=READ_TOKEN))
        assert "intern-bot" in out
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(60) == 0, proc.output()  # drained and exited as without the admin listener
        assert "Traceback" not in proc.output()
    finally:
        proc.stop()


def test_approvals_through_the_cli(make_gateway, upstream, orders) -> None:
    """A destructive tool call by a supervised T3 agent waits for an operator: `approvals list`
    shows it, `approvals approve` lets the agent's retry through once, `reject` refuses another."""
    import httpx

    from tests.support.tool_configs import tools_config

    g = make_gateway(tools=tools_config(orders.url, upstream.url), **admin_overrides())
    url = admin_url(g)
    sdk = openai.OpenAI(base_url=g.url + "/v1", api_key=KEYS["executor"], max_retries=0)

    def wipe(scope: str, approval: str | None = None) -> httpx.Response:
        headers = {"X-Portcullis-Approval": approval} if approval else {}
        return sdk.post(f"{g.url}/tools/wipe_cache", body={"scope": scope}, cast_to=httpx.Response,
                        options={"headers": headers})

    ids = []
    for scope in ("all", "tmp"):  # two requests (arguments differ): two approvals
        with pytest.raises(openai.PermissionDeniedError) as refused:
            wipe(scope)
        ids.append(refused.value.body["approval_id"])  # type: ignore[index]
    pending = json.loads(ok(cli("approvals", "list", "--status", "pending", "--json", "--url", url,
                                token=READ_TOKEN)))
    assert {a["id"] for a in pending} == set(ids) and {a["agent_id"] for a in pending} == {"executor"}
    assert ids[0] in ok(cli("approvals", "list", "--url", url, token=READ_TOKEN))
    assert cli("approvals", "approve", ids[0], "--url", url, token=READ_TOKEN).returncode == 1  # read scope
    assert "approved" in ok(cli("approvals", "approve", ids[0], "--reason", "ticket 7", "--url", url,
                                token=WRITE_TOKEN))
    assert "rejected" in ok(cli("approvals", "reject", ids[1], "--url", url, token=WRITE_TOKEN))
    again = cli("approvals", "approve", ids[1], "--url", url, token=WRITE_TOKEN)
    assert again.returncode == 1 and "not_pending" in again.stderr
    assert wipe("all", ids[0]).status_code == 200
    with pytest.raises(openai.PermissionDeniedError):
        wipe("tmp", ids[1])
    statuses = {a["id"]: a["status"] for a in json.loads(ok(cli("approvals", "list", "--json", "--direct",
                                                                 "--config", str(g.config_path))))}
    assert statuses == {ids[0]: "used", ids[1]: "rejected"}


def test_proposals_through_the_cli(make_gateway, tmp_path) -> None:
    policies = copy_policies(tmp_path / "policies")
    data_path = policies / "portcullis" / "config" / "data.json"
    data = json.loads(data_path.read_text())
    data["lifecycle"]["consecutive_compliant_for_promotion"]["1"] = 3
    data_path.write_text(json.dumps(data))
    g = make_gateway(policy_dir=policies, lifecycle__error_budgets=True, **admin_overrides())
    url = admin_url(g)
    for _ in range(3):
        chat(g, "intern-bot")
    g.lifecycle_flush()
    [proposal] = json.loads(ok(cli("proposals", "list", "--status", "pending", "--json", "--url", url,
                                   token=READ_TOKEN)))
    assert (proposal["agent_id"], proposal["from_tier"], proposal["to_tier"]) == ("intern-bot", 1, 2)
    table = ok(cli("proposals", "list", "--url", url, token=READ_TOKEN))
    assert proposal["id"] in table and "T1/intern" in table and "T2/intern" in table
    assert "approved" in ok(cli("proposals", "approve", proposal["id"], "--reason", "earned", "--url", url,
                                token=WRITE_TOKEN))
    shown = json.loads(ok(cli("agents", "show", "intern-bot", "--json", "--url", url, token=READ_TOKEN)))
    assert (shown["tier"], shown["baseline"]["tier"]) == (2, 1)
    again = cli("proposals", "reject", proposal["id"], "--url", url, token=WRITE_TOKEN)
    assert again.returncode == 1 and "400" in again.stderr


@pytest.fixture
def fleet_lifecycle(loop_thread):
    """Two replicas' lifecycle: one PostgreSQL store, one Redis channel; tables dropped afterwards."""
    from adapters.lifecycle.rows import Tables
    from tests.support import pg
    from tests.support.services import pg_dsn, redis_url, unique

    dsn, prefix = pg_dsn(), unique("adm") + "_"
    yield {"store": "postgres", "dsn": dsn, "table_prefix": prefix, "bus": "redis", "redis_url": redis_url(),
           "channel": unique("portcullis-test-admin:")}
    for table in dataclasses.astuple(Tables.named(prefix)):
        loop_thread.run(pg.drop_table(dsn, table))


def test_fleet_revoke_on_one_replica_direct_reads_postgres(make_gateway, fleet_lifecycle) -> None:
    gw1 = make_gateway(lifecycle=fleet_lifecycle, **admin_overrides())
    gw2 = make_gateway(lifecycle=fleet_lifecycle, **admin_overrides())
    assert chat(gw2, "intern-bot").choices[0].message.content
    ok(cli("agents", "revoke", "intern-bot", "--reason", "fleet drill", "--url", admin_url(gw1), token=WRITE_TOKEN))

    def revoked_on(gw: Gateway) -> bool:
        try:
            chat(gw, "intern-bot")
        except openai.PermissionDeniedError as e:
            return e.code == "agent_revoked"
        return False

    eventually(lambda: revoked_on(gw2), "the other replica to refuse the agent revoked through the first's API")
    shown = json.loads(ok(cli("agents", "show", "intern-bot", "--json", "--url", admin_url(gw2), token=READ_TOKEN)))
    assert shown["state"] == "revoked"
    listed = json.loads(ok(cli("agents", "list", "--direct", "--json", "--config", str(gw2.config_path))))
    assert {a["id"]: a["state"] for a in listed}["intern-bot"] == "revoked"
    gw1.lifecycle_flush()
    events = json.loads(ok(cli("events", "--direct", "--json", "--agent", "intern-bot", "--config",
                               str(gw2.config_path))))
    assert [e["event_type"] for e in events] == ["agent.revoked"]
    ok(cli("agents", "reinstate", "intern-bot", "--reason", "drill over", "--url", admin_url(gw2), token=WRITE_TOKEN))
    eventually(lambda: not revoked_on(gw1), "the first replica to let the agent reinstated on the second back")
