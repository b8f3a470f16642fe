"""Per-request state, filled in as the request moves through the stages."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.types import Agent, AuditEvent, Decision, Principal, Reservation, Usage

if TYPE_CHECKING:
    from gateway.tracing import RequestTrace


@dataclass(slots=True)
class Exchange:
    request_id: str
    api: str
    client_ip: str | None
    t0: float = field(default_factory=time.perf_counter)
    ts: float = field(default_factory=time.time)
    agent: Agent | None = None
    principal: Principal | None = None
    action: str | None = None
    resource_type: str | None = None
    resource_name: str | None = None
    upstream: str | None = None
    stream: bool = False
    decision: Decision | None = None
    outcome: str = "error"  # allow | deny | rate_limited | error | bypass
    status: int = 500
    error: str | None = None
    upstream_ms: float | None = None
    usage: Usage = field(default_factory=Usage)
    policy_input: dict[str, Any] | None = None
    input_digest: str | None = None
    reservation: Reservation | None = None  # settled by finish() with the real usage
    trace: RequestTrace | None = None  # None unless tracing is on (gateway/tracing.py)
    trace_id: str | None = None  # this request's trace, or the client's traceparent's with tracing off

    def _reasons(self) -> tuple[str, ...]:
        # A denial is explained by the policy; anything else by what went wrong.
        if self.decision is not None and (self.outcome == "deny" or not self.error):
            return tuple(self.decision.reasons)
        return (self.error,) if self.error else ()

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.t0) * 1000.0

    def audit_event(self) -> AuditEvent:
        a, d = self.agent, self.decision
        return AuditEvent(
            request_id=self.request_id, ts=self.ts,
            agent_id=a.id if a else None, tier=a.tier if a else None,
            maturity=a.maturity if a else None, workspace=a.workspace if a else None,
            auth=self.principal.auth if self.principal else None,
            action=self.action, resource_type=self.resource_type, resource_name=self.resource_name,
            upstream=self.upstream, api=self.api, stream=self.stream,
            decision=self.outcome, reasons=self._reasons(),
            policy_revision=d.revision if d else None, cache_hit=d.cache_hit if d else False,
            status=self.status, latency_ms=self.elapsed_ms(), upstream_ms=self.upstream_ms,
            input_tokens=self.usage.input_tokens, output_tokens=self.usage.output_tokens,
            client_ip=self.client_ip, error=self.error,
            input_digest=self.input_digest, policy_input=self.policy_input, trace_id=self.trace_id,
        )
