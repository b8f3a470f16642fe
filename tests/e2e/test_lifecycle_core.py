"""The agent lifecycle end to end (issue 11, contract 6): real gateways, real SDKs, real stores.

Error budgets revoke at exactly the counts data.json gives (a violation at once), the revocation
reaches a second replica over Redis within a second, reinstatement lets the agent back in, and
compliant traffic earns promotion proposals that change what the agent may list. Every change
is an `agent.lifecycle` audit row, and the chain still verifies.
"""
from __future__ import annotations

import dataclasses

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from adapters.lifecycle.rows import Tables
from tests.support import mcp2, pg
from tests.support.harness import (
    KEYS,
    PROVIDER_KEYS,
    REPO,
    Gateway,
    LoopThread,
    copy_policies,
)
from tests.support.mcp_orders_server import OrdersServer
from tests.support.services import pg_dsn, redis_url, unique
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import at_least, eventually

MSG = [{"role": "user", "content": "hello"}]
ADMIN_TOKEN = "adm-lifecycle-core-test"
ADMIN = {"port": 0, "tokens": [{"name": "ops-alice", "sha256": hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest(),
                                "scopes": ["read", "write"]}]}


def client(gw: Gateway, agent: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS[agent], max_retries=0)


def chat(gw: Gateway, agent: str, model: str = "gpt-4o-mini") -> Any:
    return client(gw, agent).chat.completions.create(model=model, messages=MSG)


def denied(gw: Gateway, agent: str, model: str) -> None:
    with pytest.raises(openai.PermissionDeniedError) as e:
        chat(gw, agent, model)
    assert e.value.code == "policy_denied", e.value.body


