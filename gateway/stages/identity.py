"""Identity resolution (DESIGN contract 1): credential -> Principal -> Agent.

Sources are tried in order (API keys, then JWT); the first that recognizes the
credential wins. `X-Agent-Id` then picks an agent the credential's workspace
owns; a credential pinned to one agent can never switch to a sibling.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from gateway.directory import AgentDirectory
from gateway.errors import AgentRevoked, AuthenticationFailed, Forbidden
from gateway.lifecycle.overlay import Overlay
from gateway.protocols import IdentitySource
from gateway.settings import ConfigError
from gateway.types import Agent, Principal

MISSING = "missing credentials: send Authorization: Bearer <key> or x-api-key"


def _show(value: str, limit: int = 64) -> str:
    """Client-supplied ids are echoed in errors; keep them bounded and printable."""
    return value if len(value) <= limit and value.isprintable() else (
        value[:limit].encode("unicode_escape").decode("ascii") + "…")


def credential(headers: Mapping[str, str]) -> str | None:
    """The bearer token or x-api-key value; Authorization wins when both are sent."""
    auth = headers.get("authorization")
    if auth is not None:
        scheme, _, value = auth.strip().partition(" ")
        # Never echo the scheme: a bare "sk-…" header would put the key in the error.
        if scheme.lower() != "bearer":
            raise AuthenticationFailed("unsupported authorization scheme; use Bearer")
        value = value.strip()
        if not value:
            raise AuthenticationFailed("empty bearer credential in Authorization header")
        return value
    key = headers.get("x-api-key")
    if key is not None:
        key = key.strip()
        if not key:
            raise AuthenticationFailed("empty x-api-key header")
        return key
    return None


class IdentityResolver:
    def __init__(self, sources: Sequence[IdentitySource], directory: AgentDirectory,
                 anonymous_agent: str | None = None, overlay: Overlay | None = None) -> None:
        self._sources = tuple(sources)
        # The lifecycle overlay (revocations, promotions, demotions); never active with lifecycle off.
        self.overlay = overlay if overlay is not None else Overlay()
        self._directory = directory  # shared and swapped whole on reload: look agents up per request
        self._anonymous = anonymous_agent
        self.check_directory(directory)

    @property
    def directory(self) -> AgentDirectory:
        return self._directory

    def check_directory(self, directory: AgentDirectory) -> None:
        """ConfigError if `directory` lacks what the settings name (a reload must not drop it)."""
        if self._anonymous is not None and directory.agent(self._anonymous) is None:
            raise ConfigError([("identity.anonymous_agent", f"unknown agent {self._anonymous!r}")])

    async def resolve(self, headers: Mapping[str, str]) -> tuple[Agent, Principal]:
        """The acting agent and the principal behind it.

        Raises AuthenticationFailed (401) for missing or invalid credentials and
        Forbidden (403) when the agent cannot be used by this credential.
        """
        requested = (headers.get("x-agent-id") or "").strip() or None
        token = credential(headers)
        if token is None:
            agent, principal = self._anonymous_identity(requested)
        else:
            principal = await self._principal(token)
            agent = self._select(principal, requested)
            try:
                self._check_usable(agent, principal.workspace)
            except AgentRevoked as e:
                e.who = (agent, principal)  # the refusal's audit row names whom it refused
                raise
        if self.overlay.active:  # nothing revoked or overridden: this check is all it costs
            try:
                agent = self.overlay.apply(agent, jwt=principal.auth == "jwt")  # AgentRevoked (403) when revoked
            except AgentRevoked as e:
                e.who = (agent, principal)
                raise
        return agent, principal

    async def _principal(self, token: str) -> Principal:
        for source in self._sources:
            principal = await source.resolve(token)
            if principal is not None:
                return principal
        raise AuthenticationFailed("invalid API key or token")

    def _anonymous_identity(self, requested: str | None) -> tuple[Agent, Principal]:
        agent = self._directory.agent(self._anonymous) if self._anonymous is not None else None
        # Asking for a specific other agent needs a credential; say so rather
        # than silently acting as the anonymous agent.
        if agent is None or (requested is not None and requested != agent.id):
            raise AuthenticationFailed(MISSING)
        self._check_usable(agent, agent.workspace)
        return agent, Principal(workspace=agent.workspace, auth="anonymous", agent=agent)

    def _select(self, principal: Principal, requested: str | None) -> Agent:
        ws = principal.workspace
        pinned = principal.agent
        if requested is not None:
            if pinned is not None and requested != pinned.id:
                raise Forbidden(
                    f"credential is pinned to agent {pinned.id}; "
                    f"X-Agent-Id {_show(requested)} is not allowed")
            if pinned is None:
                agent = self._directory.agent(requested)
                if agent is None or agent.workspace != ws:
                    raise Forbidden(f"agent {_show(requested)} is not in workspace {ws}")
                return agent
        if pinned is not None:
            return pinned
        default = self._directory.default_agent(ws)
        if default is None:
            raise Forbidden(f"workspace {ws} has no default agent; send X-Agent-Id")
        return default

    def _check_usable(self, agent: Agent, workspace: str) -> None:
        # A JWT agent may not be listed in the directory; when it is, the
        # directory's workspace and revoked flag win over the token's claims.
        known = self._directory.agent(agent.id)
        if known is not None and known.workspace != workspace:
            raise Forbidden(f"agent {agent.id} is not in workspace {workspace}")
        if agent.revoked or (known is not None and known.revoked):
            raise AgentRevoked(f"agent {agent.id} is revoked")
