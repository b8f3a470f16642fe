"""MCP through the gateway: real mcp SDK clients of both generations, a real MCP server.

The orders server (tests/support/mcp_orders_server.py) offers read_orders (readOnlyHint),
refund_order (no hints) and delete_customer (destructiveHint); the default policy
decides what each quickstart agent sees and may call.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest

from tests.support import mcp1, mcp2
from tests.support.harness import KEYS, Gateway, LoopThread, copy_policies
from tests.support.mcp_orders_server import PROGRESS_MESSAGES, RESOURCE_URI, OrdersServer
from tests.support.waiting import at_least, eventually

EXPECTED = {
    "observer": set(),
    "intern-bot": {"read_orders"},
    "builder": {"read_orders", "refund_order"},
    "executor": {"read_orders", "refund_order"},
    "architect": {"read_orders", "refund_order", "delete_customer"},
}
# Listed but refused until an operator approves (contract 6): an agent only calls what it is shown.
NEEDS_APPROVAL = {"executor": {"delete_customer"}}
CALLS = {
    "read_orders": {"customer": "acme"},
    "refund_order": {"order_id": "A-1001", "amount": 10.0},
    "delete_customer": {"customer": "globex"},
}
# client kind -> the protocol version it ends up speaking through the gateway
CLIENTS = {"mcp2": "2026-07-28", "mcp2-legacy": "2025-11-25", "mcp1": "2025-11-25"}


def bearer(agent: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[agent]}"}


def run(loop_thread: LoopThread, client: str, url: str, agent: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
    if client == "mcp1":
        return mcp1.run_client(url, ops, bearer(agent))
    mode = "auto" if client == "mcp2" else "legacy"
    return loop_thread.run(mcp2.run_ops(url, ops, bearer(agent), mode=mode), timeout=120)


def rows_eventually(gw: Gateway, where: str, args: tuple, n: int) -> list[dict[str, Any]]:
    return eventually(at_least(n, lambda: gw.audit_rows(where, args)), f"{n} audit rows where {where} {args}")


@pytest.fixture
def mcp_gateway(make_gateway: Callable[..., Gateway], orders: OrdersServer) -> Callable[..., Gateway]:
    def make(policy_dir: Path | None = None, **servers: Any) -> Gateway:
        return make_gateway(policy_dir, tools={"servers": {"orders": {"kind": "mcp", "url": orders.url},
                                                           **servers}})
    return make


@pytest.mark.parametrize("client", list(CLIENTS))
@pytest.mark.parametrize("agent", list(EXPECTED))
def test_agents_see_and_call_exactly_their_tools(loop_thread: LoopThread, mcp_gateway: Callable[..., Gateway],
                                                 orders: OrdersServer, client: str, agent: str) -> None:
    gw = mcp_gateway()
    orders.clear()
    ops = [{"op": "list_tools"}] + [{"op": "call_tool", "name": n, "arguments": a} for n, a in CALLS.items()]
    out = run(loop_thread, client, gw.url + "/mcp/orders", agent, ops)
    assert out["fatal"] is None, out["fatal"]
    assert out["protocol_version"] == CLIENTS[client]
    listed, *calls = out["results"]
    assert {t["name"] for t in listed["tools"]} == EXPECTED[agent] | NEEDS_APPROVAL.get(agent, set())
    for tool in listed["tools"]:  # listed tools keep their schema and annotations intact
        assert tool["inputSchema"]["type"] == "object"
    for (name, _), result in zip(CALLS.items(), calls):
        rows = rows_eventually(gw, "action = 'tool.call' AND resource_name = ?", (name,), 1)
        assert len(rows) == 1, rows
        row = rows[0]
        assert (row["agent_id"], row["resource_type"], row["upstream"], row["api"]) == (agent, "tool", "orders", "mcp")
        if name in EXPECTED[agent]:
            assert "error" not in result, result
            assert result["isError"] is False
            assert row["decision"] == "allow" and row["status"] == 200 and row["error"] is None
        else:
            err = result["error"]
            assert err["code"] == -31403, err
            # The default policy asks an operator to approve a supervised T3 agent's destructive call.
            approval = name in NEEDS_APPROVAL.get(agent, set())
            assert err["data"]["code"] == ("approval_required" if approval else "tool_not_allowed")
            assert err["data"]["reasons"] and all(r in err["message"] for r in err["data"]["reasons"])
            assert gw.audit_row(err["data"]["request_id"])["request_id"] == row["request_id"]
            assert row["decision"] == "deny" and json.loads(row["reasons"]) == err["data"]["reasons"]
    # A refused call never reaches the server; allowed ones arrive with their arguments.
    assert [(n, a) for n, a in orders.executed] == [(n, CALLS[n]) for n in CALLS if n in EXPECTED[agent]]
    # The agent's credential is never forwarded to the MCP server.
    assert orders.requests and not any("authorization" in r.headers for r in orders.requests)


@pytest.mark.parametrize("client", list(CLIENTS))
def test_progress_and_structured_result_pass_through(loop_thread: LoopThread, mcp_gateway: Callable[..., Gateway],
                                                     client: str) -> None:
    gw = mcp_gateway()
    out = run(loop_thread, client, gw.url + "/mcp/orders", "intern-bot",
              [{"op": "call_tool", "name": "read_orders", "arguments": {"customer": "acme"}}])
    assert out["fatal"] is None, out["fatal"]
    [result] = out["results"]
    assert [p["message"] for p in result["progress"]] == list(PROGRESS_MESSAGES)
    assert [p["progress"] for p in result["progress"]] == [1, 2, 3]
    assert result["structuredContent"]["customer"] == "acme"
    assert [o["order_id"] for o in result["structuredContent"]["orders"]] == ["A-1001", "A-1002"]
    assert json.loads(result["content"][0]["text"]) == result["structuredContent"]


def test_tool_error_result_is_audited(loop_thread: LoopThread, mcp_gateway: Callable[..., Gateway]) -> None:
    gw = mcp_gateway()
    out = run(loop_thread, "mcp2", gw.url + "/mcp/orders", "builder",
              [{"op": "call_tool", "name": "refund_order", "arguments": {"order_id": "A-1001", "amount": -5}}])
    [result] = out["results"]
    assert result["isError"] is True and "must be positive" in result["content"][0]["text"]
    [row] = rows_eventually(gw, "action = 'tool.call'", (), 1)
    assert (row["decision"], row["status"], row["error"]) == ("allow", 200, "tool result isError")


@pytest.mark.parametrize("client", ["mcp2", "mcp1"])
def test_resources_and_prompts_are_governed(loop_thread: LoopThread, mcp_gateway: Callable[..., Gateway],
                                            client: str) -> None:
    gw = mcp_gateway()
    ops = [{"op": "read_resource", "uri": RESOURCE_URI}, {"op": "get_prompt", "name": "summarize_orders"}]
    ok = run(loop_thread, client, gw.url + "/mcp/orders", "intern-bot", ops)
    assert ok["fatal"] is None, ok["fatal"]
    resource, prompt = ok["results"]
    assert json.loads(resource["contents"][0]["text"])["orders"][0]["order_id"] == "A-1001"
    assert "acme" in prompt["messages"][0]["content"]["text"]
    refused = run(loop_thread, client, gw.url + "/mcp/orders", "observer", ops)
    for r in refused["results"]:
        assert r["error"]["code"] == -31403
        assert "tier 0 may not use server orders (minimum tier 1)" in r["error"]["data"]["reasons"]
    rows = rows_eventually(gw, "action IN ('mcp.resources.read', 'mcp.prompts.get')", (), 4)
    got = sorted((r["agent_id"], r["action"], r["resource_type"], r["resource_name"], r["decision"]) for r in rows)
    assert got == [("intern-bot", "mcp.prompts.get", "prompt", "summarize_orders", "allow"),
                   ("intern-bot", "mcp.resources.read", "resource", RESOURCE_URI, "allow"),
                   ("observer", "mcp.prompts.get", "prompt", "summarize_orders", "deny"),
                   ("observer", "mcp.resources.read", "resource", RESOURCE_URI, "deny")]


def test_call_without_listing_first_learns_annotations(loop_thread: LoopThread,
                                                        mcp_gateway: Callable[..., Gateway],
                                                        orders: OrdersServer) -> None:
    """A fresh gateway has seen no tools/list: it lists the tools itself before deciding."""
    gw = mcp_gateway()
    out = run(loop_thread, "mcp2", gw.url + "/mcp/orders", "intern-bot",
              [{"op": "call_tool", "name": "read_orders", "arguments": {"customer": "globex"}}])
    [result] = out["results"]
    assert result.get("isError") is False, result  # read-only: allowed to an intern only with its hint known
    [row] = rows_eventually(gw, "action = 'tool.call'", (), 1)
    assert json.loads(row["policy_input"])["resource"]["annotations"] == {"readOnlyHint": True}


def test_tool_calls_are_rate_limited(loop_thread: LoopThread, mcp_gateway: Callable[..., Gateway],
                                     tmp_path: Path) -> None:
    policies = copy_policies(tmp_path / "policies")
    data_file = policies / "portcullis" / "config" / "data.json"
    data = json.loads(data_file.read_text())
    data["tiers"]["1"]["obligations"]["requests_per_minute"] = 3
    data_file.write_text(json.dumps(data))
    gw = mcp_gateway(policies)
    call = {"op": "call_tool", "name": "read_orders", "arguments": {"customer": "acme"}}
    out = run(loop_thread, "mcp2", gw.url + "/mcp/orders", "intern-bot", [call] * 5)
    assert [("error" in r) for r in out["results"]] == [False, False, False, True, True]
    err = out["results"][3]["error"]
    assert err["code"] == -31429 and err["data"]["code"] == "rate_limit_exceeded"
    assert err["data"]["retry_after_s"] >= 1
    assert gw.audit_row(err["data"]["request_id"])["decision"] == "rate_limited"


def test_unknown_server_is_404(mcp_gateway: Callable[..., Gateway]) -> None:
    gw = mcp_gateway()
    r = httpx.post(gw.url + "/mcp/nope", headers=bearer("architect"),
                   json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert r.status_code == 404
    body = r.json()
    assert body["jsonrpc"] == "2.0" and body["error"]["code"] == -32600
    assert "unknown MCP server 'nope'" in body["error"]["message"]
    row = gw.audit_row(r.headers["x-request-id"])
    assert (row["status"], row["upstream"], row["decision"]) == (404, "nope", "error")


@pytest.mark.parametrize("raw,code,message", [
    (b'{"jsonrpc": "2.0", "id": 1, "method": ', -32700, "parse error"),
    (b'[{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}]', -32600, "batches are not supported"),
    (b'{"id": 1, "method": "tools/list"}', -32600, '"jsonrpc": "2.0"'),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": []}', -32602, "params must be an object"),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {}}', -32602, "needs a tool name"),
    (b'{"jsonrpc": "2.0", "id": {"a": 1}, "method": "ping"}', -32600, "id must be"),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "read_orders\\u0000"}}',
     -32602, "control characters"),
])
def test_malformed_json_rpc(mcp_gateway: Callable[..., Gateway], orders: OrdersServer,
                            raw: bytes, code: int, message: str) -> None:
    gw = mcp_gateway()
    orders.clear()
    r = httpx.post(gw.url + "/mcp/orders", content=raw,
                   headers={**bearer("architect"), "content-type": "application/json",
                            "accept": "application/json, text/event-stream"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == code and message in err["message"]
    assert err["data"]["request_id"] == r.headers["x-request-id"]
    assert gw.audit_row(r.headers["x-request-id"])["status"] == 400
    assert orders.requests == []  # nothing malformed is forwarded


def test_bad_credentials_get_401(mcp_gateway: Callable[..., Gateway]) -> None:
    gw = mcp_gateway()
    r = httpx.post(gw.url + "/mcp/orders", headers={"Authorization": "Bearer pk-wrong"},
                   json={"jsonrpc": "2.0", "id": 7, "method": "tools/list"})
    assert r.status_code == 401
    assert r.json()["error"]["data"]["type"] == "authentication"
    assert "pk-wrong" not in r.text


def test_server_down_is_a_json_rpc_error_not_a_hang(loop_thread: LoopThread,
                                                    mcp_gateway: Callable[..., Gateway]) -> None:
    gw = mcp_gateway(down={"kind": "mcp", "url": "http://127.0.0.1:9/mcp", "connect_timeout_s": 2})
    t = time.monotonic()
    r = httpx.post(gw.url + "/mcp/down", headers={**bearer("architect"), "accept": "application/json, text/event-stream"},
                   json={"jsonrpc": "2.0", "id": 3, "method": "initialize",
                         "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                                    "clientInfo": {"name": "t", "version": "1"}}})
    assert r.status_code == 200
    body = r.json()
    assert body["id"] == 3 and body["error"]["code"] == -31502
    assert "unreachable" in body["error"]["message"]
    out = run(loop_thread, "mcp2", gw.url + "/mcp/down", "architect", [{"op": "list_tools"}])
    assert out["fatal"] is not None and "unreachable" in json.dumps(out["fatal"])
    assert time.monotonic() - t < 30
    row = gw.audit_row(r.headers["x-request-id"])
    assert (row["action"], row["decision"], row["status"]) == ("mcp.initialize", "allow", 200)
    assert "unreachable" in row["error"]


def test_session_protocol_2025_06_18_on_the_wire(mcp_gateway: Callable[..., Gateway], orders: OrdersServer) -> None:
    """initialize, Mcp-Session-Id and MCP-Protocol-Version travel both ways; DELETE ends the session."""
    gw = mcp_gateway()
    url = gw.url + "/mcp/orders"
    base = {**bearer("intern-bot"), "accept": "application/json, text/event-stream"}
    with httpx.Client(timeout=30) as c:
        init = c.post(url, headers=base, json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}})
        assert init.status_code == 200
        sid = init.headers["mcp-session-id"]
        hdrs = {**base, "mcp-session-id": sid, "mcp-protocol-version": "2025-06-18"}
        assert c.post(url, headers=hdrs, json={"jsonrpc": "2.0", "method": "notifications/initialized"}).status_code == 202
        listed = c.post(url, headers=hdrs, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
        data = [json.loads(line[5:]) for line in listed.text.splitlines() if line.startswith("data:")] \
            if listed.headers["content-type"].startswith("text/event-stream") else [listed.json()]
        [answer] = [m for m in data if m.get("id") == 2]
        assert [t["name"] for t in answer["result"]["tools"]] == ["read_orders"]
        mismatch = c.post(url, headers={**hdrs, "mcp-method": "tools/list"},
                          json={"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                                "params": {"name": "read_orders", "arguments": {"customer": "acme"}}})
        assert mismatch.json()["error"]["code"] == -32020
        # Another agent presenting this session id is told the session does not exist.
        stolen = c.post(url, headers={**hdrs, **bearer("architect")},
                        json={"jsonrpc": "2.0", "id": 4, "method": "tools/list"})
        assert stolen.status_code == 404 and stolen.json()["error"]["message"] == "session not found"
        assert "opened by agent intern-bot" in gw.audit_row(stolen.headers["x-request-id"])["error"]
        assert c.delete(url, headers=hdrs).status_code in (200, 204)
    seen = [r for r in orders.requests if r.headers.get("mcp-session-id") == sid]
    assert {r.headers.get("mcp-protocol-version") for r in seen} == {"2025-06-18"}
    assert [r.method for r in seen][-1] == "DELETE"


def test_metrics_label_the_mcp_surface(loop_thread: LoopThread, mcp_gateway: Callable[..., Gateway]) -> None:
    gw = mcp_gateway()
    run(loop_thread, "mcp2", gw.url + "/mcp/orders", "observer", [{"op": "list_tools"}])
    text = httpx.get(gw.url + "/metrics").text
    assert 'portcullis_requests_total{decision="deny",status="200",surface="mcp"}' in text
