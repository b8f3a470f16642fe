"""Tool endpoints (MCP servers, plain HTTP tools) over one shared aiohttp session each.

The gateway decides which client headers travel (MCP session and version
headers, content negotiation); this adapter adds the tool's own credential and
maps aiohttp failures to gateway errors, as the LLM upstreams do.
"""
from __future__ import annotations

import asyncio
from typing import Any, Mapping

import aiohttp

from adapters.upstream.http import HTTPResponse, PooledEndpoint, mapped_errors
from gateway.settings import HTTPToolSettings, MCPServerSettings


class HTTPToolClient(PooledEndpoint):
    """Implements gateway.protocols.ToolTransport for one configured URL."""

    def __init__(self, name: str, settings: MCPServerSettings | HTTPToolSettings) -> None:
        self.name = name
        self.url = settings.url
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        # An MCP server's GET is a long-lived SSE stream: it gets its own read timeout.
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=settings.connect_timeout_s,
            sock_read=settings.stream_read_timeout_s) if isinstance(settings, MCPServerSettings) else None

    async def send(self, method: str, body: bytes, headers: Mapping[str, str],
                   params: Mapping[str, str] | None = None) -> HTTPResponse:
        if self._session is None:
            raise RuntimeError(f"tool endpoint {self.name} used before start()")
        out = dict(headers)
        out["accept-encoding"] = "identity"  # SSE events must arrive as they are sent
        if self.settings.api_key:
            out["authorization"] = f"Bearer {self.settings.api_key}"
        options: dict[str, Any] = {"data": body or None, "headers": out, "params": params, "allow_redirects": False}
        stream = method == "GET" and self._stream_timeout is not None
        if stream:
            options["timeout"] = self._stream_timeout
        async with mapped_errors(self.name, "failed"):
            # A stream's headers are still due within read_timeout_s, whatever its body's timeout.
            async with asyncio.timeout(self.settings.read_timeout_s if stream else None):
                resp = await self._session.request(method, self.url, **options)
        return HTTPResponse(self.name, resp)
