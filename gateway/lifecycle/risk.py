"""Risk scores 0-100 from governance events (and, optionally, audit rows): pure functions.

Each event falls in one category (`details["category"]` wins, else its type decides, see
`category()`); a category's score is the sum of its events' severity weights, capped at 100;
the overall score is the sum of the category scores times their weights, capped at 100.
Events that say nothing about risk (promotions, approvals granted) count in no category.

Audit rows, when given, add the traffic signals that have no event of their own, each with the
LOW weight: a 429 (`rate_limited`) is cost, a refused credential (401) is security, an upstream
failure (decision `error`, status 502/504) is reliability.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from gateway.lifecycle.model import GovernanceEvent
from gateway.settings_lifecycle import RiskSettings

CATEGORIES: tuple[str, ...] = ("security", "cost", "reliability", "compliance")

_BY_TYPE: dict[str, str] = {
    "approval.requested": "security",
    "admin.auth_failed": "security",
    "agent.revoked": "compliance",
    "agent.demoted": "compliance",
    "bypass.toggled": "compliance",
    "governance.toggled": "compliance",
    "policy.reload_rejected": "compliance",
    "audit.spooling": "reliability",
    "policy.fail_open": "reliability",
    "webhook.failed": "reliability",
    "budget.80pct": "reliability",
}
# Types not in the table: a word in the type decides (e.g. "agent.violation", "tokens.burn").
_BY_WORD: tuple[tuple[str, str], ...] = (
    ("violation", "security"), ("auth", "security"), ("credential", "security"),
    ("rate_limit", "cost"), ("token", "cost"), ("upstream", "reliability"),
)
_UPSTREAM_FAILED = (502, 504)


def category(event: GovernanceEvent) -> str | None:
    """The risk category of one event, or None when it is no risk signal."""
    explicit = event.details.get("category") if isinstance(event.details, Mapping) else None
    if explicit in CATEGORIES:
        return str(explicit)
    if event.event_type in _BY_TYPE:
        return _BY_TYPE[event.event_type]
    for word, cat in _BY_WORD:
        if word in event.event_type:
            return cat
    return None


def row_category(row: Mapping[str, Any]) -> str | None:
    """The risk category of one audit row's outcome, or None (most rows)."""
    if row.get("decision") == "rate_limited":
        return "cost"
    if row.get("status") == 401:
        return "security"
    if row.get("decision") == "error" and row.get("status") in _UPSTREAM_FAILED:
        return "reliability"
    return None


def row_ts(row: Mapping[str, Any]) -> float:
    """An audit row's ts (ISO 8601 text in the stores, epoch seconds in tests) as epoch seconds."""
    ts = row["ts"]
    if isinstance(ts, (int, float)):
        return float(ts)
    dt = ts if isinstance(ts, datetime) else datetime.fromisoformat(str(ts))
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def _in_scope(item: Mapping[str, Any] | GovernanceEvent, agent_id: str | None, workspace: str | None) -> bool:
    get = item.get if isinstance(item, Mapping) else lambda k: getattr(item, k)
    return (agent_id is None or get("agent_id") == agent_id) and (workspace is None or get("workspace") == workspace)


def risk_scores(events: Sequence[GovernanceEvent], settings: RiskSettings, *, agent_id: str | None = None,
                workspace: str | None = None, rows: Iterable[Mapping[str, Any]] = (),
                now: float | None = None) -> dict[str, Any]:
    """{"score": 0-100, "categories": {category: 0-100}, "events": n, "rows": n}.

    `events`/`rows` in scope: those of `agent_id` and/or `workspace` when given, and with `now`,
    those of the window [now - settings.window_s, now]. "events" counts the events in scope,
    "rows" the audit rows that counted.
    """
    start = None if now is None else now - settings.window_s
    weights = settings.severity_weights
    sums = dict.fromkeys(CATEGORIES, 0)
    n_events = 0
    for ev in events:
        if not _in_scope(ev, agent_id, workspace) or (start is not None and not start <= ev.ts <= now):  # type: ignore[operator]
            continue
        n_events += 1
        if (cat := category(ev)) is not None:
            sums[cat] += weights.get(ev.severity, 0)
    n_rows = 0
    low = weights.get("LOW", 0)
    for row in rows:
        if (cat := row_category(row)) is None or not _in_scope(row, agent_id, workspace):
            continue
        if start is not None and not start <= row_ts(row) <= now:  # type: ignore[operator]
            continue
        n_rows += 1
        sums[cat] += low
    cats = {c: min(100, s) for c, s in sums.items()}
    total = sum(cats[c] * float(settings.category_weights.get(c, 1.0)) for c in CATEGORIES)
    return {"score": min(100, math.floor(total + 0.5)), "categories": cats, "events": n_events, "rows": n_rows}


def risk_by(key: str, events: Sequence[GovernanceEvent], settings: RiskSettings, *,
            rows: Sequence[Mapping[str, Any]] = (), now: float | None = None) -> dict[str, dict[str, Any]]:
    """risk_scores per agent (key "agent_id") or per workspace (key "workspace"), for every id
    named by an event or a counted row, sorted by id."""
    ids = {getattr(ev, key) for ev in events} | {r.get(key) for r in rows if row_category(r) is not None}
    kw = "agent_id" if key == "agent_id" else "workspace"
    return {i: risk_scores(events, settings, rows=rows, now=now, **{kw: i})  # type: ignore[arg-type]
            for i in sorted(x for x in ids if x)}
