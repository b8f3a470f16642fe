"""Risk scores and the governance report of a scripted week (issue 11), against golden files.

The scenario (all times in the week of Monday 2026-01-05, UTC; one event and one audit row fall
outside it and must not count). Risk settings: the default severity weights (CRITICAL 25,
HIGH 15, MEDIUM 5, LOW 1) and category weights security 1, cost 0.5, reliability 1,
compliance 0.5. Audit rows add LOW (1): a 429 to cost, a 401 to security, a 502 to reliability.

Events (agent/workspace, category: weight):
  e1  agent.revoked CRITICAL  intern-bot/support   compliance 25
  e2  approval.requested MED  billing-bot/finance  security 5
  e3  approval.requested MED  billing-bot/finance  security 5
  e4  budget.80pct MEDIUM     intern-bot/support   reliability 5
  e5  agent.reinstated MEDIUM intern-bot/support   (no risk category)
  e6  agent.revoked HIGH      intern-bot/support   compliance 15
  e7  bypass.toggled CRITICAL (on)                 compliance 25
  e8  bypass.toggled CRITICAL (off)                compliance 25
  e9  policy.reload_rejected HIGH                  compliance 15
  e10 audit.spooling HIGH                          reliability 15
  e11 promotion.proposed LOW  research-bot         (no risk category)
  e12 admin.auth_failed MEDIUM                     security 5
  e13 agent.violation HIGH    billing-bot/finance  security 15 ("violation" in the type)
  e14 budget.80pct MEDIUM     billing-bot/finance  cost 5 (details.category overrides reliability)
  e16 agent.violation CRITICAL billing-bot/finance security 25
  e15 agent.revoked CRITICAL  billing-bot, a day BEFORE the week: ignored
Audit rows (traffic): r1, r2 allow billing-bot (openai); r3 deny intern-bot (mcp); r4, r5 deny
research-bot "tier 1 may not use model o3"; r6 rate_limited research-bot (cost 1); r7 error 502
billing-bot (reliability 1); r8 deny 401 without agent "invalid api key" (security 1); r9 bypass
billing-bot (anthropic). Not traffic: r10 agent.lifecycle, r11 admin.revoke. r12: after the week.

Hand-computed risk:
  billing-bot: security 5+5+15+25 = 50, cost 5, reliability 1, compliance 0
               -> 50*1 + 5*0.5 + 1*1 + 0 = 53.5 -> 54 (halves round up); 5 events, 1 row
  intern-bot:  compliance 25+15 = 40, reliability 5 -> 5 + 40*0.5 = 25; 4 events, 0 rows
  research-bot: cost 1 (r6) -> 0.5 -> 1; 1 event (e11), 1 row
  workspaces finance/support/research: the same as their one agent (54 / 25 / 1)
  overall: security 5+5+5+15+25 + 1 = 56, cost 5 + 1 = 6, reliability 5+15 + 1 = 21,
           compliance 25+15+25+25+15 = 105 -> capped 100;
           56 + 3 + 21 + 50 = 130 -> capped 100; 15 events, 3 rows
Traffic: 9 requests: allow 2, bypass 1, deny 4, error 1, rate_limited 1; openai 7, mcp 1,
anthropic 1. Top denial: "tier 1 may not use model o3" x2. Approvals: 2 expired unused (one
approved and never used, one expired). Recommendations: bypass was on (1 request), security
risk > 40 (billing-bot), intern-bot revoked 2 times, 2 approvals expired, 1 pending proposal.

Set PORTCULLIS_UPDATE_GOLDEN=1 to rewrite the golden files; the hand-computed assertions
below still have to hold.
"""
from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from adapters.audit.sqlite import SQLiteAuditStore
from gateway.audit.writer import AuditWriter
from gateway.lifecycle.model import (
    SYSTEM,
    Approval,
    GovernanceEvent,
    LifecycleChange,
    Proposal,
)
from gateway.lifecycle.report import audit_rows_between, build_report, render
from gateway.lifecycle.risk import category, risk_by, risk_scores
from gateway.settings_audit import AuditSettings
from gateway.settings_lifecycle import RiskSettings
from gateway.types import AuditEvent

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
START = datetime(2026, 1, 5, tzinfo=UTC).timestamp()
END = START + 7 * 86400
H = 3600.0
SETTINGS = RiskSettings(category_weights={"security": 1.0, "cost": 0.5, "reliability": 1.0, "compliance": 0.5})
B, I, R = ("billing-bot", "finance"), ("intern-bot", "support"), ("research-bot", "research")


