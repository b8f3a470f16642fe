"""MCP over Streamable HTTP by hand (httpx), for what SDK clients hide: statuses, headers,
when a stream opens and how long it stays open.

    async with httpx.AsyncClient() as http:
        session = RawSession(http, url, {"Authorization": "Bearer ..."})
        await session.start()                        # initialize + notifications/initialized
        result = await session.request("tools/call", {"name": "x", "arguments": {}})
        async with session.stream() as events:       # the session's GET stream
            message = await events.next(timeout=5)   # the next JSON-RPC message on it, or None
"""
from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, AsyncIterator

import httpx

VERSION = "2025-11-25"  # a handshake-era version: sessions, GET streams
ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
INITIALIZE = {"protocolVersion": VERSION, "capabilities": {"sampling": {}, "elicitation": {}},
              "clientInfo": {"name": "portcullis-tests", "version": "1"}}


def messages(body: str, content_type: str) -> list[dict[str, Any]]:
    """The JSON-RPC messages of a response body, JSON or SSE."""
    if not content_type.startswith("text/event-stream"):
        return [json.loads(body)] if body.strip() else []
    out = []
    for event in body.replace("\r\n", "\n").split("\n\n"):
        data = "\n".join(ln[5:].lstrip() for ln in event.split("\n") if ln.startswith("data:"))
        if data.strip():
            out.append(json.loads(data))
    return out


class Events:
    """The JSON-RPC messages of an open SSE response, one at a time."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()
        self._data: list[str] = []

    async def next(self, timeout: float) -> dict[str, Any] | None:
        """The next message, or None when the stream ends or nothing comes within `timeout`
        (which ends the reading: a timeout is a test's failure)."""
        try:
            async with asyncio.timeout(timeout):
                async for line in self._lines:
                    if line.startswith("data:"):
                        self._data.append(line[5:].lstrip())
                    elif not line and self._data:
                        data, self._data = "\n".join(self._data), []
                        if data.strip():
                            return json.loads(data)
        except TimeoutError:
            return None
        return None


class RawSession:
    def __init__(self, http: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None) -> None:
        self.http, self.url = http, url
        self.base = {**ACCEPT, **(headers or {})}
        self.session_id: str | None = None
        self._ids = iter(range(1, 1_000_000))

    def headers(self) -> dict[str, str]:
        extra = {"mcp-session-id": self.session_id, "mcp-protocol-version": VERSION} if self.session_id else {}
        return {**self.base, **extra}

    async def post(self, message: dict[str, Any]) -> httpx.Response:
        return await self.http.post(self.url, json=message, headers=self.headers())

    async def start(self) -> dict[str, Any]:
        resp = await self.post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": INITIALIZE})
        resp.raise_for_status()
        self.session_id = resp.headers["mcp-session-id"]
        (answer,) = messages(resp.text, resp.headers.get("content-type", ""))
        note = await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert note.status_code == 202, note.text
        return answer["result"]

    async def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """The answer (a result or an error object) to one request; other messages are dropped."""
        msg_id = next(self._ids)
        resp = await self.post({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params or {}})
        resp.raise_for_status()
        (answer,) = [m for m in messages(resp.text, resp.headers.get("content-type", "")) if m.get("id") == msg_id]
        return answer

    async def respond(self, msg_id: Any, result: dict[str, Any]) -> None:
        resp = await self.post({"jsonrpc": "2.0", "id": msg_id, "result": result})
        assert resp.status_code == 202, resp.text

    @contextlib.asynccontextmanager
    async def stream(self) -> AsyncIterator[Events]:
        """The session's GET stream, once its response headers are in."""
        headers = {**self.headers(), "accept": "text/event-stream"}
        async with self.http.stream("GET", self.url, headers=headers) as resp:
            assert resp.status_code == 200, await resp.aread()
            yield Events(resp)
