"""The real PostgreSQL for tests: raw SQL, throwaway tables and databases.

Everything is async (asyncpg, one short connection per call): await it from
async tests, or run it on the servers' LoopThread from sync ones.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from gateway.settings import AuditSettings


def with_database(dsn: str, database: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path="/" + database))


async def execute(dsn: str, sql: str, *args: Any) -> str:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await conn.execute(sql, *args)
    finally:
        await conn.close()


async def fetch(dsn: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return [dict(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


async def drop_table(dsn: str, table: str) -> None:
    """The table, and what an audit table brings along: the console's rollup tables and their
    trigger function (adapters/audit/console_postgres.py names them after the table)."""
    base = table[:48]
    await execute(dsn, f'DROP TABLE IF EXISTS "{table}", "{base}_rollup", "{base}_minutes"')
    await execute(dsn, f'DROP FUNCTION IF EXISTS "{base}_rollup_fn"()')


async def create_database(dsn: str, name: str) -> str:
    """CREATE DATABASE `name` on the server of `dsn`; returns its DSN."""
    await execute(dsn, f'CREATE DATABASE "{name}"')
    return with_database(dsn, name)


async def set_connectable(dsn: str, name: str, allow: bool) -> None:
    """Open or shut a database for real: refuse new connections and end the open ones."""
    await execute(dsn, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allow).lower()}')
    if not allow:
        await execute(dsn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE datname = $1 AND pid <> pg_backend_pid()", name)


async def drop_database(dsn: str, name: str) -> None:
    await execute(dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def audit_rows(audit: AuditSettings, where: str = "1=1", args: tuple = ()) -> list[dict[str, Any]]:
    """Stored rows of a postgres audit config, as stored; `?` placeholders like sqlite3."""
    parts = where.split("?")
    where = "".join(p + (f"${i}" if i < len(parts) else "") for i, p in enumerate(parts, 1))
    try:
        return await fetch(audit.dsn, f'SELECT * FROM "{audit.table}" WHERE {where} '
                                      "ORDER BY chain_id, seq", *args)
    except asyncpg.UndefinedTableError:
        return []  # table not created yet
