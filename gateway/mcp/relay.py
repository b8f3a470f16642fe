"""Relaying an MCP server's answer to one POST: a JSON body or an SSE stream.

The answer to the client's request (same JSON-RPC id) may be rewritten on the
way (tools/list is filtered per agent) or only inspected (a tools/call result's
isError goes to the audit row). Everything else, progress notifications and
server requests included, passes through event by event as it arrives. An error
answer that is not JSON-RPC (plain text, empty) is wrapped in a JSON-RPC error.
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable

import orjson

from gateway.mcp import jsonrpc
from gateway.protocols import UpstreamResponse
from gateway.sse import SSESplitter, data_lines

# The most of a non-JSON-RPC error answer kept in the wrapping error's data (characters).
UPSTREAM_TEXT_MAX = 1000

# Returns a replacement for the response object, or None to pass it on unchanged.
OnResponse = Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def _answers(obj: Any, msg_id: Any) -> bool:
    return isinstance(obj, dict) and obj.get("id") == msg_id and ("result" in obj or "error" in obj)


def wrap_error(status: int, raw: bytes, msg_id: Any, server: str, request_id: str) -> bytes | None:
    """A JSON-RPC error for an MCP server's error answer that is not JSON-RPC (a plain-text
    400, an empty 405, a proxy's HTML page), else None: MCP clients parse only JSON-RPC.
    `data` keeps the server's status and (the start of) its text."""
    try:
        obj = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        obj = None
    if isinstance(obj, dict) and obj.get("jsonrpc") == "2.0":
        return None
    text = raw.decode("utf-8", "replace")
    return jsonrpc.error_response(msg_id, jsonrpc.UPSTREAM_UNAVAILABLE, f"MCP server {server} answered {status}",
                                  {"request_id": request_id, "type": "upstream", "code": "upstream_error",
                                   "upstream_status": status, "upstream_body": text[:UPSTREAM_TEXT_MAX]})


async def edit_json(raw: bytes, msg_id: Any, on_response: OnResponse) -> bytes:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw
    if not _answers(obj, msg_id):
        return raw
    new = await on_response(obj)
    return raw if new is None else orjson.dumps(new)


async def edit_event(event: bytes, msg_id: Any, on_response: OnResponse) -> bytes:
    data = data_lines(event)
    if data is None:
        return event
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return event
    if not _answers(obj, msg_id):
        return event
    new = await on_response(obj)
    if new is None:
        return event
    # Keep the event's other fields (id, event, retry): resumability depends on the id.
    kept = [ln for ln in event.rstrip(b"\n").split(b"\n") if not ln.startswith(b"data:")]
    return b"\n".join([*kept, b"data: " + orjson.dumps(new)]) + b"\n\n"


async def pump_sse(send: Send, resp: UpstreamResponse, msg_id: Any, on_response: OnResponse | None) -> None:
    """Pass an SSE body on event by event, editing the answer to `msg_id` on its way."""
    splitter = SSESplitter()
    async for chunk in resp.iter_chunks():
        if on_response is None:
            out = chunk
        else:
            out = b"".join([await edit_event(e, msg_id, on_response) for e in splitter.events(chunk)])
        if out:
            await send({"type": "http.response.body", "body": out, "more_body": True})
    rest = splitter.rest()
    await send({"type": "http.response.body", "body": rest, "more_body": False})
