"""What both lifecycle stores share: table names, row <-> model mapping and the counting rule.

The counting rule is a pure function here (`counted`): SQLite applies it inside BEGIN
IMMEDIATE, PostgreSQL mirrors it in one upsert statement, and one test suite holds the
two to the same results. Free text that reaches a store is cleaned of NUL, which
PostgreSQL text and jsonb cannot hold (a client can put one into a model or tool name,
and so into a signature or a reason); both stores clean alike so they answer alike.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import orjson

from gateway.lifecycle.model import (
    SEVERITIES,
    AgentState,
    Approval,
    GovernanceEvent,
    LifecycleChange,
    Outcome,
    Proposal,
    StoredReport,
)

# AgentState fields a LifecycleChange may set (`change.new`); the rest of `new` is history only.
SETTABLE = ("revoked", "revoked_reason", "tier", "maturity", "window_start", "total_errors", "violations",
            "same_errors", "consecutive_compliant", "budget_warned")
STATE_COLUMNS = ("agent_id", *SETTABLE, "updated_at", "version")
PROPOSAL_COLUMNS = tuple(f.name for f in fields(Proposal))
APPROVAL_COLUMNS = tuple(f.name for f in fields(Approval))
EVENT_COLUMNS = ("id", "ts", "agent_id", "workspace", "event_type", "severity", "details")
REPORT_COLUMNS = ("id", "created_at", "period_start", "period_end", "body")
CHANGE_COLUMNS = ("agent_id", "change", "actor", "reason", "old", "new", "ts", "rule")
# One row per running replica, written at start and every refresh_s (the console's replica list).
REPLICA_COLUMNS = ("replica_id", "host", "pid", "revision", "started_at", "last_seen")
PROPOSAL_DECISIONS = ("approved", "rejected", "auto_approved")
APPROVAL_DECISIONS = ("approved", "rejected")


@dataclass(frozen=True, slots=True)
class Tables:
    """The table names under one prefix (settings.table_prefix, validated as an identifier)."""
    state: str
    changes: str
    proposals: str
    approvals: str
    events: str
    reports: str
    flags: str
    replicas: str

    @classmethod
    def named(cls, prefix: str) -> Tables:
        return cls(*(f"{prefix}{n}" for n in ("agent_state", "lifecycle_changes", "proposals", "approvals",
                                               "governance_events", "governance_reports", "flags", "replicas")))


def clean(value: Any) -> Any:
    """A str without NUL (replaced by U+FFFD); anything else as it is."""
    return value.replace("\x00", "\ufffd") if isinstance(value, str) and "\x00" in value else value


def dumps(value: Any) -> str:
    """JSON text for a store column; keys sorted, NUL-free (escaped \\u0000 is refused by jsonb)."""
    return orjson.dumps(_cleaned(value), option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS).decode()


def loads(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, (str, bytes)) else value


def _cleaned(value: Any) -> Any:
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, Mapping):
        return {clean(k) if isinstance(k, str) else k: _cleaned(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_cleaned(v) for v in value]
    return value


def severities_from(min_severity: str | None) -> tuple[str, ...]:
    """The severities at or above `min_severity` (all of them for None)."""
    if min_severity is None:
        return SEVERITIES
    if min_severity not in SEVERITIES:
        raise ValueError(f"unknown severity {min_severity!r} (known: {', '.join(SEVERITIES)})")
    return SEVERITIES[SEVERITIES.index(min_severity):]


def deltas(outcome: Outcome) -> tuple[int, int, str | None, int]:
    """(errors +, violations +, same-error signature or None, compliant requests +) for one Outcome."""
    if outcome.kind == "compliant":
        return 0, 0, None, max(1, int(outcome.n))
    if outcome.kind not in ("error", "violation"):
        raise ValueError(f"unknown outcome kind {outcome.kind!r}")
    return 1, int(outcome.kind == "violation"), clean(outcome.signature) if outcome.signature else None, 0


def counted(old: AgentState | None, outcome: Outcome, window_s: float) -> AgentState:
    """The state after counting `outcome` (see LifecycleStore.count)."""
    d_err, d_viol, sig, compliant = deltas(outcome)
    ts = float(outcome.ts)
    if old is None:
        old = AgentState(agent_id=outcome.agent_id, window_start=ts)
    elif ts - old.window_start >= window_s:  # a new window: the windowed counters restart here
        old = AgentState(agent_id=old.agent_id, revoked=old.revoked, revoked_reason=old.revoked_reason,
                         tier=old.tier, maturity=old.maturity, window_start=ts,
                         consecutive_compliant=old.consecutive_compliant, updated_at=old.updated_at,
                         version=old.version)
    same = dict(old.same_errors)
    if sig is not None:
        same[sig] = same.get(sig, 0) + 1
    return AgentState(
        agent_id=old.agent_id, revoked=old.revoked, revoked_reason=old.revoked_reason, tier=old.tier,
        maturity=old.maturity, window_start=old.window_start, total_errors=old.total_errors + d_err,
        violations=old.violations + d_viol, same_errors=same,
        consecutive_compliant=old.consecutive_compliant + compliant if compliant else 0,
        budget_warned=old.budget_warned, updated_at=ts, version=old.version + 1)


def settable(new: Mapping[str, Any]) -> dict[str, Any]:
    """The AgentState fields of a change's `new`, typed as the model has them."""
    out: dict[str, Any] = {}
    for k in SETTABLE:
        if k not in new:
            continue
        v = new[k]
        if k in ("revoked", "budget_warned"):
            v = bool(v)
        elif k == "tier":
            v = None if v is None else int(v)
        elif k in ("revoked_reason", "maturity"):
            v = None if v is None else clean(str(v))
        elif k == "window_start":
            v = float(v)
        elif k == "same_errors":
            v = {clean(str(s)): int(n) for s, n in (v or {}).items()}
        else:
            v = int(v)
        out[k] = v
    return out


