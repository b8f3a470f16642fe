"""An MCP client on the mcp 1.x SDK (protocol 2025-11-25, session-based Streamable HTTP).

Runs inside tests/.venvs/mcp1 (see tests/support/mcp1.py), never in the project's venv:
the 1.x SDK cannot be installed next to 2.x. Reads one JSON object on stdin:

  {"url": "...", "headers": {...}, "timeout": 30,
   "ops": [{"op": "list_tools"}, {"op": "call_tool", "name": ..., "arguments": {...}},
           {"op": "read_resource", "uri": ...}, {"op": "get_prompt", "name": ..., "arguments": {...}},
           {"op": "list_resources"}, {"op": "list_prompts"}]}

and prints one JSON object on stdout, the same shape as tests/support/mcp2.py's run_ops:

  {"sdk": "mcp 1.x.y", "protocol_version": ..., "session_id": ..., "server_info": {...},
   "results": [<one per op run>], "fatal": null | {"type", "message", "status"}}

Each result is the op's result (see _result) or {"error": {"code", "message", "data"}}
for a JSON-RPC error (McpError). "fatal" is an exception that ended the whole
connection (a refused handshake, an HTTP error status, a timeout); the results of
the ops run before it are kept.
"""
from __future__ import annotations

import json
import sys
from datetime import timedelta
from importlib.metadata import version
from typing import Any

import anyio
import httpx
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client
from mcp.shared.exceptions import McpError


def _dump(model: Any) -> Any:
    return model.model_dump(by_alias=True, exclude_none=True, mode="json")


def _tool(tool: Any) -> dict[str, Any]:
    data = _dump(tool)
    data.setdefault("annotations", {})
    return data


async def _run_op(session: ClientSession, op: dict[str, Any]) -> dict[str, Any]:
    kind = op["op"]
    if kind == "list_tools":
        listed = await session.list_tools()
        return {"tools": [_tool(t) for t in listed.tools]}
    if kind == "call_tool":
        progress: list[dict[str, Any]] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            progress.append({"progress": value, "total": total, "message": message})

        result = await session.call_tool(op["name"], op.get("arguments") or {}, progress_callback=on_progress)
        return {"content": [_dump(c) for c in result.content], "isError": bool(result.isError),
                "structuredContent": result.structuredContent, "progress": progress}
    if kind == "read_resource":
        read = await session.read_resource(op["uri"])
        return {"contents": [_dump(c) for c in read.contents]}
    if kind == "get_prompt":
        prompt = await session.get_prompt(op["name"], op.get("arguments"))
        return {"description": prompt.description, "messages": [_dump(m) for m in prompt.messages]}
    if kind == "list_resources":
        return {"resources": [_dump(r) for r in (await session.list_resources()).resources]}
    if kind == "list_prompts":
        return {"prompts": [_dump(p) for p in (await session.list_prompts()).prompts]}
    raise ValueError(f"unknown op {kind!r}")


def _error(error: Any) -> dict[str, Any]:
    return {"code": error.code, "message": error.message, "data": error.data}


def _fatal(exc: BaseException) -> dict[str, Any]:
    """Describe what ended the connection, digging the first cause out of exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    status = exc.response.status_code if isinstance(exc, httpx.HTTPStatusError) else None
    if isinstance(exc, McpError):
        return {"type": "McpError", "message": exc.error.message, "status": status,
                "error": _error(exc.error)}
    return {"type": type(exc).__name__, "message": str(exc), "status": status}


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"sdk": f"mcp {version('mcp')}", "protocol_version": None, "session_id": None,
                           "server_info": None, "results": [], "fatal": None}
    timeout = float(spec.get("timeout", 30))
    try:
        with anyio.fail_after(timeout * 2):
            async with streamablehttp_client(spec["url"], headers=spec.get("headers") or None,
                                             timeout=timeout, sse_read_timeout=timeout) as (read, write, session_id):
                async with ClientSession(read, write, read_timeout_seconds=timedelta(seconds=timeout)) as session:
                    init = await session.initialize()
                    out["protocol_version"] = init.protocolVersion
                    out["server_info"] = _dump(init.serverInfo)
                    out["session_id"] = session_id()
                    for op in spec.get("ops", []):
                        try:
                            out["results"].append(await _run_op(session, op))
                        except McpError as e:
                            out["results"].append({"error": _error(e.error)})
    except BaseException as exc:  # noqa: BLE001 - reported, not raised: the caller reads stdout
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        out["fatal"] = _fatal(exc)
    return out


def main() -> None:
    spec = json.loads(sys.stdin.read())
    result = anyio.run(run, spec)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
