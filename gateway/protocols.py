"""The seams between the pipeline and its backends.

`gateway/` depends only on these; `adapters/` implement them and are loaded by
import string through `gateway.registry`.
"""
from __future__ import annotations

from typing import Any, AsyncIterator, Mapping, Protocol, Sequence, runtime_checkable

from gateway.types import Decision, Limits, LimitResult, Principal, Reservation, Vocabulary


@runtime_checkable
class IdentitySource(Protocol):
    """Turns a credential into a Principal.

    Returns None when the credential is not this source's kind (the next source
    is tried); raises AuthenticationFailed when it is, but is invalid.
    """
    name: str

    async def start(self) -> None: ...
    async def resolve(self, token: str) -> Principal | None: ...
    async def aclose(self) -> None: ...


@runtime_checkable
class PolicyEngine(Protocol):
    """Evaluates `data.portcullis.decision`; raises PolicyError on engine failure."""

    @property
    def revision(self) -> str: ...
    @property
    def vocabulary(self) -> Vocabulary: ...  # the tiers and maturities of the loaded set

    async def start(self) -> None: ...
    def evaluate(self, policy_input: Mapping[str, Any]) -> Decision: ...
    def evaluate_many(self, inputs: Sequence[Mapping[str, Any]]) -> list[Decision]: ...
    async def reload(self) -> str: ...
    async def aclose(self) -> None: ...


@runtime_checkable
class RemotePolicyEngine(PolicyEngine, Protocol):
    """A PolicyEngine whose decisions cost I/O (the OPA backend): the policy stage awaits
    `aevaluate_many` (one round trip per call) instead of calling `evaluate`; `problem` says
    why the engine cannot decide now (None when it can), for /readyz."""
    problem: str | None

    async def aevaluate_many(self, inputs: Sequence[Mapping[str, Any]]) -> list[Decision]: ...


@runtime_checkable
class DecisionCache(Protocol):
    async def start(self) -> None: ...
    async def get(self, key: str) -> Decision | None: ...
    async def set(self, key: str, decision: Decision, ttl_s: int) -> None: ...
    async def aclose(self) -> None: ...


@runtime_checkable
class RateLimiter(Protocol):
    """Check-and-reserve as one atomic step; settle corrects a token reservation."""

    async def start(self) -> None: ...
    async def reserve(self, key: str, limits: Limits, tokens: int) -> LimitResult: ...
    async def settle(self, reservation: Reservation, actual_tokens: int) -> None: ...
    async def aclose(self) -> None: ...


@runtime_checkable
class AuditStore(Protocol):
    """Durable storage for chained audit rows (the writer does batching and chaining)."""

    async def start(self) -> None: ...
    async def last_link(self, chain_id: str) -> tuple[int, str] | None: ...
    async def insert_batch(self, rows: Sequence[Mapping[str, Any]]) -> None: ...
    async def tail(self, n: int) -> list[dict[str, Any]]: ...
    def iter_chain(self, chain_id: str | None = None) -> AsyncIterator[dict[str, Any]]: ...
    async def writable(self) -> bool: ...
    async def aclose(self) -> None: ...


class UpstreamResponse(Protocol):
    status: int
    headers: Mapping[str, str]

    async def read(self) -> bytes: ...
    def iter_chunks(self) -> AsyncIterator[bytes]: ...
    async def aclose(self) -> None: ...


@runtime_checkable
class Upstream(Protocol):
    """One provider endpoint. Raises UpstreamError / UpstreamTimeout, never transport errors."""
    name: str

    async def start(self) -> None: ...
    async def send(self, method: str, path: str, body: bytes, api: str,
                   headers: Mapping[str, str]) -> UpstreamResponse: ...
    async def aclose(self) -> None: ...


@runtime_checkable
class ToolTransport(Protocol):
    """One tool endpoint (an MCP server or an HTTP tool). Raises UpstreamError / UpstreamTimeout.

    `headers` are exactly the headers to send; the transport adds only the tool's own credential.
    """
    name: str

    async def start(self) -> None: ...
    async def send(self, method: str, body: bytes, headers: Mapping[str, str],
                   params: Mapping[str, str] | None = None) -> UpstreamResponse: ...
    async def aclose(self) -> None: ...


@runtime_checkable
class SessionStore(Protocol):
    """Which agent opened each MCP session (`Mcp-Session-Id`), per MCP server.

    `authoritative`: the store sees every binding the gateway (fleet) made, so an id it
    does not know was not opened through the gateway and is refused; a per-replica store
    is not, and passes unknown ids on. Raises BackendError when it cannot answer.
    """
    authoritative: bool

    async def start(self) -> None: ...
    async def bind(self, server: str, session_id: str, agent_id: str) -> None: ...
    async def owner(self, server: str, session_id: str) -> str | None: ...  # refreshes the binding's TTL
    async def end(self, server: str, session_id: str) -> None: ...
    async def aclose(self) -> None: ...
