"""Embedded audit store: one SQLite file in WAL mode, through aiosqlite.

Two connections: one for writes (serialized by a lock, so a `writable()` probe
cannot land inside a batch's transaction) and one for reads, which WAL lets
run while a batch commits. sqlite3 errors become gateway.errors.BackendError.

SQLite keeps writing into a database file that was deleted or renamed away
while open, without an error; `replaced()` (one os.stat) lets the writer see
that and `reopen()` the file at the configured path.
"""
from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path
from typing import Any, AsyncIterator, Mapping, Sequence

import aiosqlite
import orjson

from adapters.audit.console_sqlite import SQLiteConsoleQueries
from gateway.audit.chain import JSON_FIELDS, ROW_FIELDS, ChainConflict, row_from_store
from gateway.errors import BackendError
from gateway.settings import AuditSettings

_TYPES = {
    "seq": "INTEGER NOT NULL", "chain_id": "TEXT NOT NULL", "ts": "TEXT NOT NULL",
    "request_id": "TEXT NOT NULL", "tier": "INTEGER", "stream": "INTEGER", "cache_hit": "INTEGER",
    "status": "INTEGER", "latency_ms": "REAL", "upstream_ms": "REAL", "input_tokens": "INTEGER",
    "output_tokens": "INTEGER", "prev_hash": "TEXT NOT NULL", "hash": "TEXT NOT NULL",
}
_COLUMNS = ", ".join(ROW_FIELDS)
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS audit_log ("
    + ", ".join(f"{f} {_TYPES.get(f, 'TEXT')}" for f in ROW_FIELDS)
    + ", PRIMARY KEY (chain_id, seq))",
    "CREATE INDEX IF NOT EXISTS audit_log_ts ON audit_log (ts)",
)
# OR IGNORE makes spool replays idempotent; insert_batch then checks that every
# ignored row is the very same row (same hash), not a different one.
_INSERT = f"INSERT OR IGNORE INTO audit_log ({_COLUMNS}) VALUES ({', '.join('?' * len(ROW_FIELDS))})"
_JSON = orjson.OPT_SORT_KEYS
# `iter_inputs`: the columns `policy replay` reads, fetched this many rows at a time.
INPUT_FIELDS = ("ts", "agent_id", "action", "policy_input", "input_digest", "policy_revision")
# ... and with `shadow=True` (`policy shadow-report`), the serving decision and the shadow's.
SHADOW_FIELDS = ("decision", "reasons", "shadow_decision", "shadow_revision")
_CHUNK = 5000


def _values(row: Mapping[str, Any]) -> tuple[Any, ...]:
    out = []
    for f in ROW_FIELDS:
        v = row[f]
        if f in JSON_FIELDS and v is not None:
            v = orjson.dumps(v, option=_JSON).decode()
        elif isinstance(v, bool):
            v = int(v)
        out.append(v)
    return tuple(out)


