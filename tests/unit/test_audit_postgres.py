"""What only the PostgreSQL audit store has: its schema, its errors, roles, lost connections."""
from __future__ import annotations

import asyncio
import socket
import traceback

import pytest

from adapters.audit.postgres import PostgresAuditStore
from gateway.audit.verify import verify
from gateway.errors import BackendError
from tests.support import pg
from tests.support.audit_rows import rows_of, settings, write_events
from tests.support.services import pg_dsn, unique

SECRET = "S3cr3t-pw"


@pytest.fixture
async def table():
    dsn, name = pg_dsn(), unique("audit_t_")
    yield name
    await pg.drop_table(dsn, name)


def make(table: str, dsn: str | None = None, **kw) -> PostgresAuditStore:
    return PostgresAuditStore(settings(backend="postgres", dsn=dsn or pg_dsn(), table=table, **kw))


def shown(e: BaseException) -> str:
    """Everything a log line with the traceback would show."""
    return "".join(traceback.format_exception(e))


async def test_schema_types_key_and_index(table):
    stores = [make(table) for _ in range(4)]
    await asyncio.gather(*(s.start() for s in stores))  # replicas starting together
    try:
        cols = {r["column_name"]: r["data_type"] for r in await pg.fetch(
            pg_dsn(), "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = $1",
            table)}
        assert (cols["chain_id"], cols["seq"], cols["ts"]) == ("text", "bigint", "timestamp with time zone")
        assert (cols["reasons"], cols["policy_input"], cols["stream"]) == ("json", "json", "boolean")
        assert cols["latency_ms"] == "double precision" and cols["status"] == "integer"
        indexes = [r["indexdef"] for r in await pg.fetch(
            pg_dsn(), "SELECT indexdef FROM pg_indexes WHERE tablename = $1", table)]
        assert any("UNIQUE" in d and "(chain_id, seq)" in d for d in indexes), indexes
        assert any(d.endswith("(ts)") for d in indexes), indexes
    finally:
        for s in stores:
            await s.aclose()


async def test_stored_values_are_plain_for_operators(table, tmp_path):
    s = make(table)
    await s.start()
    try:
        await write_events(s, tmp_path, 3)
        raw = await pg.fetch(pg_dsn(), f'SELECT * FROM "{table}" WHERE resource_name = $1 AND '
                                       "policy_input->'agent'->>'id' = $2 ORDER BY seq", "gpt-4o-mini", "billing-bot")
        assert [r["seq"] for r in raw] == [1, 2, 3]
        assert raw[0]["ts"].isoformat() == "2025-06-15T15:06:40.123456+00:00"
    finally:
        await s.aclose()


@pytest.mark.parametrize("stmt", [
    "UPDATE {t} SET policy_input = jsonb_set(policy_input::jsonb, '{{agent,tier}}', '4')::json WHERE seq = 37",
    "UPDATE {t} SET ts = ts + interval '1 microsecond' WHERE seq = 37",
    "UPDATE {t} SET reasons = '[\"ok\"]' WHERE seq = 37",
])
async def test_postgres_specific_edits_fail_verify(table, tmp_path, stmt):
    s = make(table)
    await s.start()
    try:
        await write_events(s, tmp_path, 60)
        assert await pg.execute(pg_dsn(), stmt.format(t=f'"{table}"')) == "UPDATE 1"
        b = (await verify(s)).chains[0].first_break
        assert (b.seq, b.reason) == (37, "edited")
    finally:
        await s.aclose()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("dsn, says", [
    (f"postgresql://portcullis:{SECRET}@127.0.0.1:{{port}}/test", "127.0.0.1:{port}/test"),
    (f"postgresql://postgres@127.0.0.1:5432/no_such_db_x?password={SECRET}", "does not exist"),
    # The server's own message repeats the password (here: as the database name).
    (f"postgresql://postgres:{SECRET}@127.0.0.1:5432/{SECRET}", "does not exist"),
    (f"postgresql://postgres:{SECRET}@127.0.0.1:port/test", "start failed"),
])
async def test_failures_are_backend_errors_that_never_show_the_password(table, dsn, says):
    port = closed_port()
    s = make(table, dsn=dsn.format(port=port), timeout_s=2)
    with pytest.raises(BackendError) as exc:
        await s.start()
    assert says.format(port=port) in str(exc.value)
    assert SECRET not in shown(exc.value)
    assert not await s.writable()


@pytest.mark.parametrize("grant, setup, refusal", [
    ("SELECT", "", "permission denied"),
    # Like a hot standby: every transaction of the session is read-only.
    ("SELECT, INSERT", "ALTER ROLE {role} SET default_transaction_read_only = on", "read-only transaction"),
])
async def test_a_read_only_role_can_read_and_verify_but_is_not_writable(table, tmp_path, grant, setup, refusal):
    owner = make(table)
    await owner.start()
    role = unique("auditor_")
    await pg.execute(pg_dsn(), f'CREATE ROLE "{role}" LOGIN')
    try:
        await write_events(owner, tmp_path, 5)
        await pg.execute(pg_dsn(), f'GRANT {grant} ON "{table}" TO "{role}"')
        if setup:
            await pg.execute(pg_dsn(), setup.format(role=f'"{role}"'))
        auditor = make(table, dsn=pg_dsn().replace("postgres@", f"{role}@"))
        await auditor.start()
        try:
            assert await owner.writable() and not await auditor.writable()
            assert (await verify(auditor)).rows == 5
            rows = await rows_of(auditor)
            with pytest.raises(BackendError) as exc:
                await auditor.insert_batch([dict(rows[-1], seq=6, prev_hash=rows[-1]["hash"])])
            assert refusal in str(exc.value)
        finally:
            await auditor.aclose()
    finally:
        await owner.aclose()
        await pg.execute(pg_dsn(), f'DROP OWNED BY "{role}"')
        await pg.execute(pg_dsn(), f'DROP ROLE "{role}"')


async def test_terminated_connections_are_errors_then_replaced(table, tmp_path):
    chain = unique("chain_")  # names this store's connections: application_name
    s = make(table, chain_id=chain, pool_min_size=2, pool_max_size=2)
    await s.start()
    try:
        await write_events(s, tmp_path, 10, chain_id=chain)
        ended = await pg.fetch(pg_dsn(), "SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity "
                                         "WHERE application_name = $1", f"portcullis-audit {chain}")
        assert ended and all(r["ok"] for r in ended)
        # Every call either works on a fresh connection or raises BackendError, never asyncpg's own.
        for _ in range(3):
            try:
                await s.last_link(chain)
            except BackendError:
                pass
        await write_events(s, tmp_path, 10, start=10, chain_id=chain)
        assert [r["seq"] for r in await rows_of(s)] == list(range(1, 21))
        assert (await verify(s)).ok
    finally:
        await s.aclose()
