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
    tool_error: bool = False  # a tool answered with isError: true (counts against the error budget)
    approval: tuple[str, str] | None = None  # (approval id, bound digest) spent once admitted (admission.py)
    # The row as journaled before the last body chunk (gateway/exchange.py `journaled`), and the
    # decision it was built from: reused by finish() when only the timings changed since.
    sealed: AuditEvent | None = None
    sealed_decision: Decision | None = None

    def _reasons(self) -> tuple[str, ...]:
        # A denial is explained by the policy; anything else by what went wrong.
        if self.decision is not None and (self.outcome == "deny" or not self.error):
            return tuple(self.decision.reasons)
        return (self.error,) if self.error else ()

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.t0) * 1000.0

    def seal(self) -> AuditEvent:
        """The row as it stands now (before the response's last chunk), kept for final_event()."""
        ev = self.sealed = self.audit_event()
        self.sealed_decision = self.decision
        return ev

    def final_event(self) -> AuditEvent:
        """The row for the audit queue: the sealed one with the final timings when nothing else it
        records has changed since (the common case), else built afresh.

        The sealed event is updated in place although AuditEvent is frozen: nothing else holds it
        (the journal kept only its bytes), and building the 27-field event again cost ~3 µs a request.
        """
        ev, u = self.sealed, self.usage
        if ev is None or self.decision is not self.sealed_decision or ev.decision != self.outcome \
                or ev.status != self.status or ev.error != self.error or ev.input_tokens != u.input_tokens \
                or ev.output_tokens != u.output_tokens or ev.action != self.action \
                or ev.resource_name != self.resource_name or ev.stream != self.stream:
            return self.audit_event()
        object.__setattr__(ev, "latency_ms", self.elapsed_ms())
        object.__setattr__(ev, "upstream_ms", self.upstream_ms)
        return ev

    def audit_event(self) -> AuditEvent:
        # Positional, in AuditEvent's field order (tests/unit/test_hot_path.py checks it against
        # the keyword form): 27 keywords cost ~1.4 µs more a request.
        a, d, u = self.agent, self.decision, self.usage
        return AuditEvent(
            self.request_id, self.ts,
            a.id if a else None, a.tier if a else None, a.maturity if a else None, a.workspace if a else None,
            self.principal.auth if self.principal else None,
            self.action, self.resource_type, self.resource_name, self.upstream, self.api, self.stream,
            self.outcome, self._reasons(), d.revision if d else None, d.cache_hit if d else False,
            self.status, self.elapsed_ms(), self.upstream_ms, u.input_tokens, u.output_tokens,
            self.client_ip, self.error, self.input_digest, self.policy_input, self.trace_id,
        )
