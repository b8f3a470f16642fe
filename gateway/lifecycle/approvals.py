"""Approval-required decisions (contract 6): a request a policy wants a human to approve.

The policy answers `{"allow": false, "approval": {"required": true, "reason"}}`; the gateway
stores an Approval (`request`), refuses with its id, an operator approves or rejects it
(`decide`, from the admin API or the CLI), and the agent retries with
`X-Portcullis-Approval: <id>` (`check` when the request is decided, `redeem` once the
breaker and the limits admit it). An approval is valid once, for the same agent and
the same input digest, until `expires_at`.

Expiry counts from the approval's *creation* (`settings.approval_ttl_s`): the operator's
decision and the agent's retry both fall within that one window. It keeps the store's
contract simple (a decision does not move the deadline) and bounds how long a request may
linger before anyone acts on it.

What an approval is bound to is the digest the caller passes: the gateway's admission step
(gateway/stages/admission.py, `approval_digest`) uses the policy input's digest and, for a
tool call, its arguments too, so an approval to delete one customer cannot delete another.

Every state change is an audit row (action `approval.<requested|approved|rejected|used>`,
written through `record`) and a governance event. The store does each step atomically, so
one approval is used once across every replica.
"""
from __future__ import annotations

import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

from gateway.errors import InvalidRequest, NotFound, PermissionDenied
from gateway.lifecycle.model import Approval
from gateway.protocols import LifecycleStore
from gateway.settings_lifecycle import LifecycleSettings
from gateway.types import Agent, AuditEvent

HEADER = "x-portcullis-approval"
_ID = re.compile(r"apr_[0-9a-f]{8,64}")
_LIVE = ("pending", "approved")  # the statuses that turn into "expired" once expires_at passes


def new_approval_id() -> str:
    return "apr_" + secrets.token_hex(12)


def governance_row(action: str, actor: str, summary: str, details: Mapping[str, Any], *,
                   agent: Agent | None = None, agent_id: str | None = None,
                   resource_type: str, resource_name: str | None, ts: float) -> AuditEvent:
    """An audit row for a governance change (an approval, a switch), shaped like the
    `agent.lifecycle` rows: a new request id, api "admin", who did what in `reasons`, the
    change itself in `policy_input` (never a secret)."""
    return AuditEvent(
        request_id="req_" + secrets.token_hex(14), ts=ts,
        agent_id=agent.id if agent is not None else agent_id,
        tier=agent.tier if agent is not None else None,
        maturity=agent.maturity if agent is not None else None,
        workspace=agent.workspace if agent is not None else None,
        auth=None, action=action, resource_type=resource_type, resource_name=resource_name,
        upstream=None, api="admin", stream=False, decision="allow",
        reasons=(f"{actor}: {summary}",), policy_revision=None, cache_hit=False, status=200,
        latency_ms=0.0, upstream_ms=None, input_tokens=None, output_tokens=None, client_ip=None,
        error=None, input_digest=None, policy_input={"actor": actor, **details})


def _valid_id(approval_id: str) -> str:
    approval_id = approval_id.strip()
    if not _ID.fullmatch(approval_id):
        raise PermissionDenied(f"{HEADER} {approval_id[:80]!r} is not an approval id (apr_...)",
                               code="approval_invalid")
    return approval_id


