"""The `orders` MCP server of the README, built on the mcp SDK (the `demo` extra).

`portcullis demo mcp-server` serves it over Streamable HTTP at /mcp; the tests
serve the same server (tests/support/mcp_orders_server.py) and record its calls.

Tools, one per policy complexity the README's MCP table shows:
  read_orders(customer)            readOnlyHint; three progress notifications, then a
                                   structured result (structuredContent + JSON text)
  refund_order(order_id, amount)   no hints; amount <= 0 or an unknown order gives an
                                   isError=true result
  delete_customer(customer)        destructiveHint
Resource: orders://recent (application/json).   Prompt: summarize_orders(customer).
"""
from __future__ import annotations

import asyncio
import json
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel

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

Executed = list[tuple[str, dict[str, Any]]]


class Order(BaseModel):
    order_id: str
    item: str
    amount: float
    status: str


class OrderList(BaseModel):
    customer: str
    orders: list[Order]


def build_server(executed: Executed | None = None, progress_delay: float = 0.0) -> MCPServer:
    """A fresh orders MCPServer (its session manager runs only once).

    `executed`, when given, records every tool run as (name, arguments).
    """
    ran: Executed = executed if executed is not None else []
    mcp = MCPServer("orders", version="1.0.0", instructions="Look up, refund and delete customer orders.",
                    log_level="WARNING")  # MCPServer calls logging.basicConfig with this level

    @mcp.tool(description="List a customer's orders.",
              annotations=ToolAnnotations(title="Read orders", read_only_hint=True))
    async def read_orders(customer: str, ctx: Context) -> OrderList:
        ran.append(("read_orders", {"customer": customer}))
        for i, message in enumerate(PROGRESS_MESSAGES, start=1):
            await ctx.report_progress(i, len(PROGRESS_MESSAGES), message)
            if progress_delay:
                await asyncio.sleep(progress_delay)
        return OrderList(customer=customer, orders=[Order(**o) for o in ORDERS.get(customer, [])])

    @mcp.tool(description="Refund part or all of an order.")
    def refund_order(order_id: str, amount: float) -> str:
        ran.append(("refund_order", {"order_id": order_id, "amount": amount}))
        if amount <= 0:
            raise ToolError(f"refund amount must be positive, got {amount}")
        if not any(o["order_id"] == order_id for orders in ORDERS.values() for o in orders):
            raise ToolError(f"unknown order {order_id}")
        return f"refunded {amount:.2f} on order {order_id}"

    @mcp.tool(description="Delete a customer and all their orders.",
              annotations=ToolAnnotations(title="Delete customer", read_only_hint=False, destructive_hint=True))
    def delete_customer(customer: str) -> str:
        ran.append(("delete_customer", {"customer": customer}))
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


def run(host: str, port: int) -> None:
    """Serve the orders server at http://host:port/mcp until interrupted (Ctrl-C)."""
    build_server().run("streamable-http", host=host, port=port)
