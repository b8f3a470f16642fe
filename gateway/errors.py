"""The gateway's own exception vocabulary.

Adapters translate their backend's exceptions (aiohttp, redis, sqlite, regorus)
into these at their boundary, so the pipeline only ever sees this module.
Each surface renders a GatewayError in its client SDK's error format.
"""
from __future__ import annotations


class GatewayError(Exception):
    status: int = 500
    kind: str = "internal"  # surface-neutral category, mapped by each surface
    code: str | None = None

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param
        self.headers = headers or {}


class InvalidRequest(GatewayError):
    status, kind, code = 400, "invalid_request", "invalid_request"


class AuthenticationFailed(GatewayError):
    status, kind, code = 401, "authentication", "invalid_credentials"


class PermissionDenied(GatewayError):
    status, kind, code = 403, "permission", "policy_denied"


class NotFound(GatewayError):
    status, kind, code = 404, "not_found", "not_found"


class PayloadTooLarge(GatewayError):
    status, kind, code = 413, "too_large", "payload_too_large"


class RateLimited(GatewayError):
    status, kind, code = 429, "rate_limited", "rate_limit_exceeded"


class Unavailable(GatewayError):
    """A dependency the gateway needs (policy engine, audit store) is not usable."""
    status, kind, code = 503, "unavailable", "service_unavailable"


class UpstreamError(GatewayError):
    status, kind, code = 502, "upstream", "upstream_error"


class UpstreamTimeout(GatewayError):
    status, kind, code = 504, "upstream_timeout", "upstream_timeout"


class PolicyError(GatewayError):
    """The policy engine failed to produce a decision (fail closed: 503)."""
    status, kind, code = 503, "unavailable", "policy_unavailable"


class PolicyCompileError(Exception):
    """A policy set failed to load; the previous set stays active."""


class BackendError(Exception):
    """A storage backend (audit store, limiter, cache) failed; adapters raise this."""
