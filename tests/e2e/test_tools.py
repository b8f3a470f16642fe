"""Plain HTTP tools (`POST /tools/{name}`) and tools declared inside chat requests."""
from __future__ import annotations

import json
from typing import Any, Callable

import anthropic
import httpx
import openai
import pytest

from tests.support.harness import KEYS, Gateway
from tests.support.mcp_orders_server import OrdersServer
from tests.support.tool_configs import tools_config
from tests.support.upstream_server import UpstreamServer, request_id


@pytest.fixture
def tools_gateway(make_gateway: Callable[..., Gateway], upstream: UpstreamServer,
                  orders: OrdersServer) -> Callable[..., Gateway]:
    def make(**tools: Any) -> Gateway:
        cfg = {**tools_config(orders.url, upstream.url), **tools}
        return make_gateway(tools=cfg)
    return make


def client(gw: Gateway, agent: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS[agent], max_retries=0)


def call_tool(gw: Gateway, agent: str, name: str, args: dict[str, Any]) -> httpx.Response:
    # The openai SDK's raw POST: agents built on it call HTTP tools with the same client.
    return client(gw, agent).post(f"{gw.url}/tools/{name}", body=args, cast_to=httpx.Response)


def test_http_tool_forwards_for_an_allowed_agent(tools_gateway: Callable[..., Gateway],
                                                 upstream: UpstreamServer) -> None:
    gw = tools_gateway()
    raw = call_tool(gw, "intern-bot", "weather", {"city": "Oslo"})
    assert raw.status_code == 200
    assert json.loads(raw.content) == {"city": "Oslo", "forecast": "sunny", "temp_c": 21, "method": "POST"}
    [seen] = upstream.received(raw.headers["x-request-id"])  # the gateway's own id goes to the tool
    assert seen.path == "/tools/weather" and "authorization" not in seen.headers
    row = gw.audit_row(raw.headers["x-request-id"])
    assert (row["action"], row["resource_type"], row["resource_name"], row["upstream"], row["api"]) == \
        ("tool.call", "tool", "weather", "http", "tools")
    assert (row["decision"], row["status"]) == ("allow", 200)
    assert json.loads(row["policy_input"])["resource"]["annotations"] == {"readOnlyHint": True}


def test_http_tool_get_sends_arguments_as_query(tools_gateway: Callable[..., Gateway]) -> None:
    gw = tools_gateway()
    raw = call_tool(gw, "builder", "weather_get", {"city": "Bergen"})
    assert json.loads(raw.content) == {"city": "Bergen", "forecast": "sunny", "temp_c": 21, "method": "GET"}


@pytest.mark.parametrize("agent,tool,reason", [
    ("observer", "weather", "tier 0 may not use server http (minimum tier 1)"),
    ("intern-bot", "wipe_cache", "maturity intern below required autonomous for tool.call wipe_cache"),
])
def test_http_tool_refused_in_openai_format(tools_gateway: Callable[..., Gateway], upstream: UpstreamServer,
                                            agent: str, tool: str, reason: str) -> None:
    gw = tools_gateway()
    with pytest.raises(openai.PermissionDeniedError) as exc:
        call_tool(gw, agent, tool, {"city": "Oslo"})
    body = exc.value.body
    assert reason in body["message"] and body["code"] == "tool_not_allowed"
    rid = exc.value.response.headers["x-request-id"]
    assert upstream.received(rid) == []  # never forwarded
    row = gw.audit_row(rid)
    assert (row["decision"], row["status"], row["resource_name"]) == ("deny", 403, tool)
    assert reason in json.loads(row["reasons"])


