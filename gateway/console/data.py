"""What the console reads, in one place: the audit store's console queries (adapters/audit
console mixins), the lifecycle store's replica heartbeats, the policy revision and shadow mode.

Every read is bounded (a window, a limit) and answered by an index or the per-minute rollup.
A store without a console query (an older adapter) yields None, and the page says so instead
of failing.
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from gateway.services import Services

DECISIONS = ("allow", "deny", "rate_limited", "error", "bypass")
SURFACES = ("openai", "anthropic", "mcp", "tools", "admin")
# window -> (seconds, bucket seconds): about 60 to 170 points a chart, whatever the window
WINDOWS = {"1h": (3600, 60), "1d": (86400, 600), "1w": (7 * 86400, 3600)}
LIVE_FIELDS = ("request_id", "ts", "agent_id", "action", "resource_type", "resource_name", "api",
               "decision", "reasons", "status", "latency_ms")


def audit_store(services: Services) -> Any:
    """The audit store the writer writes to: one pool for every reader on this replica."""
    return services.audit.store


def _engine(services: Services) -> Any:
    return services.policy.engine


def policy_revision(services: Services) -> str | None:
    """This replica's loaded policy revision."""
    return getattr(_engine(services), "revision", None) or None


def vocabulary(services: Services) -> tuple[list[int], list[str]]:
    """The loaded policy's tiers and maturities (lowest first), for the promote/demote forms."""
    vocab = getattr(_engine(services), "vocabulary", None)
    tiers = sorted(getattr(vocab, "tiers", None) or ())
    return list(tiers), list(getattr(vocab, "maturities", None) or ())


def budget_use(agent: Mapping[str, Any]) -> float | None:
    """The share of the agent's error budget spent (0..1): its most consumed count."""
    budget, counters = agent.get("budget"), agent.get("counters") or {}
    if not budget:
        return None
    same = max((counters.get("same_errors") or {}).values(), default=0)
    parts = [(counters.get("total_errors", 0), budget.get("max_total_errors")),
             (counters.get("violations", 0), budget.get("max_procedure_violations")),
             (same, budget.get("max_same_error_repeats"))]
    return min(1.0, max((n / m for n, m in parts if m), default=0.0))


def cursor(text: str | None) -> tuple[float, str] | None:
    """A page cursor "ts:request_id" (the last row shown) -> the keyset `before` bound."""
    if not text or ":" not in text:
        return None
    ts, _, rid = text.partition(":")
    try:
        return float(ts), rid
    except ValueError:
        return None


def shadow(services: Services) -> Any:
    """Shadow mode (gateway/shadow), None when it is off or not built."""
    return getattr(services, "shadow", None)


async def call_store(store: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    """store.method(...) when the store has it, else None (the page shows 'not available')."""
    fn = getattr(store, method, None) if store is not None else None
    if fn is None:
        return None
    return await fn(*args, **kwargs)


def day_start(now: float) -> float:
    """Midnight UTC of `now`: "requests today" is the UTC day, the same for every operator."""
    d = datetime.fromtimestamp(now, UTC)
    return datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()


async def series(services: Services, window: str, now: float | None = None) -> dict[str, Any]:
    """The decisions chart: counts per bucket by decision, every bucket present (zeros)."""
    span, bucket = WINDOWS[window]
    now = time.time() if now is None else now
    until = (math.floor(now / bucket) + 1) * bucket  # the current bucket included
    since = until - span
    rows = await call_store(audit_store(services), "decision_series", since, until, bucket)
    t = list(range(int(since), int(until), bucket))
    out: dict[str, list[int]] = {d: [0] * len(t) for d in DECISIONS}
    index = {v: i for i, v in enumerate(t)}
    for row in rows or ():
        i = index.get(int(row["t"]) // bucket * bucket)
        if i is None:
            continue
        for d in DECISIONS:
            out[d][i] += int(row.get(d) or 0)
    return {"window": window, "bucket_s": bucket, "t": t, "series": out,
            "totals": {d: sum(v) for d, v in out.items()}, "available": rows is not None}


def live_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """An audit row as the live view shows it: only these fields (no policy input, no prompt,
    no client address, no error text that could echo a request)."""
    out = {k: row.get(k) for k in LIVE_FIELDS}
    reasons = out.get("reasons")
    if isinstance(reasons, str):  # a store that hands back the JSON text
        import json
        try:
            reasons = json.loads(reasons)
        except ValueError:
            reasons = [reasons]
    out["reasons"] = [str(r) for r in reasons or ()]
    return out


def fmt_ts(ts: Any) -> str:
    """Epoch seconds -> "2026-11-30 16:45:10Z" (UTC, seconds)."""
    if ts is None or ts == "":
        return "-"
    try:
        return datetime.fromtimestamp(float(ts), UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    except (TypeError, ValueError):
        return str(ts)


def fmt_ms(ms: Any) -> str:
    if ms is None:
        return "-"
    return f"{float(ms):.1f} ms"


def fmt_pct(x: Any) -> str:
    if x is None:
        return "-"
    return f"{float(x) * 100:.1f}%"
