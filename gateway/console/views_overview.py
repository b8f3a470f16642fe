"""The overview page (decisions chart, overhead, cache hit rate, replicas) and its JSON series."""
from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.console import data
from gateway.console.session import Session
from gateway.console.web import Console

STATS_WINDOW_S = 3600  # overhead and cache hit rate: the last hour, like the chart's default
DENIALS = 10  # "what was denied and why": the latest denials, through the (decision, ts) index


async def _replicas(c: Console) -> list[dict[str, Any]] | None:
    """The replicas that sent a heartbeat lately (3 refresh periods), newest first."""
    lc = c.lifecycle
    max_age = max(60.0, 3 * float(lc.settings.refresh_s)) if lc is not None else 60.0
    rows = await data.call_store(lc.store if lc is not None else None, "replicas", max_age)
    if rows is None:
        return None
    return sorted(rows, key=lambda r: -float(r.get("last_seen") or 0))


def overview_routes(c: Console) -> list[Route]:
    async def overview(request: Request, session: Session) -> Response:
        now = time.time()
        store = data.audit_store(c.services)
        since = now - STATS_WINDOW_S
        chart, overhead, hit_rate, replicas, denials = await asyncio.gather(
            data.series(c.services, "1h", now), data.call_store(store, "overhead_percentiles", since),
            data.call_store(store, "cache_hit_rate", since), _replicas(c),
            data.call_store(store, "recent_rows", limit=DENIALS, decision="deny"))
        return c.render(request, "overview.html", session, page="overview", title="Overview",
                        chart=chart, decisions=data.DECISIONS, overhead=overhead or {"p50": None, "p99": None},
                        hit_rate=hit_rate, replicas=replicas, revision=data.policy_revision(c.services),
                        windows=list(data.WINDOWS),
                        denials=[data.live_row(r) for r in denials] if denials is not None else None)

    async def api_series(request: Request, session: Session) -> Response:
        window = request.query_params.get("window", "1h")
        if window not in data.WINDOWS:
            return c.json({"error": {"code": "invalid_request",
                                     "message": f"window must be one of {', '.join(data.WINDOWS)}"}}, 400)
        return c.json(await data.series(c.services, window))

    return [Route("/console", c.page(overview), methods=["GET"]),
            Route("/console/", c.page(overview), methods=["GET"]),
            Route("/console/api/series", c.api(api_series), methods=["GET"])]
