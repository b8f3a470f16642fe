"""The lifecycle operations (contract 6) behind the admin API, the CLI and the automatic rules.

Every change takes one path: `store.apply` (atomic, with its history), an `agent.lifecycle`
audit row naming the actor and the reason, a governance event, this replica's overlay at once,
and a bus message so every other replica re-reads the agent within the second.
"""
from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from gateway.errors import BackendError, InvalidRequest, NotFound
from gateway.lifecycle.events import GovernanceEvents
from gateway.lifecycle.model import (
    SYSTEM,
    AgentState,
    GovernanceEvent,
    LifecycleChange,
    Proposal,
    StoredReport,
)
from gateway.lifecycle.overlay import Overlay
from gateway.settings_lifecycle import LifecycleSettings
from gateway.types import Agent, AuditEvent, Vocabulary

log = logging.getLogger("portcullis.lifecycle")

COUNTERS = {"total_errors": 0, "violations": 0, "same_errors": {}, "consecutive_compliant": 0,
            "budget_warned": False}


def lifecycle_row(request_id: str, ts: float, agent: Agent | None, agent_id: str, change: LifecycleChange,
                  ) -> AuditEvent:
    """The `agent.lifecycle` audit row of one change (decision allow, api admin, no secret)."""
    return AuditEvent(
        request_id=request_id, ts=ts, agent_id=agent_id, tier=agent.tier if agent else None,
        maturity=agent.maturity if agent else None, workspace=agent.workspace if agent else None,
        auth=None, action="agent.lifecycle", resource_type="agent", resource_name=agent_id, upstream=None,
        api="admin", stream=False, decision="allow",
        reasons=(f"{change.actor}: {change.change} ({change.reason})",), policy_revision=None,
        cache_hit=False, status=200, latency_ms=0.0, upstream_ms=None, input_tokens=None, output_tokens=None,
        client_ip=None, error=None, input_digest=None,
        policy_input={"actor": change.actor, "rule": change.rule, "change": change.change,
                      "old": dict(change.old), "new": dict(change.new), "reason": change.reason})