class SQLiteAuditStore(SQLiteConsoleQueries):
    def __init__(self, settings: AuditSettings, path: Path, *, busy_timeout_ms: int = 2000) -> None:
        self._settings = settings
        self._path = Path(path)
        self._busy_timeout_ms = int(busy_timeout_ms)
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._file: tuple[int, int] | None = None  # (st_dev, st_ino) of the file opened

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self._path, isolation_level=None)  # explicit BEGIN/COMMIT
        await conn.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
        return conn

    async def start(self) -> None:
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = await self._connect()
            await self._writer.execute("PRAGMA journal_mode=WAL")
            await self._writer.execute("PRAGMA synchronous=NORMAL")
            for stmt in _SCHEMA:
                await self._writer.execute(stmt)
            await _add_missing_columns(self._writer)
            await self._console_schema()  # rollup tables, trigger, indexes (console_sqlite.py)
            self._reader = await self._connect()
            st = os.stat(self._path)
            self._file = (st.st_dev, st.st_ino)
        except (sqlite3.Error, OSError) as e:
            await self.aclose()
            raise BackendError(f"audit sqlite {self._path}: {e}") from e

    def replaced(self) -> bool:
        """True when the path no longer names the file the connections hold open."""
        if self._file is None:
            return False
        try:
            st = os.stat(self._path)
        except OSError:
            return True
        return (st.st_dev, st.st_ino) != self._file

    async def reopen(self) -> None:
        """Close the connections and open the file now at the path (a new one if it is gone)."""
        async with self._write_lock:
            await self.aclose()
            await self.start()

    def _conns(self) -> tuple[aiosqlite.Connection, aiosqlite.Connection]:
        if self._writer is None or self._reader is None:
            raise BackendError("audit sqlite store is not started")
        return self._writer, self._reader

    async def insert_batch(self, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        writer, _ = self._conns()
        params = [_values(r) for r in rows]
        async with self._write_lock:
            try:
                await writer.execute("BEGIN IMMEDIATE")
                try:
                    cur = await writer.executemany(_INSERT, params)
                    inserted: Sequence[Mapping[str, Any]] = rows
                    if cur.rowcount != len(rows):  # a replay: which rows are new? (the rollup counts them)
                        await _rollback(writer)
                        await writer.execute("BEGIN IMMEDIATE")
                        inserted = await self._insert_one_by_one(writer, rows, params)
                    await self._count_rows(writer, inserted)  # the console's rollup (console_sqlite.py)
                    await writer.execute("COMMIT")
                except BaseException:
                    await _rollback(writer)
                    raise
            except sqlite3.Error as e:
                raise BackendError(f"audit sqlite insert failed: {e}") from e

    async def _insert_one_by_one(self, conn: aiosqlite.Connection, rows: Sequence[Mapping[str, Any]],
                                 params: list[tuple[Any, ...]]) -> list[Mapping[str, Any]]:
        """The rows this batch adds; every row it skips must be the very row already stored."""
        inserted, skipped = [], []
        for r, p in zip(rows, params):
            async with conn.execute(_INSERT, p) as cur:
                (inserted if cur.rowcount == 1 else skipped).append(r)
        if skipped:
            await self._check_duplicates(conn, skipped)
        return inserted

    @staticmethod
    async def _check_duplicates(conn: aiosqlite.Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        for r in rows:
            async with conn.execute("SELECT hash FROM audit_log WHERE chain_id = ? AND seq = ?",
                                    (r["chain_id"], r["seq"])) as cur:
                found = await cur.fetchone()
            if found is None or found[0] != r["hash"]:
                raise ChainConflict(
                    f"audit row chain {r['chain_id']!r} seq {r['seq']} already stored with a different hash")

    async def last_link(self, chain_id: str) -> tuple[int, str] | None:
        _, reader = self._conns()
        try:
            async with reader.execute(
                    "SELECT seq, hash FROM audit_log WHERE chain_id = ? ORDER BY seq DESC LIMIT 1",
                    (chain_id,)) as cur:
                found = await cur.fetchone()
        except sqlite3.Error as e:
            raise BackendError(f"audit sqlite read failed: {e}") from e
        return (int(found[0]), str(found[1])) if found else None

    async def tail(self, n: int) -> list[dict[str, Any]]:
        _, reader = self._conns()
        sql = (f"SELECT {_COLUMNS} FROM audit_log ORDER BY ts DESC, chain_id DESC, seq DESC LIMIT ?")
        try:
            async with reader.execute(sql, (max(0, int(n)),)) as cur:
                found = await cur.fetchall()
        except sqlite3.Error as e:
            raise BackendError(f"audit sqlite read failed: {e}") from e
        return [row_from_store(dict(zip(ROW_FIELDS, r))) for r in reversed(found)]

    async def iter_chain(self, chain_id: str | None = None) -> AsyncIterator[dict[str, Any]]:
        _, reader = self._conns()
        sql = f"SELECT {_COLUMNS} FROM audit_log"
        args: tuple[Any, ...] = ()
        if chain_id is not None:
            sql, args = sql + " WHERE chain_id = ?", (chain_id,)
        try:
            async with reader.execute(sql + " ORDER BY chain_id, seq", args) as cur:
                cur.arraysize = 1000
                while rows := await cur.fetchmany(1000):
                    for r in rows:
                        yield row_from_store(dict(zip(ROW_FIELDS, r)))
        except sqlite3.Error as e:
            raise BackendError(f"audit sqlite read failed: {e}") from e

    async def iter_inputs(self, since: str | None = None, until: str | None = None, agent: str | None = None,
                          action: str | None = None, *, shadow: bool = False) -> AsyncIterator[dict[str, Any]]:
        """Decided inputs for `policy replay` (see AuditStore.iter_inputs): filtered here, in
        chunks; ts is ISO-8601 UTC text, so the string bounds compare in time order."""
        _, reader = self._conns()
        where, args = ["input_digest IS NOT NULL", "policy_input IS NOT NULL"], []
        fields = INPUT_FIELDS + SHADOW_FIELDS if shadow else INPUT_FIELDS
        if shadow:
            where.append("shadow_revision IS NOT NULL")
        for cond, v in (("ts >= ?", since), ("ts < ?", until), ("agent_id = ?", agent), ("action = ?", action)):
            if v is not None:
                where.append(cond)
                args.append(v)
        sql = f"SELECT {', '.join(fields)} FROM audit_log WHERE {' AND '.join(where)}"
        try:
            async with reader.execute(sql, args) as cur:
                while rows := await cur.fetchmany(_CHUNK):
                    for r in rows:
                        yield dict(zip(fields, r))
        except sqlite3.Error as e:
            raise BackendError(f"audit sqlite read failed: {e}") from e

    async def writable(self) -> bool:
        """Take and drop the write lock: fails while another writer holds the database."""
        if self._writer is None:
            return False
        async with self._write_lock:
            try:
                await self._writer.execute("BEGIN IMMEDIATE")
                await self._writer.execute("ROLLBACK")
                return True
            except sqlite3.Error:
                return False

    async def aclose(self) -> None:
        for conn in (self._writer, self._reader):
            if conn is not None:
                try:
                    await conn.close()
                except sqlite3.Error:
                    pass
        self._writer = self._reader = None
        self._file = None


async def _add_missing_columns(conn: aiosqlite.Connection) -> None:
    """Migrate a file made by an older version: add the columns added since (trace_id).

    They are nullable, so old rows read back as null, which the chain's canonical
    form treats as absent: those rows still verify.
    """
    async with conn.execute("PRAGMA table_info(audit_log)") as cur:
        have = {r[1] for r in await cur.fetchall()}
    for f in ROW_FIELDS:
        if f not in have:
            try:
                await conn.execute(f"ALTER TABLE audit_log ADD COLUMN {f} {_TYPES.get(f, 'TEXT')}")
            except sqlite3.OperationalError as e:
                if "duplicate column" not in str(e):  # another process migrated it first
                    raise


async def _rollback(conn: aiosqlite.Connection) -> None:
    try:
        await conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass  # no transaction open (BEGIN itself failed) or it was already rolled back
