"""Fleet mode (Redis limits, PostgreSQL audit): is it available, and cleaning up after it.

The fleet adapters may not exist yet in a given checkout, and the services may
be down; either way the benchmark reports "unavailable: <reason>" instead of
failing. Everything created here is unique to the run and removed afterwards.
"""
from __future__ import annotations

import asyncio
import importlib
import os
import socket
import uuid
from typing import Any
from urllib.parse import urlparse

REDIS_URL = os.environ.get("PORTCULLIS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_DSN = os.environ.get("PORTCULLIS_BENCH_PG_DSN", "postgresql://127.0.0.1:5432/test")
ADAPTERS = ("adapters.ratelimit.redis:RedisRateLimiter", "adapters.audit.postgres:PostgresAuditStore")


def unique_names() -> tuple[str, str]:
    """(Redis key prefix, PostgreSQL table) unique to this run."""
    tag = f"{os.getpid()}_{uuid.uuid4().hex[:8]}"
    return f"portcullis:bench:{tag}:", f"bench_audit_{tag}"


def _reachable(url: str, default_port: int) -> bool:
    u = urlparse(url)
    try:
        with socket.create_connection((u.hostname or "127.0.0.1", u.port or default_port), timeout=1.0):
            return True
    except OSError:
        return False


def unavailable_reason() -> str | None:
    """None when fleet mode can run, else why not."""
    for spec in ADAPTERS:
        module, _, attr = spec.partition(":")
        try:
            if not hasattr(importlib.import_module(module), attr):
                return f"{module} has no {attr}"
        except Exception as e:  # noqa: BLE001 - any import failure means "not there yet"
            return f"cannot import {module}: {type(e).__name__}: {e}"
    if not _reachable(REDIS_URL, 6379):
        return f"Redis not reachable at {REDIS_URL}"
    if not _reachable(PG_DSN, 5432):
        return f"PostgreSQL not reachable at {PG_DSN}"
    return None


def config_sections(prefix: str, table: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The `limits` and `audit` sections of a fleet-mode gateway config."""
    return ({"backend": "redis", "redis_url": REDIS_URL, "key_prefix": prefix},
            {"backend": "postgres", "dsn": PG_DSN, "table": table})


def cleanup(prefix: str, table: str) -> list[str]:
    """Delete the run's Redis keys and drop its table; returns problems (never raises)."""
    return asyncio.run(acleanup(prefix, table))


async def acleanup(prefix: str, table: str) -> list[str]:
    """cleanup() for callers already on an event loop."""
    problems: list[str] = []
    try:
        import redis.asyncio as aioredis  # noqa: PLC0415

        r = aioredis.Redis.from_url(REDIS_URL, socket_timeout=5)
        try:
            keys = [k async for k in r.scan_iter(match=prefix + "*", count=1000)]
            for i in range(0, len(keys), 1000):
                await r.delete(*keys[i:i + 1000])
        finally:
            await r.aclose()
    except Exception as e:  # noqa: BLE001
        problems.append(f"redis cleanup: {e}")
    try:
        await _drop_table(table)
    except Exception as e:  # noqa: BLE001
        problems.append(f"postgres cleanup: {e}")
    return problems


async def _drop_table(table: str) -> None:
    import asyncpg  # noqa: PLC0415

    conn = await asyncpg.connect(PG_DSN, timeout=5)
    try:
        # The adapter may add side tables named after the main one; the name is unique to the run.
        names = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
                                 "AND tablename LIKE $1", table + "%")
        for row in names:
            await conn.execute(f'DROP TABLE IF EXISTS "{row["tablename"]}" CASCADE')
    finally:
        await conn.close()


def count_rows(table: str) -> int | None:
    """Audit rows the fleet gateway wrote (a sanity check that PostgreSQL really took them)."""
    async def go() -> int:
        import asyncpg  # noqa: PLC0415

        conn = await asyncpg.connect(PG_DSN, timeout=5)
        try:
            return int(await conn.fetchval(f'SELECT count(*) FROM "{table}"'))
        finally:
            await conn.close()

    try:
        return asyncio.run(go())
    except Exception:  # noqa: BLE001 - informational only
        return None
