"""Live decisions: the page, and the server-sent event stream that feeds it.

The stream polls the audit store (every replica writes there, so one console sees the fleet)
for rows newer than the last it sent, through the (ts) index: `recent_rows(after_ts=...)`,
oldest first. Writers batch and replicas' clocks differ, so each poll looks back LOOKBACK_S
and drops the request ids it has already sent.
"""
from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway.console import data
from gateway.console.session import Session
from gateway.console.web import SECURITY_HEADERS, Console
from gateway.errors import BackendError

POLL_S = 0.4  # a denial reaches the page well inside 2 s: audit flush + one poll + render
LOOKBACK_S = 5.0
BACKLOG = 20  # rows sent when a stream opens, so the page is not empty
BATCH = 200
PAGES = 5
HEARTBEAT_S = 15.0  # a comment line keeps proxies from closing an idle stream
MAX_STREAM_S = 600.0  # then the browser's EventSource reconnects: no stream outlives a token removal long
SEEN_MAX = 5000


def _filters(request: Request) -> dict[str, str | None]:
    q = request.query_params
    decision = q.get("decision") or None
    surface = q.get("surface") or None
    return {"agent": (q.get("agent") or "").strip()[:200] or None,
            "decision": decision if decision in data.DECISIONS else None,
            "api": surface if surface in data.SURFACES else None}


def _event(row: dict[str, Any]) -> bytes:
    payload = json.dumps(data.live_row(row), separators=(",", ":"), default=str)
    return f"event: row\nid: {row.get('request_id')}\ndata: {payload}\n\n".encode()


class LiveStream:
    """One open stream: the filters and the ids already sent."""

    def __init__(self, c: Console, request: Request, filters: dict[str, str | None]) -> None:
        self._c, self._request, self._filters = c, request, filters
        self._seen: OrderedDict[str, None] = OrderedDict()

    def _fresh(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for r in rows:
            rid = str(r.get("request_id"))
            if rid in self._seen:
                continue
            self._seen[rid] = None
            out.append(r)
        while len(self._seen) > SEEN_MAX:
            self._seen.popitem(last=False)
        return out

    async def events(self) -> AsyncIterator[bytes]:
        c, store = self._c, data.audit_store(self._c.services)
        if getattr(store, "recent_rows", None) is None:
            yield b"event: unavailable\ndata: {}\n\n"
            return
        yield b"retry: 1000\n\n"
        backlog = await store.recent_rows(limit=BACKLOG, **self._filters)  # newest first
        backlog.reverse()
        for row in self._fresh(backlog):
            yield _event(row)
        since = max([float(r["ts"]) for r in backlog] + [time.time() - LOOKBACK_S])
        opened = last_beat = time.monotonic()
        while time.monotonic() - opened < MAX_STREAM_S:
            await asyncio.sleep(POLL_S)
            if await self._request.is_disconnected():  # stop polling for a closed tab at once
                return
            if c.sessions.session(self._request) is None:  # token removed or session expired
                yield b"event: logout\ndata: {}\n\n"
                return
            cursor, sent = since - LOOKBACK_S, 0
            for _ in range(PAGES):  # bounded work per poll, however busy the fleet is
                try:
                    rows = await store.recent_rows(limit=BATCH, after_ts=cursor, **self._filters)
                except BackendError:  # the store is away: keep the stream, ask again next poll
                    break
                for row in self._fresh(rows):
                    sent += 1
                    yield _event(row)
                if rows:
                    since = max(since, max(float(r["ts"]) for r in rows))
                if len(rows) < BATCH:
                    break
                cursor = float(rows[-1]["ts"])
            if sent:
                last_beat = time.monotonic()
            elif time.monotonic() - last_beat > HEARTBEAT_S:
                last_beat = time.monotonic()
                yield b": keep-alive\n\n"


def live_routes(c: Console) -> list[Route]:
    async def page(request: Request, session: Session) -> Response:
        f = _filters(request)
        return c.render(request, "live.html", session, page="live", title="Live decisions",
                        filters={"agent": f["agent"] or "", "decision": f["decision"] or "",
                                 "surface": f["api"] or ""},
                        decisions=data.DECISIONS, surfaces=data.SURFACES)

    async def stream(request: Request, session: Session) -> Response:
        live = LiveStream(c, request, _filters(request))
        headers = {**SECURITY_HEADERS, "x-accel-buffering": "no"}
        return StreamingResponse(live.events(), media_type="text/event-stream", headers=headers)

    return [Route("/console/live", c.page(page), methods=["GET"]),
            Route("/console/live/stream", c.api(stream), methods=["GET"])]
