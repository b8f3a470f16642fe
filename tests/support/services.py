"""The machine's real PostgreSQL and Redis, for tests that need them.

Locally a missing service skips those tests; under CI (`CI=true`) it fails them,
because CI must exercise the fleet backends for real.
"""
from __future__ import annotations

import os
import socket
import uuid

import pytest

REDIS_URL = os.environ.get("PORTCULLIS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_DSN = os.environ.get("PORTCULLIS_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def require(service: str, host: str, port: int) -> None:
    if _reachable(host, port):
        return
    msg = f"{service} is not reachable on {host}:{port}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg + " (CI=true: the fleet backends must be tested for real)")
    pytest.skip(msg)


def redis_url() -> str:
    require("Redis", "127.0.0.1", 6379)
    return REDIS_URL


def pg_dsn() -> str:
    require("PostgreSQL", "127.0.0.1", 5432)
    return PG_DSN


def unique(prefix: str) -> str:
    """A name unique to this run: Redis key prefixes, PostgreSQL tables."""
    return f"{prefix}{os.getpid()}_{uuid.uuid4().hex[:8]}"
