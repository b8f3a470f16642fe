"""Bad input that used to bypass policy or crash the gateway: each is a 400 in the surface's
own format, audited, or is forwarded only as what the gateway decided on.

- duplicate JSON keys: the gateway forwards its own re-serialisation of what it parsed,
  so an upstream that keeps the first of two `model` keys still sees the decided one;
- duplicate credential headers (Authorization, x-api-key, X-Agent-Id, ...): 400;
- request methods sent as MCP notifications (no id): 400, never forwarded;
- wrongly typed fields the gateway reads (`"tools": 5`, ...): 400, never a 500;
- JSON nested deeper than server.max_json_depth: 400 at parse time, on every surface.
"""
from __future__ import annotations

import json
from typing import Any, Iterator

import httpx
import pytest

from tests.support.harness import KEYS, Gateway, LoopThread, gateway_config
from tests.support.mcp_orders_server import RESOURCE_URI, OrdersServer
from tests.support.mcp_raw import ACCEPT, INITIALIZE
from tests.support.upstream_server import UpstreamServer, request_id

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def gw(loop_thread: LoopThread, upstream: UpstreamServer, orders: OrdersServer,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tools = {"servers": {"orders": {"kind": "mcp", "url": orders.url}},
             "http": {"weather": {"url": upstream.url + "/tools/weather", "method": "POST",
                                  "annotations": {"readOnlyHint": True}}}}
    g = Gateway(loop_thread, gateway_config(tmp_path_factory.mktemp("hardening"), upstream.url, tools=tools)).start()
    yield g
    g.stop()


def post(gw: Gateway, path: str, content: bytes | str, agent: str = "intern-bot",
         headers: list[tuple[str, str]] | None = None) -> httpx.Response:
    hdrs = headers if headers is not None else [("authorization", f"Bearer {KEYS[agent]}")]
    return httpx.post(gw.url + path, content=content, timeout=30,
                      headers=[*ACCEPT.items(), *hdrs])


def check_error(gw: Gateway, path: str, r: httpx.Response, status: int = 400) -> dict[str, Any]:
    """The surface's own error format with the request id, and the audit row says so."""
    assert r.status_code == status, r.text
    body, rid = r.json(), r.headers["x-request-id"]
    if path.startswith("/mcp/"):
        assert body["jsonrpc"] == "2.0" and body["error"]["data"]["request_id"] == rid, body
        err = body["error"]
    elif path.startswith("/v1/messages"):
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error", body
        assert body["request_id"] == rid
        err = body["error"]
    else:
        err = body["error"]
        assert err["type"] == "invalid_request_error" and err["request_id"] == rid, body
    row = gw.audit_row(rid)
    assert (row["status"], row["decision"]) == (status, "error"), row
    return err


# ---- duplicate JSON keys ----------------------------------------------------

def test_duplicate_model_key_forwards_only_the_decided_model(gw: Gateway, upstream: UpstreamServer) -> None:
    # intern-bot may use gpt-4o-mini, not gpt-4o: the policy reads the last key.
    tag = request_id()
    # With max_tokens under the cap nothing else is rewritten: only the forwarding decides.
    raw = '{"model": "gpt-4o", "max_tokens": 16, "messages": %s, "model": "gpt-4o-mini"}' % json.dumps(MSG)
    r = post(gw, "/v1/chat/completions", raw, headers=[("authorization", f"Bearer {KEYS['intern-bot']}"),
                                                       ("x-request-id", tag)])
    assert r.status_code == 200, r.text
    [seen] = upstream.received(tag)
    assert b'"gpt-4o"' not in seen.body and seen.body.count(b'"model"') == 1
    assert seen.json()["model"] == "gpt-4o-mini" and seen.json()["messages"] == MSG


def test_duplicate_model_key_on_anthropic_forwards_only_the_decided_model(gw: Gateway,
                                                                         upstream: UpstreamServer) -> None:
    tag = request_id()
    raw = ('{"model": "claude-sonnet-4-6", "max_tokens": 16, "messages": %s, "model": "claude-haiku-4-5"}'
           % json.dumps(MSG))
    r = post(gw, "/v1/messages", raw, headers=[("x-api-key", KEYS["intern-bot"]), ("x-request-id", tag),
                                               ("anthropic-version", "2023-06-01")])
    assert r.status_code == 200, r.text
    [seen] = upstream.received(tag)
    assert b"sonnet" not in seen.body and seen.json()["model"] == "claude-haiku-4-5"


def test_duplicate_argument_key_on_an_http_tool_forwards_what_was_parsed(gw: Gateway,
                                                                        upstream: UpstreamServer) -> None:
    r = post(gw, "/tools/weather", '{"city": "Paris", "city": "Oslo"}')
    assert r.status_code == 200, r.text
    [seen] = upstream.received(r.headers["x-request-id"])
    assert seen.body == b'{"city":"Oslo"}'


def session(gw: Gateway, agent: str) -> list[tuple[str, str]]:
    """A handshake-era MCP session for `agent`: its request headers."""
    auth = [("authorization", f"Bearer {KEYS[agent]}")]
    init = post(gw, "/mcp/orders", json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                                                "params": INITIALIZE}), headers=auth)
    assert init.status_code == 200, init.text
    hdrs = [*auth, ("mcp-session-id", init.headers["mcp-session-id"]),
            ("mcp-protocol-version", INITIALIZE["protocolVersion"])]
    done = post(gw, "/mcp/orders", '{"jsonrpc": "2.0", "method": "notifications/initialized"}', headers=hdrs)
    assert done.status_code == 202, done.text
    return hdrs