class LifecycleManager:
    def __init__(self, store: Any, bus: Any, events: GovernanceEvents, settings: LifecycleSettings,
                 record: Callable[[AuditEvent], Awaitable[None]], overlay: Overlay, *,
                 directory: Callable[[], Any], engine: Any, audit_store: Any,
                 request_ids: Callable[[], str], clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._bus = bus
        self._events = events
        self._settings = settings
        self._record = record
        self._overlay = overlay
        self._directory = directory  # () -> AgentDirectory: swapped on an agents.yaml reload
        self._engine = engine  # vocabulary (tiers, maturities) and the lifecycle rules
        self._audit_store = audit_store
        self._ids = request_ids
        self._clock = clock

    # -- reading -------------------------------------------------------------------------

    def _baseline(self, agent_id: str) -> Agent | None:
        return self._directory().agent(agent_id)

    async def _known(self, agent_id: str) -> tuple[Agent | None, AgentState | None]:
        """The baseline and state of an agent the gateway knows (agents.yaml or a stored state)."""
        agent = self._baseline(agent_id)
        state = await self._store.state(agent_id)
        if agent is None and state is None:
            raise NotFound(f"unknown agent {agent_id!r}")
        return agent, state

    async def agents(self) -> list[dict]:
        """Every agents.yaml agent (and any other with a stored state), with its state and risk."""
        from gateway.lifecycle.risk import risk_scores

        states = await self._store.states()
        now = self._clock()
        events = await self._store.events(since=now - self._settings.risk.window_s, limit=100000)
        directory = self._directory()
        ids = sorted(set(directory.agent_ids()) | set(states))
        by_agent: dict[str | None, list[Any]] = {}  # scored per agent: O(events), not O(agents x events)
        for ev in events:
            by_agent.setdefault(ev.agent_id, []).append(ev)
        return [self._view(i, directory.agent(i), states.get(i),
                           risk_scores(by_agent.get(i, ()), self._settings.risk, agent_id=i, now=now))
                for i in ids]

    async def agent(self, agent_id: str) -> dict:
        agent, state = await self._known(agent_id)
        return self._view(agent_id, agent, state, await self.risk(agent_id=agent_id))

    def _view(self, agent_id: str, agent: Agent | None, state: AgentState | None, risk: dict) -> dict:
        rules = getattr(self._engine, "lifecycle", None)
        tier = state.tier if state and state.tier is not None else (agent.tier if agent else None)
        maturity = state.maturity if state and state.maturity is not None else (agent.maturity if agent else None)
        revoked = bool(state and state.revoked) or bool(agent and agent.revoked)
        budget = rules.budget(tier) if rules is not None and tier is not None else None
        return {
            "id": agent_id,
            "workspace": agent.workspace if agent else None,
            "labels": dict(agent.labels) if agent else {},
            "baseline": {"tier": agent.tier, "maturity": agent.maturity} if agent else None,
            "tier": tier, "maturity": maturity,
            "state": "revoked" if revoked else "active",
            "revoked_reason": (state.revoked_reason if state and state.revoked else
                               "revoked in agents.yaml" if revoked else None),
            "counters": {
                "window_start": state.window_start if state else None,
                "total_errors": state.total_errors if state else 0,
                "violations": state.violations if state else 0,
                "same_errors": dict(state.same_errors) if state else {},
                "consecutive_compliant": state.consecutive_compliant if state else 0,
                "budget_warned": state.budget_warned if state else False,
            },
            "budget": ({"max_total_errors": budget.max_total_errors,
                        "max_same_error_repeats": budget.max_same_error_repeats,
                        "max_procedure_violations": budget.max_procedure_violations,
                        "window_s": budget.window_s} if budget else None),
            "version": state.version if state else 0,
            "risk": risk,
        }

    async def risk(self, agent_id: str | None = None, workspace: str | None = None) -> dict:
        from gateway.lifecycle.risk import risk_scores

        now = self._clock()
        events = await self._store.events(since=now - self._settings.risk.window_s, agent_id=agent_id,
                                          workspace=workspace, limit=100000)
        return risk_scores(events, self._settings.risk, agent_id=agent_id, workspace=workspace, now=now)

    async def events(self, since: float = 0.0, until: float | None = None, agent_id: str | None = None,
                     workspace: str | None = None, min_severity: str | None = None,
                     limit: int = 1000) -> list[GovernanceEvent]:
        return await self._store.events(since=since, until=until, agent_id=agent_id, workspace=workspace,
                                        min_severity=min_severity, limit=limit)

    # -- changes ---------------------------------------------------------------------------

    async def change(self, agent_id: str, kind: str, actor: str, reason: str, old: Mapping[str, Any],
                     new: Mapping[str, Any], *, rule: str | None = None, event: str | None = None,
                     severity: str = "MEDIUM", audit: bool = True) -> AgentState:
        """Apply one change: store, audit row, event, local overlay, bus."""
        ts = self._clock()
        change = LifecycleChange(agent_id=agent_id, change=kind, actor=actor, reason=reason,  # type: ignore[arg-type]
                                 old=dict(old), new=dict(new), ts=ts, rule=rule)
        state = await self._store.apply(change)
        self._overlay.update(agent_id, state)  # this replica at once, before the bus round trip
        baseline = self._baseline(agent_id)
        effective = _effective(baseline, state)
        if audit:
            await self._record(lifecycle_row(self._ids(), ts, effective, agent_id, change))
        if event is not None:
            self._events.emit(event, severity, agent_id=agent_id,
                              workspace=baseline.workspace if baseline else None,
                              details={"actor": actor, "rule": rule, "reason": reason,
                                       "old": dict(old), "new": dict(new)})
        try:
            await self._bus.publish({"agent_id": agent_id, "version": state.version})
        except BackendError as e:  # the other replicas' refresh_s reload is the safety net
            log.warning("publishing the change of %s failed: %s", agent_id, e)
        return state

    async def revoke(self, agent_id: str, actor: str, reason: str, *, rule: str | None = None,
                     violation: bool = False) -> AgentState:
        _, state = await self._known(agent_id) if actor != SYSTEM else (None, await self._store.state(agent_id))
        old = {"revoked": bool(state and state.revoked), "revoked_reason": state.revoked_reason if state else None}
        return await self.change(agent_id, "revoke", actor, reason, old,
                                 {"revoked": True, "revoked_reason": reason}, rule=rule,
                                 event="agent.revoked", severity="CRITICAL" if violation else "HIGH")

    async def reinstate(self, agent_id: str, actor: str, reason: str) -> AgentState:
        _, state = await self._known(agent_id)
        old = {"revoked": bool(state and state.revoked), "revoked_reason": state.revoked_reason if state else None,
               "total_errors": state.total_errors if state else 0, "violations": state.violations if state else 0}
        new = {"revoked": False, "revoked_reason": None, "window_start": self._clock(), **COUNTERS}
        return await self.change(agent_id, "reinstate", actor, reason, old, new, event="agent.reinstated")

    def _vocabulary(self) -> Vocabulary:
        return self._engine.vocabulary

    async def _move(self, kind: str, agent_id: str, actor: str, reason: str, tier: int | None,
                    maturity: str | None, rule: str | None = None) -> AgentState:
        agent, state = await self._known(agent_id)
        if tier is None and maturity is None:
            raise InvalidRequest(f"{kind} needs a tier or a maturity")
        vocab = self._vocabulary()
        if tier is not None and not vocab.knows_tier(tier):
            raise InvalidRequest(f"tier {tier} is not one of the policy's tiers {vocab.tier_names()}")
        if maturity is not None and not vocab.knows_maturity(maturity):
            raise InvalidRequest(f"maturity {maturity!r} is not one of the policy's maturities "
                                 f"{vocab.maturity_names()}")
        cur = _effective(agent, state)
        cur_tier = cur.tier if cur else (state.tier if state else None)
        cur_mat = cur.maturity if cur else (state.maturity if state else None)
        up = kind == "promote"
        steps = []
        if tier is not None and cur_tier is not None:
            steps.append((tier > cur_tier) if up else (tier < cur_tier))
            if tier != cur_tier and steps[-1] is False:
                raise InvalidRequest(f"tier {tier} is not {'higher' if up else 'lower'} than {cur_tier}")
        if maturity is not None and cur_mat is not None and vocab.maturities and cur_mat in vocab.maturities:
            a, b = vocab.maturities.index(maturity), vocab.maturities.index(cur_mat)
            steps.append(a > b if up else a < b)
            if a != b and steps[-1] is False:
                raise InvalidRequest(f"maturity {maturity} is not {'higher' if up else 'lower'} than {cur_mat}")
        if steps and not any(steps):
            raise InvalidRequest(f"agent {agent_id} is already at tier {cur_tier}, maturity {cur_mat}")
        # Only what moves: an untouched field keeps following agents.yaml.
        old = {k: v for k, v, given in (("tier", cur_tier, tier), ("maturity", cur_mat, maturity)) if given is not None}
        new = {k: v for k, v in (("tier", tier), ("maturity", maturity)) if v is not None}
        return await self.change(agent_id, kind, actor, reason, old, new, rule=rule,
                                 event="agent.promoted" if up else "agent.demoted")

    async def promote(self, agent_id: str, actor: str, reason: str, tier: int | None = None,
                      maturity: str | None = None) -> AgentState:
        return await self._move("promote", agent_id, actor, reason, tier, maturity)

    async def demote(self, agent_id: str, actor: str, reason: str, tier: int | None = None,
                     maturity: str | None = None) -> AgentState:
        return await self._move("demote", agent_id, actor, reason, tier, maturity)

    # -- proposals -------------------------------------------------------------------------

    async def proposals(self, status: str | None = None) -> list[Proposal]:
        return await self._store.proposals(status=status)

    async def propose(self, agent: Agent, to_tier: int, to_maturity: str, reason: str,
                      auto: bool) -> Proposal | None:
        """A promotion proposal (None when one is pending already); approved at once when `auto`."""
        p = Proposal(id="prop_" + secrets.token_hex(8), agent_id=agent.id, created_at=self._clock(),
                     from_tier=agent.tier, to_tier=to_tier, from_maturity=agent.maturity,
                     to_maturity=to_maturity, reason=reason)
        if not await self._store.add_proposal(p):
            return None
        self._events.emit("promotion.proposed", "LOW", agent_id=agent.id, workspace=agent.workspace,
                          details={"proposal_id": p.id, "from_tier": p.from_tier, "to_tier": to_tier,
                                   "from_maturity": p.from_maturity, "to_maturity": to_maturity, "reason": reason})
        if auto:
            return await self._decide(p.id, "auto_approved", SYSTEM, "auto_promote_max_tier allows it",
                                      rule="lifecycle.auto_promote_max_tier")
        return p

    async def decide_proposal(self, proposal_id: str, approve: bool, actor: str, reason: str) -> Proposal:
        return await self._decide(proposal_id, "approved" if approve else "rejected", actor, reason)

    async def _decide(self, proposal_id: str, status: str, actor: str, reason: str,
                      rule: str | None = None) -> Proposal:
        decided = await self._store.decide_proposal(proposal_id, status, actor, reason, self._clock())
        if decided is None:
            if await self._store.proposal(proposal_id) is None:
                raise NotFound(f"unknown proposal {proposal_id!r}")
            raise InvalidRequest(f"proposal {proposal_id} is not pending", code="not_pending")
        baseline = self._baseline(decided.agent_id)
        self._events.emit("promotion.rejected" if status == "rejected" else "promotion.approved", "LOW",
                          agent_id=decided.agent_id, workspace=baseline.workspace if baseline else None,
                          details={"proposal_id": proposal_id, "status": status, "actor": actor, "reason": reason,
                                   "to_tier": decided.to_tier, "to_maturity": decided.to_maturity})
        if status != "rejected":
            cur = _effective(baseline, await self._store.state(decided.agent_id))
            was = {"tier": cur.tier if cur else decided.from_tier,
                   "maturity": cur.maturity if cur else decided.from_maturity}
            new = {k: v for k, v in (("tier", decided.to_tier), ("maturity", decided.to_maturity)) if v != was[k]}
            old = {k: was[k] for k in new}
            await self.change(decided.agent_id, "promote", actor, f"proposal {proposal_id} {status}: {reason}",
                              old, new, rule=rule, event="agent.promoted")
        return decided

    # -- reports ---------------------------------------------------------------------------

    async def make_report(self, period_s: float, actor: str) -> StoredReport:
        from gateway.lifecycle.report import audit_rows_between, build_report

        end = self._clock()
        start = end - period_s
        rows = await audit_rows_between(self._audit_store, start, end)
        events = await self._store.events(since=start, until=end, limit=1000000)
        changes = await self._store.changes(since=start, limit=100000)
        proposals = [p for p in await self._store.proposals() if p.created_at >= start]
        approvals = [a for a in await self._store.approvals() if a.created_at >= start]
        body = dict(build_report(rows, events, changes, proposals, approvals, self._settings.risk, start, end))
        body.setdefault("generated_by", actor)
        report = StoredReport(id="rep_" + secrets.token_hex(8), created_at=end, period_start=start,
                              period_end=end, body=body)
        await self._store.add_report(report)
        return report

    async def reports(self, limit: int = 20) -> list[StoredReport]:
        return await self._store.reports(limit=limit)

    async def stored_report(self, report_id: str) -> StoredReport:
        report = await self._store.report(report_id)
        if report is None:
            raise NotFound(f"unknown report {report_id!r}")
        return report


def _effective(agent: Agent | None, state: AgentState | None) -> Agent | None:
    """The baseline with the state's tier/maturity overrides (None for an agent not in agents.yaml)."""
    if agent is None:
        return None
    if state is None or (state.tier is None and state.maturity is None):
        return agent
    from dataclasses import replace
    return replace(agent, tier=state.tier if state.tier is not None else agent.tier,
                   maturity=state.maturity if state.maturity is not None else agent.maturity)