def ev(n: int, hour: float, event_type: str, severity: str, who: tuple[str, str] | None = None,
       **details: Any) -> GovernanceEvent:
    return GovernanceEvent(id=f"evt_{n:02d}", ts=START + hour * H, event_type=event_type, severity=severity,
                           agent_id=who[0] if who else None, workspace=who[1] if who else None, details=details)


EVENTS = [
    ev(1, 10, "agent.revoked", "CRITICAL", I, rule="error_budget.max_procedure_violations"),
    ev(2, 11, "approval.requested", "MEDIUM", B, approval_id="apr_1"),
    ev(3, 12, "approval.requested", "MEDIUM", B, approval_id="apr_2"),
    ev(4, 13, "budget.80pct", "MEDIUM", I, count="total_errors"),
    ev(5, 14, "agent.reinstated", "MEDIUM", I),
    ev(6, 30, "agent.revoked", "HIGH", I),
    ev(7, 40, "bypass.toggled", "CRITICAL", None, flag="bypass", old=False, new=True, actor="alice",
       category="compliance"),
    ev(8, 41, "bypass.toggled", "CRITICAL", None, flag="bypass", old=True, new=False, actor="alice",
       category="compliance"),
    ev(9, 50, "policy.reload_rejected", "HIGH", None, error="rego_parse_error"),
    ev(10, 60, "audit.spooling", "HIGH", None, rows=12),
    ev(11, 70, "promotion.proposed", "LOW", R),
    ev(12, 80, "admin.auth_failed", "MEDIUM", None, path="/admin/agents"),
    ev(13, 90, "agent.violation", "HIGH", B, kind="forbidden_tool"),
    ev(14, 91, "budget.80pct", "MEDIUM", B, category="cost"),
    ev(15, -24, "agent.revoked", "CRITICAL", B),  # the week before: ignored
    ev(16, 92, "agent.violation", "CRITICAL", B, kind="destructive_tool"),
]


def row(n: int, hour: float, who: tuple[str, str] | None, decision: str, status: int, api: str = "openai",
        action: str = "llm.chat", reasons: tuple[str, ...] = ()) -> AuditEvent:
    return AuditEvent(request_id=f"req_{n:02d}", ts=START + hour * H, agent_id=who[0] if who else None,
                      tier=2 if who else None, maturity="intern" if who else None,
                      workspace=who[1] if who else None, auth="api_key" if who else None, action=action,
                      resource_type="model", resource_name="gpt-4o-mini", upstream="openai", api=api, stream=False,
                      decision=decision, reasons=reasons, policy_revision="rev1", cache_hit=False, status=status,
                      latency_ms=1.0, upstream_ms=None, input_tokens=None, output_tokens=None, client_ip="127.0.0.1",
                      error=None, input_digest=None, policy_input=None)


O3 = ("tier 1 may not use model o3",)
ROWS = [
    row(1, 1, B, "allow", 200), row(2, 2, B, "allow", 200),
    row(3, 9, I, "deny", 403, api="mcp", action="tool.call",
        reasons=("maturity intern below required autonomous for tool.call delete_customer",)),
    row(4, 20, R, "deny", 403, reasons=O3), row(5, 21, R, "deny", 403, reasons=O3),
    row(6, 22, R, "rate_limited", 429), row(7, 23, B, "error", 502),
    row(8, 24, None, "deny", 401, reasons=("invalid api key",)),
    row(9, 40.5, B, "bypass", 200, api="anthropic", action="llm.messages"),
    row(10, 10, I, "allow", 200, api="admin", action="agent.lifecycle"),
    row(11, 29, I, "deny", 403, api="admin", action="admin.revoke"),
    row(12, 7 * 24 + 1, B, "allow", 200),  # after the week: ignored
]


def change(hour: float, agent: str, kind: str, actor: str, reason: str, old: dict[str, Any], new: dict[str, Any],
           rule: str | None = None) -> LifecycleChange:
    return LifecycleChange(agent_id=agent, change=kind, actor=actor, reason=reason, old=old, new=new,  # type: ignore[arg-type]
                           ts=START + hour * H, rule=rule)


