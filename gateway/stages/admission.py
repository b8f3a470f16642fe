"""From a decision to an admitted request: refuse a denial, pass the breaker, reserve the limits."""
from __future__ import annotations

from gateway.breaker import Breaker, Permit
from gateway.errors import PermissionDenied
from gateway.exchange import Call
from gateway.services import Services


def refuse_denied(call: Call, code: str = "policy_denied") -> None:
    d = call.ex.decision
    assert d is not None
    if not d.allow:
        raise PermissionDenied("; ".join(d.reasons) or "denied by policy", code=code)


async def reserve(s: Services, call: Call, tokens: int, breaker: Breaker) -> Permit:
    """Pass the target's circuit breaker (CircuitOpen), then reserve the decision's limits
    (RateLimited); the request is then allowed, and the permit must be settled with its call.

    The breaker comes first: a request an open breaker refuses spends none of the agent's
    requests or tokens (a limiter cannot hand a request back), and a half-open probe slot
    taken by a request the limiter refuses is released for the next one.
    """
    ex = call.ex
    assert ex.agent is not None and ex.decision is not None
    permit = breaker.enter()
    try:
        if ex.trace is None:
            lim = await s.limits.reserve(ex.agent.id, ex.decision, tokens)
        else:
            with ex.trace.child("limits"):
                lim = await s.limits.reserve(ex.agent.id, ex.decision, tokens)
    except BaseException:
        permit.release()
        raise
    ex.reservation = lim.reservation
    call.extra += call.surface.limit_headers(lim)
    ex.outcome = "allow"
    return permit