def test_duplicate_tool_name_in_mcp_call_forwards_the_decided_tool(gw: Gateway, orders: OrdersServer) -> None:
    hdrs = session(gw, "intern-bot")  # may call read_orders, not delete_customer
    orders.clear()
    raw = ('{"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "delete_customer", '
           '"arguments": {"customer": "acme"}, "name": "read_orders"}}')
    r = post(gw, "/mcp/orders", raw, headers=hdrs)
    assert r.status_code == 200, r.text
    [seen] = [q for q in orders.requests if q.rpc_method == "tools/call"]
    assert b"delete_customer" not in seen.body and seen.json()["params"]["name"] == "read_orders"
    assert [name for name, _ in orders.executed] == ["read_orders"]


# ---- duplicate credential headers -------------------------------------------

@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages", "/mcp/orders", "/tools/weather"])
@pytest.mark.parametrize("name, first, second", [
    ("authorization", f"Bearer {KEYS['observer']}", f"Bearer {KEYS['architect']}"),
    ("x-api-key", KEYS["observer"], KEYS["architect"]),
    ("x-agent-id", "observer", "architect"),
])
def test_a_credential_header_sent_twice_is_refused(gw: Gateway, upstream: UpstreamServer, path: str,
                                                   name: str, first: str, second: str) -> None:
    tag = request_id()
    base = [] if name != "x-agent-id" else [("authorization", f"Bearer {KEYS['architect']}")]
    body = json.dumps({"model": "gpt-4o-mini", "max_tokens": 8, "messages": MSG} if path.startswith("/v1/")
                      else {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INITIALIZE}
                      if path.startswith("/mcp/") else {"city": "Oslo"})
    r = post(gw, path, body, headers=[*base, (name, first), (name, second), ("x-request-id", tag)])
    err = check_error(gw, path, r)
    code = err["data"]["code"] if path.startswith("/mcp/") else err.get("code", "duplicate_header")
    assert code == "duplicate_header" and name in err["message"]
    assert KEYS["architect"] not in r.text and upstream.received(tag) == []


# ---- MCP request methods sent as notifications ------------------------------

@pytest.mark.parametrize("method, params, action", [
    ("tools/call", {"name": "delete_customer", "arguments": {"customer": "globex"}}, "tool.call"),
    ("resources/read", {"uri": RESOURCE_URI}, "mcp.resources.read"),
    ("prompts/get", {"name": "summarize_orders"}, "mcp.prompts.get"),
    ("tools/list", {}, "tool.list"),
])
def test_a_request_method_without_an_id_is_refused_not_forwarded(gw: Gateway, orders: OrdersServer, method: str,
                                                                 params: dict[str, Any], action: str) -> None:
    hdrs = session(gw, "observer")  # may call no tool, read no resource
    orders.clear()
    r = post(gw, "/mcp/orders", json.dumps({"jsonrpc": "2.0", "method": method, "params": params}), headers=hdrs)
    err = check_error(gw, "/mcp/orders", r)
    assert err["code"] == -32600 and err["data"]["code"] == "request_without_id", err
    assert gw.audit_row(r.headers["x-request-id"])["action"] == action
    assert orders.requests == [] and orders.executed == []


# ---- wrongly typed fields ---------------------------------------------------

