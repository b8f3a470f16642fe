"""What every PostgreSQL store shares (the audit store, the lifecycle store): an asyncpg pool,
errors that never show the DSN's password, the readiness probe, and closing within a timeout.

asyncpg and socket errors become gateway.errors.BackendError, their text scrubbed of the DSN's
password (as written and percent-decoded); a cause whose text would leak it is not chained.
"""
from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import asyncpg

from gateway.errors import BackendError

ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError)


def dsn_secrets(dsn: str) -> list[str]:
    """The password of a DSN (as written and percent-decoded), wherever it is given."""
    try:
        parts = urlsplit(dsn)
        found = [parts.password] if parts.password else []
        found += [v for k, v in parse_qsl(parts.query, keep_blank_values=False) if k == "password"]
    except ValueError:
        return [dsn]  # unparseable: treat the whole DSN as secret
    return [s for p in found for s in {p, unquote(p)} if s]


def dsn_where(dsn: str) -> str:
    """user@host:port/db, for messages."""
    try:
        p = urlsplit(dsn)
        user = f"{p.username}@" if p.username else ""
        port = f":{p.port}" if p.port else ""
        return f"{user}{p.hostname or 'localhost'}{port}{p.path}"
    except ValueError:
        return "(unparseable dsn)"


class PostgresBase:
    """Mixed into a store: call `_init_pg(dsn, label, timeout_s)` first; `{where}` in the label is
    the DSN's user@host:port/db."""

    dependency = "postgres"  # gateway.readiness.Dependency: probed by /readyz, reconnected at boot

    def _init_pg(self, dsn: str, label: str, timeout_s: float) -> None:
        self._timeout = timeout_s
        self._secrets = dsn_secrets(dsn)
        self._label = self._scrub(label.format(where=dsn_where(dsn)))
        self._pool: asyncpg.Pool | None = None
        self._down: str | None = None  # why the last start() failed, for /readyz

    def _scrub(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "***")
        return text

    def _error(self, what: str, e: BaseException) -> BackendError:
        """A BackendError for `e` whose text (and traceback) cannot show the DSN's password."""
        text = f"{type(e).__name__}: {e}"
        scrubbed = self._scrub(text)
        err = BackendError(f"{self._label}: {what}: {scrubbed}")
        err.__cause__ = e if scrubbed == text else None  # a leaky cause is not chained
        err.__suppress_context__ = True
        return err

    def _pool_or_fail(self) -> asyncpg.Pool:
        if self._pool is None:
            raise BackendError(self._down or f"{self._label}: store is not started")
        return self._pool

    async def _failed_start(self, e: BaseException) -> BackendError:
        """start() failed: remember why for /readyz, close what was opened, the error to raise."""
        err = self._error("start failed", e)
        self._down = str(err)
        await self.aclose()
        return err

    async def probe(self) -> str | None:
        """SELECT 1 on the pool: None when PostgreSQL answers, else why not (no password)."""
        if self._pool is None:
            return self._down or f"{self._label}: not connected"
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                await conn.fetchval("SELECT 1")
        except ERRORS as e:
            return str(self._error("probe failed", e))
        return None

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), self._timeout)
        except ERRORS:
            pool.terminate()

    async def _fetch(self, sql: str, *args: Any, what: str = "read failed") -> list[asyncpg.Record]:
        pool = self._pool_or_fail()
        try:
            async with pool.acquire(timeout=self._timeout) as conn:
                return await conn.fetch(sql, *args)
        except ERRORS as e:
            raise self._error(what, e)
