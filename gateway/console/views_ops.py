"""Approvals and proposals, governance events and reports: the same
lifecycle calls the admin API's handlers make (gateway/admin/routes_*.py), rendered."""
from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.admin.serialize import jsonable
from gateway.console.session import Session
from gateway.console.web import Console
from gateway.errors import NotFound
from gateway.lifecycle.model import SEVERITIES

EVENT_WINDOWS = {"1h": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400}
EVENTS_PAGE = 200
REPORTS_PAGE = 20
_BODY = re.compile(r"<body>(.*)</body>", re.DOTALL)


def _report_charts(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Bar charts of a report: requests by decision, and risk by agent (top 10)."""
    traffic, risk = body.get("traffic") or {}, (body.get("risk") or {}).get("agents") or {}
    by_agent = ((a, v.get("requests", 0)) for a, v in (traffic.get("by_agent") or {}).items())
    charts = [{"title": "Requests by decision", "bars": sorted((traffic.get("by_decision") or {}).items())},
              {"title": "Requests by agent (top 10)", "bars": sorted(by_agent, key=lambda kv: -kv[1])[:10]},
              {"title": "Risk score by agent (top 10)",
               "bars": sorted(((a, r.get("score", 0)) for a, r in risk.items()), key=lambda kv: -kv[1])[:10]}]
    for ch in charts:
        top = max((v for _, v in ch["bars"]), default=0) or 1
        ch["bars"] = [{"label": k, "value": v, "width": round(300 * v / top)} for k, v in ch["bars"]]
    return charts


def ops_routes(c: Console) -> list[Route]:
    async def approvals(request: Request, session: Session) -> Response:
        pending, proposals = await asyncio.gather(c.lifecycle.approvals.list("pending", None),
                                                  c.lifecycle.manager.proposals("pending"))
        return c.render(request, "approvals.html", session, page="approvals", title="Approvals",
                        approvals=jsonable(pending), proposals=jsonable(proposals))

    async def events(request: Request, session: Session) -> Response:
        severity = (request.query_params.get("severity") or "LOW").upper()
        severity = severity if severity in SEVERITIES else "LOW"
        window = request.query_params.get("window") or "24h"
        window = window if window in EVENT_WINDOWS else "24h"
        since = time.time() - EVENT_WINDOWS[window]
        after = request.query_params.get("after")  # keyset page: the ts of the last event shown
        try:
            since = max(since, float(after)) if after else since
        except ValueError:
            pass
        found = await c.lifecycle.manager.events(since=since, min_severity=severity, limit=EVENTS_PAGE)
        more = found[-1].ts if len(found) >= EVENTS_PAGE else None
        return c.render(request, "events.html", session, page="events", title="Events",
                        events=jsonable(found), severity=severity, severities=SEVERITIES, window=window,
                        windows=list(EVENT_WINDOWS), more=more)

    async def reports(request: Request, session: Session) -> Response:
        found = await c.lifecycle.manager.reports(REPORTS_PAGE)
        return c.render(request, "reports.html", session, page="reports", title="Reports",
                        reports=[{"id": r.id, "created_at": r.created_at, "period_start": r.period_start,
                                  "period_end": r.period_end} for r in found])

    async def report(request: Request, session: Session) -> Response:
        # The report module's own HTML rendering (imported where needed, like the admin API does).
        from gateway.lifecycle.report import render

        try:
            stored = await c.lifecycle.manager.stored_report(request.path_params["id"])
        except NotFound as e:
            return c.render(request, "error.html", session, status=404, title="Not found", message=e.message)
        page = render(stored.body, "html")
        m = _BODY.search(page)
        # render() escapes every value it puts in the page: its body is safe to embed as is. The
        # charts go after its title and period, before its first section.
        inner = m.group(1) if m else ""
        head, sep, rest = inner.partition("<h2>")
        return c.render(request, "report.html", session, page="reports", title=f"Report {stored.id}",
                        report=stored, head=Markup(head), rest=Markup(sep + rest),
                        charts=_report_charts(dict(stored.body)))

    return [Route("/console/approvals", c.page(approvals), methods=["GET"]),
            Route("/console/events", c.page(events), methods=["GET"]),
            Route("/console/reports", c.page(reports), methods=["GET"]),
            Route("/console/reports/{id}", c.page(report), methods=["GET"])]

