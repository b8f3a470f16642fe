"""The audit row and its hash chain: pure functions, no I/O.

Canonical form: orjson with OPT_SORT_KEYS over every column except `hash`
(nested policy_input keys are sorted too); `trace_id` and `shadow_*`, added later, only
when not null, so rows from before it existed still verify unchanged. orjson is already a dependency and
gives one deterministic byte string for the value types a row can hold (str,
int, float, bool, None, list, dict). Floats are rounded to 3 decimals and
non-finite floats become None before hashing, so the value that comes back
from SQLite REAL / PostgreSQL double (and orjson's shortest float repr)
canonicalizes to the same bytes.

    hash = sha256(prev_hash.encode("ascii") ‖ canonical(row)).hexdigest()
"""
from __future__ import annotations

import hashlib
import math
from datetime import datetime, timezone
from typing import Any, Mapping

import orjson

from gateway.errors import BackendError
from gateway.types import AuditEvent

ROW_FIELDS: tuple[str, ...] = (
    "chain_id", "seq", "ts", "request_id",
    "agent_id", "tier", "maturity", "workspace", "auth",
    "action", "resource_type", "resource_name", "upstream", "api", "stream",
    "decision", "reasons", "policy_revision", "cache_hit",
    "status", "latency_ms", "upstream_ms", "input_tokens", "output_tokens", "client_ip", "error",
    "input_digest", "policy_input", "trace_id", "shadow_decision", "shadow_revision",
    "prev_hash", "hash",
)
CHAIN_FIELDS: tuple[str, ...] = ("chain_id", "seq", "prev_hash", "hash")
GENESIS = "0" * 64

# Added after rows were first written: in the canonical form only when set, so a row
# without one (every row written before the column existed) hashes as it always did.
# shadow_*: the shadow policy set's verdict (policy.shadow), on sampled rows only.
_OPTIONAL_FIELDS = ("trace_id", "shadow_decision", "shadow_revision")
_CANONICAL_FIELDS = tuple(f for f in ROW_FIELDS if f != "hash" and f not in _OPTIONAL_FIELDS)
_INT_FIELDS = ("seq", "tier", "status", "input_tokens", "output_tokens")
_FLOAT_FIELDS = ("latency_ms", "upstream_ms")
_BOOL_FIELDS = ("stream", "cache_hit")
JSON_FIELDS = ("reasons", "policy_input", "shadow_decision")


class ChainConflict(BackendError):
    """A store already holds a different row at (chain_id, seq): two writers share a chain."""


def _float(v: float | None) -> float | None:
    if v is None:
        return None
    v = float(v)
    return round(v, 3) if math.isfinite(v) else None


def _mapping(v: Any) -> Any:
    if isinstance(v, Mapping):  # e.g. an agent's labels as a read-only mapping
        return dict(v)
    raise TypeError(f"{type(v).__name__} cannot go into an audit row")


def _plain(v: Any) -> Any:
    """Mappings and sequences as plain dicts and lists, non-finite floats as None.

    One orjson round trip does it in C; a recursive isinstance walk cost more than
    hashing the row (measured with the audit micro-benchmark).
    """
    return orjson.loads(orjson.dumps(v, default=_mapping, option=orjson.OPT_NON_STR_KEYS))


def format_ts(ts: float | datetime) -> str:
    """ISO-8601 UTC with microseconds, e.g. 2025-01-31T12:00:00.123456+00:00."""
    dt = ts if isinstance(ts, datetime) else datetime.fromtimestamp(ts, timezone.utc)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).isoformat(timespec="microseconds")


def event_to_row(event: AuditEvent) -> dict[str, Any]:
    """The row for one event, without the chain fields (the writer attaches those)."""
    return {
        "ts": format_ts(event.ts),
        "request_id": event.request_id,
        "agent_id": event.agent_id,
        "tier": None if event.tier is None else int(event.tier),
        "maturity": event.maturity,
        "workspace": event.workspace,
        "auth": event.auth,
        "action": event.action,
        "resource_type": event.resource_type,
        "resource_name": event.resource_name,
        "upstream": event.upstream,
        "api": event.api,
        "stream": bool(event.stream),
        "decision": event.decision,
        "reasons": [str(r) for r in event.reasons],
        "policy_revision": event.policy_revision,
        "cache_hit": bool(event.cache_hit),
        "status": int(event.status),
        "latency_ms": _float(event.latency_ms),
        "upstream_ms": _float(event.upstream_ms),
        "input_tokens": None if event.input_tokens is None else int(event.input_tokens),
        "output_tokens": None if event.output_tokens is None else int(event.output_tokens),
        "client_ip": event.client_ip,
        "error": event.error,
        "input_digest": event.input_digest,
        "policy_input": None if event.policy_input is None else _plain(event.policy_input),
        "trace_id": event.trace_id,
        "shadow_decision": None if event.shadow_decision is None else _plain(event.shadow_decision),
        "shadow_revision": event.shadow_revision,
    }


def canonical(row: Mapping[str, Any]) -> bytes:
    """Deterministic bytes of every column except `hash` (KeyError if one is missing);
    an optional column (trace_id) only when it is not null."""
    doc = {k: row[k] for k in _CANONICAL_FIELDS}
    for k in _OPTIONAL_FIELDS:
        if (v := row.get(k)) is not None:
            doc[k] = v
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


def link(prev_hash: str, row: Mapping[str, Any]) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + canonical(row)).hexdigest()


def row_from_store(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Undo a store's encodings so a stored row canonicalizes like the written one.

    Only lossless conversions are applied (JSON text -> value, 0/1 -> bool,
    integral float -> int, datetime -> ISO text); anything else is left as is,
    so a tampered value still changes the hash instead of being "repaired".
    """
    row = {k: raw.get(k) for k in ROW_FIELDS}
    for k in JSON_FIELDS:
        v = row[k]
        if isinstance(v, (str, bytes)):
            try:
                row[k] = orjson.loads(v)
            except orjson.JSONDecodeError:
                pass
    for k in _BOOL_FIELDS:
        v = row[k]
        if isinstance(v, int) and not isinstance(v, bool) and v in (0, 1):
            row[k] = bool(v)
    for k in _INT_FIELDS:
        v = row[k]
        if isinstance(v, float) and v.is_integer():
            row[k] = int(v)
    for k in _FLOAT_FIELDS:
        v = row[k]
        if isinstance(v, int) and not isinstance(v, bool):
            row[k] = float(v)
    if isinstance(row["ts"], datetime):
        row["ts"] = format_ts(row["ts"])
    return row
