"""Backend names mapped to import strings, loaded on demand (uvicorn style).

The pipeline never imports adapters directly: it asks the registry for a class.
"""
from __future__ import annotations

import importlib
from typing import Any

BACKENDS: dict[str, dict[str, str]] = {
    "policy": {
        "regorus": "adapters.policy.regorus_engine:RegorusEngine",
        "opa": "adapters.policy.opa:OPAEngine",
    },
    "cache": {
        "memory": "adapters.cache.memory:MemoryDecisionCache",
    },
    "cache_l2": {  # cache.l2: a shared cache behind the L1, constructed with (l2 settings, l1)
        "redis": "adapters.cache.redis_l2:RedisL2DecisionCache",
    },
    "limits": {
        "memory": "adapters.ratelimit.memory:MemoryRateLimiter",
        "redis": "adapters.ratelimit.redis:RedisRateLimiter",
    },
    "audit": {
        "sqlite": "adapters.audit.sqlite:SQLiteAuditStore",
        "postgres": "adapters.audit.postgres:PostgresAuditStore",
    },
    "upstream": {
        "openai": "adapters.upstream.http:HTTPUpstream",
        "anthropic": "adapters.upstream.http:HTTPUpstream",
        "mock": "adapters.upstream.mock:MockUpstream",
    },
    "tools": {
        "mcp": "adapters.tools.http:HTTPToolClient",
        "http": "adapters.tools.http:HTTPToolClient",
    },
    "identity": {
        "api_key": "adapters.identity.apikeys:APIKeySource",
        "jwt": "adapters.identity.jwt:JWTSource",
    },
    "tracing": {
        "otel": "adapters.tracing.otel:OTelTracer",  # imported only when tracing.enabled
    },
    "lifecycle_store": {  # agent state, proposals, approvals, governance events (lifecycle.store)
        "sqlite": "adapters.lifecycle.sqlite:SQLiteLifecycleStore",
        "postgres": "adapters.lifecycle.postgres:PostgresLifecycleStore",
    },
    "lifecycle_bus": {  # revocations pushed to every replica (lifecycle.bus)
        "memory": "adapters.lifecycle.bus_memory:MemoryLifecycleBus",
        "redis": "adapters.lifecycle.bus_redis:RedisLifecycleBus",
    },
    "sessions": {  # MCP session -> agent bindings (tools.session_store)
        "memory": "adapters.sessions.memory:MemorySessionStore",
        "redis": "adapters.sessions.redis:RedisSessionStore",
    },
}


class RegistryError(Exception):
    pass


def import_from_string(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise RegistryError(f"import string {spec!r} must be 'module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise RegistryError(f"could not import {module_name!r}: {e}") from e
    try:
        return getattr(module, attr)
    except AttributeError:
        raise RegistryError(f"{module_name!r} has no attribute {attr!r}") from None


def load(seam: str, name: str) -> Any:
    """Return the backend class for `seam` (policy, cache, …) named `name`.

    A name containing ':' is taken as an import string, so third-party backends
    plug in without touching this table.
    """
    if ":" in name:
        return import_from_string(name)
    try:
        spec = BACKENDS[seam][name]
    except KeyError:
        known = ", ".join(sorted(BACKENDS.get(seam, {})))
        raise RegistryError(f"unknown {seam} backend {name!r} (known: {known})") from None
    return import_from_string(spec)
