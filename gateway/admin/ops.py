"""What an admin route is (an `Op`) and what its handler gets (a `Call`): shared by the route
modules, the app that audits and authorizes them, and the OpenAPI test."""
from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.requests import Request

from gateway.errors import InvalidRequest, Unavailable
from gateway.services import Services


@dataclass(slots=True)
class Call:
    """One admin request, as its handler sees it. Handlers fill `reason` and `resource_name`
    for the audit row."""
    request: Request
    services: Services
    actor: str
    body: Mapping[str, Any] = field(default_factory=dict)
    reason: str | None = None
    resource_name: str | None = None

    @property
    def lifecycle(self) -> Any:  # gateway.lifecycle.runtime.Lifecycle
        lc = self.services.lifecycle
        if lc is None:
            raise Unavailable("the agent lifecycle is disabled (lifecycle.enabled: false)")
        return lc

    def param(self, name: str) -> str:
        value = self.request.path_params[name]
        self.resource_name = value
        return value

    def query(self, name: str) -> str | None:
        return self.request.query_params.get(name) or None

    def text(self, name: str, *, required: bool = False, default: str | None = None) -> str | None:
        value = self.body.get(name, default)
        if value is None and required:
            raise InvalidRequest(f"{name!r} is required", param=name)
        if value is not None and not isinstance(value, str):
            raise InvalidRequest(f"{name!r} must be a string", param=name)
        return value

    def require_reason(self) -> str:
        reason = self.text("reason", required=True) or ""
        if not reason.strip():
            raise InvalidRequest("'reason' must not be empty", param="reason")
        self.reason = reason
        return reason

    def optional_reason(self) -> str:
        self.reason = self.text("reason", default="") or ""
        return self.reason

    def flag(self, name: str) -> bool:
        value = self.body.get(name)
        if not isinstance(value, bool):
            raise InvalidRequest(f"{name!r} is required and must be true or false", param=name)
        return value


@dataclass(frozen=True, slots=True)
class Reply:
    """A handler's answer other than 200 JSON: another status, or a non-JSON body."""
    payload: Any
    status: int = 200
    media_type: str | None = None  # None: JSON


Handler = Callable[[Call], Awaitable[Any]]  # returns JSON-able data or a Reply


@dataclass(frozen=True, slots=True)
class Op:
    id: str  # "agents.revoke": the OpenAPI operationId; audited as action "admin.agents.revoke"
    method: Literal["GET", "POST", "PUT"]
    path: str  # Starlette path, e.g. "/admin/agents/{id}/revoke"
    scope: Literal["read", "write"]
    handler: Handler
    resource_type: str | None = None  # the audit row's resource_type


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration_s(text: str) -> float:
    """"7d", "24h", "30m", "90s", "2w" -> seconds; InvalidRequest otherwise."""
    m = _DURATION.match(text.strip())
    if not m:
        raise InvalidRequest(f"bad duration {text!r}: use a number and s, m, h, d or w (e.g. 24h, 7d)")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def instant(text: str, *, clock: Callable[[], float] = time.time) -> float:
    """A query's point in time: epoch seconds, or a duration meaning that long ago ("24h")."""
    try:
        return float(text)
    except ValueError:
        return clock() - duration_s(text)
