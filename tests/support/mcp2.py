"""Run an op list with the mcp 2.x SDK client (mcp.Client over streamable_http_client).

The counterpart of tests/support/mcp1.py: the same ops, the same JSON-able result shape.

    result = await run_ops(url, [{"op": "list_tools"}], headers={"Authorization": "Bearer k"})
    result = loop_thread.run(run_ops(...))          # from a sync test

`mode` picks the wire:
  "auto"        (the SDK default) probes `server/discover` at 2026-07-28 and speaks the
                stateless per-request protocol, falling back to the initialize
                handshake (2025-11-25) when the probe fails with a non-modern error;
  "legacy"      forces the initialize handshake: Mcp-Session-Id, GET stream, DELETE;
  "2026-07-28"  adopts the modern version without any probe.
Custom headers ride on an httpx2.AsyncClient (the SDK's HTTP client, a fork of
httpx) handed to streamable_http_client. The client's response cache is off, so
every list is a real request.

Result: {"sdk", "protocol_version", "session_id", "server_info", "results", "fatal"};
each result is the op's result or {"error": {"code", "message", "data"}} for a
JSON-RPC error (MCPError). Op results:
  list_tools      {"tools": [tool dicts as on the wire, "annotations" always present]}
  call_tool       {"content": [...], "isError": bool, "structuredContent": ...,
                   "progress": [{"progress", "total", "message"}, ...]}
  read_resource   {"contents": [...]}
  get_prompt      {"description": ..., "messages": [...]}
  list_resources  {"resources": [...]};   list_prompts  {"prompts": [...]}
"""
from __future__ import annotations

from importlib.metadata import version
from typing import Any

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError


def _dump(model: Any) -> Any:
    return model.model_dump(by_alias=True, exclude_none=True, mode="json")


def _tool(tool: Any) -> dict[str, Any]:
    data = _dump(tool)
    data.pop("_meta", None)
    data.setdefault("annotations", {})
    return data


def _error(error: Any) -> dict[str, Any]:
    return {"code": error.code, "message": error.message, "data": error.data}


async def _run_op(client: Client, op: dict[str, Any]) -> dict[str, Any]:
    kind = op["op"]
    if kind == "list_tools":
        return {"tools": [_tool(t) for t in (await client.list_tools()).tools]}
    if kind == "call_tool":
        progress: list[dict[str, Any]] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            progress.append({"progress": value, "total": total, "message": message})

        result = await client.call_tool(op["name"], op.get("arguments") or {}, progress_callback=on_progress)
        return {"content": [_dump(c) for c in result.content], "isError": bool(result.is_error),
                "structuredContent": result.structured_content, "progress": progress}
    if kind == "read_resource":
        return {"contents": [_dump(c) for c in (await client.read_resource(op["uri"])).contents]}
    if kind == "get_prompt":
        prompt = await client.get_prompt(op["name"], op.get("arguments"))
        return {"description": prompt.description, "messages": [_dump(m) for m in prompt.messages]}
    if kind == "list_resources":
        return {"resources": [_dump(r) for r in (await client.list_resources()).resources]}
    if kind == "list_prompts":
        return {"prompts": [_dump(p) for p in (await client.list_prompts()).prompts]}
    raise ValueError(f"unknown op {kind!r}")


def _fatal(exc: BaseException) -> dict[str, Any]:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    status = exc.response.status_code if isinstance(exc, httpx2.HTTPStatusError) else None
    out: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc), "status": status}
    if isinstance(exc, MCPError):
        out["error"] = _error(exc.error)
    return out


async def run_ops(url: str, ops: list[dict[str, Any]], headers: dict[str, str] | None = None, *,
                  mode: str = "auto", timeout: float = 30.0) -> dict[str, Any]:
    """Connect to `url` with the 2.x client, run `ops` in order, and report each outcome."""
    out: dict[str, Any] = {"sdk": f"mcp {version('mcp')}", "protocol_version": None, "session_id": None,
                           "server_info": None, "results": [], "fatal": None}
    try:
        with anyio.fail_after(timeout * 2):
            http = httpx2.AsyncClient(headers=headers or {}, timeout=httpx2.Timeout(timeout))
            transport = streamable_http_client(url, http_client=http)
            async with http, Client(transport, mode=mode, cache=None, read_timeout_seconds=timeout) as client:
                out["protocol_version"] = client.protocol_version
                info = client.server_info
                out["server_info"] = _dump(info) if info is not None else None
                out["session_id"] = _session_id(transport)
                for op in ops:
                    try:
                        out["results"].append(await _run_op(client, op))
                    except MCPError as e:
                        out["results"].append({"error": _error(e.error)})
    except Exception as exc:  # noqa: BLE001 - reported in the result, like the 1.x runner
        out["fatal"] = _fatal(exc)
    return out


def _session_id(transport: Any) -> str | None:
    """The Mcp-Session-Id the server assigned (legacy mode only); None on the modern wire.

    streamable_http_client keeps its StreamableHTTPTransport in the generator frame;
    reading it from there is a test-only convenience, so any failure gives None.
    """
    frame = getattr(getattr(transport, "gen", None), "ag_frame", None)
    inner = frame.f_locals.get("transport") if frame is not None else None
    return getattr(inner, "session_id", None)
