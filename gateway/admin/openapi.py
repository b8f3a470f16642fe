"""The admin API's OpenAPI 3.1 document, written as data beside the routes
(tests/e2e/test_admin_api.py checks that it and the router list the same operations)."""
from __future__ import annotations

from typing import Any

_ERR = {"$ref": "#/components/responses/Error"}
_OBJ = {"type": "object"}


def _op(op_id: str, summary: str, scope: str, *, params: list[dict] | None = None, body: dict | None = None,
        ok: dict | None = None, ok_status: str = "200", extra: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {
        "operationId": op_id, "summary": summary, "security": [{"adminToken": [scope]}],
        "x-portcullis-scope": scope, "parameters": params or [],
        "responses": {ok_status: {"description": "OK", "content": {"application/json": {"schema": ok or _OBJ}}},
                      "400": _ERR, "401": _ERR, **({"403": _ERR} if scope == "write" else {}),
                      **{s: _ERR for s in extra}},
    }
    if body is not None:
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return out


def _path(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": {"type": "string"}}


def _query(name: str, description: str, schema: dict | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema or {"type": "string"}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _list(key: str, item: str) -> dict[str, Any]:
    return {"type": "object", "required": [key], "properties": {key: {"type": "array", "items": _ref(item)}}}


_AGENT_ID = _path("id", "agent id (agents.yaml)")
_REASON = {"type": "object", "required": ["reason"], "properties": {"reason": {"type": "string", "minLength": 1}}}
_OPT_REASON = {"type": "object", "properties": {"reason": {"type": "string"}}}
_TARGET = {"type": "object", "required": ["reason"], "properties": {
    "reason": {"type": "string", "minLength": 1}, "tier": {"type": "integer"}, "maturity": {"type": "string"}}}
_SWITCH = {"type": "object", "required": ["enabled", "reason"], "properties": {
    "enabled": {"type": "boolean"}, "reason": {"type": "string", "minLength": 1}}}
_SEVERITY = {"type": "string", "enum": ["LOW", "MEDIUM", "HIGH", "CRITICAL"]}

_SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["code", "message"], "properties": {
            "code": {"type": "string"}, "message": {"type": "string"}, "request_id": {"type": "string"}}}}},
    "AgentState": {"type": "object", "required": ["agent_id", "revoked"], "properties": {
        "agent_id": {"type": "string"}, "revoked": {"type": "boolean"},
        "revoked_reason": {"type": ["string", "null"]}, "tier": {"type": ["integer", "null"]},
        "maturity": {"type": ["string", "null"]}, "total_errors": {"type": "integer"},
        "violations": {"type": "integer"}, "consecutive_compliant": {"type": "integer"},
        "version": {"type": "integer"}}},
    "Agent": {"type": "object", "description": "baseline, effective tier/maturity, state, counters and risk",
              "required": ["id"], "properties": {"id": {"type": "string"}}},
    "Proposal": {"type": "object", "required": ["id", "agent_id", "status"], "properties": {
        "id": {"type": "string"}, "agent_id": {"type": "string"}, "from_tier": {"type": "integer"},
        "to_tier": {"type": "integer"}, "from_maturity": {"type": "string"}, "to_maturity": {"type": "string"},
        "status": {"type": "string", "enum": ["pending", "approved", "rejected", "auto_approved"]}}},
    "Approval": {"type": "object", "required": ["id", "agent_id", "status"], "properties": {
        "id": {"type": "string"}, "agent_id": {"type": "string"}, "action": {"type": "string"},
        "resource_type": {"type": ["string", "null"]}, "resource_name": {"type": ["string", "null"]},
        "reason": {"type": "string"}, "expires_at": {"type": "number"},
        "status": {"type": "string", "enum": ["pending", "approved", "rejected", "used", "expired"]}}},
    "Event": {"type": "object", "required": ["id", "ts", "event_type", "severity"], "properties": {
        "id": {"type": "string"}, "ts": {"type": "number"}, "event_type": {"type": "string"},
        "severity": _SEVERITY, "agent_id": {"type": ["string", "null"]},
        "workspace": {"type": ["string", "null"]}, "details": {"type": "object"}}},
    "Risk": {"type": "object", "required": ["score", "categories"], "properties": {
        "score": {"type": "number", "minimum": 0, "maximum": 100},
        "categories": {"type": "object", "additionalProperties": {"type": "number"}},
        "events": {"type": "integer"}}},
    "ReportIndex": {"type": "object", "required": ["id"], "properties": {
        "id": {"type": "string"}, "created_at": {"type": "number"}, "period_start": {"type": "number"},
        "period_end": {"type": "number"}}},
    "Report": {"type": "object", "required": ["id", "body"], "properties": {
        "id": {"type": "string"}, "created_at": {"type": "number"}, "period_start": {"type": "number"},
        "period_end": {"type": "number"}, "body": {"type": "object"}}},
    "Switches": {"type": "object", "required": ["bypass", "governance"], "properties": {
        "bypass": {"type": "boolean"},
        "governance": {"type": "object", "additionalProperties": {"type": "boolean"}}}},
}