def test_http_tool_errors(tools_gateway: Callable[..., Gateway]) -> None:
    gw = tools_gateway()
    with pytest.raises(openai.NotFoundError) as exc:
        call_tool(gw, "architect", "nope", {})
    assert exc.value.body["code"] == "tool_not_found"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gw.url + "/v1", api_key="pk-wrong", max_retries=0).post(
            f"{gw.url}/tools/weather", body={}, cast_to=httpx.Response)
    r = httpx.post(gw.url + "/tools/weather", content=b"{not json", headers={"authorization": f"Bearer {KEYS['architect']}"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    with pytest.raises(openai.InternalServerError) as broken:
        call_tool(gw, "architect", "broken", {})
    assert broken.value.status_code == 500  # the tool's own answer, passed on
    row = gw.audit_row(broken.value.response.headers["x-request-id"])
    assert (row["decision"], row["status"], row["error"]) == ("allow", 500, "tool broken answered 500")


@pytest.mark.parametrize("name", ["weather%00", "weather%0A", "weather%1B"])
def test_http_tool_name_with_control_character_is_400(tools_gateway: Callable[..., Gateway],
                                                      upstream: UpstreamServer, name: str) -> None:
    gw = tools_gateway()
    r = httpx.post(f"{gw.url}/tools/{name}", json={}, headers={"authorization": "Bearer " + KEYS["architect"]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_tool"
    assert upstream.received(r.headers["x-request-id"]) == []
    assert gw.audit_row(r.headers["x-request-id"])["status"] == 400


def test_http_tool_down_is_502(make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(tools={"http": {"gone": {"url": "http://127.0.0.1:9/x", "connect_timeout_s": 2}}})
    with pytest.raises(openai.InternalServerError) as exc:
        call_tool(gw, "architect", "gone", {})
    assert exc.value.status_code == 502 and "unreachable" in exc.value.body["message"]


def fn(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {}}}}


def test_chat_declaring_a_forbidden_tool_is_refused(tools_gateway: Callable[..., Gateway],
                                                    upstream: UpstreamServer) -> None:
    gw = tools_gateway()
    tag = request_id()
    with pytest.raises(openai.PermissionDeniedError) as exc:
        client(gw, "intern-bot").chat.completions.create(
            model="gpt-4.1-mini", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-request-id": tag},
            tools=[fn("orders__read_orders"), fn("mcp__orders__delete_customer"), fn("wipe_cache"), fn("local_fn")])
    msg = exc.value.body["message"]
    assert exc.value.body["code"] == "tool_not_allowed"
    assert "mcp__orders__delete_customer" in msg and "wipe_cache" in msg
    assert "orders__read_orders" not in msg and "local_fn" not in msg
    assert upstream.received(tag) == []  # never forwarded
    row = gw.audit_row(exc.value.response.headers["x-request-id"])
    assert (row["action"], row["decision"], row["status"]) == ("llm.chat", "deny", 403)
    assert json.loads(row["reasons"]) == ["maturity intern below required autonomous for tool.call delete_customer",
                                          "maturity intern below required autonomous for tool.call wipe_cache"]


def test_chat_declaring_allowed_tools_passes(tools_gateway: Callable[..., Gateway]) -> None:
    """read_orders' readOnlyHint is learned by the gateway listing the server itself."""
    gw = tools_gateway()
    out = client(gw, "intern-bot").chat.completions.create(
        model="gpt-4.1-mini", messages=[{"role": "user", "content": "hi"}],
        tools=[fn("orders__read_orders"), fn("weather"), fn("local_fn")])
    assert out.choices[0].message.content


def test_anthropic_tools_and_name_mapping(tools_gateway: Callable[..., Gateway]) -> None:
    gw = tools_gateway(chat_tool_names={"refund": "orders.refund_order"})
    claude = anthropic.Anthropic(base_url=gw.url, api_key=KEYS["intern-bot"], max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError) as exc:
        claude.messages.create(model="claude-haiku-4-5", max_tokens=50, messages=[{"role": "user", "content": "hi"}],
                               tools=[{"name": "refund", "input_schema": {"type": "object"}}])
    assert "refund" in exc.value.message and "supervised" in exc.value.message
    builder = anthropic.Anthropic(base_url=gw.url, api_key=KEYS["builder"], max_retries=0)
    ok = builder.messages.create(model="claude-sonnet-4-6", max_tokens=50, messages=[{"role": "user", "content": "hi"}],
                                 tools=[{"name": "refund", "input_schema": {"type": "object"}}])
    assert ok.content


def test_chat_tool_check_can_be_turned_off(tools_gateway: Callable[..., Gateway]) -> None:
    gw = tools_gateway(check_chat_tools=False)
    out = client(gw, "intern-bot").chat.completions.create(
        model="gpt-4.1-mini", messages=[{"role": "user", "content": "hi"}], tools=[fn("orders__delete_customer")])
    assert out.choices[0].message.content


def test_tools_config_is_validated(tmp_path: Any) -> None:
    from gateway.settings import ConfigError, load_settings
    cfg = tmp_path / "g.yaml"
    cfg.write_text("upstreams: {mock: {provider: mock}}\nroutes: [{match: '*', upstream: mock}]\n"
                   "tools:\n  servers: {orders: {kind: mcp, url: 'ftp://x'}}\n"
                   "  http: {orders: {url: 'http://127.0.0.1:1/x'}}\n"
                   "  chat_tool_names: {refund: nowhere.refund}\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(cfg, {})
    text = str(exc.value)
    assert "tools.servers.orders.url" in text
