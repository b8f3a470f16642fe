"""Who may reach /mcp/{server}, and what a refused MCP client is told.

DNS rebinding: a web page whose name resolves to the gateway's address makes the
browser send its own Host and Origin; the MCP spec has servers refuse those.
Authentication: an MCP client refused with 401 reads WWW-Authenticate, and starts an
OAuth flow only when protected-resource metadata names an authorization server.
"""
from __future__ import annotations

from typing import Any, Callable

import httpx
import pytest

from gateway.settings import ConfigError, load_settings
from tests.support.harness import KEYS, Gateway, gateway_config
from tests.support.mcp_orders_server import OrdersServer
from tests.support.mcp_raw import ACCEPT, INITIALIZE

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INITIALIZE}
ISSUER = "https://idp.test/"
JWT = {"issuer": ISSUER, "audience": "portcullis", "algorithms": ["HS256"], "hs_secret_env": "JWT_SECRET"}
WELL_KNOWN = "/.well-known/oauth-protected-resource"


@pytest.fixture
def orders_gateway(make_gateway: Callable[..., Gateway], orders: OrdersServer) -> Callable[..., Gateway]:
    def make(**overrides: Any) -> Gateway:
        return make_gateway(tools={"servers": {"orders": {"kind": "mcp", "url": orders.url}}}, **overrides)
    return make


def initialize(gw: Gateway, key: str | None = "architect", **headers: str) -> httpx.Response:
    auth = {"authorization": f"Bearer {KEYS.get(key, key)}"} if key else {}
    return httpx.post(gw.url + "/mcp/orders", json=INIT, headers={**ACCEPT, **auth, **headers})


def test_a_foreign_host_or_origin_is_refused(orders_gateway: Callable[..., Gateway], orders: OrdersServer) -> None:
    gw = orders_gateway()
    orders.clear()
    for headers in ({"host": "evil.example.com"}, {"host": "evil.example.com:8080"},
                    {"origin": "http://evil.example.com"}, {"origin": "null"}):
        r = initialize(gw, **headers)
        assert r.status_code == 403, (headers, r.text)
        err = r.json()["error"]
        assert err["code"] == -32600 and err["data"]["code"] == "host_not_allowed", err
        row = gw.audit_row(r.headers["x-request-id"])
        assert (row["status"], row["decision"], row["action"]) == (403, "error", None)
    assert orders.requests == []  # none of them reached the server


def test_loopback_names_pass_on_any_port(orders_gateway: Callable[..., Gateway]) -> None:
    gw = orders_gateway()
    for headers in ({"host": "localhost:6274", "origin": "http://localhost:6274"}, {"host": "127.0.0.1"},
                    {"host": "[::1]:8080", "origin": "https://[::1]"}, {"origin": "http://127.0.0.1:5173"}):
        r = initialize(gw, **headers)
        assert r.status_code == 200, (headers, r.text)


def test_configured_hosts_and_origins(orders_gateway: Callable[..., Gateway]) -> None:
    gw = orders_gateway(server__allowed_hosts=["gw.internal"], server__public_url="https://gateway.example.com",
                        server__allowed_origins=["https://app.example.com"])
    allowed = ({"host": "gw.internal:8080"}, {"host": "gateway.example.com"},
               {"host": "gateway.example.com", "origin": "https://app.example.com"},
               {"host": "gw.internal", "origin": "https://gw.internal"})
    refused = ({"host": "localhost"},  # a list of one's own replaces the loopback default
               {"host": "gateway.example.com", "origin": "https://other.example.com"},
               {"host": "gateway.example.com", "origin": "http://app.example.com"})
    assert [initialize(gw, **h).status_code for h in allowed] == [200] * len(allowed)
    assert [initialize(gw, **h).status_code for h in refused] == [403] * len(refused)


def test_bad_allowlist_entries_name_their_key(tmp_path: Any) -> None:
    path = gateway_config(tmp_path, "http://127.0.0.1:9", server__allowed_hosts=["ok.example", "a b"],
                          server__allowed_origins=["app.example.com"])
    with pytest.raises(ConfigError) as e:
        load_settings(path, {})
    assert {p for p, _ in e.value.problems} == {"server.allowed_hosts.1", "server.allowed_origins.0"}


@pytest.mark.parametrize("key, challenge", [(None, "Bearer"), ("pk-not-a-key", 'Bearer error="invalid_token"')])
def test_no_or_bad_credential_gets_a_bearer_challenge(orders_gateway: Callable[..., Gateway], key: str | None,
                                                      challenge: str) -> None:
    gw = orders_gateway()
    r = initialize(gw, key)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == challenge  # no resource_metadata: no OAuth flow to start
    err = r.json()["error"]
    assert err["code"] == -31401 and err["message"].startswith("authentication required: ")
    assert err["data"]["type"] == "authentication"
    for path in (WELL_KNOWN, WELL_KNOWN + "/mcp/orders"):  # nor any metadata to find one by
        assert httpx.get(gw.url + path).status_code == 404


def test_jwt_issuers_are_published_as_protected_resource_metadata(orders_gateway: Callable[..., Gateway]) -> None:
    gw = orders_gateway(environ={"JWT_SECRET": "s" * 32}, identity__jwt=JWT)
    r = initialize(gw, None)
    assert r.status_code == 401
    metadata_url = f"{gw.url}{WELL_KNOWN}/mcp/orders"
    assert r.headers["www-authenticate"] == f'Bearer resource_metadata="{metadata_url}"'
    doc = httpx.get(metadata_url).json()
    assert doc == {"resource": gw.url + "/mcp/orders", "authorization_servers": [ISSUER],
                   "bearer_methods_supported": ["header"]}
    assert httpx.get(gw.url + WELL_KNOWN).json()["resource"] == gw.url
    assert httpx.get(f"{gw.url}{WELL_KNOWN}/mcp/nope").status_code == 404
    # A Host the endpoint refuses is never echoed into a challenge or a document.
    evil = initialize(gw, None, host="evil.example.com")
    assert evil.headers["www-authenticate"] == "Bearer"
    assert httpx.get(metadata_url, headers={"host": "evil.example.com"}).status_code == 403


def test_public_url_names_the_resource(orders_gateway: Callable[..., Gateway]) -> None:
    gw = orders_gateway(environ={"JWT_SECRET": "s" * 32}, identity__jwt=JWT,
                        server__public_url="https://gateway.example.com/")
    r = initialize(gw, "pk-not-a-key")
    assert r.headers["www-authenticate"] == ('Bearer error="invalid_token", resource_metadata='
                                             f'"https://gateway.example.com{WELL_KNOWN}/mcp/orders"')
    doc = httpx.get(f"{gw.url}{WELL_KNOWN}/mcp/orders", headers={"host": "gateway.example.com"}).json()
    assert doc["resource"] == "https://gateway.example.com/mcp/orders"
