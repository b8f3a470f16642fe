"""JSON-RPC 2.0 as MCP uses it: classify one message, build error responses.

Batches are refused: MCP removed JSON-RPC batching in 2025-06-18, and a batch
would need one decision and one audit row per member.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import GatewayError
from gateway.surfaces.base import too_deep

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
HEADER_MISMATCH = -32020  # 2026-07-28: an Mcp-* header disagrees with the body
# The gateway's own refusals. MCP reserves -32020..-32099 and advises against
# -32000..-32019, so these sit outside the JSON-RPC range, styled on HTTP statuses.
AUTHENTICATION_REQUIRED = -31401
POLICY_DENIED = -31403
RATE_LIMITED = -31429
UPSTREAM_UNAVAILABLE = -31502
UPSTREAM_TIMEOUT = -31504

# A gateway refusal's JSON-RPC code, by GatewayError.kind.
CODES = {
    "invalid_request": INVALID_REQUEST,
    "authentication": AUTHENTICATION_REQUIRED,
    "permission": POLICY_DENIED,
    "rate_limited": RATE_LIMITED,
    "upstream": UPSTREAM_UNAVAILABLE,
    "upstream_timeout": UPSTREAM_TIMEOUT,
    "circuit_open": UPSTREAM_UNAVAILABLE,  # the server is down as far as this replica knows
    "unavailable": INTERNAL_ERROR,
    "not_found": INVALID_PARAMS,
}


class JSONRPCError(GatewayError):
    """A refusal that is answered as a JSON-RPC error object (HTTP status kept separately)."""
    status, kind, code = 400, "invalid_request", "invalid_request"

    def __init__(self, message: str, rpc_code: int, status: int = 400, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.rpc_code = rpc_code
        self.status = status


@dataclass(slots=True)
class Message:
    kind: str  # request | notification | response
    method: str | None
    id: Any
    params: dict[str, Any]
    body: dict[str, Any]


def parse(raw: bytes, max_depth: int) -> Message:
    if not raw:
        raise JSONRPCError("request body is empty; expected a JSON-RPC message", INVALID_REQUEST)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise JSONRPCError(f"parse error: {e}", PARSE_ERROR, code="invalid_json") from None
    if too_deep(body, raw, max_depth):
        raise JSONRPCError(f"invalid request: JSON nested deeper than {max_depth} levels", INVALID_REQUEST,
                           code="json_too_deep")
    if isinstance(body, list):
        raise JSONRPCError("JSON-RPC batches are not supported (removed from MCP in 2025-06-18); "
                           "send one message per request", INVALID_REQUEST)
    if not isinstance(body, dict) or body.get("jsonrpc") != "2.0":
        raise JSONRPCError('invalid request: expected a JSON-RPC 2.0 object with "jsonrpc": "2.0"',
                           INVALID_REQUEST)
    method, has_id = body.get("method"), "id" in body
    msg_id = body.get("id")
    if has_id and not (isinstance(msg_id, (str, int)) and not isinstance(msg_id, bool)):
        raise JSONRPCError("invalid request: id must be a string or an integer", INVALID_REQUEST)
    if method is None:
        if has_id and ("result" in body or "error" in body):
            return Message("response", None, msg_id, {}, body)
        raise JSONRPCError("invalid request: a message needs a method, or a result or error", INVALID_REQUEST)
    if not isinstance(method, str) or not method:
        raise JSONRPCError("invalid request: method must be a non-empty string", INVALID_REQUEST)
    params = body.get("params", {})
    if not isinstance(params, dict):
        raise JSONRPCError("invalid params: params must be an object", INVALID_PARAMS)
    return Message("request" if has_id else "notification", method, msg_id, params, body)


def error_response(msg_id: Any, code: int, message: str, data: dict[str, Any] | None = None) -> bytes:
    err: dict[str, Any] = {"code": code, "message": message}
    if data:
        err["data"] = data
    return orjson.dumps({"jsonrpc": "2.0", "id": msg_id, "error": err})
