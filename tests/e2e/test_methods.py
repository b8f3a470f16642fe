"""A wrong HTTP method is a 405 with Allow, in the surface's error format, audited and counted."""
from __future__ import annotations

import httpx
import pytest

from tests.support.harness import KEYS

AUTH = {"authorization": "Bearer " + KEYS["builder"]}


@pytest.mark.parametrize("method,path,allow,fmt", [
    ("GET", "/v1/chat/completions", "POST", "openai"),
    ("PUT", "/v1/embeddings", "POST", "openai"),
    ("GET", "/v1/messages", "POST", "anthropic"),
    ("POST", "/v1/models", "GET", "openai"),
    ("DELETE", "/v1/models/gpt-4o", "GET", "openai"),
    ("GET", "/tools/weather", "POST", "openai"),
    ("PUT", "/mcp/orders", "POST, GET, DELETE", "mcp"),
])
def test_wrong_method_is_405_with_allow(gateway, method, path, allow, fmt):
    headers = {**AUTH, **({"anthropic-version": "2023-06-01"} if fmt == "anthropic" else {})}
    r = httpx.request(method, gateway.url + path, headers=headers)
    assert r.status_code == 405, r.text
    assert r.headers["allow"] == allow
    body = r.json()
    if fmt == "openai":
        assert body["error"]["code"] == "method_not_allowed"
    elif fmt == "anthropic":
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    else:
        assert body["jsonrpc"] == "2.0" and body["error"]["code"] == -32600
    row = gateway.audit_row(r.headers["x-request-id"])
    assert row["status"] == 405 and row["decision"] == "error"
    metrics = httpx.get(gateway.url + "/metrics").text
    assert 'status="405"' in metrics
