"""The gateway's own exception vocabulary.

Adapters translate their backend's exceptions (aiohttp, redis, sqlite, regorus)
into these at their boundary, so the pipeline only ever sees this module.
Each surface renders a GatewayError in its client SDK's error format.
"""
from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    status: int = 500
    kind: str = "internal"  # surface-neutral category, mapped by each surface
    code: str | None = None
    # The audit row's `decision` for a request that ends in this error; None keeps
    # what the exchange had (an upstream failure after an allow stays an allow).
    outcome: str | None = "error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None, outcome: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if outcome is not None:
            self.outcome = outcome
        self.param = param
        self.headers = headers or {}


class InvalidRequest(GatewayError):
    status, kind, code = 400, "invalid_request", "invalid_request"


class AuthenticationFailed(GatewayError):
    status, kind, code = 401, "authentication", "invalid_credentials"


class PermissionDenied(GatewayError):
    """A policy refusal (outcome deny). Other 403s (identity) use Forbidden."""
    status, kind, code, outcome = 403, "permission", "policy_denied", "deny"


class ApprovalRequired(GatewayError):
    """The policy wants a human to approve this request first; `approval_id` names the request
    to approve, and the agent retries with `X-Portcullis-Approval: <id>`."""
    status, kind, code, outcome = 403, "permission", "approval_required", "deny"

    def __init__(self, message: str, approval_id: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.approval_id = approval_id


class Forbidden(GatewayError):
    """A 403 that is not a policy decision: a credential used outside its reach."""
    status, kind, code = 403, "permission", "forbidden"


class AgentRevoked(Forbidden):
    """The agent is revoked (its lifecycle state, or agents.yaml): refused before policy evaluation.

    `who` is the (agent, principal) the credential resolved to, so the refusal's audit row
    still names the agent (set by the identity stage)."""
    code, outcome = "agent_revoked", "deny"
    who: tuple[Any, Any] | None = None


class NotFound(GatewayError):
    status, kind, code = 404, "not_found", "not_found"


class MethodNotAllowed(GatewayError):
    status, kind, code = 405, "invalid_request", "method_not_allowed"

    def __init__(self, method: str, path: str, allowed: tuple[str, ...]) -> None:
        super().__init__(f"{method} is not supported on {path}; use {' or '.join(allowed)}",
                         headers={"allow": ", ".join(allowed)})


class PayloadTooLarge(GatewayError):
    status, kind, code = 413, "too_large", "payload_too_large"


class RequestTimeout(GatewayError):
    """The request body did not arrive within server.body_timeout_s."""
    status, kind, code = 408, "invalid_request", "request_timeout"


class HeadersTooLarge(GatewayError):
    status, kind, code = 431, "too_large", "headers_too_large"


class RateLimited(GatewayError):
    """A limiter refusal; `limit` is the LimitResult each surface renders as its own headers."""
    status, kind, code, outcome = 429, "rate_limited", "rate_limit_exceeded", "rate_limited"

    def __init__(self, message: str, *, limit: object = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.limit = limit


class Unavailable(GatewayError):
    """A dependency the gateway needs (policy engine, audit store) is not usable."""
    status, kind, code = 503, "unavailable", "service_unavailable"


class UpstreamError(GatewayError):
    status, kind, code, outcome = 502, "upstream", "upstream_error", None


class UpstreamTimeout(GatewayError):
    status, kind, code, outcome = 504, "upstream_timeout", "upstream_timeout", None


class CircuitOpen(GatewayError):
    """An open circuit breaker refused the call without touching the upstream or tool server
    (gateway/breaker.py); the message names the breaker, Retry-After says when it probes."""
    status, kind, code = 503, "circuit_open", "circuit_open"


class PolicyError(GatewayError):
    """The policy engine failed to produce a decision (fail closed: 503)."""
    status, kind, code = 503, "unavailable", "policy_unavailable"


class PolicyCompileError(Exception):
    """A policy set failed to load; the previous set stays active."""


class BackendError(Exception):
    """A storage backend (audit store, limiter, cache) failed; adapters raise this."""
