"""What the two audit stores' console queries share: the rollup's shape, bucketing and percentiles.

The console (gateway/console) reads the audit table through a few bounded queries
(`decision_series`, `agent_activity`, `cache_hit_rate`, `overhead_percentiles`,
`recent_rows`). Counts come from two rollup tables kept by triggers on the audit
table, so a count costs a scan of minutes, never of rows, and only rows really
inserted count (a replayed batch skipped by INSERT OR IGNORE / ON CONFLICT DO
NOTHING fires no row trigger and is not in PostgreSQL's transition table):

- by agent: (minute, agent_id, decision) -> n, cache_hits, decided
- by minute: (minute, decision) -> n, cache_hits, decided (the chart's totals: a week is
  at most 10,080 minutes x a few decisions, however many agents there are)

`minute` is the epoch second the row's minute starts at; a row without an agent is
counted under agent ''. `decided` counts rows with a policy decision (a policy revision
that is not the bypass): the cache hit rate is cache_hits / decided.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

SERIES_DECISIONS = ("allow", "deny", "rate_limited", "error", "bypass")
# Rows read for the overhead percentiles: the newest this many in the window.
OVERHEAD_ROWS = 50_000
# recent_rows with a filter no index serves (or a second filter): rows scanned at most per call.
SCAN_ROWS = 20_000
MAX_LIMIT = 1000
MAX_BUCKETS = 20_000
RECENT_FIELDS = ("request_id", "ts", "agent_id", "action", "resource_type", "resource_name", "api",
                 "decision", "reasons", "status", "latency_ms", "upstream_ms")


def minute_of(epoch: float) -> int:
    """The start of the minute `epoch` is in (epoch seconds)."""
    return math.floor(epoch / 60) * 60


def bucket_bounds(since: float, until: float, bucket_s: int) -> tuple[int, int, int]:
    """(first bucket start, end (exclusive), bucket_s): whole buckets, aligned to the epoch,
    covering since..until; bucket_s a multiple of 60, at most MAX_BUCKETS buckets."""
    b = max(60, int(bucket_s) // 60 * 60)
    start = math.floor(since / b) * b
    end = math.floor(until / b) * b + b if until > since else start
    if (end - start) // b > MAX_BUCKETS:
        raise ValueError(f"{(end - start) // b} buckets of {b} s: at most {MAX_BUCKETS}")
    return start, end, b


def dense_series(found: Iterable[tuple[int, str, int]], start: int, end: int, b: int) -> list[dict[str, Any]]:
    """Every bucket start..end (zeros where nothing happened) from (bucket start, decision, n)."""
    out = {t: dict.fromkeys(SERIES_DECISIONS, 0) for t in range(start, end, b)}
    for t, decision, n in found:
        bucket = out.get(int(t))
        if bucket is not None and decision in bucket:
            bucket[decision] += int(n)
    return [{"t": t, **counts} for t, counts in out.items()]


def rate(hits: Any, decided: Any) -> float | None:
    return None if not decided else float(hits or 0) / float(decided)


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """Linear interpolation between the closest ranks (PostgreSQL's percentile_cont)."""
    if not ordered:
        return None
    pos = (len(ordered) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def ms(v: Any) -> float | None:
    return None if v is None else round(float(v), 3)


def clamp_limit(limit: int) -> int:
    return max(0, min(int(limit), MAX_LIMIT))


def plan(*, agent: str | None, decision: str | None, api: str | None) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    """Split the filters into the one an index serves ((agent_id, ts), (decision, ts), else (ts))
    and the rest, which are applied to at most SCAN_ROWS rows read along that index."""
    given = [(c, v) for c, v in (("agent_id", agent), ("decision", decision), ("api", api)) if v is not None]
    indexed = [given[0]] if given and given[0][0] in ("agent_id", "decision") else []
    return indexed, [g for g in given if g not in indexed]


def reasons_list(stored: Any) -> list[Any]:
    """The reasons column as read (JSON text) -> a list; unreadable text becomes its one reason."""
    if stored is None:
        return []
    if isinstance(stored, list):
        return stored
    try:
        return orjson.loads(stored)
    except orjson.JSONDecodeError:
        return [stored]
