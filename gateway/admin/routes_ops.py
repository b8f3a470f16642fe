"""Approvals, governance events, risk, reports and the runtime switches."""
from __future__ import annotations

from typing import Any

from gateway.admin.ops import Call, Op, Reply, duration_s, instant
from gateway.admin.serialize import jsonable
from gateway.errors import InvalidRequest, NotFound
from gateway.lifecycle.model import SEVERITIES

APPROVAL_STATUSES = ("pending", "approved", "rejected", "used", "expired")
SURFACES = ("openai", "anthropic", "mcp", "tools")
REPORT_FORMATS = {"md": "text/markdown; charset=utf-8", "html": "text/html; charset=utf-8"}


async def list_approvals(call: Call) -> Any:
    status = call.query("status")
    if status is not None and status not in APPROVAL_STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(APPROVAL_STATUSES)}", param="status")
    return {"approvals": jsonable(await call.lifecycle.approvals.list(status, call.query("agent")))}


async def approve_approval(call: Call) -> Any:
    approval_id, reason = call.param("id"), call.optional_reason()
    return jsonable(await call.lifecycle.approvals.decide(approval_id, True, call.actor, reason))


async def reject_approval(call: Call) -> Any:
    approval_id, reason = call.param("id"), call.optional_reason()
    return jsonable(await call.lifecycle.approvals.decide(approval_id, False, call.actor, reason))


def _int(call: Call, name: str, default: int) -> int:
    text = call.query(name)
    try:
        return default if text is None else int(text)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer", param=name) from None


async def list_events(call: Call) -> Any:
    since, until = call.query("since"), call.query("until")
    min_severity = call.query("min_severity")
    if min_severity is not None:
        min_severity = min_severity.upper()
        if min_severity not in SEVERITIES:
            raise InvalidRequest(f"min_severity must be one of {', '.join(SEVERITIES)}", param="min_severity")
    limit = _int(call, "limit", 1000)
    if not 1 <= limit <= 10000:
        raise InvalidRequest("limit must be between 1 and 10000", param="limit")
    events = await call.lifecycle.manager.events(
        since=instant(since) if since else 0.0, until=instant(until) if until else None,
        agent_id=call.query("agent"), workspace=call.query("workspace"), min_severity=min_severity, limit=limit)
    return {"events": jsonable(events)}


async def risk(call: Call) -> Any:
    return jsonable(await call.lifecycle.manager.risk(call.query("agent"), call.query("workspace")))


async def make_report(call: Call) -> Any:
    period = call.text("period", default="7d") or "7d"
    report = await call.lifecycle.manager.make_report(duration_s(period), call.actor)
    call.resource_name = report.id
    return Reply(jsonable(report), status=201)


async def list_reports(call: Call) -> Any:
    limit = _int(call, "limit", 20)
    reports = await call.lifecycle.manager.reports(limit)
    # The list is an index: the bodies can be large, GET /admin/reports/{id} has them.
    return {"reports": [{"id": r.id, "created_at": r.created_at, "period_start": r.period_start,
                         "period_end": r.period_end} for r in reports]}


async def show_report(call: Call) -> Any:
    report_id, fmt = call.param("id"), call.query("format") or "json"
    if fmt != "json" and fmt not in REPORT_FORMATS:
        raise InvalidRequest("format must be md, json or html", param="format")
    report = await call.lifecycle.manager.stored_report(report_id)
    if report is None:  # the contract says NotFound; a None from a store is the same answer
        raise NotFound(f"no report {report_id!r}")
    if fmt == "json":
        return jsonable(report)
    from gateway.lifecycle.report import render  # EVENTS' module, needed only here

    return Reply(render(report.body, fmt), media_type=REPORT_FORMATS[fmt])


async def get_bypass(call: Call) -> Any:
    return call.lifecycle.switches.snapshot()


async def set_bypass(call: Call) -> Any:
    enabled, reason = call.flag("enabled"), call.require_reason()
    call.resource_name = "on" if enabled else "off"
    return await call.lifecycle.switches.set_bypass(enabled, call.actor, reason)


async def set_governance(call: Call) -> Any:
    surface = call.param("surface")
    if surface not in SURFACES:
        raise InvalidRequest(f"surface must be one of {', '.join(SURFACES)}", param="surface")
    enabled, reason = call.flag("enabled"), call.require_reason()
    return await call.lifecycle.switches.set_governance(surface, enabled, call.actor, reason)


OPS = [
    Op("approvals.list", "GET", "/admin/approvals", "read", list_approvals, "approval"),
    Op("approvals.approve", "POST", "/admin/approvals/{id}/approve", "write", approve_approval, "approval"),
    Op("approvals.reject", "POST", "/admin/approvals/{id}/reject", "write", reject_approval, "approval"),
    Op("events.list", "GET", "/admin/events", "read", list_events),
    Op("risk.show", "GET", "/admin/risk", "read", risk),
    Op("reports.create", "POST", "/admin/reports", "write", make_report, "report"),
    Op("reports.list", "GET", "/admin/reports", "read", list_reports, "report"),
    Op("reports.show", "GET", "/admin/reports/{id}", "read", show_report, "report"),
    Op("bypass.show", "GET", "/admin/bypass", "read", get_bypass, "switch"),
    Op("bypass.set", "PUT", "/admin/bypass", "write", set_bypass, "switch"),
    Op("governance.set", "PUT", "/admin/governance/{surface}", "write", set_governance, "switch"),
]
