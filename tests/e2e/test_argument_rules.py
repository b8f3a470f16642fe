"""Tool rules that see arguments (issue 12): the default policy's refund_order limit through the
real `mcp` SDK, the decision cache keeping amounts apart, and tools left argument-free.

The default data opts refund_order in (tool_servers.orders.argument_rules) and limits its
amount: above 100 needs tier 3 (tool_servers.orders.argument_limits).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import mcp1, mcp2
from tests.support.harness import KEYS, Gateway, LoopThread, copy_policies
from tests.support.mcp_orders_server import OrdersServer
from tests.support.tool_configs import tools_config
from tests.support.upstream_server import UpstreamServer
from tests.support.waiting import at_least, eventually

OVER_LIMIT = "refund_order amount 250 above 100 needs tier 3"


def bearer(agent: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[agent]}"}


def run(loop_thread: LoopThread, client: str, url: str, agent: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
    if client == "mcp1":
        return mcp1.run_client(url, ops, bearer(agent))
    out = loop_thread.run(mcp2.run_ops(url, ops, bearer(agent)), timeout=120)
    assert out["fatal"] is None, out["fatal"]
    return out


def refund(amount: float) -> dict[str, Any]:
    return {"op": "call_tool", "name": "refund_order", "arguments": {"order_id": "A-1001", "amount": amount}}


def call_rows(gw: Gateway, n: int) -> list[dict[str, Any]]:
    rows = eventually(at_least(n, lambda: gw.audit_rows("action = 'tool.call'")), f"{n} tool.call rows")
    return sorted(rows, key=lambda r: r["ts"])


@pytest.fixture
def mcp_gateway(make_gateway: Callable[..., Gateway], orders: OrdersServer) -> Callable[..., Gateway]:
    def make(policy_dir: Path | None = None) -> Gateway:
        return make_gateway(policy_dir, tools={"servers": {"orders": {"kind": "mcp", "url": orders.url}}})
    return make


@pytest.mark.parametrize("client", ["mcp2", "mcp1"])
def test_refund_amount_decides_and_the_cache_keeps_amounts_apart(
        loop_thread: LoopThread, mcp_gateway: Callable[..., Gateway], orders: OrdersServer, client: str) -> None:
    gw = mcp_gateway()
    orders.clear()
    out = run(loop_thread, client, gw.url + "/mcp/orders", "builder",
              [{"op": "list_tools"}, refund(10), refund(250), refund(10)])
    listed, small, large, again = out["results"]
    # Listing is argument-free: builder still sees refund_order (some amounts are allowed).
    assert {t["name"] for t in listed["tools"]} == {"read_orders", "refund_order"}
    assert small.get("isError") is False, small
    assert again.get("isError") is False, again
    err = large["error"]
    assert err["code"] == -31403 and err["data"]["code"] == "tool_not_allowed", err
    assert err["data"]["reasons"] == [OVER_LIMIT] and OVER_LIMIT in err["message"]
    # Only the allowed refunds reached the server.
    assert orders.executed == [("refund_order", {"order_id": "A-1001", "amount": 10.0})] * 2
    first, refused, second = call_rows(gw, 3)
    assert [r["decision"] for r in (first, refused, second)] == ["allow", "deny", "allow"]
    assert json.loads(refused["reasons"]) == [OVER_LIMIT]
    # The arguments are part of the input, so of the digest and the cache key: 250 was decided
    # afresh after the allowed 10, and the second 10 was the first one's cached decision.
    inputs = [json.loads(r["policy_input"]) for r in (first, refused, second)]
    assert [i["resource"]["arguments"]["amount"] for i in inputs] == [10, 250, 10]
    assert refused["input_digest"] != first["input_digest"] == second["input_digest"]
    assert (refused["cache_hit"], second["cache_hit"]) == (0, 1)


def test_supervised_tier_3_may_refund_above_the_limit(loop_thread: LoopThread, mcp_gateway: Callable[..., Gateway],
                                                      orders: OrdersServer) -> None:
    gw = mcp_gateway()
    orders.clear()
    out = run(loop_thread, "mcp2", gw.url + "/mcp/orders", "executor", [{"op": "list_tools"}, refund(250)])
    listed, large = out["results"]
    assert "refund_order" in {t["name"] for t in listed["tools"]}
    assert large.get("isError") is False, large
    assert orders.executed == [("refund_order", {"order_id": "A-1001", "amount": 250.0})]
    [row] = call_rows(gw, 1)
    assert row["decision"] == "allow"


def test_a_tool_without_argument_rules_keeps_an_argument_free_input(
        loop_thread: LoopThread, mcp_gateway: Callable[..., Gateway]) -> None:
    gw = mcp_gateway()
    out = run(loop_thread, "mcp2", gw.url + "/mcp/orders", "builder",
              [{"op": "call_tool", "name": "read_orders", "arguments": {"customer": "acme"}},
               {"op": "call_tool", "name": "read_orders", "arguments": {"customer": "globex"}}])
    assert all(r.get("isError") is False for r in out["results"]), out["results"]
    rows = call_rows(gw, 2)
    for row in rows:
        resource = json.loads(row["policy_input"])["resource"]
        assert "arguments" not in resource and resource["name"] == "read_orders"
    # Different arguments, one input: the second call is the first one's cached decision.
    assert rows[0]["input_digest"] == rows[1]["input_digest"] and rows[1]["cache_hit"] == 1


@pytest.mark.parametrize("arguments,message", [
    ([1, 2], "tool arguments must be a JSON object"),
    ("amount=250", "tool arguments must be a JSON object"),
    ({"order_id": "A-1001", "amount": 1, "note": "x" * 20000}, "larger than 16384 bytes"),
])
def test_unreadable_arguments_of_an_opted_in_tool_are_refused(
        mcp_gateway: Callable[..., Gateway], orders: OrdersServer, arguments: Any, message: str) -> None:
    gw = mcp_gateway()
    orders.clear()
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "refund_order", "arguments": arguments}}
    r = httpx.post(gw.url + "/mcp/orders", json=body,
                   headers={**bearer("architect"), "accept": "application/json, text/event-stream"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == -32602 and message in err["message"], err
    assert err["data"]["code"] == "invalid_arguments"
    assert gw.audit_row(r.headers["x-request-id"])["status"] == 400
    assert orders.requests == []  # never forwarded


def test_http_tool_opted_in_carries_its_arguments(make_gateway: Callable[..., Gateway], upstream: UpstreamServer,
                                                  orders: OrdersServer, tmp_path: Path) -> None:
    policies = copy_policies(tmp_path / "policies")
    data_file = policies / "portcullis" / "config" / "data.json"
    data = json.loads(data_file.read_text())
    data["tool_servers"]["http"] = {"argument_rules": {"weather": True}}
    data_file.write_text(json.dumps(data))
    gw = make_gateway(policies, tools=tools_config(orders.url, upstream.url))
    auth = {"authorization": f"Bearer {KEYS['intern-bot']}"}
    ok = httpx.post(gw.url + "/tools/weather", json={"city": "Oslo"}, headers=auth)
    assert ok.status_code == 200, ok.text
    row = gw.audit_row(ok.headers["x-request-id"])
    assert json.loads(row["policy_input"])["resource"]["arguments"] == {"city": "Oslo"}
    big = httpx.post(gw.url + "/tools/weather", json={"city": "x" * 20000}, headers=auth)
    assert big.status_code == 400
    assert big.json()["error"]["code"] == "invalid_arguments"
    # weather_get is not opted in: its input stays argument-free.
    plain = httpx.post(gw.url + "/tools/weather_get", json={"city": "Bergen"},
                       headers={"authorization": f"Bearer {KEYS['builder']}"})
    assert plain.status_code == 200, plain.text
    assert "arguments" not in json.loads(gw.audit_row(plain.headers["x-request-id"])["policy_input"])["resource"]
