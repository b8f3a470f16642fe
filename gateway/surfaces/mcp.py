"""The MCP surface's error format: a JSON-RPC error object (DESIGN contract 5).

`data` carries the gateway's request_id and, for refusals, the policy reasons,
so a client can quote both when asking why a tool call was refused.
"""
from __future__ import annotations

from typing import Any

from gateway.errors import GatewayError
from gateway.mcp import jsonrpc
from gateway.surfaces.base import request_id_header
from gateway.surfaces.openai import limit_headers

__all__ = ["NAME", "error_body", "error_response", "id_headers", "limit_headers"]

NAME = "mcp"


def error_data(err: GatewayError, request_id: str, reasons: tuple[str, ...] = ()) -> dict[str, Any]:
    data: dict[str, Any] = {"request_id": request_id, "type": err.kind, "code": err.code}
    if reasons:
        data["reasons"] = list(reasons)
    approval_id = getattr(err, "approval_id", None)
    if approval_id is not None:  # ApprovalRequired: retry with X-Portcullis-Approval once approved
        data["approval_id"] = approval_id
    if "retry-after" in err.headers:
        data["retry_after_s"] = int(err.headers["retry-after"])
    return data


def rpc_code(err: GatewayError) -> int:
    return getattr(err, "rpc_code", None) or jsonrpc.CODES.get(err.kind, jsonrpc.INTERNAL_ERROR)


def error_body(err: GatewayError, request_id: str, msg_id: Any = None, reasons: tuple[str, ...] = ()) -> bytes:
    # Said outright: MCP clients show the message, and a 401 alone reads as "start OAuth".
    message = f"authentication required: {err.message}" if err.kind == "authentication" else err.message
    return jsonrpc.error_response(msg_id, rpc_code(err), message, error_data(err, request_id, reasons))


id_headers = request_id_header


def error_response(err: GatewayError, call: Any) -> tuple[int, bytes]:
    """A refused request is still a well-formed JSON-RPC exchange: HTTP 200 with an error
    object, which MCP clients raise as McpError. Transport-level failures (bad
    credentials, unknown server, bad JSON) and refused notifications keep their HTTP status."""
    msg, ex = call.rpc, call.ex
    request = msg is not None and msg.kind == "request"
    status = 200 if request and err.status in (403, 429, 502, 503, 504) else err.status
    reasons = tuple(ex.decision.reasons) if ex.outcome == "deny" and ex.decision else ()
    return status, error_body(err, ex.request_id, msg.id if request else None, reasons)
