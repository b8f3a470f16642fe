"""Approval-required decisions and the emergency bypass (issue 11), end to end: a real gateway
under uvicorn with its SQLite lifecycle store, the real mcp/openai/anthropic SDKs, the orders
MCP server and the test upstream.

The default policy wants an operator's approval for a destructive tool call by a supervised
agent at T3 and above: `executor` (T3, supervised) calling `delete_customer` (MCP) or
`wipe_cache` (HTTP tool, destructiveHint). Operators decide through `Approvals.decide`, the
call the admin API and the CLI make.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import yaml

from tests.support import mcp2
from tests.support.admin_api import WRITER, admin, admin_overrides
from tests.support.harness import KEYS, REPO, Gateway, LoopThread, copy_policies
from tests.support.mcp_orders_server import OrdersServer
from tests.support.tool_configs import tools_config
from tests.support.upstream_server import UpstreamServer, request_id
from tests.support.waiting import eventually

TWIN_KEY = "pk-test-executor-twin"  # a second supervised T3 agent: another agent the policy would also ask about
DELETE = {"customer": "globex"}


def agents_file(tmp: Path) -> Path:
    doc = yaml.safe_load((REPO / "config" / "agents.yaml").read_text())
    doc["agents"].append({"id": "executor-twin", "tier": 3, "maturity": "supervised", "workspace": "quickstart"})
    doc["keys"].append({"id": "executor-twin", "sha256": hashlib.sha256(TWIN_KEY.encode()).hexdigest(),
                        "workspace": "quickstart", "agent": "executor-twin"})
    path = tmp / "agents.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def gates_gateway(make_gateway: Callable[..., Gateway], upstream: UpstreamServer, orders: OrdersServer,
                  tmp_path: Path) -> Callable[..., Gateway]:
    agents = agents_file(tmp_path)

    def make(**overrides: Any) -> Gateway:
        return make_gateway(tools=tools_config(orders.url, upstream.url),
                            identity__agents_file=str(agents), **{**admin_overrides(), **overrides})
    return make


def lifecycle(gw: Gateway) -> Any:
    return gw.app.state.services.lifecycle


def call_delete(loop_thread: LoopThread, gw: Gateway, key: str, approval: str | None = None,
                arguments: dict[str, Any] | None = None, tool: str = "delete_customer") -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"}
    if approval is not None:
        headers["X-Portcullis-Approval"] = approval
    out = loop_thread.run(mcp2.run_ops(gw.url + "/mcp/orders", [
        {"op": "call_tool", "name": tool, "arguments": arguments or DELETE}], headers), timeout=120)
    assert out["fatal"] is None, out["fatal"]
    return out["results"][0]


def refusal(result: dict[str, Any], code: str) -> dict[str, Any]:
    assert "error" in result, result
    err = result["error"]
    assert (err["code"], err["data"]["code"]) == (-31403, code), err
    return err


def decide(loop_thread: LoopThread, gw: Gateway, approval_id: str, approve: bool = True) -> Any:
    return loop_thread.run(lifecycle(gw).approvals.decide(approval_id, approve, "alice", "checked by phone"))


def test_mcp_approval_is_single_use_for_its_agent_and_request(loop_thread: LoopThread, orders: OrdersServer,
                                                              gates_gateway: Callable[..., Gateway]) -> None:
    gw = gates_gateway()
    orders.clear()
    err = refusal(call_delete(loop_thread, gw, KEYS["executor"]), "approval_required")
    approval_id = err["data"]["approval_id"]
    assert approval_id.startswith("apr_") and f"X-Portcullis-Approval: {approval_id}" in err["message"]
    refused_row = gw.audit_row(err["data"]["request_id"])
    assert (refused_row["decision"], refused_row["resource_name"]) == ("deny", "delete_customer")
    assert f"approval {approval_id} requested" in json.loads(refused_row["reasons"])

    pending = refusal(call_delete(loop_thread, gw, KEYS["executor"], approval_id), "approval_invalid")
    assert "still pending" in pending["message"]
    with admin(gw) as ops:  # the operator, through the admin API
        listed = ops.get("/admin/approvals", params={"status": "pending"}).json()["approvals"]
        assert [(a["id"], a["agent_id"], a["resource_name"]) for a in listed] == \
            [(approval_id, "executor", "delete_customer")]
        approved = ops.post(f"/admin/approvals/{approval_id}/approve", json={"reason": "checked by phone"})
        assert approved.status_code == 200 and approved.json()["status"] == "approved", approved.text

    foreign = refusal(call_delete(loop_thread, gw, TWIN_KEY, approval_id), "approval_invalid")
    assert "not issued to agent executor-twin" in foreign["message"]
    other_args = refusal(call_delete(loop_thread, gw, KEYS["executor"], approval_id, {"customer": "acme"}),
                         "approval_invalid")
    assert "different request" in other_args["message"]
    assert orders.executed == []  # nothing ran yet

    done = call_delete(loop_thread, gw, KEYS["executor"], approval_id)
    assert "error" not in done and done["isError"] is False, done
    assert orders.executed == [("delete_customer", DELETE)]
    used_row = eventually(lambda: gw.audit_rows("action = 'tool.call' AND decision = 'allow' AND agent_id = ?",
                                                 ("executor",)), "the approved call's row")[0]
    assert f"approval {approval_id} used (approved by {WRITER})" in json.loads(used_row["reasons"])

    again = refusal(call_delete(loop_thread, gw, KEYS["executor"], approval_id), "approval_invalid")
    assert "already used" in again["message"]
    assert orders.executed == [("delete_customer", DELETE)]

    changes = eventually(lambda: [r["action"] for r in gw.audit_rows("action LIKE 'approval.%'")]
                         if len(gw.audit_rows("action LIKE 'approval.%'")) >= 3 else None, "the approval rows")
    assert changes == ["approval.requested", "approval.approved", "approval.used"]
    [row] = gw.audit_rows("action = 'approval.approved'")
    assert (row["resource_name"], row["agent_id"], row["api"]) == (approval_id, "executor", "admin")
    assert json.loads(row["reasons"])[0].startswith(f"{WRITER}: approval.approved")


def test_an_approved_approval_expires(loop_thread: LoopThread, orders: OrdersServer,
                                      gates_gateway: Callable[..., Gateway]) -> None:
    gw = gates_gateway(lifecycle__approval_ttl_s=5)
    approval_id = refusal(call_delete(loop_thread, gw, KEYS["executor"]), "approval_required")["data"]["approval_id"]
    decide(loop_thread, gw, approval_id)
    eventually(lambda: [a for a in loop_thread.run(lifecycle(gw).approvals.list(status="expired"))
                        if a.id == approval_id], "the approval to expire", timeout=30)
    orders.clear()
    late = refusal(call_delete(loop_thread, gw, KEYS["executor"], approval_id), "approval_invalid")
    assert "expired" in late["message"]
    assert orders.executed == []


def test_http_tool_approval_in_openai_format(loop_thread: LoopThread, upstream: UpstreamServer,
                                             gates_gateway: Callable[..., Gateway]) -> None:
    gw = gates_gateway()
    sdk = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS["executor"], max_retries=0)

    def wipe(approval: str | None = None) -> httpx.Response:
        headers = {"X-Portcullis-Approval": approval} if approval else {}
        return sdk.post(f"{gw.url}/tools/wipe_cache", body={"scope": "all"}, cast_to=httpx.Response,
                        options={"headers": headers})

    with pytest.raises(openai.PermissionDeniedError) as refused:
        wipe()
    body = refused.value.body
    assert isinstance(body, dict) and body["code"] == "approval_required", body
    approval_id = body["approval_id"]
    assert approval_id in body["message"]
    decide(loop_thread, gw, approval_id)
    ok = wipe(approval_id)
    assert ok.status_code == 200
    assert len(upstream.received(ok.headers["x-request-id"])) == 1
    with pytest.raises(openai.PermissionDeniedError) as reused:
        wipe(approval_id)
    assert reused.value.body["code"] == "approval_invalid"  # type: ignore[index]


def test_without_the_lifecycle_an_approval_required_decision_is_a_plain_denial(
        loop_thread: LoopThread, gates_gateway: Callable[..., Gateway]) -> None:
    gw = gates_gateway(lifecycle__enabled=False)
    err = refusal(call_delete(loop_thread, gw, KEYS["executor"]), "tool_not_allowed")
    assert "approval_id" not in err["data"]


def chat(gw: Gateway, agent: str, model: str = "gpt-4o") -> Any:
    sdk = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS[agent], max_retries=0)
    return sdk.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=16)


def test_bypass_forwards_without_policy_still_limited_and_audited(loop_thread: LoopThread,
                                                                 gates_gateway: Callable[..., Gateway]) -> None:
    gw = gates_gateway()
    lc = lifecycle(gw)
    with pytest.raises(openai.PermissionDeniedError):  # tier 0 may not use gpt-4o
        chat(gw, "observer")
    with admin(gw) as ops:
        on = ops.put("/admin/bypass", json={"enabled": True, "reason": "policy outage drill"})
    assert on.status_code == 200 and on.json()["bypass"] is True, on.text

    raw = chat(gw, "observer")
    assert raw.http_response.status_code == 200
    row = gw.audit_row(raw.headers["x-request-id"])
    assert (row["decision"], row["policy_revision"], row["status"]) == ("bypass", "bypass", 200)
    assert json.loads(row["reasons"]) == ["emergency bypass: policy not evaluated"]

    # Still rate limited, with tier 0's obligations from the policy data (20 requests a minute).
    limit = int(raw.headers["x-ratelimit-limit-requests"])
    assert limit == 20
    limited = None
    for _ in range(2 * limit):  # the bucket refills as it goes: a few more than `limit` may pass
        try:
            chat(gw, "observer")
        except openai.RateLimitError as e:
            limited = e
            break
    assert limited is not None, f"no 429 within {2 * limit} requests"
    assert gw.audit_row(limited.response.headers["x-request-id"])["decision"] == "rate_limited"

    # A revoked agent is refused before the bypass is consulted.
    loop_thread.run(lc.manager.revoke("intern-bot", "alice", "compromised"))
    with pytest.raises(openai.PermissionDeniedError) as revoked:
        chat(gw, "intern-bot", "gpt-4o-mini")
    assert revoked.value.code == "agent_revoked"

    with admin(gw) as ops:
        assert ops.put("/admin/bypass", json={"enabled": False, "reason": "drill over"}).json()["bypass"] is False
    with pytest.raises(openai.PermissionDeniedError):
        chat(gw, "builder", "o3-mini")  # governed again: tier 2 may not use o3-mini
    loop_thread.run(lc.flush())
    events = loop_thread.run(lc.store.events(min_severity="CRITICAL"))
    assert [(e.event_type, e.details["new"], e.details["actor"]) for e in events
            if e.event_type == "bypass.toggled"] == [("bypass.toggled", True, WRITER), ("bypass.toggled", False, WRITER)]
    toggles = eventually(lambda: gw.audit_rows("action = 'bypass.toggled'")
                         if len(gw.audit_rows("action = 'bypass.toggled'")) == 2 else None, "the toggle rows")
    assert [json.loads(r["reasons"]) for r in toggles] == [[f"{WRITER}: bypass on (policy outage drill)"],
                                                           [f"{WRITER}: bypass off (drill over)"]]


def test_governance_off_for_one_surface_bypasses_only_that_surface(loop_thread: LoopThread,
                                                                    gates_gateway: Callable[..., Gateway]) -> None:
    gw = gates_gateway(lifecycle__governance={"openai": False})
    raw = chat(gw, "observer")
    row = gw.audit_row(raw.headers["x-request-id"])
    assert row["decision"] == "bypass"
    assert json.loads(row["reasons"]) == ["governance off for the openai surface: policy not evaluated"]
    claude = anthropic.Anthropic(base_url=gw.url, api_key=KEYS["observer"], max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError):  # the anthropic surface is still governed
        claude.messages.create(model="claude-sonnet-4-6", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    loop_thread.run(lifecycle(gw).switches.set_governance("openai", True, "alice", "back on"))
    with pytest.raises(openai.PermissionDeniedError):
        chat(gw, "observer")


# A policy that also asks for approval when `builder` wants a model beyond its tier (the default
# policy asks only for destructive tools), to see the approval on the LLM surfaces.
LLM_APPROVAL = """
# METADATA
# title: Approval for models beyond the tier (test only)
# description: builder may use a model its tier does not reach, once an operator approves.
approval_required if {
	action in {"llm.chat", "llm.messages"}
	object.get(agent, ["id"], null) == "builder"
	count(deny) == 1
}
"""


def test_llm_approval_in_openai_and_anthropic_formats(loop_thread: LoopThread, tmp_path: Path,
                                                      upstream: UpstreamServer,
                                                      gates_gateway: Callable[..., Gateway]) -> None:
    policies = copy_policies(tmp_path / "policies")
    with (policies / "portcullis" / "lifecycle.rego").open("a") as f:
        f.write(LLM_APPROVAL)
    gw = gates_gateway(policy__dir=str(policies))
    sdk = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS["builder"], max_retries=0)

    sent = request_id()  # the client's id travels upstream: the forwarded call is found by it

    def ask(approval: str | None = None) -> Any:
        return sdk.chat.completions.with_raw_response.create(
            model="o3-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=16,
            extra_headers={"x-request-id": sent, **({"X-Portcullis-Approval": approval} if approval else {})})

    with pytest.raises(openai.PermissionDeniedError) as refused:
        ask()
    assert refused.value.code == "approval_required"
    approval_id = refused.value.body["approval_id"]  # type: ignore[index]
    decide(loop_thread, gw, approval_id)
    raw = ask(approval_id)
    assert raw.http_response.status_code == 200
    assert len(upstream.received(sent)) == 1
    row = gw.audit_row(raw.headers["x-request-id"])
    assert row["decision"] == "allow"
    assert f"approval {approval_id} used (approved by alice)" in json.loads(row["reasons"])
    with pytest.raises(openai.PermissionDeniedError) as reused:
        ask(approval_id)
    assert reused.value.code == "approval_invalid"

    claude = anthropic.Anthropic(base_url=gw.url, api_key=KEYS["builder"], max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError) as denied:
        claude.messages.create(model="claude-opus-4-1", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    error = denied.value.body["error"]  # type: ignore[index]
    assert error["type"] == "permission_error" and error["approval_id"].startswith("apr_")
    assert error["approval_id"] in error["message"]


def test_a_request_the_limiter_refuses_does_not_spend_its_approval(loop_thread: LoopThread, tmp_path: Path,
                                                                   orders: OrdersServer,
                                                                   gates_gateway: Callable[..., Gateway]) -> None:
    policies = copy_policies(tmp_path / "policies")
    data_path = policies / "portcullis" / "config" / "data.json"
    data = json.loads(data_path.read_text())
    data["tiers"]["3"]["obligations"]["requests_per_minute"] = 2
    data_path.write_text(json.dumps(data))
    gw = gates_gateway(policy__dir=str(policies))
    approval_id = refusal(call_delete(loop_thread, gw, KEYS["executor"]), "approval_required")["data"]["approval_id"]
    decide(loop_thread, gw, approval_id)
    for _ in range(2):  # the executor's two requests of the minute
        assert "error" not in call_delete(loop_thread, gw, KEYS["executor"], tool="read_orders",
                                          arguments={"customer": "acme"})
    orders.clear()
    limited = call_delete(loop_thread, gw, KEYS["executor"], approval_id)
    assert limited["error"]["data"]["code"] == "rate_limit_exceeded", limited
    assert orders.executed == []
    [still] = [a for a in loop_thread.run(lifecycle(gw).approvals.list(agent_id="executor")) if a.id == approval_id]
    assert still.status == "approved"  # not spent: the agent retries once the limit allows
