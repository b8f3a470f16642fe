"""Everything a request needs, built once by the app and shared by every endpoint."""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from gateway.audit.writer import AuditWriter
from gateway.bodyread import BodyReader
from gateway.breaker import Breakers
from gateway.metrics import Metrics
from gateway.protocols import SessionStore, ToolTransport, Upstream
from gateway.routing import ModelRouter
from gateway.settings import Settings
from gateway.stages.identity import IdentityResolver
from gateway.stages.limits import LimitStage
from gateway.stages.policy import PolicyStage
from gateway.tools.govern import ToolGovernor
from gateway.tracing import Tracer


class RequestIds:
    """Unique request ids without a syscall per request: a random per-process prefix and a counter."""

    def __init__(self) -> None:
        self._prefix = "req_" + os.urandom(8).hex()
        self._next = itertools.count(1).__next__

    def __call__(self) -> str:
        return f"{self._prefix}{self._next():012x}"


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    identity: IdentityResolver
    policy: PolicyStage
    limits: LimitStage
    router: ModelRouter
    upstreams: dict[str, Upstream]
    audit: AuditWriter
    metrics: Metrics
    bodies: BodyReader  # server.max_body_bytes within server.body_timeout_s
    tools: ToolGovernor | None = None
    tool_transports: dict[str, ToolTransport] = field(default_factory=dict)  # MCP servers and HTTP tools
    breakers: Breakers = field(default_factory=Breakers)  # per upstream and tool server (gateway/breaker.py)
    sessions: SessionStore | None = None  # MCP session -> agent bindings (tools.session_store)
    request_ids: Callable[[], str] = field(default_factory=lambda: RequestIds())
    tracer: Tracer | None = None  # None when tracing is off (the default)
    lifecycle: Any = None  # gateway.lifecycle.runtime.Lifecycle; None when lifecycle.enabled is false
    shadow: Any = None  # gateway.shadow.runner.ShadowRunner; None unless policy.shadow is set
