"""The gateway's own MCP client: lists a server's tools to learn their annotations.

Used when a tools/call (or a chat request declaring an MCP tool) arrives before
the gateway has seen a fresh tools/list from that server. It speaks the
session-based handshake, which servers of both generations accept, and falls
back to a single 2026-07-28 request for servers that refuse `initialize`.
"""
from __future__ import annotations

import asyncio
from typing import Any, Mapping

import orjson

from gateway.errors import GatewayError, UpstreamError, UpstreamTimeout
from gateway.protocols import ToolTransport
from gateway.sse import SSESplitter, sse_data
from gateway.tools.catalog import ToolCatalog

LEGACY_VERSION = "2025-06-18"
MODERN_VERSION = "2026-07-28"
_CLIENT = {"name": "portcullis-gateway", "version": "0.1.0"}
_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
FETCH_TIMEOUT_S = 10.0
MAX_PAGES = 50


class _Refused(Exception):
    """The server answered the handshake with an HTTP error: try the other generation."""


async def _rpc(t: ToolTransport, body: dict[str, Any], headers: Mapping[str, str]) -> tuple[dict, Mapping[str, str]]:
    resp = await t.send("POST", orjson.dumps(body), {**_HEADERS, **headers})
    try:
        if resp.status >= 400:
            raise _Refused(f"HTTP {resp.status}")
        if resp.headers.get("content-type", "").startswith("text/event-stream"):
            splitter = SSESplitter()
            async for chunk in resp.iter_chunks():
                for event in splitter.events(chunk):
                    obj = sse_data(event)
                    if obj is not None and obj.get("id") == body.get("id"):
                        return obj, resp.headers
            raise UpstreamError(f"MCP server {t.name} ended its stream without answering {body['method']}")
        try:
            obj = orjson.loads(await resp.read())
        except orjson.JSONDecodeError:
            raise UpstreamError(f"MCP server {t.name} answered {body['method']} with invalid JSON") from None
        if not isinstance(obj, dict):
            raise UpstreamError(f"MCP server {t.name} answered {body['method']} with a non-object")
        return obj, resp.headers
    finally:
        await resp.aclose()


def _result(t: ToolTransport, obj: dict[str, Any], method: str) -> dict[str, Any]:
    if isinstance(obj.get("error"), dict):
        raise UpstreamError(f"MCP server {t.name} refused {method}: {obj['error'].get('message')}")
    result = obj.get("result")
    if not isinstance(result, dict):
        raise UpstreamError(f"MCP server {t.name} answered {method} without a result")
    return result


class ToolLister:
    def __init__(self, transports: Mapping[str, ToolTransport], catalog: ToolCatalog) -> None:
        self._transports = transports
        self._catalog = catalog
        self._inflight: dict[str, asyncio.Future[None]] = {}

    async def fetch(self, server: str) -> None:
        """List `server`'s tools into the catalog; concurrent callers share one listing."""
        running = self._inflight.get(server)
        if running is None:
            running = self._inflight[server] = asyncio.ensure_future(self._fetch(server))
            running.add_done_callback(lambda _: self._inflight.pop(server, None))
        await asyncio.shield(running)

    async def _fetch(self, server: str) -> None:
        t = self._transports[server]
        try:
            async with asyncio.timeout(FETCH_TIMEOUT_S):
                try:
                    await self._legacy(t, server)
                except _Refused:
                    await self._modern(t, server)
        except TimeoutError:
            raise UpstreamTimeout(f"listing the tools of MCP server {server} took over {FETCH_TIMEOUT_S:g}s") from None
        except _Refused as e:
            raise UpstreamError(f"MCP server {server} refused to list its tools ({e})") from None

    async def _pages(self, t: ToolTransport, server: str, headers: dict[str, str],
                     meta: dict[str, Any] | None = None) -> None:
        cursor: str | None = None
        for page in range(MAX_PAGES):
            params: dict[str, Any] = {"cursor": cursor} if cursor else {}
            if meta:
                params["_meta"] = meta
            obj, _ = await _rpc(t, {"jsonrpc": "2.0", "id": f"portcullis-list-{page}",
                                    "method": "tools/list", "params": params}, headers)
            result = _result(t, obj, "tools/list")
            cursor = result.get("nextCursor") if isinstance(result.get("nextCursor"), str) else None
            tools = result.get("tools")
            self._catalog.learn(server, tools if isinstance(tools, list) else [], complete=cursor is None)
            if cursor is None:
                return

    async def _legacy(self, t: ToolTransport, server: str) -> None:
        obj, hdrs = await _rpc(t, {"jsonrpc": "2.0", "id": "portcullis-init", "method": "initialize", "params": {
            "protocolVersion": LEGACY_VERSION, "capabilities": {}, "clientInfo": _CLIENT}}, {})
        result = _result(t, obj, "initialize")
        headers = {"mcp-protocol-version": str(result.get("protocolVersion") or LEGACY_VERSION)}
        if "mcp-session-id" in hdrs:
            headers["mcp-session-id"] = hdrs["mcp-session-id"]
        note = await t.send("POST", orjson.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
                            {**_HEADERS, **headers})
        await note.aclose()
        try:
            await self._pages(t, server, headers)
        finally:
            if "mcp-session-id" in headers:
                try:  # end the session; a server that keeps it anyway only holds memory
                    bye = await t.send("DELETE", b"", headers)
                    await bye.aclose()
                except GatewayError:
                    pass

    async def _modern(self, t: ToolTransport, server: str) -> None:
        meta = {"io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
                "io.modelcontextprotocol/clientInfo": _CLIENT,
                "io.modelcontextprotocol/clientCapabilities": {}}
        await self._pages(t, server, {"mcp-protocol-version": MODERN_VERSION, "mcp-method": "tools/list"}, meta)
