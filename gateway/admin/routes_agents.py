"""Agents and promotion proposals: the admin API's calls into LifecycleManager (CORE)."""
from __future__ import annotations

from typing import Any

from gateway.admin.ops import Call, Op
from gateway.admin.serialize import jsonable
from gateway.errors import InvalidRequest

PROPOSAL_STATUSES = ("pending", "approved", "rejected", "auto_approved")


async def list_agents(call: Call) -> Any:
    return {"agents": jsonable(await call.lifecycle.manager.agents())}


async def show_agent(call: Call) -> Any:
    return jsonable(await call.lifecycle.manager.agent(call.param("id")))


async def revoke(call: Call) -> Any:
    agent_id, reason = call.param("id"), call.require_reason()
    return jsonable(await call.lifecycle.manager.revoke(agent_id, call.actor, reason))


async def reinstate(call: Call) -> Any:
    agent_id, reason = call.param("id"), call.require_reason()
    return jsonable(await call.lifecycle.manager.reinstate(agent_id, call.actor, reason))


def _target(call: Call) -> dict[str, Any]:
    tier, maturity = call.body.get("tier"), call.text("maturity")
    if tier is not None and (type(tier) is not int):
        raise InvalidRequest("'tier' must be an integer", param="tier")
    return {"tier": tier, "maturity": maturity}


async def promote(call: Call) -> Any:
    agent_id, reason = call.param("id"), call.require_reason()
    return jsonable(await call.lifecycle.manager.promote(agent_id, call.actor, reason, **_target(call)))


async def demote(call: Call) -> Any:
    agent_id, reason = call.param("id"), call.require_reason()
    return jsonable(await call.lifecycle.manager.demote(agent_id, call.actor, reason, **_target(call)))


async def list_proposals(call: Call) -> Any:
    status = call.query("status")
    if status is not None and status not in PROPOSAL_STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(PROPOSAL_STATUSES)}", param="status")
    return {"proposals": jsonable(await call.lifecycle.manager.proposals(status))}


async def _decide_proposal(call: Call, approve: bool) -> Any:
    proposal_id, reason = call.param("id"), call.optional_reason()
    return jsonable(await call.lifecycle.manager.decide_proposal(proposal_id, approve, call.actor, reason))


async def approve_proposal(call: Call) -> Any:
    return await _decide_proposal(call, True)


async def reject_proposal(call: Call) -> Any:
    return await _decide_proposal(call, False)


OPS = [
    Op("agents.list", "GET", "/admin/agents", "read", list_agents, "agent"),
    Op("agents.show", "GET", "/admin/agents/{id}", "read", show_agent, "agent"),
    Op("agents.revoke", "POST", "/admin/agents/{id}/revoke", "write", revoke, "agent"),
    Op("agents.reinstate", "POST", "/admin/agents/{id}/reinstate", "write", reinstate, "agent"),
    Op("agents.promote", "POST", "/admin/agents/{id}/promote", "write", promote, "agent"),
    Op("agents.demote", "POST", "/admin/agents/{id}/demote", "write", demote, "agent"),
    Op("proposals.list", "GET", "/admin/proposals", "read", list_proposals, "proposal"),
    Op("proposals.approve", "POST", "/admin/proposals/{id}/approve", "write", approve_proposal, "proposal"),
    Op("proposals.reject", "POST", "/admin/proposals/{id}/reject", "write", reject_proposal, "proposal"),
]
