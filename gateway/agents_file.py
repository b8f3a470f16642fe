"""The agents file (agents.yaml): agents, workspaces and hashed keys, cross-checked at load."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from gateway.configbase import ConfigError, Model, problems_of, read_yaml


class AgentEntry(Model):
    id: str
    # Checked against the loaded policy's tiers and maturities (contract 1), not here.
    tier: int
    maturity: str
    workspace: str
    labels: dict[str, str] = {}
    revoked: bool = False


class KeyEntry(Model):
    id: str  # a non-secret label, safe to log and audit
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    workspace: str
    agent: str | None = None  # pinned agent; None = workspace key


class WorkspaceEntry(Model):
    default_agent: str | None = None


class AgentsFile(Model):
    workspaces: dict[str, WorkspaceEntry] = {}
    agents: list[AgentEntry] = []
    keys: list[KeyEntry] = []

    @model_validator(mode="after")
    def _references(self) -> "AgentsFile":
        """Every cross-reference at once, each at its own key path (serve would fail on any)."""
        bad: list[tuple[tuple[str | int, ...], str]] = []
        by_id: dict[str, AgentEntry] = {}
        for i, a in enumerate(self.agents):
            if a.id in by_id:
                bad.append((("agents", i, "id"), f"duplicate agent id {a.id!r}"))
            by_id.setdefault(a.id, a)
            if a.workspace not in self.workspaces:
                bad.append((("agents", i, "workspace"), _undeclared(a.workspace)))
        for name, ws in self.workspaces.items():
            default = by_id.get(ws.default_agent) if ws.default_agent else None
            if ws.default_agent and (default is None or default.workspace != name):
                bad.append((("workspaces", name, "default_agent"),
                            f"{ws.default_agent!r} is not an agent of workspace {name!r}"))
        hashes: dict[str, str] = {}
        for i, k in enumerate(self.keys):
            if k.workspace not in self.workspaces:
                bad.append((("keys", i, "workspace"), _undeclared(k.workspace)))
            elif k.agent and (k.agent not in by_id or by_id[k.agent].workspace != k.workspace):
                bad.append((("keys", i, "agent"), f"{k.agent!r} is not an agent of workspace {k.workspace!r}"))
            if k.sha256 in hashes:  # one key in two entries would make its workspace ambiguous
                bad.append((("keys", i, "sha256"), f"{k.id!r} and {hashes[k.sha256]!r} share one key hash"))
            hashes.setdefault(k.sha256, k.id)
        if bad:
            raise ValidationError.from_exception_data(type(self).__name__, [
                InitErrorDetails(type=PydanticCustomError("reference", "{reason}", {"reason": reason}),
                                 loc=loc, input=None) for loc, reason in bad])
        return self


def _undeclared(workspace: str) -> str:
    return f"workspace {workspace!r} is not declared in workspaces"


def load_agents(path: Path) -> AgentsFile:
    doc = read_yaml(path)
    try:
        return AgentsFile.model_validate(doc)
    except ValidationError as e:
        raise ConfigError(problems_of(e, prefix=f"{path.name}: ")) from None
