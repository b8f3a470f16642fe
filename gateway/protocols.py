"""The seams between the pipeline and its backends.

`gateway/` depends only on these; `adapters/` implement them and are loaded by
import string through `gateway.registry`.
"""
from __future__ import annotations

from typing import Any, AsyncIterator, Mapping, Protocol, Sequence, runtime_checkable

from gateway.lifecycle.model import LifecycleRules
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
    @property
    def lifecycle(self) -> LifecycleRules: ...  # the loaded set's lifecycle thresholds (contract 6)
    @property
    def argument_rules(self) -> frozenset[tuple[str, str]]: ...  # (server, tool) whose calls carry arguments

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
    # For `policy replay`: rows that carry a decided policy input (input_digest set), filtered in
    # the store (ts as ISO-8601 UTC bounds, since inclusive, until exclusive), streamed in chunks,
    # as {"ts", "agent_id", "action", "policy_input" (the JSON text as stored), "input_digest",
    # "policy_revision"}: the reader parses an input only for a digest it has not seen yet.
    # shadow=True (`policy shadow-report`): only rows the shadow set decided, each also with
    # "decision", "reasons", "shadow_decision" (JSON text or parsed) and "shadow_revision".
    def iter_inputs(self, since: str | None = None, until: str | None = None, agent: str | None = None,
                    action: str | None = None, *, shadow: bool = False) -> AsyncIterator[dict[str, Any]]: ...
    # For the console (gateway/console): bounded reads, counts from a per-minute rollup the store
    # keeps as rows are inserted (only rows really inserted count). Times are epoch seconds.
    # [{"t": bucket start, "allow": n, "deny": n, "rate_limited": n, "error": n, "bypass": n}], every
    # bucket of bucket_s (a multiple of 60, epoch-aligned) from since's up to until's, zeros included.
    async def decision_series(self, since: float, until: float, bucket_s: int) -> list[dict[str, Any]]: ...
    # agent id -> {"requests": n since `since`, "last_decision": str, "last_ts": epoch}
    async def agent_activity(self, since: float) -> dict[str, dict[str, Any]]: ...
    async def cache_hit_rate(self, since: float) -> float | None: ...  # hits / policy decisions; None: none
    # {"p50": ms, "p99": ms} of latency_ms - upstream_ms, newest 50,000 forwarded rows since `since`
    async def overhead_percentiles(self, since: float) -> dict[str, float | None]: ...
    # Newest first, keyset on (ts, request_id) `before`; oldest first with `after_ts` (the live stream).
    # Rows as {request_id, ts, agent_id, action, resource_type, resource_name, api, decision,
    # reasons (list), status, latency_ms, upstream_ms}: no policy input, nothing a client sent.
    async def recent_rows(self, *, limit: int = 50, before: tuple[float, str] | None = None,
                          after_ts: float | None = None, agent: str | None = None, decision: str | None = None,
                          api: str | None = None) -> list[dict[str, Any]]: ...
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


@runtime_checkable
class LifecycleStore(Protocol):
    """The agent state store (DESIGN contract 6): SQLite embedded, PostgreSQL in a fleet.

    The source of truth for overlays, counters, proposals, approvals, governance events,
    reports and runtime flags. Every method is one atomic step in the store, so N replicas
    counting into one PostgreSQL count exactly. Raises BackendError when it cannot answer.
    Types are gateway.lifecycle.model's.
    """

    async def start(self) -> None: ...
    async def aclose(self) -> None: ...

    # -- agent state --------------------------------------------------------------
    async def states(self) -> dict[str, Any]: ...  # agent id -> AgentState, every stored overlay
    async def state(self, agent_id: str) -> Any | None: ...  # AgentState
    # Count one Outcome: opens a new window when `window_s` has passed since window_start;
    # compliant: consecutive_compliant + 1; error: total_errors + 1, same_errors[signature] + 1,
    # consecutive_compliant = 0; violation: as error, and violations + 1. Returns the new state.
    async def count(self, outcome: Any, window_s: float) -> Any: ...
    # Apply a change's `new` fields (revoked, revoked_reason, tier, maturity, budget_warned, and
    # for reinstate/reset the counters) and append it to the change history, atomically.
    async def apply(self, change: Any) -> Any: ...  # -> AgentState
    async def changes(self, agent_id: str | None = None, since: float = 0.0,
                      limit: int = 1000) -> list[Any]: ...  # LifecycleChange, newest first

    # -- proposals -----------------------------------------------------------------
    async def add_proposal(self, proposal: Any) -> bool: ...  # False: one is pending for the agent
    async def proposals(self, status: str | None = None, agent_id: str | None = None) -> list[Any]: ...
    async def proposal(self, proposal_id: str) -> Any | None: ...
    # pending -> approved | rejected | auto_approved; None when not pending (or unknown)
    async def decide_proposal(self, proposal_id: str, status: str, by: str, reason: str,
                              at: float) -> Any | None: ...

    # -- approvals -----------------------------------------------------------------
    async def add_approval(self, approval: Any) -> None: ...
    async def approval(self, approval_id: str) -> Any | None: ...
    async def approvals(self, status: str | None = None, agent_id: str | None = None) -> list[Any]: ...
    # pending -> approved | rejected; None when not pending, unknown or expired
    async def decide_approval(self, approval_id: str, status: str, by: str, at: float) -> Any | None: ...
    # approved -> used, only for the same agent and input digest before expires_at: single use,
    # atomic across replicas. None when any of that does not hold.
    async def use_approval(self, approval_id: str, agent_id: str, input_digest: str, at: float,
                           request_id: str) -> Any | None: ...

    # -- governance events, reports, flags -------------------------------------------
    async def add_events(self, events: Sequence[Any]) -> None: ...
    async def events(self, since: float = 0.0, until: float | None = None, agent_id: str | None = None,
                     workspace: str | None = None, min_severity: str | None = None,
                     limit: int = 1000) -> list[Any]: ...  # GovernanceEvent, oldest first
    async def add_report(self, report: Any) -> None: ...
    async def reports(self, limit: int = 20) -> list[Any]: ...  # StoredReport, newest first
    async def report(self, report_id: str) -> Any | None: ...
    async def flags(self) -> dict[str, Any]: ...  # runtime switches (the emergency bypass, per-surface governance)
    async def set_flag(self, name: str, value: Any) -> None: ...

    # -- replicas (the console's list: which replica runs which policy revision) ---------
    # Upsert this replica's row: at start and every refresh_s (gateway.lifecycle.runtime).
    async def heartbeat(self, replica_id: str, host: str, pid: int, revision: str | None, started_at: float,
                        at: float) -> None: ...
    # [{"replica_id", "host", "pid", "revision", "started_at", "last_seen"}] seen within max_age_s
    # of `now` (default: the clock), by replica id.
    async def replicas(self, max_age_s: float, now: float | None = None) -> list[dict[str, Any]]: ...


@runtime_checkable
class LifecycleBus(Protocol):
    """Pushes "agent X changed" to every replica (Redis pub/sub in a fleet; in-process alone).

    Messages are small JSON objects ({"agent_id", "version"} or {"flags": true}); the store
    stays the source of truth: a subscriber re-reads it, and `on_reconnect` makes it reload
    everything after a gap, so a missed message cannot leave an agent unrevoked.
    """

    async def start(self) -> None: ...
    async def publish(self, message: Mapping[str, Any]) -> None: ...
    def subscribe(self, on_message: Any, on_reconnect: Any) -> None: ...  # (dict) -> Awaitable; () -> Awaitable
    async def aclose(self) -> None: ...
