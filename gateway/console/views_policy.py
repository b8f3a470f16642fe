"""The policy page: this replica's revision, the last reloads (accepted or rejected, from the
governance events gateway/app.py emits), and shadow mode: what the shadow set decided
differently (gateway/shadow/report.py:summarise, the same fold `policy shadow-report` prints)
and its alerts, and the replays recorded by `portcullis policy replay --record`."""
from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.admin.serialize import jsonable
from gateway.console import data
from gateway.console.session import Session
from gateway.console.web import Console

RELOAD_TYPES = ("policy.reloaded", "policy.reload_rejected")
SHADOW_TYPES = ("policy.shadow_disagreements", "policy.shadow_reload_rejected")
REPLAY_TYPES = ("policy.replayed",)  # `portcullis policy replay --record`
EVENTS_WINDOW_S = 30 * 86400
EVENTS_PAGE = 1000
SCAN_PAGES = 5  # a window's events are read at most this many pages forward
SHOW = 20
SHADOW_WINDOW_S = 86400
SHADOW_MAX_ROWS = 50_000  # a page load reads at most this many sampled rows (the CLI reads them all)
BREAKDOWN_ROWS = 10


async def _shadow(c: Console, shadow: Any, now: float) -> dict[str, Any]:
    """The shadow set's disagreements over the last day, from the audit rows it annotated."""
    from gateway.audit.chain import format_ts
    from gateway.replay.compare import KINDS, LABELS
    from gateway.shadow.report import summarise

    report = await summarise(data.audit_store(c.services), c.services.settings,
                             since=format_ts(now - SHADOW_WINDOW_S), limit=0, max_rows=SHADOW_MAX_ROWS)
    changes = [{"kind": k, "label": LABELS[k], **report["changes"][k]} for k in KINDS]
    breakdown = {dim: [{"key": r["key"], "requests": r["requests"], "inputs": r["inputs"]}
                       for r in rows[:BREAKDOWN_ROWS]] for dim, rows in report["breakdown"].items()}
    return {"revision": getattr(shadow, "revision", None), "serving": report["baseline"]["revision"],
            "rows": report["rows"], "truncated": report["truncated"], "inputs": report["inputs"], "changes": changes,
            "unchanged": report["unchanged"], "breakdown": breakdown,
            "disagreed": sum(ch["requests"] for ch in changes if ch["kind"] != "reasons")}


async def _scan(c: Console, since: float, until: float) -> list[Any]:
    """The reload and shadow events of [since, until), oldest first. The store pages events
    oldest first by `since`: read forward, at most SCAN_PAGES pages."""
    out: list[Any] = []
    for _ in range(SCAN_PAGES):
        page = await c.lifecycle.manager.events(since=since, until=until, limit=EVENTS_PAGE)
        out += [e for e in page if e.event_type in RELOAD_TYPES + SHADOW_TYPES + REPLAY_TYPES]
        if len(page) < EVENTS_PAGE:
            break
        since = page[-1].ts  # the last page's newest: keyset (events at that very ts may repeat)
    seen: set[str] = set()
    return [e for e in out if not (e.id in seen or seen.add(e.id))]


def policy_routes(c: Console) -> list[Route]:
    async def policy(request: Request, session: Session) -> Response:
        now = time.time()
        # The last day first; the rest of the month only when the day had too few to show.
        found = await _scan(c, now - 86400, now)
        if len(found) < SHOW:
            found = await _scan(c, now - EVENTS_WINDOW_S, now - 86400) + found
        newest = list(reversed(found))
        reloads = [e for e in newest if e.event_type in RELOAD_TYPES][:SHOW]
        alerts = [e for e in newest if e.event_type in SHADOW_TYPES][:SHOW]
        replays = [e for e in newest if e.event_type in REPLAY_TYPES][:SHOW]
        shadow = data.shadow(c.services)
        return c.render(request, "policy.html", session, page="policy", title="Policy",
                        revision=data.policy_revision(c.services), reloads=jsonable(reloads),
                        alerts=jsonable(alerts), replays=jsonable(replays), shadow=await _shadow(c, shadow, now) if shadow else None)

    return [Route("/console/policy", c.page(policy), methods=["GET"])]
