"""The governance report (issue 11, `portcullis report`): built from audit rows, governance
events, lifecycle changes, proposals and approvals of one period; pure functions but the last.

The body is plain JSON (stored in `governance_reports`); `render()` makes Markdown or a
self-contained HTML page from it, so every format says the same thing.
"""
from __future__ import annotations

import html
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from gateway.lifecycle.model import (
    SEVERITIES,
    Approval,
    GovernanceEvent,
    LifecycleChange,
    Proposal,
)
from gateway.lifecycle.risk import CATEGORIES, risk_by, risk_scores, row_ts
from gateway.protocols import AuditStore
from gateway.settings_lifecycle import RiskSettings

REVIEW_ABOVE = 40  # a category score above this names the agent in a recommendation
TOP_DENIALS = 10
NONE = "(none)"  # the agent or workspace of a row refused before identity


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _lifecycle_row(row: Mapping[str, Any]) -> bool:
    # Governance rows (lifecycle changes, approvals, switches, admin calls) all have api "admin".
    action = str(row.get("action") or "")
    return row.get("api") == "admin" or action == "agent.lifecycle" or action.startswith("admin.")


def _count(values: Sequence[Any]) -> dict[str, int]:
    return dict(sorted(Counter(str(v) if v is not None else NONE for v in values).items()))


