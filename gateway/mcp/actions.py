"""MCP methods mapped to policy actions and resources.

Every MCP message is governed: tools by `tool.list` / `tool.call` (the same
actions HTTP tools and chat-declared tools use), the rest by `mcp.*` actions
that data.json gives a complexity, so a policy can restrict resources and
prompts like anything else. An unknown method maps to an action the policy does
not know, which it denies: new protocol features stay closed until allowed.
"""
from __future__ import annotations

from typing import Any

from gateway.mcp.jsonrpc import INVALID_PARAMS, JSONRPCError, Message

_METHODS = {
    "initialize": "mcp.initialize",
    "server/discover": "mcp.initialize",  # 2026-07-28: capability discovery replaces the handshake
    "subscriptions/listen": "mcp.stream",  # 2026-07-28: the notification stream, as a request
    "ping": "mcp.ping",
    "tools/list": "tool.list",
    "tools/call": "tool.call",
    "resources/list": "mcp.resources.list",
    "resources/templates/list": "mcp.resources.list",
    "resources/read": "mcp.resources.read",
    "resources/subscribe": "mcp.resources.subscribe",
    "resources/unsubscribe": "mcp.resources.subscribe",
    "prompts/list": "mcp.prompts.list",
    "prompts/get": "mcp.prompts.get",
    "completion/complete": "mcp.completion",
    "logging/setLevel": "mcp.logging",
    "tasks/get": "mcp.tasks",
    "tasks/result": "mcp.tasks",
    "tasks/list": "mcp.tasks",
    "tasks/cancel": "mcp.tasks",
}

# Not charged against the agent's requests/min: protocol housekeeping, and listing
# (clients list tools on their own, e.g. to validate structured results).
HOUSEKEEPING = frozenset({"tool.list", "mcp.resources.list", "mcp.prompts.list", "mcp.initialize", "mcp.ping", "mcp.notify", "mcp.respond", "mcp.stream",
                          "mcp.session.close", "mcp.logging", "mcp.tasks"})


def action_for(msg: Message) -> str:
    """Governed by method, whatever the shape: only `notifications/*` methods are notifications.
    A request method sent without an id (a `tools/call` notification) keeps its action, and
    the endpoint refuses it (`is_request_without_id`): it must never pass as `mcp.notify`."""
    if msg.kind == "response":
        return "mcp.respond"  # the client answering a server request (sampling, elicitation)
    if msg.kind == "notification" and is_notification_method(msg.method):
        return "mcp.notify"
    return _METHODS.get(msg.method or "", "mcp." + (msg.method or "unknown").replace("/", "."))


def is_notification_method(method: str | None) -> bool:
    return method is not None and method.startswith("notifications/")


def is_request_without_id(msg: Message) -> bool:
    return msg.kind == "notification" and not is_notification_method(msg.method)


def resource_for(action: str, server: str, params: dict[str, Any]) -> dict[str, Any]:
    """The policy input's resource. Tools get theirs from the tool governor instead."""
    if action in ("mcp.resources.read", "mcp.resources.subscribe"):
        return {"type": "resource", "name": _param(params, "uri"), "server": server}
    if action == "mcp.prompts.get":
        return {"type": "prompt", "name": _param(params, "name"), "server": server}
    if action == "tool.list":
        return {"type": "tool", "server": server}
    return {"type": "mcp_server", "name": server, "server": server}


def _param(params: dict[str, Any], key: str) -> str:
    """A governed name: a policy must never see a missing or non-string one as "no name"."""
    value = params.get(key)
    if not isinstance(value, str) or not value:
        raise JSONRPCError(f"invalid params: {key} must be a non-empty string", INVALID_PARAMS)
    return value
