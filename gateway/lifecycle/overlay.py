"""The agent-state overlay every request consults (contract 6): revoked ids and tier/maturity
overrides, held in memory and refreshed from the store, so the identity stage pays a dict
lookup and no I/O.

The store is the source of truth. The bus says "agent X changed" and the runtime re-reads
that agent's state; a full reload runs on bus reconnect and every `refresh_s`, the bound on a
lost message. Versions only move forward: a state older than the one held is ignored, so a
slow full reload cannot undo a newer revocation that arrived over the bus meanwhile.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from gateway.errors import AgentRevoked
from gateway.types import Agent, Vocabulary

Override = tuple["int | None", "str | None"]  # (tier, maturity); None: the baseline's


class Overlay:
    def __init__(self, vocabulary: Callable[[], Vocabulary] | None = None) -> None:
        self.revoked: dict[str, str] = {}  # agent id -> reason
        self.overrides: dict[str, Override] = {}  # agent id -> (tier, maturity)
        self.active = False  # anything revoked or overridden: the identity stage's one check
        self._versions: dict[str, int] = {}
        self._vocabulary = vocabulary or Vocabulary
        # agent id -> (the agent it was made from, the override, the replaced agent): no
        # allocation per request; a new source agent (agents.yaml reload, a JWT) rebuilds it.
        self._replaced: dict[str, tuple[Agent, Override, bool, Agent]] = {}

    # -- the request path --------------------------------------------------------------

    def apply(self, agent: Agent, jwt: bool = False) -> Agent:
        """The agent as its state has it; AgentRevoked when revoked. Only called when `active`."""
        reason = self.revoked.get(agent.id)
        if reason is not None:
            raise AgentRevoked(f"agent {agent.id} is revoked: {reason}")
        override = self.overrides.get(agent.id)
        if override is None:
            return agent
        cached = self._replaced.get(agent.id)
        if cached is not None and cached[0] is agent and cached[1] == override and cached[2] == jwt:
            return cached[3]
        replaced = self._replace(agent, override, jwt)
        self._replaced[agent.id] = (agent, override, jwt, replaced)
        return replaced

    def _replace(self, agent: Agent, override: Override, jwt: bool) -> Agent:
        tier, maturity = override
        if jwt:
            # A token's claims are capped by the state: a demoted agent cannot present an old
            # token to get its tier back, and a promotion does not raise what a token says.
            tier = agent.tier if tier is None else min(agent.tier, tier)
            maturity = self._lower_maturity(agent.maturity, maturity)
        changes: dict[str, Any] = {}
        if tier is not None and tier != agent.tier:
            changes["tier"] = tier
        if maturity is not None and maturity != agent.maturity:
            changes["maturity"] = maturity
        return dataclasses.replace(agent, **changes) if changes else agent

    def _lower_maturity(self, claim: str, state: str | None) -> str:
        if state is None:
            return claim
        order = self._vocabulary().maturities
        if order is None or claim not in order or state not in order:
            return state
        return claim if order.index(claim) <= order.index(state) else state

    # -- updates (off the request path) ----------------------------------------------------

    def update(self, agent_id: str, state: Any | None) -> bool:
        """Take one agent's stored state (None: no overlay); False when it is older than held."""
        version = getattr(state, "version", 0) if state is not None else 0
        if state is not None and version < self._versions.get(agent_id, -1):
            return False
        self._set(agent_id, state)
        if state is not None:
            self._versions[agent_id] = version
        self._recompute()
        return True

    def load(self, states: Mapping[str, Any]) -> None:
        """Take a full snapshot of the store: agents absent from it have no overlay."""
        for agent_id in list(self.revoked.keys() | self.overrides.keys()):
            if agent_id not in states:
                self._set(agent_id, None)
        for agent_id, state in states.items():
            if state.version >= self._versions.get(agent_id, -1):
                self._set(agent_id, state)
                self._versions[agent_id] = state.version
        self._recompute()

    def _set(self, agent_id: str, state: Any | None) -> None:
        if state is not None and state.revoked:
            self.revoked[agent_id] = state.revoked_reason or "revoked"
        else:
            self.revoked.pop(agent_id, None)
        if state is not None and (state.tier is not None or state.maturity is not None):
            self.overrides[agent_id] = (state.tier, state.maturity)
        else:
            self.overrides.pop(agent_id, None)
            self._replaced.pop(agent_id, None)

    def _recompute(self) -> None:
        self.active = bool(self.revoked or self.overrides)

    def override(self, agent_id: str) -> Override | None:
        return self.overrides.get(agent_id)

    def version(self, agent_id: str) -> int:
        """The version of the agent's state held (-1: none)."""
        return self._versions.get(agent_id, -1)
