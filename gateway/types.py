"""Frozen value types that flow through the pipeline.

They carry no behaviour beyond trivial helpers, so every stage and adapter can
share them without importing each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True, slots=True)
class Vocabulary:
    """The tiers and maturities a policy set's data declares (contract 1).

    The gateway takes them from the loaded set and never hard-codes them. None:
    the set declares none, and the policy alone judges whatever it is given.
    """
    tiers: frozenset[int] | None = None
    maturities: tuple[str, ...] | None = None  # lowest first

    def knows_tier(self, tier: Any) -> bool:
        return self.tiers is None or (type(tier) is int and tier in self.tiers)

    def knows_maturity(self, maturity: Any) -> bool:
        return self.maturities is None or maturity in self.maturities

    def tier_names(self) -> str:
        return ", ".join(map(str, sorted(self.tiers or ())))

    def maturity_names(self) -> str:
        return ", ".join(self.maturities or ())

    def agent_problems(self, agent_id: str, tier: Any, maturity: Any) -> list[str]:
        """Why an agent's tier or maturity is outside this vocabulary, naming the agent."""
        out = []
        if not self.knows_tier(tier):
            out.append(f"agent {agent_id!r}: tier {tier} is not one of the policy's tiers {self.tier_names()}")
        if not self.knows_maturity(maturity):
            out.append(f"agent {agent_id!r}: maturity {maturity!r} is not one of the policy's "
                       f"maturities {self.maturity_names()}")
        return out


@dataclass(frozen=True, slots=True)
class Agent:
    id: str
    tier: int
    maturity: str
    workspace: str
    labels: Mapping[str, str] = field(default_factory=dict)
    revoked: bool = False


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a credential says the caller is.

    `agent` is set when the credential names one agent (a pinned API key, a JWT);
    it is None for a workspace-wide key, which then picks its agent through
    `X-Agent-Id` or the workspace default.
    """
    workspace: str
    auth: str  # api_key | jwt | anonymous
    agent: Agent | None = None
    credential_id: str = ""  # non-secret label (key id, JWT sub); never the secret


@dataclass(frozen=True, slots=True)
class Decision:
    allow: bool
    reasons: tuple[str, ...] = ()
    obligations: Mapping[str, Any] = field(default_factory=dict)
    cache_ttl_s: int = 60
    revision: str = ""
    cache_hit: bool = False
    # Contract 6: what the policy says this request means for the agent's error budget
    # ({"kind", "severity"}: a procedure violation) and whether a human must approve it
    # ({"required": true, "reason"}); None when the decision carries neither.
    violation: Mapping[str, Any] | None = None
    approval: Mapping[str, Any] | None = None

    @property
    def max_output_tokens(self) -> int | None:
        v = self.obligations.get("max_output_tokens")
        return int(v) if v is not None else None


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-agent limits taken from a decision's obligations (None = unlimited)."""
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None


@dataclass(frozen=True, slots=True)
class LimitResult:
    allowed: bool
    retry_after_s: float = 0.0
    reason: str = ""  # "requests" | "tokens" | "request_too_large" when refused
    # OpenAI-style header values, filled for whichever limits apply.
    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None
    reservation: "Reservation | None" = None


@dataclass(frozen=True, slots=True)
class Reservation:
    key: str
    tokens: int
    limits: Limits


@dataclass(slots=True)
class Usage:
    input_tokens: int | None = None
    output_tokens: int | None = None

    @property
    def total(self) -> int:
        return (self.input_tokens or 0) + (self.output_tokens or 0)


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One request's outcome, before the chain fields are attached by the writer."""
    request_id: str
    ts: float
    agent_id: str | None
    tier: int | None
    maturity: str | None
    workspace: str | None
    auth: str | None
    action: str | None
    resource_type: str | None
    resource_name: str | None
    upstream: str | None
    api: str
    stream: bool
    decision: str  # allow | deny | rate_limited | error | bypass
    reasons: tuple[str, ...]
    policy_revision: str | None
    cache_hit: bool
    status: int
    latency_ms: float
    upstream_ms: float | None
    input_tokens: int | None
    output_tokens: int | None
    client_ip: str | None
    error: str | None
    input_digest: str | None
    policy_input: Mapping[str, Any] | None
    trace_id: str | None = None  # W3C trace id (32 hex digits) when traced or sent by the client
    # policy.shadow (gateway/shadow/): the shadow set's revision on every sampled row, and its
    # decision ({"kind", "decision", "serving"}) only where it disagreed with the serving set.
    shadow_decision: Mapping[str, Any] | None = None
    shadow_revision: str | None = None
