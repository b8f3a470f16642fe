"""The MCP fixtures themselves, with no gateway: the orders server and both client generations.

Each client runs the same op list once against the server (module-scoped); the
tests then check what each saw, and what reached the server on the wire.
"""
from __future__ import annotations

import json
from typing import Any, Iterator

import pytest

from tests.support import mcp1, mcp2
from tests.support.harness import LoopThread, free_socket
from tests.support.mcp_orders_server import (ORDERS, PROGRESS_MESSAGES, PROMPT_NAME, RESOURCE_URI, TOOL_NAMES,
                                     OrdersServer, SeenRequest)

CLIENTS = ("mcp1", "mcp2-auto", "mcp2-legacy")
OPS: list[dict[str, Any]] = [
    {"op": "list_tools"},
    {"op": "call_tool", "name": "read_orders", "arguments": {"customer": "acme"}},
    {"op": "call_tool", "name": "refund_order", "arguments": {"order_id": "A-1001", "amount": -5}},
    {"op": "call_tool", "name": "refund_order", "arguments": {"order_id": "A-1001", "amount": 10.5}},
    {"op": "read_resource", "uri": RESOURCE_URI},
    {"op": "get_prompt", "name": PROMPT_NAME, "arguments": {"customer": "globex"}},
    {"op": "read_resource", "uri": "orders://missing"},
]
AUTH = {"Authorization": "Bearer pk-fixture-test"}


def run(loop_thread: LoopThread, client: str, url: str, ops: list[dict[str, Any]],
        headers: dict[str, str] | None = None, timeout: float = 30.0) -> dict[str, Any]:
    if client == "mcp1":
        return mcp1.run_client(url, ops, headers=headers, timeout=timeout)
    mode = client.removeprefix("mcp2-")
    return loop_thread.run(mcp2.run_ops(url, ops, headers=headers, mode=mode, timeout=timeout))


@pytest.fixture(scope="module")
def orders(loop_thread: LoopThread) -> Iterator[OrdersServer]:
    server = OrdersServer()
    loop_thread.run(server.start())
    yield server
    loop_thread.run(server.stop())


@pytest.fixture(scope="module")
def sessions(loop_thread: LoopThread, orders: OrdersServer) -> dict[str, tuple[dict[str, Any], list[SeenRequest]]]:
    """Each client's result for OPS, and the HTTP requests the server saw from it."""
    seen = {}
    for client in CLIENTS:
        orders.clear()
        result = run(loop_thread, client, orders.url, OPS, headers=AUTH)
        seen[client] = (result, list(orders.requests))
    return seen


def results(sessions: dict[str, Any], client: str) -> list[dict[str, Any]]:
    result = sessions[client][0]
    assert result["fatal"] is None, result["fatal"]
    assert len(result["results"]) == len(OPS)
    return result["results"]


@pytest.mark.parametrize("client", CLIENTS)
def test_lists_three_tools_with_annotations(sessions: dict[str, Any], client: str) -> None:
    tools = {t["name"]: t for t in results(sessions, client)[0]["tools"]}
    assert sorted(tools) == sorted(TOOL_NAMES)
    assert tools["read_orders"]["annotations"]["readOnlyHint"] is True
    assert "destructiveHint" not in tools["read_orders"]["annotations"]
    assert tools["delete_customer"]["annotations"]["readOnlyHint"] is False
    assert tools["delete_customer"]["annotations"]["destructiveHint"] is True
    assert tools["refund_order"]["annotations"] == {}
    assert tools["refund_order"]["inputSchema"]["required"] == ["order_id", "amount"]


@pytest.mark.parametrize("client", CLIENTS)
def test_read_orders_streams_three_progress_messages_then_the_result(sessions: dict[str, Any], client: str) -> None:
    call = results(sessions, client)[1]
    assert call["isError"] is False
    assert [p["message"] for p in call["progress"]] == list(PROGRESS_MESSAGES)
    assert [p["progress"] for p in call["progress"]] == [1, 2, 3]
    assert all(p["total"] == 3 for p in call["progress"])
    assert call["structuredContent"] == {"customer": "acme", "orders": ORDERS["acme"]}
    assert json.loads(call["content"][0]["text"]) == call["structuredContent"]


