"""MCP session binding across replicas: `tools.session_store: redis`.

Two real gateways share the machine's Redis (a key prefix unique to the run) and sit
behind the round-robin load balancer with no sticky sessions, as behind a Kubernetes
Service. The real `mcp` SDK client opens a session through the balancer, one connection
per request, so its requests land on both replicas. With per-replica memory bindings the
replica that did not see `initialize` passed a hijacked id on to the server; with the
shared store every replica refuses it.
"""
from __future__ import annotations

import socket
from typing import Any, Callable, Iterator

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.support import mcp2
from tests.support.harness import KEYS, Gateway, LoopThread
from tests.support.lb import RoundRobinLB
from tests.support.mcp_orders_server import OrdersServer
from tests.support.mcp_raw import ACCEPT, INITIALIZE
from tests.support.services import redis_url, unique
from tests.support.redis_process import delete_prefix

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INITIALIZE}
LIST = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}


def bearer(agent: str) -> dict[str, str]:
    return {"authorization": f"Bearer {KEYS[agent]}"}


@pytest.fixture
def prefix() -> Iterator[str]:
    p = unique("test:mcpfleet:") + ":"
    yield p
    delete_prefix(redis_url(), p)


@pytest.fixture
def replicas(make_gateway: Callable[..., Gateway], orders: OrdersServer, prefix: str) -> Callable[..., list[Gateway]]:
    def make(n: int = 2, store: str = "redis", url: str | None = None) -> list[Gateway]:
        return [make_gateway(tools={"servers": {"orders": {"kind": "mcp", "url": orders.url}}, "session_store": store},
                             limits__redis_url=url or redis_url(), limits__key_prefix=prefix)
                for _ in range(n)]
    return make


def rows(gw: Gateway, agent: str) -> list[dict[str, Any]]:
    return gw.audit_rows("agent_id = ?", (agent,))


def post(url: str, body: dict[str, Any], agent: str, sid: str | None = None) -> httpx.Response:
    headers = {**ACCEPT, **bearer(agent), **({"mcp-session-id": sid, "mcp-protocol-version": INITIALIZE[
        "protocolVersion"]} if sid else {})}
    return httpx.post(url + "/mcp/orders", json=body, headers=headers, timeout=30)


def test_a_session_works_on_every_replica_for_its_agent_and_on_none_for_another(
        loop_thread: LoopThread, replicas: Callable[..., list[Gateway]], orders: OrdersServer) -> None:
    a, b = replicas()
    lb = loop_thread.run(RoundRobinLB([a.url, b.url]).start())
    hijacks: list[tuple[Gateway, httpx.Response]] = []
    try:
        async def session() -> dict[str, Any]:
            # One connection per request: the balancer alternates replicas within the session.
            http = httpx2.AsyncClient(headers=bearer("intern-bot"), timeout=httpx2.Timeout(30),
                                      limits=httpx2.Limits(max_keepalive_connections=0))
            transport = streamable_http_client(lb.url + "/mcp/orders", http_client=http)
            out: dict[str, Any] = {}
            async with http, Client(transport, mode="legacy", cache=None, read_timeout_seconds=30) as client:
                out["sid"] = sid = mcp2._session_id(transport)
                out["tools"] = []
                for _ in range(3):
                    out["tools"].append(sorted(t.name for t in (await client.list_tools()).tools))
                called = await client.call_tool("read_orders", {"customer": "acme"})
                out["call_error"] = called.is_error
                # While the session is open, another agent presents its id to each replica.
                async with httpx.AsyncClient(timeout=30) as raw:
                    for gw in (a, b):
                        r = await raw.post(gw.url + "/mcp/orders", json=LIST, headers={
                            **ACCEPT, **bearer("architect"), "mcp-session-id": sid,
                            "mcp-protocol-version": INITIALIZE["protocolVersion"]})
                        hijacks.append((gw, r))
                out["after"] = sorted(t.name for t in (await client.list_tools()).tools)
            return out
        out = loop_thread.run(session(), timeout=120)
    finally:
        loop_thread.run(lb.aclose())
    assert out["sid"], "the legacy handshake hands out an Mcp-Session-Id"
    assert out["tools"] == [["read_orders"]] * 3 and out["after"] == ["read_orders"]
    assert out["call_error"] is False
    # Both replicas served requests of this one session, not only the one that opened it.
    served = {gw.url: [r for r in rows(gw, "intern-bot") if r["action"] != "mcp.initialize"] for gw in (a, b)}
    assert all(served.values()), {u: len(v) for u, v in served.items()}
    assert all(r["status"] < 400 for v in served.values() for r in v), served
    # The other agent was refused on both, audited, and nothing of it reached the server.
    for gw, r in hijacks:
        assert r.status_code == 404, r.text
        assert r.json()["error"]["message"] == "session not found"
        row = gw.audit_row(r.headers["x-request-id"])
        assert (row["agent_id"], row["status"], row["decision"]) == ("architect", 404, "error")
        assert "MCP session opened by agent intern-bot used by agent architect" in row["error"]
    refused = {r.headers["x-request-id"] for _, r in hijacks}
    assert not [s for s in orders.requests if s.headers.get("x-request-id") in refused]


def test_a_fleet_store_refuses_ids_it_never_bound_and_memory_passes_them_on(
        replicas: Callable[..., list[Gateway]], orders: OrdersServer) -> None:
    # A real session on the server, opened around the gateway: no replica bound it.
    direct = httpx.post(orders.url, json=INIT, headers=ACCEPT, timeout=30)
    sid = direct.headers["mcp-session-id"]
    [fleet] = replicas(1)
    r = post(fleet.url, LIST, "intern-bot", sid)
    assert r.status_code == 404 and r.json()["error"]["message"] == "session not found"
    assert "unknown to the session store" in fleet.audit_row(r.headers["x-request-id"])["error"]
    [single] = replicas(1, store="memory")  # today's per-replica behaviour: the server decides
    assert post(single.url, LIST, "intern-bot", sid).status_code == 200


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_redis_down_fails_closed_with_an_audited_json_rpc_error(replicas: Callable[..., list[Gateway]],
                                                                 orders: OrdersServer) -> None:
    [gw] = replicas(1, url=f"redis://:s3cretpw@127.0.0.1:{closed_port()}/0")
    init = post(gw.url, INIT, "intern-bot")  # the id cannot be bound: the client never gets it
    direct = httpx.post(orders.url, json=INIT, headers=ACCEPT, timeout=30)
    used = post(gw.url, LIST, "intern-bot", direct.headers["mcp-session-id"])  # nor checked: refused
    for r, doing in ((init, "bind"), (used, "lookup")):
        # A refused request is a JSON-RPC error answer (HTTP 200), which MCP clients raise.
        assert r.status_code == 200 and "mcp-session-id" not in r.headers, r.text
        err = r.json()["error"]
        assert err["code"] == -32603 and err["data"]["code"] == "session_store_unavailable", err
        assert err["data"]["type"] == "unavailable" and "s3cretpw" not in r.text
        row = gw.audit_row(r.headers["x-request-id"])
        assert (row["status"], row["decision"]) == (200, "error")
        assert row["error"].startswith(f"MCP session {doing} on Redis at 127.0.0.1:") and "s3cretpw" not in row["error"]
