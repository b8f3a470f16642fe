"""From a decision to an admitted request: refuse a denial, reserve the limits."""
from __future__ import annotations

from gateway.errors import PermissionDenied
from gateway.exchange import Call
from gateway.services import Services


def refuse_denied(call: Call, code: str = "policy_denied") -> None:
    d = call.ex.decision
    assert d is not None
    if not d.allow:
        raise PermissionDenied("; ".join(d.reasons) or "denied by policy", code=code)


async def reserve(s: Services, call: Call, tokens: int) -> None:
    """Reserve the decision's limits (RateLimited when over them); the request is then allowed."""
    ex = call.ex
    assert ex.agent is not None and ex.decision is not None
    lim = await s.limits.reserve(ex.agent.id, ex.decision, tokens)
    ex.reservation = lim.reservation
    call.extra += call.surface.limit_headers(lim)
    ex.outcome = "allow"