@pytest.mark.parametrize("client", CLIENTS)
def test_refund_reports_tool_errors_in_the_result(sessions: dict[str, Any], client: str) -> None:
    bad, good = results(sessions, client)[2:4]
    assert bad["isError"] is True
    assert "refund amount must be positive" in bad["content"][0]["text"]
    assert bad["progress"] == []
    assert good["isError"] is False
    assert good["content"] == [{"type": "text", "text": "refunded 10.50 on order A-1001"}]


@pytest.mark.parametrize("client", CLIENTS)
def test_resource_read_prompt_get_and_a_protocol_error(sessions: dict[str, Any], client: str) -> None:
    resource, prompt, missing = results(sessions, client)[4:7]
    (content,) = resource["contents"]
    assert content["uri"] == RESOURCE_URI and content["mimeType"] == "application/json"
    assert len(json.loads(content["text"])["orders"]) == sum(len(v) for v in ORDERS.values())
    assert prompt["messages"][0]["role"] == "user"
    assert "customer globex" in prompt["messages"][0]["content"]["text"]
    assert missing == {"error": {"code": -32602, "message": "Unknown resource: orders://missing",
                                 "data": {"uri": "orders://missing"}}}


def test_each_client_speaks_its_generation(sessions: dict[str, Any]) -> None:
    v1, v2, legacy = (sessions[c][0] for c in CLIENTS)
    assert v1["sdk"].startswith("mcp 1.") and v2["sdk"].startswith("mcp 2.")
    assert v1["protocol_version"] == legacy["protocol_version"] == "2025-11-25"
    assert v1["session_id"] and legacy["session_id"]
    assert v2["protocol_version"] == "2026-07-28" and v2["session_id"] is None
    assert v1["server_info"]["name"] == v2["server_info"]["name"] == "orders"


def test_session_based_wire_initializes_and_deletes(sessions: dict[str, Any]) -> None:
    for client in ("mcp1", "mcp2-legacy"):
        requests = sessions[client][1]
        assert requests[0].rpc_method == "initialize" and "mcp-session-id" not in requests[0].headers
        assert requests[1].rpc_method == "notifications/initialized"
        assert requests[-1].method == "DELETE"
        session = sessions[client][0]["session_id"]
        for r in requests[1:]:
            assert r.headers["mcp-session-id"] == session
            assert r.headers["mcp-protocol-version"] == "2025-11-25"
            assert r.headers["authorization"] == AUTH["Authorization"]


def test_modern_wire_is_stateless_with_routing_headers(sessions: dict[str, Any]) -> None:
    requests = sessions["mcp2-auto"][1]
    assert [r.method for r in requests] == ["POST"] * len(requests)
    assert requests[0].rpc_method == "server/discover"
    assert "initialize" not in [r.rpc_method for r in requests]
    for r in requests:
        assert "mcp-session-id" not in r.headers
        assert r.headers["mcp-protocol-version"] == "2026-07-28"
        assert r.headers["mcp-method"] == r.rpc_method
        assert r.headers["authorization"] == AUTH["Authorization"]
    calls = [r for r in requests if r.rpc_method == "tools/call"]
    assert [r.headers["mcp-name"] for r in calls] == ["read_orders", "refund_order", "refund_order"]
    assert "progressToken" in calls[0].json()["params"]["_meta"]


def test_server_records_executed_tools(loop_thread: LoopThread, orders: OrdersServer) -> None:
    orders.clear()
    result = run(loop_thread, "mcp2-auto", orders.url,
                 [{"op": "call_tool", "name": "delete_customer", "arguments": {"customer": "globex"}}])
    assert result["results"][0]["content"][0]["text"] == "deleted customer globex"
    assert orders.executed == [("delete_customer", {"customer": "globex"})]


@pytest.mark.parametrize("client", ["mcp1", "mcp2-auto"])
def test_unreachable_server_is_reported_as_fatal(loop_thread: LoopThread, client: str) -> None:
    sock = free_socket()  # bound, never listening: connections are refused
    try:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
        result = run(loop_thread, client, url, [{"op": "list_tools"}], timeout=5)
    finally:
        sock.close()
    assert result["results"] == []
    assert result["fatal"]["type"] == "ConnectError"


def test_mcp1_venv_is_reused() -> None:
    assert mcp1.ensure_venv() == mcp1.venv_python()
    assert mcp1.ensure_venv().exists()
