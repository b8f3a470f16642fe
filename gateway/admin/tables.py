"""Plain-text tables for the operator commands (`--json` prints the API's JSON instead)."""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Column = tuple[str, Callable[[Mapping[str, Any]], Any]]


def when(ts: Any) -> str:
    if not isinstance(ts, (int, float)) or ts <= 0:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    return str(value).replace("\n", " ")


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column], *, empty: str = "(none)") -> str:
    if not rows:
        return empty
    cells = [[cell(get(r)) for _, get in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (h, _) in enumerate(columns)]
    lines = ["  ".join(h.ljust(w) for (h, _), w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def pairs(record: Mapping[str, Any]) -> str:
    """One record, a `key: value` line per field (nested mappings indented)."""
    width = max((len(str(k)) for k in record), default=0)
    out = []
    for k, v in record.items():
        if isinstance(v, Mapping) and v:
            out.append(f"{k}:")
            out += ["  " + line for line in pairs(v).splitlines()]
        else:
            out.append(f"{str(k).ljust(width)}  {cell(v)}")
    return "\n".join(out)


def first(*keys: str) -> Callable[[Mapping[str, Any]], Any]:
    """A getter trying each key (dotted for nested) in turn: the first present wins."""
    def get(row: Mapping[str, Any]) -> Any:
        for key in keys:
            node: Any = row
            for part in key.split("."):
                node = node.get(part) if isinstance(node, Mapping) else None
            if node is not None:
                return node
        return None
    return get


AGENTS: list[Column] = [  # the shape of LifecycleManager.agents() (and Direct.agents())
    ("AGENT", first("id")), ("WORKSPACE", first("workspace")), ("TIER", first("tier")),
    ("MATURITY", first("maturity")), ("STATE", first("state")),
    ("ERRORS", first("counters.total_errors")), ("VIOLATIONS", first("counters.violations")),
    ("COMPLIANT", first("counters.consecutive_compliant")), ("RISK", first("risk.score")),
    ("REASON", first("revoked_reason")),
]
PROPOSALS: list[Column] = [
    ("ID", first("id")), ("AGENT", first("agent_id")), ("CREATED", lambda r: when(r.get("created_at"))),
    ("FROM", lambda r: f"T{r.get('from_tier')}/{r.get('from_maturity')}"),
    ("TO", lambda r: f"T{r.get('to_tier')}/{r.get('to_maturity')}"),
    ("STATUS", first("status")), ("BY", first("decided_by")),
]
APPROVALS: list[Column] = [
    ("ID", first("id")), ("AGENT", first("agent_id")), ("ACTION", first("action")),
    ("RESOURCE", first("resource_name")), ("STATUS", first("status")),
    ("EXPIRES", lambda r: when(r.get("expires_at"))), ("REASON", first("reason")),
]
EVENTS: list[Column] = [
    ("TIME", lambda r: when(r.get("ts"))), ("SEVERITY", first("severity")), ("TYPE", first("event_type")),
    ("AGENT", first("agent_id")), ("WORKSPACE", first("workspace")), ("DETAILS", first("details")),
]
