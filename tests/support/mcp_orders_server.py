"""A real MCP server for tests: an "orders" service built on the mcp 2.x SDK.

Serves Streamable HTTP at `url` (http://127.0.0.1:PORT/mcp) under uvicorn, on the
event loop it is started from (the LoopThread's, like UpstreamServer). One
endpoint serves both client generations: the SDK routes a request by its
`MCP-Protocol-Version` header - absent or a handshake-era version (2025-11-25 and
earlier) goes to the session-based transport (initialize, Mcp-Session-Id, GET
stream, DELETE), a modern version (2026-07-28) to the stateless per-request path.

Tools:
  read_orders(customer)            readOnlyHint=True; 3 progress notifications, then
                                   a structured result (structuredContent + JSON text)
  refund_order(order_id, amount)   no hints; amount <= 0 or an unknown order gives an
                                   isError=true result
  delete_customer(customer)        readOnlyHint=False, destructiveHint=True
Resource: orders://recent (application/json).   Prompt: summarize_orders(customer).

`executed` records every tool run (name, arguments); `requests` records every HTTP
request (method, headers, body): enough to assert that a refused call never
reached the server and what the gateway forwarded.
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel

from tests.support.harness import serve

ORDERS: dict[str, list[dict[str, Any]]] = {
    "acme": [
        {"order_id": "A-1001", "item": "anvil", "amount": 120.0, "status": "shipped"},
        {"order_id": "A-1002", "item": "rocket skates", "amount": 89.5, "status": "pending"},
    ],
    "globex": [
        {"order_id": "G-2001", "item": "hammock", "amount": 45.0, "status": "delivered"},
    ],
}
PROGRESS_MESSAGES = ("looking up customer", "loading orders", "formatting result")
TOOL_NAMES = ("read_orders", "refund_order", "delete_customer")
RESOURCE_URI = "orders://recent"
PROMPT_NAME = "summarize_orders"


class Order(BaseModel):
    order_id: str
    item: str
    amount: float
    status: str


class OrderList(BaseModel):
    customer: str
    orders: list[Order]


@dataclass
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    @property
    def rpc_method(self) -> str | None:
        data = self.json() if self.method == "POST" else None
        return data.get("method") if isinstance(data, dict) else None


def build_server(executed: list[tuple[str, dict[str, Any]]], progress_delay: float = 0.0) -> MCPServer:
    """The orders MCPServer. A fresh one per start: its session manager runs only once."""
    mcp = MCPServer("orders", version="1.0.0", instructions="Look up, refund and delete customer orders.",
                    log_level="WARNING")  # MCPServer calls logging.basicConfig with this level

    @mcp.tool(description="List a customer's orders.",
              annotations=ToolAnnotations(title="Read orders", read_only_hint=True))
    async def read_orders(customer: str, ctx: Context) -> OrderList:
        executed.append(("read_orders", {"customer": customer}))
        for i, message in enumerate(PROGRESS_MESSAGES, start=1):
            await ctx.report_progress(i, len(PROGRESS_MESSAGES), message)
            if progress_delay:
                await asyncio.sleep(progress_delay)
        return OrderList(customer=customer, orders=[Order(**o) for o in ORDERS.get(customer, [])])

    @mcp.tool(description="Refund part or all of an order.")
    def refund_order(order_id: str, amount: float) -> str:
        executed.append(("refund_order", {"order_id": order_id, "amount": amount}))
        if amount <= 0:
            raise ToolError(f"refund amount must be positive, got {amount}")
        if not any(o["order_id"] == order_id for orders in ORDERS.values() for o in orders):
            raise ToolError(f"unknown order {order_id}")
        return f"refunded {amount:.2f} on order {order_id}"

    @mcp.tool(description="Delete a customer and all their orders.",
              annotations=ToolAnnotations(title="Delete customer", read_only_hint=False, destructive_hint=True))
    def delete_customer(customer: str) -> str:
        executed.append(("delete_customer", {"customer": customer}))
        return f"deleted customer {customer}"

    @mcp.resource(RESOURCE_URI, name="recent_orders", description="The most recent orders.",
                  mime_type="application/json")
    def recent_orders() -> str:
        recent = [o for orders in ORDERS.values() for o in orders]
        return json.dumps({"orders": recent})

    @mcp.prompt(name=PROMPT_NAME, description="Ask for a summary of a customer's orders.")
    def summarize_orders(customer: str = "acme") -> str:
        return f"Summarize the orders of customer {customer} in two sentences."

    return mcp


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
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None
    _port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def url(self) -> str:
        return f"{self.base_url}/mcp"

    async def start(self) -> None:
        mcp = build_server(self.executed, self.progress_delay)
        app = mcp.streamable_http_app(json_response=self.json_response, stateless_http=self.stateless)
        self._server, self._task, self._port = await serve(self._recording(app), lifespan="on")

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
            self._server = self._task = None
        # sse_starlette polls for shutdown in one task per loop, forever when uvicorn runs
        # off the main thread; end it (it restarts with the next SSE response) so closing
        # the LoopThread's loop does not warn about a pending task.
        for task in asyncio.all_tasks():
            if task.get_coro().__qualname__ == "_shutdown_watcher":
                task.cancel()

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
