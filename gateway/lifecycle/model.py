"""Value types of the agent lifecycle, shared by the stores (adapters/lifecycle), the manager,
the admin API and the reports. Frozen and free of behaviour, like gateway/types.py."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Severity = Literal["LOW", "MEDIUM", "HIGH", "CRITICAL"]
SEVERITIES: tuple[str, ...] = ("LOW", "MEDIUM", "HIGH", "CRITICAL")  # lowest first

SYSTEM = "system"  # the actor of automatic changes (the rule that fired is named beside it)


@dataclass(frozen=True, slots=True)
class AgentState:
    """One agent's overlay on its agents.yaml baseline. Absent from the store = no overlay."""
    agent_id: str
    revoked: bool = False
    revoked_reason: str | None = None
    tier: int | None = None  # promoted/demoted tier; None: the baseline's (or the JWT claim's)
    maturity: str | None = None  # promoted/demoted maturity; None: the baseline's
    window_start: float = 0.0  # epoch seconds the error window opened; counters reset after window_s
    total_errors: int = 0  # errors (violations included) in the window
    violations: int = 0  # procedure violations in the window
    same_errors: Mapping[str, int] = field(default_factory=dict)  # error signature -> count in the window
    consecutive_compliant: int = 0  # compliant requests since the last error (never windowed)
    budget_warned: bool = False  # the 80%-consumed event was emitted for this window
    updated_at: float = 0.0
    version: int = 0  # bumped by every write; the bus message carries it


@dataclass(frozen=True, slots=True)
class Outcome:
    """One finished request as the error budget sees it, classified on the request path (cheap)
    and counted off it. kind: "compliant" | "error" | "violation"; requests that say nothing
    about the agent's conduct (a 503 of ours, a client disconnect) produce no Outcome."""
    agent_id: str
    ts: float
    kind: Literal["compliant", "error", "violation"]
    signature: str | None = None  # same-error key, e.g. "deny:tier 1 may not use model o3" / "upstream:400"
    detail: str | None = None  # for reasons: "forbidden_tool delete_customer"
    severity: Severity | None = None  # of a violation
    request_id: str | None = None
    # Compliant outcomes of one agent are coalesced before counting (one store write for a
    # burst of good requests): n of them, counted as one step.
    n: int = 1


@dataclass(frozen=True, slots=True)
class LifecycleChange:
    """One audited change of an agent's state (also its `agent.lifecycle` audit row)."""
    agent_id: str
    change: Literal["revoke", "reinstate", "promote", "demote", "reset"]
    actor: str  # the operator (admin token name) or SYSTEM
    reason: str
    old: Mapping[str, Any]  # the fields that change, before
    new: Mapping[str, Any]  # and after
    ts: float
    rule: str | None = None  # for SYSTEM: the rule that fired, e.g. "error_budget.max_procedure_violations"


@dataclass(frozen=True, slots=True)
class GovernanceEvent:
    id: str
    ts: float
    event_type: str  # agent.revoked, agent.reinstated, promotion.proposed, approval.requested, budget.80pct, ...
    severity: Severity
    agent_id: str | None = None
    workspace: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Proposal:
    """A promotion proposal (or an operator's record of one)."""
    id: str
    agent_id: str
    created_at: float
    from_tier: int
    to_tier: int
    from_maturity: str
    to_maturity: str
    status: Literal["pending", "approved", "rejected", "auto_approved"] = "pending"
    reason: str = ""
    decided_by: str | None = None
    decided_at: float | None = None


@dataclass(frozen=True, slots=True)
class Approval:
    """A request a policy said needs a human's approval; usable once, by the same agent for the
    same input digest, before expires_at, once approved."""
    id: str
    agent_id: str
    action: str
    resource_type: str | None
    resource_name: str | None
    input_digest: str
    reason: str
    created_at: float
    expires_at: float
    status: Literal["pending", "approved", "rejected", "used", "expired"] = "pending"
    decided_by: str | None = None
    decided_at: float | None = None
    used_at: float | None = None
    used_by_request: str | None = None


@dataclass(frozen=True, slots=True)
class StoredReport:
    id: str
    created_at: float
    period_start: float
    period_end: float
    body: Mapping[str, Any]  # the report as JSON (the md/html renderings are made from it)


@dataclass(frozen=True, slots=True)
class Budget:
    """One tier's error budget (data.json `lifecycle.error_budgets`). A count reaching its max
    revokes the agent: max_procedure_violations 1 means the first violation revokes."""
    max_total_errors: int = 8
    max_same_error_repeats: int = 2
    max_procedure_violations: int = 1
    window_s: float = 86400.0


@dataclass(frozen=True, slots=True)
class LifecycleRules:
    """The lifecycle thresholds of the loaded policy set (`data.portcullis.config.lifecycle`),
    parsed by gateway/lifecycle/rules.py; the engines expose them as `engine.lifecycle`."""
    budgets: Mapping[int, Budget] = field(default_factory=dict)  # per tier; absent tier: Budget()
    consecutive_compliant_for_promotion: Mapping[int, int] = field(default_factory=dict)  # tier -> N; absent: never
    auto_promote_max_tier: int | None = None  # proposals up to this tier are approved automatically; T4 never
    # Every Nth consecutive 429 counts as one error (signature "rate_limited"): an agent that ignores
    # Retry-After burns its budget, one the SDK's own retries hit now and then does not; 0: never.
    rate_limited_errors_after: int = 10
    budget_warn_fraction: float = 0.8  # a governance event when a count reaches this share of its max

    def budget(self, tier: int) -> Budget:
        return self.budgets.get(tier) or Budget()
