"""The README's orders MCP server (gateway/demo/orders.py) for tests, recording what it sees.

Serves Streamable HTTP at `url` (http://127.0.0.1:PORT/mcp) under uvicorn, on the
event loop it is started from (the LoopThread's, like UpstreamServer). One
endpoint serves both client generations: the SDK routes a request by its
`MCP-Protocol-Version` header - absent or a handshake-era version (2025-11-25 and
earlier) goes to the session-based transport (initialize, Mcp-Session-Id, GET
stream, DELETE), a modern version (2026-07-28) to the stateless per-request path.

`executed` records every tool run (name, arguments); `requests` records every HTTP
request (method, headers, body): enough to assert that a refused call never
reached the server and what the gateway forwarded.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from gateway.demo.orders import (ORDERS, PROGRESS_MESSAGES, PROMPT_NAME,  # noqa: F401 - re-exported
                                  RESOURCE_URI, TOOL_NAMES, build_server)
from tests.support.harness import Served, serve
from tests.support.upstream_server import Recorded


class SeenRequest(Recorded):
    @property
    def rpc_method(self) -> str | None:
        data = self.json() if self.method == "POST" else None
        return data.get("method") if isinstance(data, dict) else None


async def stop_mcp_server(served: Served | None) -> None:
    """Stop an SDK server started with serve(), and what sse_starlette leaves running."""
    if served is not None:
        await served.stop()
    # sse_starlette polls for shutdown in one task per loop, forever when uvicorn runs
    # off the main thread; end it (it restarts with the next SSE response) so closing
    # the LoopThread's loop does not warn about a pending task.
    for task in asyncio.all_tasks():
        if task.get_coro().__qualname__ == "_shutdown_watcher":
            task.cancel()


@dataclass
class OrdersServer:
    """The orders server under uvicorn on a free 127.0.0.1 port.

    json_response=True answers every request with application/json: progress
    notifications are then dropped (they have no wire in that mode).
    stateless=True serves handshake-era clients without Mcp-Session-Id (a fresh
    transport per request; no GET stream). Modern (2026-07-28) requests are
    stateless either way.
    """

    json_response: bool = False
    stateless: bool = False
    progress_delay: float = 0.0
    executed: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    requests: list[SeenRequest] = field(default_factory=list)
    _served: Served | None = None

    @property
    def base_url(self) -> str:
        assert self._served is not None, "start() the server first"
        return self._served.url

    @property
    def url(self) -> str:
        return f"{self.base_url}/mcp"

    async def start(self) -> None:
        mcp = build_server(self.executed, self.progress_delay)
        app = mcp.streamable_http_app(json_response=self.json_response, stateless_http=self.stateless)
        self._served = await serve(self._recording(app), lifespan="on")

    async def stop(self) -> None:
        await stop_mcp_server(self._served)
        self._served = None

    def clear(self) -> None:
        self.executed.clear()
        self.requests.clear()

    def _recording(self, app: Any) -> Any:
        """Record each HTTP request's method, headers and body, then pass it on unchanged."""
        async def wrapped(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            chunks: list[bytes] = []
            more = True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    break  # disconnected before the body was complete
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
            body = b"".join(chunks)
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            self.requests.append(SeenRequest(scope["method"], scope["path"], headers, body))
            replayed = False

            async def replay() -> Any:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await app(scope, replay, send)
        return wrapped
