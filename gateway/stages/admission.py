"""From a decision to an admitted request: refuse a denial (or have it approved), pass the
breaker, reserve the limits."""
from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import orjson

from gateway.breaker import Breaker, Permit
from gateway.context import Exchange
from gateway.errors import ApprovalRequired, BackendError, PermissionDenied, Unavailable
from gateway.exchange import Call
from gateway.services import Services
from gateway.stages.policy import BYPASS_REVISION
from gateway.types import Decision

APPROVAL_HEADER = "x-portcullis-approval"


def allowed_outcome(d: Decision | None) -> str:
    """The audit decision of an admitted request: `bypass` when policy was not evaluated."""
    return BYPASS_REVISION if d is not None and d.revision == BYPASS_REVISION else "allow"


def approval_digest(input_digest: str, arguments: Any = None) -> str:
    """What an approval is bound to: the policy input's digest and, for a tool call, its
    arguments (the policy input has none), so approving "delete customer globex" cannot be
    spent on another customer."""
    if arguments is None:
        return input_digest
    args = hashlib.sha256(orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return hashlib.sha256(f"{input_digest}:{args}".encode()).hexdigest()


async def refuse_denied(s: Services, call: Call, code: str = "policy_denied", arguments: Any = None) -> None:
    """Raise for a denied decision. A denial that needs a human's approval (the decision's
    `approval.required`) either goes on with the approval the request presents in
    X-Portcullis-Approval (checked here, spent by reserve() once the breaker and the limits
    admit the request, so a 429 or an open breaker does not waste it; its audit reasons name
    the approval) or creates one and refuses with its id (ApprovalRequired). With the lifecycle off there is
    nobody to approve: a plain denial. Callers skip the call for an allowed decision."""
    ex = call.ex
    d = ex.decision
    assert d is not None and ex.agent is not None
    if d.allow:
        return
    lifecycle = s.lifecycle
    wanted = d.approval
    if lifecycle is None or not (wanted and wanted.get("required") is True):
        raise PermissionDenied("; ".join(d.reasons) or "denied by policy", code=code)
    bound = approval_digest(ex.input_digest or "", arguments)
    presented = call.headers.get(APPROVAL_HEADER)
    try:
        if presented is not None:
            try:  # checked now, spent in reserve() once the breaker and the limits let it through
                valid = await lifecycle.approvals.check(presented, ex.agent.id, bound)
            except PermissionDenied as e:
                ex.decision = replace(d, reasons=(*d.reasons, e.message))
                raise
            ex.approval = (valid.id, bound)
            ex.decision = replace(d, allow=True, reasons=(
                *d.reasons, f"approval {valid.id} used (approved by {valid.decided_by})"))
            return
        reason = str(wanted.get("reason") or "; ".join(d.reasons) or "this request needs an operator's approval")
        a = await lifecycle.approvals.request(ex.agent, ex.action or "", ex.resource_type, ex.resource_name,
                                              bound, reason)
    except BackendError as e:  # the store cannot say: refused, never let through
        raise Unavailable(f"approval required, but the approval store is unavailable: {e}",
                          code="approvals_unavailable") from None
    ex.decision = replace(d, reasons=(*d.reasons, f"approval {a.id} requested"))
    said = "; ".join(d.reasons) or "approval required"
    raise ApprovalRequired(f"{said} ({reason}); approval {a.id} requested: once an operator approves it, "
                           f"retry with the header X-Portcullis-Approval: {a.id}", a.id)


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
        ex.reservation = lim.reservation
        if ex.approval is not None:  # admitted on an approval: spend it now, so a 429/503 does not
            await _spend_approval(s, ex)
    except BaseException:
        permit.release()
        raise
    call.extra += call.surface.limit_headers(lim)
    ex.outcome = allowed_outcome(ex.decision)
    return permit


async def _spend_approval(s: Services, ex: Exchange) -> None:
    """Use the approval refuse_denied() checked: atomically, once across replicas (a concurrent
    request with the same id may have taken it since: then this one is refused)."""
    approval_id, bound = ex.approval
    assert s.lifecycle is not None and ex.agent is not None
    try:
        await s.lifecycle.approvals.redeem(approval_id, ex.agent.id, bound, ex.request_id)
    except PermissionDenied as e:
        kept = tuple(r for r in ex.decision.reasons if not r.startswith(f"approval {approval_id} used"))
        ex.decision = replace(ex.decision, allow=False, reasons=(*kept, e.message))
        raise
    except BackendError as e:
        raise Unavailable(f"the approval store is unavailable: {e}", code="approvals_unavailable") from None
