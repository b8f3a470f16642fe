"""Each audit store the project ships, as a place a test writes to and tampers with.

One class per backend, used by the store contract suite (unit) and by the end-to-end
audit tests (a gateway configured with `overrides`). `sql` runs raw SQL with `{t}`
for the table and `$1` placeholders, and returns the number of rows it touched.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from adapters.audit.postgres import PostgresAuditStore
from adapters.audit.sqlite import SQLiteAuditStore
from tests.support import pg
from tests.support.audit_rows import settings
from tests.support.services import pg_dsn, unique

BACKENDS = ["sqlite", "postgres"]


class SQLiteBackend:
    table = "audit_log"

    def __init__(self, tmp: Path) -> None:
        self.db = tmp / "var" / "audit.db"
        self.overrides: dict[str, Any] = {"audit__path": str(self.db)}
        self.stores: list[Any] = []

    def store(self, **kw: Any) -> SQLiteAuditStore:
        s = SQLiteAuditStore(settings(**kw), self.db)
        self.stores.append(s)
        return s

    async def sql(self, stmt: str, *args: Any) -> int:
        con = sqlite3.connect(self.db, isolation_level=None, timeout=5)
        try:
            return con.execute(stmt.format(t=self.table).replace("$1", "?"), args).rowcount
        finally:
            con.close()

    async def stored_bytes(self) -> bytes:
        """Everything on disk, pages and WAL alike: a secret must be in none of it."""
        return b"".join(p.read_bytes() for p in sorted(self.db.parent.glob(self.db.name + "*")))

    async def cleanup(self) -> None:
        for s in self.stores:
            await s.aclose()


class PostgresBackend(SQLiteBackend):
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.table = unique("audit_t_")
        self.overrides = {"audit__backend": "postgres", "audit__dsn": dsn, "audit__table": self.table}
        self.stores = []

    def store(self, **kw: Any) -> PostgresAuditStore:
        s = PostgresAuditStore(settings(backend="postgres", dsn=self.dsn, table=self.table, **kw))
        self.stores.append(s)
        return s

    async def sql(self, stmt: str, *args: Any) -> int:
        status = await pg.execute(self.dsn, stmt.format(t=f'"{self.table}"'), *args)
        return int(status.rsplit(" ", 1)[-1])

    async def stored_bytes(self) -> bytes:
        rows = await pg.fetch(self.dsn, f'SELECT t::text AS row FROM "{self.table}" t')
        return "\n".join(r["row"] for r in rows).encode()

    async def cleanup(self) -> None:
        await super().cleanup()
        await pg.drop_table(self.dsn, self.table)


def backend(name: str, tmp: Path) -> SQLiteBackend:
    """`name` from BACKENDS; PostgreSQL is the machine's (skipped if absent, failed under CI)."""
    return SQLiteBackend(tmp) if name == "sqlite" else PostgresBackend(pg_dsn())


# The pytest fixtures of the tests that run against every store: import them by name.
@pytest.fixture(params=BACKENDS, name="backend")
async def backend_fixture(request, tmp_path):  # noqa: ANN001 - pytest's fixtures
    b = backend(request.param, tmp_path)
    yield b
    await b.cleanup()


@pytest.fixture(name="store")
async def store_fixture(backend):  # noqa: ANN001 - the fixture above
    s = backend.store()
    await s.start()
    return s
