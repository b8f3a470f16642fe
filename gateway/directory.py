"""Read-only lookups over the agents file: agents, workspace defaults, key hashes.

Built once from a validated `AgentsFile`; the identity stage and the API-key
source share one instance. Reloading means building a new directory.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from gateway.settings import AgentsFile, KeyEntry
from gateway.types import Agent


class AgentDirectory:
    def __init__(self, agents: Mapping[str, Agent], defaults: Mapping[str, str],
                 keys: Mapping[str, KeyEntry]) -> None:
        # Read-only views: a directory is shared across requests and never mutated.
        self._agents = MappingProxyType(dict(agents))
        self._defaults = MappingProxyType(dict(defaults))
        self._keys = MappingProxyType(dict(keys))

    @classmethod
    def from_file(cls, agents: AgentsFile) -> "AgentDirectory":
        by_id = {
            a.id: Agent(id=a.id, tier=a.tier, maturity=a.maturity, workspace=a.workspace,
                        labels=MappingProxyType(dict(a.labels)), revoked=a.revoked)
            for a in agents.agents
        }
        defaults = {name: ws.default_agent for name, ws in agents.workspaces.items()
                    if ws.default_agent}
        keys: dict[str, KeyEntry] = {}
        for k in agents.keys:
            if k.sha256 in keys:
                # Two entries for one key would make its workspace ambiguous.
                raise ValueError(f"keys: {k.id!r} and {keys[k.sha256].id!r} share one key hash")
            keys[k.sha256] = k
        return cls(by_id, defaults, keys)

    def agent(self, agent_id: str) -> Agent | None:
        return self._agents.get(agent_id)

    def default_agent(self, workspace: str) -> Agent | None:
        agent_id = self._defaults.get(workspace)
        return self._agents.get(agent_id) if agent_id else None

    def key_by_hash(self, sha256_hex: str) -> KeyEntry | None:
        return self._keys.get(sha256_hex)

    def __len__(self) -> int:
        return len(self._agents)
