"""`portcullis audit export --format opa-decision-log`: audit rows as OPA decision-log events.

One JSON object a line, in the event shape OPA documents for its decision-log
service API (https://www.openpolicyagent.org/docs/management-decision-logs), so
tools that read OPA's logs read Portcullis decisions too:

- `decision_id` the request id; `path` "portcullis/decision" (the entry point);
- `input` the exact policy input the row recorded (contract 2);
- `result` the decision as recorded: `allow`, `reasons`, and what else the row
  says (`outcome`: the audit decision column, `status`, `cache_hit`); the
  obligations are not stored, so they are not exported;
- `bundles` {"portcullis": {"revision": policy_revision}};
- `timestamp` RFC 3339 in UTC with nanoseconds (the row has microseconds);
- `labels` {"app": "portcullis", "id": chain id, "version": Portcullis version};
- `metrics` (integers, OPA's `timer_..._ns` naming) where the row knows them;
  `requested_by` (the client address) and `trace_id` when the row has them.
  `erased`/`masked` are absent: nothing is erased or masked.

Only rows the policy decided are exported: a row with both a policy input and a
policy revision. Rows refused before a decision (no credential, 404, a revoked
agent, the policy failing closed), bypassed requests (no policy evaluated) and
`agent.lifecycle`/`admin.*` rows (their input is not a policy input) are skipped
and counted, since an OPA consumer would read them as evaluations that never ran.

Rows are read with the store's `iter_chain(None)` (ordered by chain, then seq)
and filtered by time here: one O(rows) scan of the whole store, no index used.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from typing import IO, Any

import orjson

from gateway.protocols import AuditStore

PATH = "portcullis/decision"
BUNDLE = "portcullis"
BYPASS_REVISION = "bypass"  # gateway/stages/policy.py: a bypassed request's stand-in revision


def version() -> str:
    try:
        return metadata.version("portcullis")
    except metadata.PackageNotFoundError:  # run from a tree that was never installed
        return "unknown"


def rfc3339_nano(ts: str | float | datetime) -> str:
    """`2025-01-31T12:00:00.123456789Z`: UTC, always nine fraction digits."""
    if isinstance(ts, str):
        dt = datetime.fromisoformat(ts)
    elif isinstance(ts, datetime):
        dt = ts
    else:
        dt = datetime.fromtimestamp(ts, UTC)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{dt.microsecond:06d}000Z"


def epoch(ts: str | datetime) -> float:
    dt = datetime.fromisoformat(ts) if isinstance(ts, str) else ts
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def instant(text: str, now: float) -> float:
    """`--since`/`--until`: a duration back from now (7d, 12h), an ISO 8601 time, or epoch seconds."""
    from gateway.admin.ops import duration_s  # the CLI's one duration syntax
    from gateway.errors import InvalidRequest

    text = text.strip()
    try:
        return now - duration_s(text)
    except InvalidRequest:
        pass
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return epoch(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise ValueError(f"bad time {text!r}: use a duration (7d, 12h), an ISO 8601 time "
                         "or epoch seconds") from None


def decided(row: Mapping[str, Any]) -> bool:
    """Whether the policy made this row's decision (see the module docstring)."""
    revision = row.get("policy_revision")
    return (isinstance(row.get("policy_input"), Mapping) and revision is not None
            and revision != BYPASS_REVISION)


def _ns(ms: Any) -> int | None:
    return None if ms is None else round(float(ms) * 1_000_000)


def decision_event(row: Mapping[str, Any], labels: Mapping[str, str]) -> dict[str, Any]:
    """One decided row as an OPA decision-log event."""
    outcome = row["decision"]
    result: dict[str, Any] = {
        # Everything but a denial passed the policy (a 429 or an upstream failure came after it).
        "allow": outcome != "deny",
        "reasons": list(row.get("reasons") or []),
        "outcome": outcome,
        "status": row.get("status"),
        "cache_hit": bool(row.get("cache_hit")),
    }
    event: dict[str, Any] = {
        "decision_id": row["request_id"],
        "path": PATH,
        "input": row["policy_input"],
        "result": result,
        "bundles": {BUNDLE: {"revision": row["policy_revision"]}},
        "timestamp": rfc3339_nano(row["ts"]),
        "labels": {**labels, "id": str(row["chain_id"])},
    }
    metrics = {k: v for k, v in (("timer_portcullis_request_ns", _ns(row.get("latency_ms"))),
                                 ("timer_portcullis_upstream_ns", _ns(row.get("upstream_ms"))))
               if v is not None}
    if metrics:
        event["metrics"] = metrics
    if row.get("client_ip"):
        event["requested_by"] = str(row["client_ip"])
    if row.get("trace_id"):
        event["trace_id"] = str(row["trace_id"])
    return event


@dataclass(slots=True)
class ExportCounts:
    exported: int = 0
    skipped: int = 0  # in the time window but not decided by the policy
    scanned: int = 0


async def export_decision_log(store: AuditStore, out: IO[bytes], *, since: float | None = None,
                              until: float | None = None) -> ExportCounts:
    """Write every decided row with since <= ts < until to `out`, one JSON line each."""
    counts = ExportCounts()
    labels = {"app": "portcullis", "version": version()}
    async for row in store.iter_chain(None):
        counts.scanned += 1
        if since is not None or until is not None:
            t = epoch(row["ts"])
            if (since is not None and t < since) or (until is not None and t >= until):
                continue
        if not decided(row):
            counts.skipped += 1
            continue
        out.write(orjson.dumps(decision_event(row, labels)) + b"\n")
        counts.exported += 1
    return counts