class Approvals:
    def __init__(self, store: LifecycleStore, events: Any, settings: LifecycleSettings,
                 record: Callable[[AuditEvent], Awaitable[None]], *,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._events = events  # gateway.lifecycle.events.GovernanceEvents
        self._ttl = settings.approval_ttl_s
        self._record = record
        self._clock = clock

    async def request(self, agent: Agent, action: str, resource_type: str | None, resource_name: str | None,
                      input_digest: str, reason: str) -> Approval:
        """Store a pending approval for this request, or return the one already pending for the
        same agent and digest (an agent retrying before anyone decided gets the same id, and
        operators one entry); raises BackendError when the store cannot."""
        now = self._clock()
        for pending in await self._store.approvals("pending", agent.id):
            if pending.input_digest == input_digest and now < pending.expires_at:
                return pending
        a = Approval(id=new_approval_id(), agent_id=agent.id, action=action, resource_type=resource_type,
                     resource_name=resource_name, input_digest=input_digest, reason=reason,
                     created_at=now, expires_at=now + self._ttl)
        await self._store.add_approval(a)
        await self._changed(a, "requested", "MEDIUM", agent.id, reason, agent=agent)
        return a

    async def check(self, approval_id: str, agent_id: str, input_digest: str) -> Approval:
        """The approval, when `redeem` would accept it now (read only: nothing is spent);
        PermissionDenied(approval_invalid) saying why not otherwise."""
        approval_id = _valid_id(approval_id)
        now = self._clock()
        a = await self._store.approval(approval_id)
        if a is None or a.agent_id != agent_id or a.input_digest != input_digest or \
                self._current(a, now).status != "approved":
            raise PermissionDenied(self._why_not(a, approval_id, agent_id, input_digest, now), code="approval_invalid")
        return a

    async def redeem(self, approval_id: str, agent_id: str, input_digest: str, request_id: str) -> Approval:
        """Use an approved approval for this request, once; PermissionDenied(approval_invalid) otherwise."""
        approval_id = _valid_id(approval_id)
        now = self._clock()
        used = await self._store.use_approval(approval_id, agent_id, input_digest, now, request_id)
        if used is None:
            why = self._why_not(await self._store.approval(approval_id), approval_id, agent_id, input_digest, now)
            raise PermissionDenied(why, code="approval_invalid")
        await self._changed(used, "used", "LOW", agent_id, f"by request {request_id}",
                            extra={"used_by_request": request_id})
        return used

    async def decide(self, approval_id: str, approve: bool, actor: str, reason: str) -> Approval:
        """An operator's decision: NotFound for unknown ids, InvalidRequest(not_pending) otherwise."""
        existing = await self._store.approval(approval_id)
        if existing is None:
            raise NotFound(f"no approval {approval_id}", code="approval_not_found")
        now = self._clock()
        status = "approved" if approve else "rejected"
        decided = None
        if existing.status == "pending" and now < existing.expires_at:
            decided = await self._store.decide_approval(approval_id, status, actor, now)
        if decided is None:  # decided meanwhile (another operator, replica) or expired
            current = self._current(await self._store.approval(approval_id) or existing, now)
            raise InvalidRequest(f"approval {approval_id} is {current.status}, not pending", code="not_pending")
        await self._changed(decided, status, "LOW", actor, reason)
        return decided

    async def list(self, status: str | None = None, agent_id: str | None = None) -> list[Approval]:
        """Approvals, with those past their deadline shown as expired (the store may not say so)."""
        now = self._clock()
        # pending/approved/expired depend on the clock: ask for all and sort them out here.
        stored = await self._store.approvals(None if status in (*_LIVE, "expired") else status, agent_id)
        current = [self._current(a, now) for a in stored]
        return [a for a in current if status is None or a.status == status]

    async def get(self, approval_id: str) -> Approval:
        a = await self._store.approval(approval_id)
        if a is None:
            raise NotFound(f"no approval {approval_id}", code="approval_not_found")
        return self._current(a, self._clock())

    # ---- internals -------------------------------------------------------------

    @staticmethod
    def _current(a: Approval, now: float) -> Approval:
        return replace(a, status="expired") if a.status in _LIVE and now >= a.expires_at else a

    def _why_not(self, a: Approval | None, approval_id: str, agent_id: str, input_digest: str, now: float) -> str:
        """Why a presented approval cannot be used, said plainly (never whose it is)."""
        if a is None:
            return f"approval {approval_id} does not exist"
        if a.agent_id != agent_id:
            return f"approval {approval_id} was not issued to agent {agent_id}"
        if a.input_digest != input_digest:
            return (f"approval {approval_id} was issued for a different request ({a.action} {a.resource_name}); "
                    f"it is valid only for the same action, resource and arguments")
        a = self._current(a, now)
        if a.status == "used":
            return f"approval {approval_id} was already used (by request {a.used_by_request}); it is valid once"
        if a.status == "expired":
            return f"approval {approval_id} has expired; request a new one"
        if a.status == "pending":
            return f"approval {approval_id} is still pending: an operator has not approved it yet"
        return f"approval {approval_id} is {a.status}"

    async def _changed(self, a: Approval, change: str, severity: str, actor: str, reason: str, *,
                       agent: Agent | None = None, extra: Mapping[str, Any] | None = None) -> None:
        details = {"approval_id": a.id, "action": a.action, "resource_type": a.resource_type,
                   "resource_name": a.resource_name, "input_digest": a.input_digest, "reason": reason,
                   "change": change, **(extra or {})}
        self._events.emit(f"approval.{change}", severity, agent_id=a.agent_id,
                          workspace=agent.workspace if agent is not None else None,
                          details={**details, "actor": actor})
        summary = f"approval.{change} {a.id} for {a.action} {a.resource_name} ({reason})"
        await self._record(governance_row(f"approval.{change}", actor, summary, details, agent=agent,
                                          agent_id=a.agent_id, resource_type="approval", resource_name=a.id,
                                          ts=self._clock()))
