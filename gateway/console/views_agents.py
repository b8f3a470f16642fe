"""The agents table and one agent's page. Agent state, budget and risk come from the same
LifecycleManager calls the admin API's handlers make; requests today and the last decision
from the audit store's rollup and (agent_id, ts) index."""
from __future__ import annotations

import asyncio
import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.console import data
from gateway.console.session import Session
from gateway.console.web import Console
from gateway.errors import NotFound

ROWS_PAGE = 50
EVENTS_WINDOW_S = 7 * 86400
EVENTS_MAX = 200


def agents_routes(c: Console) -> list[Route]:
    async def agents(request: Request, session: Session) -> Response:
        store = data.audit_store(c.services)
        listed, activity = await asyncio.gather(
            c.lifecycle.manager.agents(), data.call_store(store, "agent_activity", data.day_start(time.time())))
        for a in listed:
            a["budget_use"] = data.budget_use(a)
            a["activity"] = (activity or {}).get(a["id"]) or {}
        # Riskiest first: the question an operator opens this page with.
        listed.sort(key=lambda a: (-(a.get("risk") or {}).get("score", 0), a["id"]))
        return c.render(request, "agents.html", session, page="agents", title="Agents", agents=listed,
                        activity_available=activity is not None)

    async def agent(request: Request, session: Session) -> Response:
        agent_id = request.path_params["id"]
        try:
            view = await c.lifecycle.manager.agent(agent_id)
        except NotFound as e:
            return c.render(request, "error.html", session, status=404, title="Not found", message=e.message)
        view["budget_use"] = data.budget_use(view)
        before = data.cursor(request.query_params.get("before"))
        now = time.time()
        store = data.audit_store(c.services)
        rows, events = await asyncio.gather(
            data.call_store(store, "recent_rows", limit=ROWS_PAGE + 1, before=before, agent=agent_id),
            c.lifecycle.manager.events(since=now - EVENTS_WINDOW_S, agent_id=agent_id, limit=EVENTS_MAX))
        rows = [data.live_row(r) for r in rows] if rows is not None else None
        more = None
        if rows is not None and len(rows) > ROWS_PAGE:
            rows = rows[:ROWS_PAGE]
            more = f"{rows[-1]['ts']}:{rows[-1]['request_id']}"
        tiers, maturities = data.vocabulary(c.services)
        return c.render(request, "agent.html", session, page="agents", title=f"Agent {agent_id}", agent=view,
                        rows=rows, more=more, paged=before is not None, events=list(reversed(events)),
                        events_truncated=len(events) >= EVENTS_MAX, tiers=tiers, maturities=maturities)

    return [Route("/console/agents", c.page(agents), methods=["GET"]),
            Route("/console/agents/{id}", c.page(agent), methods=["GET"])]