CHAT = {"model": "gpt-4o-mini", "messages": MSG}
RESP = {"model": "gpt-4o-mini", "input": "hi"}
MESSAGES = {"model": "claude-haiku-4-5", "max_tokens": 16, "messages": MSG}
BAD_FIELDS: list[tuple[str, dict[str, Any]]] = [
    *[(p, {**base, **bad}) for p, base in (("/v1/chat/completions", CHAT), ("/v1/responses", RESP),
                                          ("/v1/messages", MESSAGES))
      for bad in ({"tools": 5}, {"tools": True}, {"functions": 7}, {"tools": "x"}, {"tools": [5]},
                  {"tools": [{"type": "function", "function": 5}]},
                  {"tools": [{"type": "function", "function": {"name": 5}}]}, {"tools": [{"name": ["x"]}]},
                  {"functions": [{"name": 5}]}, {"stream": "true"}, {"stream": 1})],
    ("/v1/chat/completions", {**CHAT, "stream": True, "stream_options": 5}),
    ("/v1/chat/completions", {**CHAT, "stream": True, "stream_options": {"include_usage": "yes"}}),
    ("/v1/chat/completions", {**CHAT, "max_tokens": "10"}),
    ("/v1/chat/completions", {**CHAT, "max_completion_tokens": True}),
    ("/v1/chat/completions", {**CHAT, "messages": "hi"}),
    ("/v1/chat/completions", {**CHAT, "model": 5}),
    ("/v1/responses", {**RESP, "input": 5}),
    ("/v1/responses", {**RESP, "max_output_tokens": [1]}),
    ("/v1/embeddings", {"model": "text-embedding-3-small", "input": {"a": 1}}),
    ("/v1/messages", {**MESSAGES, "max_tokens": "16"}),
    ("/v1/messages", {**MESSAGES, "messages": {}}),
    ("/v1/messages/count_tokens", {**MESSAGES, "tools": 5}),
    ("/tools/weather", [1, 2]),
    ("/mcp/orders", {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": 5}),
    ("/mcp/orders", {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": 5}}),
    ("/mcp/orders", {"jsonrpc": "2.0", "id": 3, "method": "resources/read", "params": {"uri": 5}}),
    ("/mcp/orders", {"jsonrpc": "2.0", "id": 3, "method": "resources/read", "params": {}}),
    ("/mcp/orders", {"jsonrpc": "2.0", "id": 3, "method": "prompts/get", "params": {"name": {"x": 1}}}),
    ("/mcp/orders", {"jsonrpc": "2.0", "id": True, "method": "ping"}),
]


@pytest.mark.parametrize("path, body", BAD_FIELDS, ids=[f"{p}:{json.dumps(b)[-60:]}" for p, b in BAD_FIELDS])
def test_a_wrongly_typed_field_is_a_400_in_the_surface_format(gw: Gateway, upstream: UpstreamServer,
                                                             path: str, body: Any) -> None:
    tag = request_id()
    agent = "architect"  # may do everything: a refusal here is the type check's
    hdrs = [("authorization", f"Bearer {KEYS[agent]}"), ("x-request-id", tag)]
    check_error(gw, path, post(gw, path, json.dumps(body), headers=hdrs))
    assert upstream.received(tag) == []


# ---- JSON depth -------------------------------------------------------------

def nested(levels: int) -> str:
    """`levels` arrays, one inside the other, as JSON text (too deep for json.dumps)."""
    return "[" * levels + '"deep"' + "]" * levels


def with_deep(body: dict[str, Any], levels: int) -> str:
    return json.dumps(body).replace('"@deep@"', nested(levels))


DEEP_BODIES = [("/v1/chat/completions", {**CHAT, "stream": True}),  # a body the gateway rewrites
               ("/v1/chat/completions", CHAT), ("/v1/responses", RESP), ("/v1/embeddings",
                                                                         {"model": "text-embedding-3-small"}),
               ("/v1/messages", MESSAGES), ("/tools/weather", {"city": "Oslo"}),
               ("/mcp/orders", {"jsonrpc": "2.0", "id": 4, "method": "tools/call",
                                "params": {"name": "read_orders"}})]


@pytest.mark.parametrize("depth", [129, 300, 1000])
@pytest.mark.parametrize("path, base", DEEP_BODIES)
def test_json_deeper_than_the_limit_is_a_400_on_every_surface(gw: Gateway, upstream: UpstreamServer, path: str,
                                                             base: dict[str, Any], depth: int) -> None:
    # The body object is level 1 and `x` holds the rest: `depth` levels in all.
    key = "params" if path.startswith("/mcp/") else "metadata"
    body = {**base, key: {**base.get(key, {}), "x": "@deep@"}}
    raw = with_deep(body, depth - 2)
    if path == "/v1/embeddings":
        raw = with_deep({**base, "input": "@deep@"}, depth - 1)
    tag = request_id()
    r = post(gw, path, raw, headers=[("authorization", f"Bearer {KEYS['architect']}"), ("x-request-id", tag)])
    err = check_error(gw, path, r)
    assert "deeper than 128" in err["message"], err
    assert upstream.received(tag) == []


def test_json_at_the_limit_is_forwarded(gw: Gateway, upstream: UpstreamServer) -> None:
    tag = request_id()
    body = {**CHAT, "stream": True, "metadata": {"x": "@deep@"}}  # 128 levels, rewritten (usage asked)
    r = post(gw, "/v1/chat/completions", with_deep(body, 126),
             headers=[("authorization", f"Bearer {KEYS['intern-bot']}"), ("x-request-id", tag)])
    assert r.status_code == 200, r.text
    [seen] = upstream.received(tag)
    assert seen.json()["metadata"] == json.loads(nested(126).join(['{"x": ', "}"]))


def test_max_json_depth_is_configurable(make_gateway: Any) -> None:
    gw = make_gateway(server__max_json_depth=4)
    ok = post(gw, "/v1/chat/completions", json.dumps(CHAT))  # object > list > object: 3 levels
    assert ok.status_code == 200, ok.text
    deep = post(gw, "/v1/chat/completions", json.dumps({**CHAT, "metadata": {"a": [[[1]]]}}))  # 5 levels
    assert "deeper than 4" in check_error(gw, "/v1/chat/completions", deep)["message"]