def _traffic(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    def by(key: str) -> dict[str, Any]:
        groups: dict[str, list[str]] = {}
        for r in rows:
            groups.setdefault(str(r.get(key) or NONE), []).append(str(r.get("decision")))
        return {k: {"requests": len(v), "by_decision": _count(v)} for k, v in sorted(groups.items())}

    return {"requests": len(rows), "by_decision": _count([r.get("decision") for r in rows]),
            "by_surface": _count([r.get("api") for r in rows]), "by_agent": by("agent_id"),
            "by_workspace": by("workspace")}


def _top_denials(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    counts: Counter[str] = Counter()
    agents: dict[str, set[str]] = {}
    for r in rows:
        if r.get("decision") != "deny":
            continue
        for reason in r.get("reasons") or ["(no reason)"]:
            counts[str(reason)] += 1
            agents.setdefault(str(reason), set()).add(str(r.get("agent_id") or NONE))
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_DENIALS]
    return [{"reason": k, "count": n, "agents": sorted(agents[k])} for k, n in top]


def _change(c: LifecycleChange) -> dict[str, Any]:
    return {"ts": iso(c.ts), "agent_id": c.agent_id, "change": c.change, "actor": c.actor, "rule": c.rule,
            "reason": c.reason, "old": dict(c.old), "new": dict(c.new)}


def _proposal(p: Proposal) -> dict[str, Any]:
    return {"id": p.id, "agent_id": p.agent_id, "created": iso(p.created_at), "status": p.status,
            "from": f"T{p.from_tier} {p.from_maturity}", "to": f"T{p.to_tier} {p.to_maturity}",
            "decided_by": p.decided_by, "decided": iso(p.decided_at)}


def _expired_unused(a: Approval, end: float) -> bool:
    return a.status == "expired" or (a.status in ("pending", "approved") and a.expires_at <= end)


def _approval(a: Approval, end: float) -> dict[str, Any]:
    return {"id": a.id, "agent_id": a.agent_id, "action": a.action,
            "resource": f"{a.resource_type or '-'}:{a.resource_name or '-'}", "created": iso(a.created_at),
            "status": "expired" if _expired_unused(a, end) else a.status, "decided_by": a.decided_by,
            "reason": a.reason}


def _n(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _recommendations(body: Mapping[str, Any], bypass_on: bool, bypass_rows: int, governance_off: list[str],
                     revoked: Counter[str], expired: int) -> list[str]:
    out: list[str] = []
    agents = body["risk"]["agents"]

    def above(cat: str) -> list[str]:
        return [a for a, r in agents.items() if r["categories"][cat] > REVIEW_ABOVE]

    if bypass_on or bypass_rows:
        out.append(f"The emergency bypass was on during the period ({_n(bypass_rows, 'request')} forwarded "
                   "without policy): confirm it is off and review those requests.")
    if governance_off:
        out.append(f"Governance was switched off for {', '.join(governance_off)} during the period: "
                   "confirm it is back on.")
    if sec := above("security"):
        out.append(f"Review agents with security risk > {REVIEW_ABOVE}: {', '.join(sec)}.")
    for agent, n in sorted(revoked.items()):
        if n > 1:
            out.append(f"Agent {agent} was revoked {n} times: review its policy or demote it.")
    if expired:
        out.append(f"{_n(expired, 'approval')} expired unused: "
                   "decide approvals sooner or review the approval TTL.")
    if cost := above("cost"):
        out.append(f"Agents with cost risk > {REVIEW_ABOVE} (token burn, rate limiting): {', '.join(cost)}; "
                   "review their limits.")
    if rel := above("reliability"):
        out.append(f"Agents with reliability risk > {REVIEW_ABOVE}: {', '.join(rel)}; check their upstreams.")
    pending = body["promotions"]["by_status"].get("pending", 0)
    if pending:
        out.append(f"{pending} promotion proposal{'s are' if pending != 1 else ' is'} waiting for a decision.")
    return out or ["No action needed."]


def build_report(rows: Sequence[Mapping[str, Any]], events: Sequence[GovernanceEvent],
                 changes: Sequence[LifecycleChange], proposals: Sequence[Proposal], approvals: Sequence[Approval],
                 settings: RiskSettings, period_start: float, period_end: float) -> dict[str, Any]:
    """The report body for [period_start, period_end); items outside the period are ignored."""
    def inside(ts: float | None) -> bool:
        return ts is not None and period_start <= ts < period_end

    rows = [r for r in rows if inside(row_ts(r))]
    traffic = [r for r in rows if not _lifecycle_row(r)]
    events = sorted((e for e in events if inside(e.ts)), key=lambda e: (e.ts, e.id))
    changes = sorted((c for c in changes if inside(c.ts)), key=lambda c: (c.ts, c.agent_id))
    proposals = sorted((p for p in proposals if inside(p.created_at) or inside(p.decided_at)),
                       key=lambda p: (p.created_at, p.id))
    approvals = sorted((a for a in approvals if inside(a.created_at) or inside(a.decided_at) or inside(a.used_at)
                        or (a.status != "used" and inside(a.expires_at))), key=lambda a: (a.created_at, a.id))
    revocations = [c for c in changes if c.change == "revoke"]
    expired = sum(1 for a in approvals if _expired_unused(a, period_end))
    # switches.py emits {"flag", "old", "new", ...}; "enabled" is accepted too.
    bypass_on = any(e.event_type == "bypass.toggled" and e.details.get("new", e.details.get("enabled")) is True
                    for e in events)
    governance_off = sorted({str(e.details.get("flag", "")).removeprefix("governance.") for e in events
                             if e.event_type == "governance.toggled" and e.details.get("new") is False})
    bypass_rows = sum(1 for r in traffic if r.get("decision") == "bypass")
    lifecycle_rows = [r for r in rows if _lifecycle_row(r)]
    body: dict[str, Any] = {
        "kind": "portcullis.governance_report",
        "version": 1,
        "period": {"start": iso(period_start), "end": iso(period_end), "start_ts": period_start,
                   "end_ts": period_end, "days": round((period_end - period_start) / 86400, 2)},
        "traffic": _traffic(traffic),
        "lifecycle_rows": {"agent.lifecycle": sum(1 for r in lifecycle_rows if r.get("action") == "agent.lifecycle"),
                           "admin": sum(1 for r in lifecycle_rows if r.get("action") != "agent.lifecycle")},
        "top_denials": _top_denials(traffic),
        "revocations": [_change(c) for c in revocations],
        "reinstatements": [_change(c) for c in changes if c.change == "reinstate"],
        "promotions": {"changes": [_change(c) for c in changes if c.change in ("promote", "demote")],
                       "proposals": [_proposal(p) for p in proposals],
                       "by_status": _count([p.status for p in proposals])},
        "approvals": {"by_status": _count([_approval(a, period_end)["status"] for a in approvals]),
                      "expired_unused": expired, "items": [_approval(a, period_end) for a in approvals]},
        "events": {"total": len(events),
                   "by_severity": {s: sum(1 for e in events if e.severity == s) for s in SEVERITIES},
                   "by_type": _count([e.event_type for e in events])},
        "risk": {"overall": risk_scores(events, settings, rows=traffic),
                 "agents": risk_by("agent_id", events, settings, rows=traffic),
                 "workspaces": risk_by("workspace", events, settings, rows=traffic)},
    }
    body["recommendations"] = _recommendations(body, bypass_on, bypass_rows, governance_off,
                                               Counter(c.agent_id for c in revocations), expired)
    return body


async def audit_rows_between(store: AuditStore, start: float, end: float) -> list[dict[str, Any]]:
    """The audit rows with start <= ts < end, oldest first.

    Known gap: this scans every chain in full (O(rows in the store)); the stores have a ts index
    that a ranged read could use once the AuditStore protocol offers one.
    """
    out = [row async for row in store.iter_chain(None) if start <= row_ts(row) < end]
    out.sort(key=row_ts)
    return out


# ---- rendering ------------------------------------------------------------------------------

def render(body: Mapping[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(body, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    if fmt == "md":
        return "\n".join(_blocks_md(_blocks(body))) + "\n"
    if fmt == "html":
        return _html(body)
    raise ValueError(f"unknown report format {fmt!r} (md, json, html)")


Block = tuple[str, Any]  # ("h1"|"h2"|"p", text) | ("ul", [text]) | ("table", (header, rows))


def _blocks(b: Mapping[str, Any]) -> list[Block]:
    """The report as a format-neutral list of blocks, rendered by _blocks_md and _html alike."""
    t, risk = b["traffic"], b["risk"]
    out: list[Block] = [
        ("h1", "Portcullis governance report"),
        ("p", f"Period: {b['period']['start']} to {b['period']['end']} ({b['period']['days']} days)."),
        ("h2", "Recommendations"), ("ul", list(b["recommendations"])),
        ("h2", "Traffic"),
        ("p", f"{t['requests']} requests; {sum(b['lifecycle_rows'].values())} lifecycle and admin rows."),
        ("table", (["decision", "requests"], [[k, v] for k, v in t["by_decision"].items()])),
        ("table", (["surface", "requests"], [[k, v] for k, v in t["by_surface"].items()])),
        ("table", (["agent", "requests", "decisions"], [[k, v["requests"], _kv(v["by_decision"])]
                                                        for k, v in t["by_agent"].items()])),
        ("table", (["workspace", "requests", "decisions"], [[k, v["requests"], _kv(v["by_decision"])]
                                                            for k, v in t["by_workspace"].items()])),
        ("h2", "Top denials"),
        ("table", (["count", "reason", "agents"], [[d["count"], d["reason"], ", ".join(d["agents"])]
                                                   for d in b["top_denials"]])),
        ("h2", "Risk"),
        ("p", f"Overall score {risk['overall']['score']} ({_kv(risk['overall']['categories'])})."),
        ("table", (["agent", "score", *CATEGORIES], [[a, r["score"], *(r["categories"][c] for c in CATEGORIES)]
                                                     for a, r in risk["agents"].items()])),
        ("table", (["workspace", "score", *CATEGORIES],
                   [[w, r["score"], *(r["categories"][c] for c in CATEGORIES)]
                    for w, r in risk["workspaces"].items()])),
        ("h2", "Revocations and reinstatements"),
        ("table", (["when", "agent", "change", "actor", "reason"],
                   [[c["ts"], c["agent_id"], c["change"], c["actor"], c["reason"]]
                    for c in sorted(b["revocations"] + b["reinstatements"], key=lambda c: c["ts"])])),
        ("h2", "Promotions"),
        ("table", (["when", "agent", "change", "actor", "from", "to"],
                   [[c["ts"], c["agent_id"], c["change"], c["actor"], _kv(c["old"]), _kv(c["new"])]
                    for c in b["promotions"]["changes"]])),
        ("table", (["proposal", "agent", "from", "to", "status", "decided by"],
                   [[p["id"], p["agent_id"], p["from"], p["to"], p["status"], p["decided_by"] or "-"]
                    for p in b["promotions"]["proposals"]])),
        ("h2", "Approvals"),
        ("p", f"{_kv(b['approvals']['by_status']) or 'none'}; {b['approvals']['expired_unused']} expired unused."),
        ("table", (["approval", "agent", "action", "resource", "status", "decided by"],
                   [[a["id"], a["agent_id"], a["action"], a["resource"], a["status"], a["decided_by"] or "-"]
                    for a in b["approvals"]["items"]])),
        ("h2", "Governance events"),
        ("p", f"{b['events']['total']} events ({_kv(b['events']['by_severity'])})."),
        ("table", (["event type", "count"], [[k, v] for k, v in b["events"]["by_type"].items()])),
    ]
    return out


def _kv(m: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in m.items())


def _cell_md(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def _blocks_md(blocks: list[Block]) -> list[str]:
    lines: list[str] = []
    for kind, v in blocks:
        if kind in ("h1", "h2"):
            lines += [("# " if kind == "h1" else "## ") + v, ""]
        elif kind == "p":
            lines += [v, ""]
        elif kind == "ul":
            lines += [f"- {x}" for x in v] + [""]
        elif kind == "table":
            header, rows = v
            if not rows:
                lines += [f"_No {header[0]} entries._", ""]
                continue
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "|".join("---" for _ in header) + "|")
            lines += ["| " + " | ".join(_cell_md(c) for c in r) + " |" for r in rows]
            lines.append("")
    while lines and not lines[-1]:
        lines.pop()
    return lines


_CSS = ("body{font-family:system-ui,sans-serif;margin:2rem;color:#222}table{border-collapse:collapse;"
        "margin:.5rem 0 1rem}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}"
        "th{background:#f3f3f3}")


def _html(body: Mapping[str, Any]) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>Portcullis governance report</title>", f"<style>{_CSS}</style></head><body>"]
    for kind, v in _blocks(body):
        if kind in ("h1", "h2", "p"):
            parts.append(f"<{kind}>{e(str(v))}</{kind}>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{e(str(x))}</li>" for x in v) + "</ul>")
        elif kind == "table":
            header, rows = v
            if not rows:
                parts.append(f"<p><em>No {e(header[0])} entries.</em></p>")
                continue
            parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>"
                         + "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows)
                         + "</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
