"""Fleet audit store: one PostgreSQL table shared by every replica, through an asyncpg pool.

Each replica appends its own chain (chain_id), so rows are keyed (chain_id, seq)
and nothing here assumes a single writer. A batch is one transaction: binary COPY
into a per-connection temp table (ON COMMIT DELETE ROWS), then `INSERT ... SELECT
... ON CONFLICT DO NOTHING` into the real table (COPY alone cannot skip
conflicts; this measured about twice as fast as INSERT ... SELECT FROM unnest).
Spool replays are therefore idempotent, and when rows were skipped the stored
hashes are compared, exactly as the SQLite store does: a different row at the
same (chain_id, seq) is a ChainConflict.

Types are chosen so a stored row reads back to the same canonical bytes:
ts is timestamptz (microseconds, read back as a UTC datetime that row_from_store
formats like format_ts), reasons/policy_input are `json` (kept as the exact text
written; jsonb would renumber floats and refuse \\u0000), chain_id sorts
byte-wise (COLLATE "C") like SQLite. PostgreSQL text cannot hold NUL, which a
client can put into a row (a model name, a 404 path), so a text value holding
NUL, or starting with U+E000, is stored as U+E000 + its JSON string and decoded
on read: lossless, so such a row still verifies, and one request cannot wedge
a whole batch. asyncpg and socket errors become gateway.errors.BackendError;
messages name the server but never its password.
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, AsyncIterator, Mapping, Sequence

import asyncpg
import orjson

from adapters.audit.console_postgres import PostgresConsoleQueries
from adapters.audit.pg_text import from_text as _untext
from adapters.audit.pg_text import to_text as _text
from adapters.pgbase import ERRORS as _ERRORS
from adapters.pgbase import PostgresBase
from gateway.audit.chain import (
    JSON_FIELDS,
    ROW_FIELDS,
    ChainConflict,
    format_ts,
    row_from_store,
)
from gateway.errors import BackendError
from gateway.settings import AuditSettings

_TYPES = {
    "chain_id": 'text COLLATE "C" NOT NULL', "seq": "bigint NOT NULL", "ts": "timestamptz NOT NULL",
    "request_id": "text NOT NULL", "tier": "integer", "stream": "boolean", "reasons": "json",
    "cache_hit": "boolean", "status": "integer", "latency_ms": "double precision",
    "upstream_ms": "double precision", "input_tokens": "bigint", "output_tokens": "bigint",
    "policy_input": "json", "shadow_decision": "json", "prev_hash": "text NOT NULL", "hash": "text NOT NULL",
}
_COLUMNS = ", ".join(ROW_FIELDS)
_TEXT_FIELDS = frozenset(f for f in ROW_FIELDS if f not in _TYPES) | {"chain_id", "request_id"}
_STAGE = "portcullis_audit_stage"
_PAGE = 1000
_CHUNK = 5000  # iter_inputs: rows per cursor fetch


# Not on a read-only server or session (a hot standby serving `audit verify`): there
# inserts fail anyway, as BackendError, while reads keep working.
_STAGE_DDL = (
    "DO $$ BEGIN IF NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off' THEN "
    f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} ("
    + ", ".join(f"{f} {_TYPES.get(f, 'text')}" for f in ROW_FIELDS)
    + ") ON COMMIT DELETE ROWS; END IF; END $$")


def _row(record: asyncpg.Record) -> dict[str, Any]:
    return row_from_store({f: _untext(v) if f in _TEXT_FIELDS else v for f, v in record.items()})


def _json(v: Any) -> str:
    return orjson.dumps(v, option=orjson.OPT_SORT_KEYS).decode()


def _ts(v: Any) -> Any:
    return datetime.fromisoformat(v) if isinstance(v, str) else v


# Per column, in ROW_FIELDS order: how a value is encoded for the table (None: as is).
_ENCODE = tuple(_json if f in JSON_FIELDS else _ts if f == "ts" else _text if f in _TEXT_FIELDS else None
                for f in ROW_FIELDS)


def _record(row: Mapping[str, Any]) -> tuple[Any, ...]:
    """One row as COPY takes it, in ROW_FIELDS order."""
    return tuple(v if enc is None or v is None else enc(v)
                 for enc, v in zip(_ENCODE, [row[f] for f in ROW_FIELDS]))


async def _make_stage(conn: asyncpg.Connection) -> None:
    """Pool `init`: every connection, new or replacing a lost one, gets its staging table."""
    await conn.execute(_STAGE_DDL)


class PostgresAuditStore(PostgresConsoleQueries, PostgresBase):

    def __init__(self, settings: AuditSettings, path: Path | None = None) -> None:
        # `path` is the SQLite file; accepted so every store is built the same way, unused here.
        self._settings = settings
        self._table = f'"{settings.table}"'  # settings validated it as a plain identifier
        self._init_pg(settings.dsn, f"audit postgres {{where}} table {settings.table}", settings.timeout_s)
        t, cols = self._table, _COLUMNS
        self._schema = (
            f"CREATE TABLE IF NOT EXISTS {t} ("
            + ", ".join(f"{f} {_TYPES.get(f, 'text')}" for f in ROW_FIELDS)
            + ", PRIMARY KEY (chain_id, seq))",
            f'CREATE INDEX IF NOT EXISTS "{settings.table[:59]}_ts" ON {t} (ts)',
        )
        self._insert = (f"INSERT INTO {t} ({cols}) SELECT {cols} FROM {_STAGE} "
                        "ON CONFLICT (chain_id, seq) DO NOTHING")
        # The first skipped row whose stored hash differs (or that is not there at all).
        self._conflict = (
            f"SELECT b.chain_id, b.seq FROM {_STAGE} b LEFT JOIN {t} s "
            "ON s.chain_id = b.chain_id AND s.seq = b.seq WHERE s.hash IS DISTINCT FROM b.hash LIMIT 1")
        self._last = f"SELECT seq, hash FROM {t} WHERE chain_id = $1 ORDER BY seq DESC LIMIT 1"
        self._tail = f"SELECT {cols} FROM {t} ORDER BY ts DESC, chain_id DESC, seq DESC LIMIT $1"
        self._first_page = f"SELECT {cols} FROM {t} ORDER BY chain_id, seq LIMIT {_PAGE}"
        self._next_page = (f"SELECT {cols} FROM {t} WHERE (chain_id, seq) > ($1, $2) "
                           f"ORDER BY chain_id, seq LIMIT {_PAGE}")
        self._chain_first = f"SELECT {cols} FROM {t} WHERE chain_id = $1 ORDER BY seq LIMIT {_PAGE}"
        self._chain_next = (f"SELECT {cols} FROM {t} WHERE chain_id = $1 AND seq > $2 "
                            f"ORDER BY seq LIMIT {_PAGE}")

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        s = self._settings
        try:
            self._pool = await asyncpg.create_pool(
                s.dsn, min_size=min(s.pool_min_size, s.pool_max_size), max_size=s.pool_max_size,
                timeout=self._timeout, command_timeout=self._timeout, init=_make_stage,
                server_settings={"application_name": f"portcullis-audit {s.chain_id}"[:63]})
            async with self._pool.acquire(timeout=self._timeout) as conn, conn.transaction():
                # Replicas starting together: concurrent CREATE ... IF NOT EXISTS can still collide.
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"portcullis:{s.table}")
                # DDL only when the table is missing, so a role granted just INSERT and SELECT
                # on a table made by a migration (or SELECT, for `audit verify`) can start.
                if await conn.fetchval("SELECT to_regclass($1) IS NULL", self._table):
                    for stmt in self._schema:
                        await conn.execute(stmt)
                else:
                    await self._add_missing_columns(conn)
                await self._console_schema(conn)  # rollup tables, trigger, indexes (console_postgres.py)
        except (*_ERRORS, ValueError) as e:
            raise await self._failed_start(e)  # its cause is set (scrubbed) by _error()
        self._down = None

    async def _add_missing_columns(self, conn: asyncpg.Connection) -> None:
        """Migrate a table made by an older version: add the nullable columns added since
        (trace_id; null reads as absent in the chain's canonical form, so old rows verify)."""
        have = {r["attname"] for r in await conn.fetch(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0 "
            "AND NOT attisdropped", self._table)}
        for f in ROW_FIELDS:
            if f not in have:
                # Fails (and so does start) for a role that may not ALTER: the inserts would too.
                await conn.execute(f"ALTER TABLE {self._table} ADD COLUMN IF NOT EXISTS {f} "
                                   f"{_TYPES.get(f, 'text')}")

    # ---- writes ----------------------------------------------------------------------

    async def insert_batch(self, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        pool = self._pool_or_fail()
        try:
            records = [_record(r) for r in rows]
        except (TypeError, ValueError, orjson.JSONEncodeError) as e:
            raise BackendError(f"{self._label}: a row cannot be stored: {e}") from e
        try:
            async with pool.acquire(timeout=self._timeout) as conn, conn.transaction():
                await conn.copy_records_to_table(_STAGE, records=records, columns=ROW_FIELDS)
                status = await conn.execute(self._insert)
                if int(status.rsplit(" ", 1)[-1]) != len(rows):
                    await self._check_skipped(conn)
        except ChainConflict:
            raise
        except asyncpg.UndefinedTableError as e:
            # No staging table: the connection came up read-only (see _STAGE_DDL).
            what = "refused: read-only transaction (hot standby?)" if _STAGE in str(e) else "failed"
            raise self._error(f"insert of {len(rows)} rows {what}", e)
        except _ERRORS as e:
            raise self._error(f"insert of {len(rows)} rows failed", e)

    async def _check_skipped(self, conn: asyncpg.Connection) -> None:
        """Rows ON CONFLICT skipped must be the very rows already stored (a replay)."""
        found = await conn.fetchrow(self._conflict)
        if found is not None:
            raise ChainConflict(f"audit row chain {_untext(found['chain_id'])!r} seq {found['seq']} "
                                "already stored with a different hash")

    async def writable(self) -> bool:
        """Can this replica insert now: a primary, not read-only, INSERT granted on the table."""
        if self._pool is None:
            return False
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                return bool(await conn.fetchval(
                    "SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off' "
                    "AND has_table_privilege($1, 'INSERT')", self._table))
        except _ERRORS:
            return False

    # ---- reads -----------------------------------------------------------------------

    async def last_link(self, chain_id: str) -> tuple[int, str] | None:
        found = await self._fetch(self._last, _text(chain_id))
        return (int(found[0]["seq"]), str(found[0]["hash"])) if found else None

    async def tail(self, n: int) -> list[dict[str, Any]]:
        found = await self._fetch(self._tail, max(0, int(n)))
        return [_row(r) for r in reversed(found)]

    async def iter_chain(self, chain_id: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """Every row ordered by (chain_id, seq), a page at a time (keyset on the primary key).

        No connection or transaction is held between pages, so a long verify does
        not pin a pool slot or hold back vacuum while the writers keep appending.
        """
        key = None if chain_id is None else _text(chain_id)
        if key is None:
            page = await self._fetch(self._first_page)
        else:
            page = await self._fetch(self._chain_first, key)
        while page:
            for r in page:
                yield _row(r)
            if len(page) < _PAGE:
                return
            last = page[-1]
            if key is None:
                page = await self._fetch(self._next_page, last["chain_id"], last["seq"])
            else:
                page = await self._fetch(self._chain_next, key, last["seq"])

    async def iter_inputs(self, since: str | None = None, until: str | None = None, agent: str | None = None,
                          action: str | None = None, *, shadow: bool = False) -> AsyncIterator[dict[str, Any]]:
        """Decided inputs for `policy replay` (see AuditStore.iter_inputs), filtered by the server
        and read through a server-side cursor, a chunk at a time, in one read-only transaction
        (one consistent snapshot while the writers keep appending)."""
        where, args = ["input_digest IS NOT NULL", "policy_input IS NOT NULL"], []
        for cond, v in (("ts >=", _ts(since)), ("ts <", _ts(until)), ("agent_id =", _text(agent)),
                        ("action =", _text(action))):
            if v is not None:
                args.append(v)
                where.append(f"{cond} ${len(args)}")
        cols = "ts, agent_id, action, policy_input, input_digest, policy_revision"
        if shadow:  # `policy shadow-report`: sampled rows, with the serving and the shadow decision
            where.append("shadow_revision IS NOT NULL")
            cols += ", decision, reasons, shadow_decision, shadow_revision"
        sql = f"SELECT {cols} FROM {self._table} WHERE {' AND '.join(where)}"
        pool = self._pool_or_fail()
        try:
            async with pool.acquire(timeout=self._timeout) as conn, conn.transaction(readonly=True):
                cur = await conn.cursor(sql, *args)
                while rows := await cur.fetch(_CHUNK):
                    for r in rows:
                        row = {"ts": format_ts(r[0]), "agent_id": _untext(r[1]), "action": _untext(r[2]),
                               "policy_input": r[3], "input_digest": _untext(r[4]),
                               "policy_revision": _untext(r[5])}
                        if shadow:
                            row.update(decision=_untext(r[6]), reasons=r[7], shadow_decision=r[8],
                                       shadow_revision=_untext(r[9]))
                        yield row
        except _ERRORS as e:
            raise self._error("read failed", e)