_PATHS: dict[str, Any] = {
    "/admin/agents": {"get": _op("agents.list", "every agents.yaml agent with its lifecycle state", "read",
                                 ok=_list("agents", "Agent"))},
    "/admin/agents/{id}": {"get": _op("agents.show", "one agent: baseline, state, counters, risk", "read",
                                      params=[_AGENT_ID], ok=_ref("Agent"), extra=("404",))},
    **{f"/admin/agents/{{id}}/{verb}": {"post": _op(f"agents.{verb}", summary, "write", params=[_AGENT_ID],
                                                    body=body, ok=_ref("AgentState"), extra=("404",))}
       for verb, summary, body in (
           ("revoke", "revoke the agent on every replica", _REASON),
           ("reinstate", "reinstate a revoked agent and reset its counters", _REASON),
           ("promote", "raise the agent's tier and/or maturity", _TARGET),
           ("demote", "lower the agent's tier and/or maturity, at once", _TARGET))},
    "/admin/proposals": {"get": _op("proposals.list", "promotion proposals", "read", ok=_list("proposals", "Proposal"),
                                    params=[_query("status", "filter", {"type": "string", "enum": [
                                        "pending", "approved", "rejected", "auto_approved"]})])},
    **{f"/admin/proposals/{{id}}/{verb}": {"post": _op(f"proposals.{verb}", f"{verb} a pending proposal", "write",
                                                       params=[_path("id", "proposal id")], body=_OPT_REASON,
                                                       ok=_ref("Proposal"), extra=("404",))}
       for verb in ("approve", "reject")},
    "/admin/approvals": {"get": _op("approvals.list", "approval requests", "read", ok=_list("approvals", "Approval"),
                                    params=[_query("status", "filter", {"type": "string", "enum": [
                                        "pending", "approved", "rejected", "used", "expired"]}),
                                        _query("agent", "only this agent's")])},
    **{f"/admin/approvals/{{id}}/{verb}": {"post": _op(f"approvals.{verb}", f"{verb} a pending approval request",
                                                       "write", params=[_path("id", "approval id")],
                                                       body=_OPT_REASON, ok=_ref("Approval"), extra=("404",))}
       for verb in ("approve", "reject")},
    "/admin/events": {"get": _op("events.list", "governance events, oldest first", "read",
                                 ok=_list("events", "Event"), params=[
                                     _query("since", "epoch seconds, or a duration ago (24h, 7d)"),
                                     _query("until", "epoch seconds, or a duration ago"),
                                     _query("agent", "agent id"), _query("workspace", "workspace"),
                                     _query("min_severity", "lowest severity", _SEVERITY),
                                     _query("limit", "at most this many (1-10000)", {"type": "integer"})])},
    "/admin/risk": {"get": _op("risk.show", "risk score 0-100 and per category", "read", ok=_ref("Risk"),
                               params=[_query("agent", "agent id"), _query("workspace", "workspace")])},
    "/admin/reports": {
        "post": _op("reports.create", "build and store a governance report", "write", ok=_ref("Report"),
                    ok_status="201", body={"type": "object", "properties": {
                        "period": {"type": "string", "description": "e.g. 7d, 24h", "default": "7d"}}}),
        "get": _op("reports.list", "stored reports, newest first", "read", ok=_list("reports", "ReportIndex"),
                   params=[_query("limit", "at most this many", {"type": "integer"})])},
    "/admin/reports/{id}": {"get": {
        **_op("reports.show", "one stored report", "read", extra=("404",), params=[
            _path("id", "report id"),
            _query("format", "json (default), md or html", {"type": "string", "enum": ["json", "md", "html"]})]),
        "responses": {"200": {"description": "the report", "content": {
            "application/json": {"schema": _ref("Report")}, "text/markdown": {"schema": {"type": "string"}},
            "text/html": {"schema": {"type": "string"}}}}, "400": _ERR, "401": _ERR, "404": _ERR}}},
    "/admin/bypass": {
        "get": _op("bypass.show", "the emergency bypass and per-surface governance", "read", ok=_ref("Switches")),
        "put": _op("bypass.set", "turn the emergency bypass on or off (a CRITICAL event)", "write",
                   body=_SWITCH, ok=_ref("Switches"))},
    "/admin/governance/{surface}": {"put": _op(
        "governance.set", "govern a surface or not (a CRITICAL event)", "write", body=_SWITCH, ok=_ref("Switches"),
        params=[{**_path("surface", "surface"), "schema": {"type": "string",
                                                           "enum": ["openai", "anthropic", "mcp", "tools"]}}])},
}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Portcullis admin API", "version": "1",
                 "description": "Operators' API (contract 7): agents, proposals, approvals, events, risk, "
                                "reports and the runtime switches. Every call is audited."},
        "servers": [{"url": "/"}],
        "security": [{"adminToken": []}],
        "paths": _PATHS,
        "components": {
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer",
                                               "description": "an admin token (admin.tokens, stored as SHA-256)"}},
            "schemas": _SCHEMAS,
            "responses": {"Error": {"description": "an error", "content": {
                "application/json": {"schema": _ref("Error")}}}},
        },
    }