CHANGES = [
    change(10, "intern-bot", "revoke", SYSTEM, "error budget exceeded: 1 procedure violation "
           "(forbidden_tool delete_customer)", {"revoked": False}, {"revoked": True},
           rule="error_budget.max_procedure_violations"),
    change(14, "intern-bot", "reinstate", "alice", "retrained", {"revoked": True}, {"revoked": False}),
    change(30, "intern-bot", "revoke", "alice", "again", {"revoked": False}, {"revoked": True}),
    change(72, "research-bot", "promote", "alice", "proposal approved", {"tier": 1}, {"tier": 2}),
    change(95, "billing-bot", "demote", "bob", "violations", {"maturity": "supervised"}, {"maturity": "intern"}),
]
PROPOSALS = [
    Proposal(id="prop_1", agent_id="research-bot", created_at=START + 70 * H, from_tier=1, to_tier=2,
             from_maturity="intern", to_maturity="intern", status="approved", reason="100 compliant requests",
             decided_by="alice", decided_at=START + 72 * H),
    Proposal(id="prop_2", agent_id="billing-bot", created_at=START + 100 * H, from_tier=2, to_tier=3,
             from_maturity="supervised", to_maturity="supervised", reason="100 compliant requests"),
]


def approval(n: int, hour: float, status: str, **kw: Any) -> Approval:
    return Approval(id=f"apr_{n}", agent_id="billing-bot", action="tool.call", resource_type="tool",
                    resource_name="refund_order", input_digest="d" * 64, reason="refunds need a human",
                    created_at=START + hour * H, expires_at=START + hour * H + 900, status=status, **kw)  # type: ignore[arg-type]


APPROVALS = [
    approval(1, 11, "used", decided_by="alice", decided_at=START + 11.1 * H, used_at=START + 11.15 * H,
             used_by_request="req_x"),
    approval(2, 12, "approved", decided_by="alice", decided_at=START + 12.1 * H),  # never used: expired
    approval(3, 13, "rejected", decided_by="bob", decided_at=START + 13.1 * H),
    approval(4, 14, "expired"),
]


async def stored_rows(tmp_path: Path) -> list[dict[str, Any]]:
    """The scenario's rows written by the real audit writer into a real SQLite store, read back."""
    settings = AuditSettings(chain_id="golden", flush_interval_ms=1)
    store = SQLiteAuditStore(settings, tmp_path / "audit.db")
    await store.start()
    writer = AuditWriter(store, settings, tmp_path / "audit.spool")
    await writer.start()
    try:
        for r in ROWS:
            await writer.record(r)
    finally:
        await writer.aclose()
    try:
        return await audit_rows_between(store, START, END)
    finally:
        await store.aclose()


@pytest.fixture
async def body(tmp_path: Path) -> dict[str, Any]:
    rows = await stored_rows(tmp_path)
    return build_report(rows, EVENTS, CHANGES, PROPOSALS, APPROVALS, SETTINGS, START, END)


async def test_audit_rows_between_keeps_the_period(tmp_path: Path) -> None:
    rows = await stored_rows(tmp_path)
    assert [r["request_id"] for r in rows] == sorted((f"req_{n:02d}" for n in range(1, 12)),
                                                     key=lambda i: ROWS[int(i[4:]) - 1].ts)
    assert "req_12" not in {r["request_id"] for r in rows}


def test_hand_computed_risk() -> None:
    week = [e for e in EVENTS if START <= e.ts < END]
    rows = [{"agent_id": r.agent_id, "workspace": r.workspace, "decision": r.decision, "status": r.status,
             "ts": r.ts} for r in ROWS if r.api != "admin" and START <= r.ts < END]
    assert risk_scores(week, SETTINGS, agent_id="billing-bot", rows=rows) == {
        "score": 54, "categories": {"security": 50, "cost": 5, "reliability": 1, "compliance": 0},
        "events": 5, "rows": 1}
    assert risk_scores(week, SETTINGS, agent_id="intern-bot", rows=rows) == {
        "score": 25, "categories": {"security": 0, "cost": 0, "reliability": 5, "compliance": 40},
        "events": 4, "rows": 0}
    assert risk_scores(week, SETTINGS, workspace="research", rows=rows) == {
        "score": 1, "categories": {"security": 0, "cost": 1, "reliability": 0, "compliance": 0},
        "events": 1, "rows": 1}
    assert risk_scores(week, SETTINGS, rows=rows) == {
        "score": 100, "categories": {"security": 56, "cost": 6, "reliability": 21, "compliance": 100},
        "events": 15, "rows": 3}
    assert list(risk_by("workspace", week, SETTINGS, rows=rows)) == ["finance", "research", "support"]
    # The window [now - window_s, now]: the week's last day has no event; 8 days reach back to e15.
    assert risk_scores(EVENTS, RiskSettings(window_s=86400), now=END)["events"] == 0
    assert risk_scores(EVENTS, RiskSettings(window_s=8 * 86400), now=END)["events"] == 16