def admin(gw: Gateway, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    r = (httpx.post(gw.admin_url + path, json=body or {}, headers=headers) if body is not None
         else httpx.get(gw.admin_url + path, headers=headers))
    assert r.status_code == 200, r.text
    return r.json()


def state(gw: Gateway, agent: str) -> dict[str, Any]:
    """The agent as the manager shows it, once every finished request is counted."""
    gw.lifecycle_flush()
    return gw.loop.run(gw.lifecycle.manager.agent(agent))


def policies_with(tmp: Path, **lifecycle: Any) -> Path:
    pol = copy_policies(tmp / "policies")
    data_file = pol / "portcullis" / "config" / "data.json"
    data = json.loads(data_file.read_text())
    data["lifecycle"].update(lifecycle)
    data_file.write_text(json.dumps(data))
    return pol


def lifecycle_rows(gw: Gateway, n: int) -> list[dict[str, Any]]:
    return eventually(at_least(n, lambda: gw.audit_rows("action = 'agent.lifecycle'")),
                      f"{n} agent.lifecycle audit rows")


# ---- (a) a procedure violation revokes at once, on every replica ------------------------------

@pytest.fixture
def fleet_lifecycle(loop_thread: LoopThread) -> Any:
    """Lifecycle settings sharing one PostgreSQL store and one Redis channel, dropped afterwards."""
    dsn, url = pg_dsn(), redis_url()
    prefix = unique("lc") + "_"
    cfg = {"store": "postgres", "dsn": dsn, "table_prefix": prefix, "bus": "redis", "redis_url": url,
           "channel": unique("portcullis-test-lifecycle:"), "error_budgets": True}
    yield cfg
    for table in dataclasses.astuple(Tables.named(prefix)):
        loop_thread.run(pg.drop_table(dsn, table))


def test_violation_revokes_on_every_replica_and_reinstating_lets_it_back(
        loop_thread: LoopThread, make_gateway: Callable[..., Gateway], orders: OrdersServer,
        fleet_lifecycle: dict[str, Any]) -> None:
    tools = {"servers": {"orders": {"kind": "mcp", "url": orders.url}}}
    gw1 = make_gateway(tools=tools, lifecycle=fleet_lifecycle, admin=ADMIN)
    gw2 = make_gateway(tools=tools, lifecycle=fleet_lifecycle, admin=ADMIN)
    assert chat(gw2, "intern-bot").choices[0].message.content  # active on both to begin with
    orders.clear()

    out = loop_thread.run(mcp2.run_ops(
        gw1.url + "/mcp/orders", [{"op": "call_tool", "name": "delete_customer", "arguments": {"customer": "globex"}}],
        {"Authorization": f"Bearer {KEYS['intern-bot']}"}), timeout=120)
    assert out["fatal"] is None, out["fatal"]
    assert "error" in out["results"][0], out["results"][0]  # refused by policy, never executed
    assert orders.executed == []

    gw1.lifecycle_flush()  # counted: the violation revoked the agent in the shared store
    reason = "error budget exceeded: 1 procedure violation (destructive_tool delete_customer)"

    def refused_on_gw2() -> str | None:
        try:
            chat(gw2, "intern-bot")
        except openai.PermissionDeniedError as e:
            return e.body["message"] if e.code == "agent_revoked" else None
        return None

    # The other replica learns it over the bus: its periodic reload (refresh_s 30) is far off.
    message = eventually(refused_on_gw2, "the second replica to refuse the revoked agent", timeout=1.0,
                         interval=0.01)
    assert reason in message
    with pytest.raises(openai.PermissionDeniedError) as e:
        chat(gw1, "intern-bot")
    assert e.value.code == "agent_revoked"
    assert e.value.body["message"] == f"agent intern-bot is revoked: {reason}"
    # The refusal's own row names the agent it refused and why (not an anonymous 403).
    refusal = gw1.audit_row(e.value.request_id)
    assert (refusal["agent_id"], refusal["decision"], refusal["status"]) == ("intern-bot", "deny", 403)
    assert json.loads(refusal["reasons"]) == [f"agent intern-bot is revoked: {reason}"]
    assert chat(gw1, "builder").choices[0].message.content  # the others are unaffected

    revoked = admin(gw1, "/admin/agents/intern-bot")
    assert (revoked["state"], revoked["revoked_reason"], revoked["counters"]["violations"]) == ("revoked", reason, 1)
    events = gw1.loop.run(gw1.lifecycle.manager.events(agent_id="intern-bot"))
    assert [(ev.event_type, ev.severity) for ev in events if ev.event_type == "agent.revoked"] == \
        [("agent.revoked", "CRITICAL")]

    admin(gw1, "/admin/agents/intern-bot/reinstate", {"reason": "reviewed the incident"})
    eventually(lambda: refused_on_gw2() is None, "the second replica to let the agent back in")
    assert chat(gw1, "intern-bot").choices[0].message.content
    again = admin(gw2, "/admin/agents/intern-bot")
    assert again["state"] == "active" and again["counters"]["violations"] == 0

    rows = lifecycle_rows(gw1, 2)
    assert [(r["resource_name"], json.loads(r["policy_input"])["change"]) for r in rows] == \
        [("intern-bot", "revoke"), ("intern-bot", "reinstate")]
    revoke_input = json.loads(rows[0]["policy_input"])
    assert (revoke_input["actor"], revoke_input["rule"]) == ("system", "error_budget.max_procedure_violations")
    assert json.loads(rows[1]["reasons"]) == ["ops-alice: reinstate (reviewed the incident)"]


def test_a_revocation_missed_while_the_bus_was_cut_is_caught_up_on_reconnect(
        loop_thread: LoopThread, make_gateway: Callable[..., Gateway],
        fleet_lifecycle: dict[str, Any]) -> None:
    """The store is the source of truth: a replica whose Redis connection was down when the
    revocation was published reloads every overlay once it resubscribes, long before its
    periodic refresh (refresh_s 600 here), so a lost message cannot leave an agent unrevoked."""
    proxy = TcpProxy("127.0.0.1", 6379)  # gw2's bus reaches Redis only through this
    loop_thread.run(proxy.open())
    try:
        gw1 = make_gateway(lifecycle={**fleet_lifecycle, "refresh_s": 600}, admin=ADMIN)
        gw2 = make_gateway(lifecycle={**fleet_lifecycle, "refresh_s": 600,
                                      "redis_url": f"redis://127.0.0.1:{proxy.port}/0"})
        assert chat(gw2, "intern-bot").choices[0].message.content

        loop_thread.run(proxy.shut())  # gw2 hears nothing from now on
        admin(gw1, "/admin/agents/intern-bot/revoke", {"reason": "leaked its key"})
        with pytest.raises(openai.PermissionDeniedError):
            chat(gw1, "intern-bot")
        assert chat(gw2, "intern-bot").choices[0].message.content  # missed the message, for now

        loop_thread.run(proxy.open())

        def refused_on_gw2() -> bool:
            try:
                chat(gw2, "intern-bot")
            except openai.PermissionDeniedError as e:
                return e.code == "agent_revoked" and "leaked its key" in e.body["message"]
            return False

        eventually(refused_on_gw2, "the reconnected replica to reload and refuse the agent", timeout=15)
    finally:
        proxy.close()


# ---- (b) errors revoke at exactly the configured counts; (d) audited, chain intact --------------

def test_same_error_repeats_and_total_errors_revoke_at_exactly_their_counts(
        make_gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    budget = {"max_total_errors": 5, "max_same_error_repeats": 3, "max_procedure_violations": 1, "window_s": 3600}
    pol = policies_with(tmp_path, error_budgets={"1": budget})
    gw = make_gateway(policy_dir=pol, lifecycle__error_budgets=True)

    denied(gw, "intern-bot", "o3-mini")
    denied(gw, "intern-bot", "o3-mini")
    assert state(gw, "intern-bot")["state"] == "active"  # 2 of 3 same errors
    denied(gw, "intern-bot", "o3-mini")
    after = state(gw, "intern-bot")
    assert after["state"] == "revoked"
    assert after["revoked_reason"] == ("error budget exceeded: the same error 3 times "
                                       "(deny:tier 1 may not use model o3-mini)")
    with pytest.raises(openai.PermissionDeniedError) as e:
        chat(gw, "intern-bot")
    assert e.value.code == "agent_revoked"

    gw.loop.run(gw.lifecycle.manager.reinstate("intern-bot", "ops-bob", "budget test"))
    assert state(gw, "intern-bot")["counters"]["total_errors"] == 0  # reinstating resets the counters
    for model in ("o3-mini", "gpt-4o", "o3-mini", "gpt-4o"):  # 4 errors, none repeated 3 times
        denied(gw, "intern-bot", model)
    warned = state(gw, "intern-bot")
    assert warned["state"] == "active" and warned["counters"]["total_errors"] == 4
    gw.loop.run(gw.lifecycle.events.flush())
    events = gw.loop.run(gw.lifecycle.manager.events(agent_id="intern-bot"))
    assert [ev.details["budget"] for ev in events if ev.event_type == "budget.80pct"] == ["max_total_errors"]
    denied(gw, "intern-bot", "gpt-4.1")
    assert state(gw, "intern-bot")["revoked_reason"] == (
        "error budget exceeded: 5 errors in the window (last: deny:tier 1 may not use model gpt-4.1)")

    rows = lifecycle_rows(gw, 3)
    assert [json.loads(r["policy_input"])["change"] for r in rows] == ["revoke", "reinstate", "revoke"]
    first = rows[0]
    assert (first["action"], first["resource_type"], first["agent_id"], first["decision"], first["api"]) == \
        ("agent.lifecycle", "agent", "intern-bot", "allow", "admin")
    assert json.loads(first["reasons"]) == [
        "system: revoke (error budget exceeded: the same error 3 times (deny:tier 1 may not use model o3-mini))"]
    doc = json.loads(first["policy_input"])
    assert (doc["actor"], doc["rule"], doc["old"]["revoked"], doc["new"]["revoked"]) == \
        ("system", "error_budget.max_same_error_repeats", False, True)
    assert json.loads(rows[1]["reasons"]) == ["ops-bob: reinstate (budget test)"]

    verify = subprocess.run([sys.executable, "-m", "gateway.cli", "audit", "verify", "--config",
                             str(gw.config_path)], check=False, capture_output=True, text=True, cwd=REPO,
                            env={"PATH": "/usr/bin:/bin", **PROVIDER_KEYS}, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr


# ---- (c) compliant traffic earns promotion proposals ------------------------------------------

def test_an_approved_promotion_changes_the_models_an_agent_lists(
        make_gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    pol = policies_with(tmp_path, consecutive_compliant_for_promotion={"1": 3})
    gw = make_gateway(policy_dir=pol, lifecycle__error_budgets=True, admin=ADMIN)
    intern = client(gw, "intern-bot")

    before = {m.id for m in intern.models.list()}
    assert "gpt-4o" not in before
    chat(gw, "intern-bot", "gpt-4.1-mini")
    gw.lifecycle_flush()
    assert admin(gw, "/admin/proposals")["proposals"] == []  # 2 compliant requests of 3
    chat(gw, "intern-bot", "gpt-4.1-mini")
    gw.lifecycle_flush()
    [proposal] = admin(gw, "/admin/proposals?status=pending")["proposals"]
    assert (proposal["agent_id"], proposal["from_tier"], proposal["to_tier"], proposal["to_maturity"]) == \
        ("intern-bot", 1, 2, "intern")
    assert {m.id for m in intern.models.list()} == before  # nothing changes until an operator approves

    decided = admin(gw, f"/admin/proposals/{proposal['id']}/approve", {"reason": "earned it"})
    assert (decided["status"], decided["decided_by"]) == ("approved", "ops-alice")
    after = {m.id for m in intern.models.list()}
    assert before < after and "gpt-4o" in after, (before, after)
    assert chat(gw, "intern-bot", "gpt-4o").choices[0].message.content
    shown = admin(gw, "/admin/agents/intern-bot")
    assert (shown["baseline"]["tier"], shown["tier"]) == (1, 2)

    [row] = lifecycle_rows(gw, 1)
    doc = json.loads(row["policy_input"])
    assert (doc["change"], doc["actor"], doc["old"]["tier"], doc["new"]["tier"]) == ("promote", "ops-alice", 1, 2)
    assert row["tier"] == 2


def test_auto_promotion_stops_below_the_top_tier(make_gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    pol = policies_with(tmp_path, consecutive_compliant_for_promotion={"1": 2, "3": 2}, auto_promote_max_tier=4)
    gw = make_gateway(policy_dir=pol, lifecycle__error_budgets=True, admin=ADMIN)

    for agent in ("executor", "intern-bot"):
        for _ in range(2):
            chat(gw, agent, "gpt-4.1-mini")
    gw.lifecycle_flush()
    proposals = {p["agent_id"]: p for p in admin(gw, "/admin/proposals")["proposals"]}
    assert (proposals["executor"]["status"], proposals["executor"]["to_tier"]) == ("pending", 4)  # a human's call
    assert (proposals["intern-bot"]["status"], proposals["intern-bot"]["to_tier"],
            proposals["intern-bot"]["decided_by"]) == ("auto_approved", 2, "system")
    assert admin(gw, "/admin/agents/executor")["tier"] == 3
    assert admin(gw, "/admin/agents/intern-bot")["tier"] == 2
    assert chat(gw, "intern-bot", "gpt-4o").choices[0].message.content

    [row] = lifecycle_rows(gw, 1)
    doc = json.loads(row["policy_input"])
    assert (row["agent_id"], doc["change"], doc["actor"], doc["rule"]) == \
        ("intern-bot", "promote", "system", "lifecycle.auto_promote_max_tier")


# ---- system hooks and demotion ----------------------------------------------------------------

def test_a_rejected_policy_reload_is_a_high_event_and_demotion_is_immediate(
        make_gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    pol = copy_policies(tmp_path / "policies")
    gw = make_gateway(policy_dir=pol, policy__hot_reload=True, admin=ADMIN)
    assert chat(gw, "builder", "gpt-4o").choices[0].message.content

    (pol / "portcullis" / "broken.rego").write_text("package portcullis\n\nthis is not rego {\n")

    def rejected() -> list[Any]:
        gw.loop.run(gw.lifecycle.events.flush())
        events = gw.loop.run(gw.lifecycle.manager.events(min_severity="HIGH"))
        return [ev for ev in events if ev.event_type == "policy.reload_rejected"]

    [event] = eventually(rejected, "a policy.reload_rejected event")
    assert event.severity == "HIGH" and "broken.rego" in json.dumps(event.details)

    admin(gw, "/admin/agents/builder/demote", {"tier": 1, "reason": "incident 42"})
    denied(gw, "builder", "gpt-4o")  # at once, on this replica
    assert "gpt-4o" not in {m.id for m in client(gw, "builder").models.list()}
    [row] = lifecycle_rows(gw, 1)
    assert json.loads(row["reasons"]) == ["ops-alice: demote (incident 42)"]
    assert (row["agent_id"], row["tier"], row["maturity"]) == ("builder", 1, "supervised")
