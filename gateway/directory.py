"""Read-only lookups over the agents file: agents, workspace defaults, key hashes.

Built from a validated `AgentsFile`; the identity stage and the API-key source
share one instance. A reload builds a new directory and `replace`s the shared
one's entries with it in one assignment: a lookup sees the old file or the new
one, never a mix, and agents already handed to a request are never changed.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from gateway.agents_file import AgentsFile, KeyEntry
from gateway.types import Agent, Principal, Vocabulary


@dataclass(frozen=True, slots=True)
class _Entries:
    agents: Mapping[str, Agent]
    defaults: Mapping[str, str]  # workspace -> default agent id
    keys: Mapping[str, KeyEntry]  # key hash -> entry
    principals: Mapping[str, Principal]  # key hash -> who the key stands for, built once per file


class AgentDirectory:
    def __init__(self, agents: Mapping[str, Agent], defaults: Mapping[str, str],
                 keys: Mapping[str, KeyEntry]) -> None:
        principals = {
            digest: Principal(workspace=k.workspace, auth="api_key",
                              agent=agents.get(k.agent) if k.agent else None, credential_id=k.id)
            for digest, k in keys.items()}
        # Read-only views: entries are shared across requests and never mutated.
        self._entries = _Entries(MappingProxyType(dict(agents)), MappingProxyType(dict(defaults)),
                                 MappingProxyType(dict(keys)), MappingProxyType(principals))

    @classmethod
    def from_file(cls, agents: AgentsFile) -> "AgentDirectory":
        by_id = {
            a.id: Agent(id=a.id, tier=a.tier, maturity=a.maturity, workspace=a.workspace,
                        labels=MappingProxyType(dict(a.labels)), revoked=a.revoked)
            for a in agents.agents
        }
        defaults = {name: ws.default_agent for name, ws in agents.workspaces.items()
                    if ws.default_agent}
        # AgentsFile validation guarantees one entry per key hash.
        return cls(by_id, defaults, {k.sha256: k for k in agents.keys})

    def replace(self, other: "AgentDirectory") -> None:
        """Take `other`'s entries: the reload swap, one assignment."""
        self._entries = other._entries

    def agent(self, agent_id: str) -> Agent | None:
        return self._entries.agents.get(agent_id)

    def agent_ids(self) -> list[str]:
        """Every agent id in the file (the lifecycle's agent listing)."""
        return list(self._entries.agents)

    def default_agent(self, workspace: str) -> Agent | None:
        entries = self._entries
        agent_id = entries.defaults.get(workspace)
        return entries.agents.get(agent_id) if agent_id else None

    def key_by_hash(self, sha256_hex: str) -> KeyEntry | None:
        return self._entries.keys.get(sha256_hex)

    def principal_by_hash(self, sha256_hex: str) -> Principal | None:
        """The principal an API key stands for (its workspace, pinned agent and id)."""
        return self._entries.principals.get(sha256_hex)

    def vocabulary_problems(self, vocab: Vocabulary) -> list[str]:
        """Each agent whose tier or maturity the policy's vocabulary does not list, by name."""
        return [p for a in self._entries.agents.values() for p in vocab.agent_problems(a.id, a.tier, a.maturity)]

    def __len__(self) -> int:
        return len(self._entries.agents)