def test_categories() -> None:
    assert category(ev(1, 0, "agent.revoked", "HIGH")) == "compliance"
    assert category(ev(1, 0, "budget.80pct", "MEDIUM", category="cost")) == "cost"
    assert category(ev(1, 0, "tokens.burn_rate", "HIGH")) == "cost"
    assert category(ev(1, 0, "upstream.errors", "HIGH")) == "reliability"
    assert category(ev(1, 0, "promotion.approved", "LOW")) is None
    assert category(ev(1, 0, "agent.revoked", "HIGH", category="made-up")) == "compliance"


async def test_report_matches_the_golden_files(body: dict[str, Any]) -> None:
    t = body["traffic"]
    assert t["requests"] == 9
    assert t["by_decision"] == {"allow": 2, "bypass": 1, "deny": 4, "error": 1, "rate_limited": 1}
    assert t["by_surface"] == {"anthropic": 1, "mcp": 1, "openai": 7}
    assert {a: v["requests"] for a, v in t["by_agent"].items()} == {"(none)": 1, "billing-bot": 4, "intern-bot": 1,
                                                                   "research-bot": 3}
    assert body["lifecycle_rows"] == {"agent.lifecycle": 1, "admin": 1}
    assert body["top_denials"][0] == {"reason": O3[0], "count": 2, "agents": ["research-bot"]}
    assert [c["change"] for c in body["revocations"]] == ["revoke", "revoke"]
    assert body["approvals"]["expired_unused"] == 2
    assert body["events"]["by_severity"] == {"LOW": 1, "MEDIUM": 6, "HIGH": 4, "CRITICAL": 4}
    assert body["risk"]["overall"]["score"] == 100
    assert {a: r["score"] for a, r in body["risk"]["agents"].items()} == {"billing-bot": 54, "intern-bot": 25,
                                                                          "research-bot": 1}
    assert {w: r["score"] for w, r in body["risk"]["workspaces"].items()} == {"finance": 54, "research": 1,
                                                                              "support": 25}
    assert body["recommendations"] == [
        ("The emergency bypass was on during the period (1 request forwarded without policy): "
         "confirm it is off and review those requests."),
        "Review agents with security risk > 40: billing-bot.",
        "Agent intern-bot was revoked 2 times: review its policy or demote it.",
        "2 approvals expired unused: decide approvals sooner or review the approval TTL.",
        "1 promotion proposal is waiting for a decision.",
    ]
    text_json, text_md = render(body, "json"), render(body, "md")
    if os.environ.get("PORTCULLIS_UPDATE_GOLDEN"):
        GOLDEN.mkdir(exist_ok=True)
        (GOLDEN / "lifecycle_report.json").write_text(text_json)
        (GOLDEN / "lifecycle_report.md").write_text(text_md)
    assert json.loads((GOLDEN / "lifecycle_report.json").read_text()) == json.loads(text_json)
    assert (GOLDEN / "lifecycle_report.md").read_text() == text_md


async def test_html_is_escaped_and_self_contained(body: dict[str, Any]) -> None:
    body = json.loads(json.dumps(body))
    body["top_denials"][0]["reason"] = '<script>alert("x")</script>'
    page = render(body, "html")
    assert "<script>" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert page.startswith("<!DOCTYPE html>") and "</html>" in page
    for external in ("src=", "href=", "@import", "url("):
        assert external not in page
    with pytest.raises(ValueError):
        render(body, "pdf")


def test_recommendations_for_a_quiet_week_and_a_governance_switch() -> None:
    quiet = build_report([], [], [], [], [], SETTINGS, START, END)
    assert quiet["recommendations"] == ["No action needed."]
    assert quiet["traffic"]["requests"] == 0 and quiet["risk"]["overall"]["score"] == 0
    off = ev(1, 5, "governance.toggled", "CRITICAL", None, flag="governance.mcp", old=True, new=False)
    body = build_report([], [off], [], [], [], SETTINGS, START, END)
    assert body["recommendations"] == [("Governance was switched off for mcp during the period: "
                                       "confirm it is back on.")]
    assert body["risk"]["overall"]["categories"]["compliance"] == 25
    assert "_No agent entries._" in render(body, "md")
