"""An MCP server's error answers that are not JSON-RPC reach MCP clients as JSON-RPC errors.

The server here is a real socket that answers POST with a plain-text 400 (as some
frameworks do for a Content-Type they do not take) and GET/DELETE with an empty 405.
"""
from __future__ import annotations

from typing import Iterator

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tests.support import mcp2
from tests.support.harness import KEYS, Served, LoopThread, serve

AUTH = {"authorization": f"Bearer {KEYS['architect']}"}
POST_HEADERS = {**AUTH, "accept": "application/json, text/event-stream", "content-type": "application/json"}
INIT = {"jsonrpc": "2.0", "id": 7, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}


async def _answer(request: Request) -> Response:
    if request.method == "POST":
        return PlainTextResponse("Invalid Content-Type header", status_code=400)
    return Response(status_code=405)  # no body at all


@pytest.fixture(scope="module")
def broken(loop_thread: LoopThread) -> Iterator[Served]:
    app = Starlette(routes=[Route("/mcp", _answer, methods=["GET", "POST", "DELETE"])])
    served = loop_thread.run(serve(app, lifespan="off"))
    yield served
    loop_thread.run(served.stop())


@pytest.fixture
def gw(make_gateway, broken):
    return make_gateway(tools={"servers": {"broken": {"kind": "mcp", "url": broken.url + "/mcp"}}})


def test_a_plain_text_400_becomes_a_json_rpc_error_for_the_request(gw):
    r = httpx.post(gw.url + "/mcp/broken", content=orjson.dumps(INIT), headers=POST_HEADERS)
    assert r.status_code == 400 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["jsonrpc"] == "2.0" and body["id"] == 7
    err = body["error"]
    assert isinstance(err["code"], int) and "400" in err["message"]
    rid = r.headers["x-request-id"]
    assert err["data"]["upstream_status"] == 400 and err["data"]["upstream_body"] == "Invalid Content-Type header"
    assert err["data"]["request_id"] == rid
    row = gw.audit_row(rid)
    assert row["status"] == 400 and "400" in row["error"]


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_an_empty_405_becomes_a_json_rpc_error(gw, method):
    r = httpx.request(method, gw.url + "/mcp/broken",
                      headers={**AUTH, "accept": "text/event-stream", "mcp-session-id": "s-1"})
    assert r.status_code == 405 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["id"] is None and body["error"]["data"]["upstream_status"] == 405
    assert body["error"]["data"]["upstream_body"] == ""
    assert gw.audit_row(r.headers["x-request-id"])["status"] == 405


def test_the_mcp_sdk_raises_the_wrapped_error(gw, loop_thread):
    out = loop_thread.run(mcp2.run_ops(gw.url + "/mcp/broken", [], AUTH, mode="legacy"), timeout=120)
    fatal = out["fatal"]
    assert fatal is not None and fatal.get("error"), fatal  # an MCPError, not an HTTP failure
    assert fatal["error"]["data"]["upstream_body"] == "Invalid Content-Type header"