def applied(old: AgentState | None, change: LifecycleChange) -> AgentState:
    """The state after `change` (see LifecycleStore.apply)."""
    base = {f: getattr(old, f) for f in STATE_COLUMNS} if old else {"agent_id": change.agent_id, "version": 0}
    base |= settable(change.new)
    base["updated_at"] = float(change.ts)
    base["version"] = int(base["version"]) + 1
    return AgentState(**base)


# ---- rows (a Mapping of column -> stored value) to model objects ---------------------------

def state_from(row: Mapping[str, Any]) -> AgentState:
    return AgentState(
        agent_id=row["agent_id"], revoked=bool(row["revoked"]), revoked_reason=row["revoked_reason"],
        tier=None if row["tier"] is None else int(row["tier"]), maturity=row["maturity"],
        window_start=float(row["window_start"]), total_errors=int(row["total_errors"]),
        violations=int(row["violations"]),
        same_errors={str(k): int(v) for k, v in (loads(row["same_errors"]) or {}).items()},
        consecutive_compliant=int(row["consecutive_compliant"]), budget_warned=bool(row["budget_warned"]),
        updated_at=float(row["updated_at"]), version=int(row["version"]))


def state_values(s: AgentState) -> tuple[Any, ...]:
    """STATE_COLUMNS order; same_errors as JSON text, booleans as they are."""
    return tuple(dumps(s.same_errors) if c == "same_errors" else getattr(s, c) for c in STATE_COLUMNS)


def change_values(c: LifecycleChange) -> tuple[Any, ...]:
    return (c.agent_id, c.change, clean(c.actor), clean(c.reason), dumps(c.old), dumps(c.new), float(c.ts),
            clean(c.rule))


def change_from(row: Mapping[str, Any]) -> LifecycleChange:
    return LifecycleChange(agent_id=row["agent_id"], change=row["change"], actor=row["actor"],
                           reason=row["reason"], old=loads(row["old"]), new=loads(row["new"]),
                           ts=float(row["ts"]), rule=row["rule"])


def proposal_values(p: Proposal) -> tuple[Any, ...]:
    return tuple(clean(getattr(p, c)) for c in PROPOSAL_COLUMNS)


_FLOATS = frozenset({"created_at", "decided_at", "expires_at", "used_at"})
_INTS = frozenset({"from_tier", "to_tier"})


def _typed(c: str, v: Any) -> Any:
    # SQLite's RETURNING hands back a REAL column's whole number as an int: type it here.
    if v is None:
        return None
    return float(v) if c in _FLOATS else int(v) if c in _INTS else v


def proposal_from(row: Mapping[str, Any]) -> Proposal:
    return Proposal(**{c: _typed(c, row[c]) for c in PROPOSAL_COLUMNS})


def approval_values(a: Approval) -> tuple[Any, ...]:
    return tuple(clean(getattr(a, c)) for c in APPROVAL_COLUMNS)


def approval_from(row: Mapping[str, Any]) -> Approval:
    return Approval(**{c: _typed(c, row[c]) for c in APPROVAL_COLUMNS})


def event_values(e: GovernanceEvent) -> tuple[Any, ...]:
    return (e.id, float(e.ts), clean(e.agent_id), clean(e.workspace), clean(e.event_type), e.severity,
            dumps(e.details or {}))


def event_from(row: Mapping[str, Any]) -> GovernanceEvent:
    return GovernanceEvent(id=row["id"], ts=float(row["ts"]), event_type=row["event_type"],
                           severity=row["severity"], agent_id=row["agent_id"], workspace=row["workspace"],
                           details=loads(row["details"]))


def report_values(r: StoredReport) -> tuple[Any, ...]:
    return (r.id, float(r.created_at), float(r.period_start), float(r.period_end), dumps(r.body))


def report_from(row: Mapping[str, Any]) -> StoredReport:
    return StoredReport(id=row["id"], created_at=float(row["created_at"]),
                        period_start=float(row["period_start"]), period_end=float(row["period_end"]),
                        body=loads(row["body"]))


def replica_values(replica_id: str, host: str, pid: int, revision: str | None, started_at: float,
                   at: float) -> tuple[Any, ...]:
    return (clean(str(replica_id)), clean(str(host)), int(pid), clean(revision), float(started_at), float(at))


def replica_from(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"replica_id": row["replica_id"], "host": row["host"], "pid": int(row["pid"]),
            "revision": row["revision"], "started_at": float(row["started_at"]),
            "last_seen": float(row["last_seen"])}
