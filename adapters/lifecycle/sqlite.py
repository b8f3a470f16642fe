"""Embedded agent state store: one SQLite file in WAL mode, through one aiosqlite connection.

Every operation holds one asyncio lock, so a read never sees another coroutine's open
transaction on the shared connection; writes run in BEGIN IMMEDIATE, so a second process
on the same file (the CLI working on the store directly) waits for the lock instead of
interleaving a read-modify-write. sqlite3 errors become gateway.errors.BackendError.
"""
from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from adapters.lifecycle import rows
from adapters.lifecycle.rows import (
    APPROVAL_COLUMNS,
    APPROVAL_DECISIONS,
    CHANGE_COLUMNS,
    EVENT_COLUMNS,
    PROPOSAL_COLUMNS,
    PROPOSAL_DECISIONS,
    REPLICA_COLUMNS,
    REPORT_COLUMNS,
    STATE_COLUMNS,
    Tables,
)
from gateway.errors import BackendError
from gateway.lifecycle.model import (
    AgentState,
    Approval,
    GovernanceEvent,
    LifecycleChange,
    Outcome,
    Proposal,
    StoredReport,
)
from gateway.settings_lifecycle import LifecycleSettings


def _schema(t: Tables) -> tuple[str, ...]:
    return (
        (f"CREATE TABLE IF NOT EXISTS {t.state} (agent_id TEXT PRIMARY KEY, revoked INTEGER NOT NULL DEFAULT 0, "
        "revoked_reason TEXT, tier INTEGER, maturity TEXT, window_start REAL NOT NULL DEFAULT 0, "
        "total_errors INTEGER NOT NULL DEFAULT 0, violations INTEGER NOT NULL DEFAULT 0, "
        "same_errors TEXT NOT NULL DEFAULT '{}', consecutive_compliant INTEGER NOT NULL DEFAULT 0, "
        "budget_warned INTEGER NOT NULL DEFAULT 0, updated_at REAL NOT NULL DEFAULT 0, "
        "version INTEGER NOT NULL DEFAULT 0)"),
        (f"CREATE TABLE IF NOT EXISTS {t.changes} (id INTEGER PRIMARY KEY AUTOINCREMENT, agent_id TEXT NOT NULL, "
        "change TEXT NOT NULL, actor TEXT NOT NULL, reason TEXT NOT NULL, old TEXT NOT NULL, new TEXT NOT NULL, "
        "ts REAL NOT NULL, rule TEXT)"),
        f"CREATE INDEX IF NOT EXISTS {t.changes}_agent_ts ON {t.changes} (agent_id, ts)",
        f"CREATE INDEX IF NOT EXISTS {t.changes}_ts ON {t.changes} (ts)",
        (f"CREATE TABLE IF NOT EXISTS {t.proposals} (id TEXT PRIMARY KEY, agent_id TEXT NOT NULL, "
        "created_at REAL NOT NULL, from_tier INTEGER NOT NULL, to_tier INTEGER NOT NULL, "
        "from_maturity TEXT NOT NULL, to_maturity TEXT NOT NULL, status TEXT NOT NULL, reason TEXT NOT NULL, "
        "decided_by TEXT, decided_at REAL)"),
        # At most one pending proposal per agent: add_proposal's "one is pending" answer.
        (f"CREATE UNIQUE INDEX IF NOT EXISTS {t.proposals}_pending ON {t.proposals} (agent_id) "
        "WHERE status = 'pending'"),
        (f"CREATE TABLE IF NOT EXISTS {t.approvals} (id TEXT PRIMARY KEY, agent_id TEXT NOT NULL, "
        "action TEXT NOT NULL, resource_type TEXT, resource_name TEXT, input_digest TEXT NOT NULL, "
        "reason TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL NOT NULL, status TEXT NOT NULL, "
        "decided_by TEXT, decided_at REAL, used_at REAL, used_by_request TEXT)"),
        f"CREATE INDEX IF NOT EXISTS {t.approvals}_created ON {t.approvals} (created_at)",
        (f"CREATE TABLE IF NOT EXISTS {t.events} (id TEXT PRIMARY KEY, ts REAL NOT NULL, agent_id TEXT, "
        "workspace TEXT, event_type TEXT NOT NULL, severity TEXT NOT NULL, details TEXT NOT NULL)"),
        f"CREATE INDEX IF NOT EXISTS {t.events}_ts ON {t.events} (ts)",
        (f"CREATE TABLE IF NOT EXISTS {t.reports} (id TEXT PRIMARY KEY, created_at REAL NOT NULL, "
        "period_start REAL NOT NULL, period_end REAL NOT NULL, body TEXT NOT NULL)"),
        f"CREATE TABLE IF NOT EXISTS {t.flags} (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        (f"CREATE TABLE IF NOT EXISTS {t.replicas} (replica_id TEXT PRIMARY KEY, host TEXT NOT NULL, "
         "pid INTEGER NOT NULL, revision TEXT, started_at REAL NOT NULL, last_seen REAL NOT NULL)"),
    )


def _marks(n: int) -> str:
    return ", ".join("?" * n)


class SQLiteLifecycleStore:
    def __init__(self, settings: LifecycleSettings, path: Path, *, busy_timeout_ms: int = 5000) -> None:
        self._settings = settings
        self._path = Path(path)
        self._busy_timeout_ms = int(busy_timeout_ms)
        self._t = Tables.named(settings.table_prefix)
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        t = self._t
        self._upsert_state = (
            f"INSERT INTO {t.state} ({', '.join(STATE_COLUMNS)}) VALUES ({_marks(len(STATE_COLUMNS))}) "
            "ON CONFLICT (agent_id) DO UPDATE SET "
            + ", ".join(f"{c} = excluded.{c}" for c in STATE_COLUMNS[1:]))
        self._insert_change = (f"INSERT INTO {t.changes} ({', '.join(CHANGE_COLUMNS)}) "
                               f"VALUES ({_marks(len(CHANGE_COLUMNS))})")

    # ---- connection ------------------------------------------------------------------

    async def start(self) -> None:
        # Under the lock, and the connection published only once its tables exist: a call
        # arriving meanwhile waits instead of starting a transaction inside this one.
        async with self._lock:
            conn = None
            try:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                conn = await aiosqlite.connect(self._path, isolation_level=None)  # explicit BEGIN
                conn.row_factory = sqlite3.Row
                await conn.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
                await conn.execute("PRAGMA journal_mode=WAL")
                await conn.execute("PRAGMA synchronous=NORMAL")
                await conn.execute("BEGIN IMMEDIATE")  # another process creating the tables too: one at a time
                for stmt in _schema(self._t):
                    await conn.execute(stmt)
                await conn.execute("COMMIT")
            except (sqlite3.Error, OSError) as e:
                if conn is not None:
                    try:
                        await conn.close()
                    except sqlite3.Error:
                        pass
                raise BackendError(f"lifecycle sqlite {self._path}: {e}") from e
            self._conn = conn

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except sqlite3.Error:
                pass

    def _connection(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise BackendError("lifecycle sqlite store is not started")
        return self._conn

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        """One BEGIN IMMEDIATE transaction, committed when the block ends without an error."""
        conn = self._connection()
        async with self._lock:
            try:
                await conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    await conn.execute("COMMIT")
                except BaseException:
                    try:
                        await conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # BEGIN failed, or SQLite already rolled back
                    raise
            except sqlite3.Error as e:
                raise BackendError(f"lifecycle sqlite write failed: {e}") from e

    async def _fetch(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        conn = self._connection()
        async with self._lock:
            try:
                async with conn.execute(sql, tuple(args)) as cur:
                    return list(await cur.fetchall())
            except sqlite3.Error as e:
                raise BackendError(f"lifecycle sqlite read failed: {e}") from e

    @staticmethod
    async def _one(conn: aiosqlite.Connection, sql: str, args: Sequence[Any]) -> sqlite3.Row | None:
        async with conn.execute(sql, tuple(args)) as cur:
            return await cur.fetchone()

    # ---- agent state -----------------------------------------------------------------

    async def states(self) -> dict[str, AgentState]:
        found = await self._fetch(f"SELECT * FROM {self._t.state}")
        return {r["agent_id"]: rows.state_from(r) for r in found}

    async def state(self, agent_id: str) -> AgentState | None:
        found = await self._fetch(f"SELECT * FROM {self._t.state} WHERE agent_id = ?", (agent_id,))
        return rows.state_from(found[0]) if found else None

    async def _locked_state(self, conn: aiosqlite.Connection, agent_id: str) -> AgentState | None:
        found = await self._one(conn, f"SELECT * FROM {self._t.state} WHERE agent_id = ?", (agent_id,))
        return rows.state_from(found) if found else None

    async def count(self, outcome: Outcome, window_s: float) -> AgentState:
        rows.deltas(outcome)  # refuse an unknown kind before taking the write lock
        async with self._write() as conn:
            new = rows.counted(await self._locked_state(conn, outcome.agent_id), outcome, window_s)
            await conn.execute(self._upsert_state, rows.state_values(new))
        return new

    async def apply(self, change: LifecycleChange) -> AgentState:
        async with self._write() as conn:
            new = rows.applied(await self._locked_state(conn, change.agent_id), change)
            await conn.execute(self._upsert_state, rows.state_values(new))
            await conn.execute(self._insert_change, rows.change_values(change))
        return new

    async def changes(self, agent_id: str | None = None, since: float = 0.0,
                      limit: int = 1000) -> list[LifecycleChange]:
        where, args = "ts >= ?", [since]
        if agent_id is not None:
            where, args = where + " AND agent_id = ?", args + [agent_id]
        found = await self._fetch(f"SELECT * FROM {self._t.changes} WHERE {where} "
                                  "ORDER BY ts DESC, id DESC LIMIT ?", (*args, max(0, int(limit))))
        return [rows.change_from(r) for r in found]

    # ---- proposals -------------------------------------------------------------------

    async def add_proposal(self, proposal: Proposal) -> bool:
        async with self._write() as conn:
            cur = await conn.execute(
                f"INSERT INTO {self._t.proposals} ({', '.join(PROPOSAL_COLUMNS)}) "
                f"VALUES ({_marks(len(PROPOSAL_COLUMNS))}) ON CONFLICT DO NOTHING", rows.proposal_values(proposal))
            return cur.rowcount == 1

    async def proposals(self, status: str | None = None, agent_id: str | None = None) -> list[Proposal]:
        """Newest first."""
        where, args = _filters(status=status, agent_id=agent_id)
        found = await self._fetch(f"SELECT * FROM {self._t.proposals}{where} ORDER BY created_at DESC, id DESC",
                                  args)
        return [rows.proposal_from(r) for r in found]

    async def proposal(self, proposal_id: str) -> Proposal | None:
        found = await self._fetch(f"SELECT * FROM {self._t.proposals} WHERE id = ?", (proposal_id,))
        return rows.proposal_from(found[0]) if found else None

    async def decide_proposal(self, proposal_id: str, status: str, by: str, reason: str,
                              at: float) -> Proposal | None:
        """A non-empty `reason` replaces the proposal's (the decision's reason is the one kept)."""
        if status not in PROPOSAL_DECISIONS:
            raise ValueError(f"a proposal cannot be decided as {status!r}")
        async with self._write() as conn:
            found = await self._one(
                conn, f"UPDATE {self._t.proposals} SET status = ?, decided_by = ?, decided_at = ?, "
                "reason = CASE WHEN ? = '' THEN reason ELSE ? END WHERE id = ? AND status = 'pending' RETURNING *",
                (status, rows.clean(by), at, rows.clean(reason), rows.clean(reason), proposal_id))
        return rows.proposal_from(found) if found else None

    # ---- approvals -------------------------------------------------------------------

    async def add_approval(self, approval: Approval) -> None:
        async with self._write() as conn:
            await conn.execute(f"INSERT INTO {self._t.approvals} ({', '.join(APPROVAL_COLUMNS)}) "
                               f"VALUES ({_marks(len(APPROVAL_COLUMNS))})", rows.approval_values(approval))

    async def approval(self, approval_id: str) -> Approval | None:
        found = await self._fetch(f"SELECT * FROM {self._t.approvals} WHERE id = ?", (approval_id,))
        return rows.approval_from(found[0]) if found else None

    async def approvals(self, status: str | None = None, agent_id: str | None = None) -> list[Approval]:
        """Newest first."""
        where, args = _filters(status=status, agent_id=agent_id)
        found = await self._fetch(f"SELECT * FROM {self._t.approvals}{where} ORDER BY created_at DESC, id DESC",
                                  args)
        return [rows.approval_from(r) for r in found]

    async def decide_approval(self, approval_id: str, status: str, by: str, at: float) -> Approval | None:
        if status not in APPROVAL_DECISIONS:
            raise ValueError(f"an approval cannot be decided as {status!r}")
        async with self._write() as conn:
            found = await self._one(
                conn, f"UPDATE {self._t.approvals} SET status = ?, decided_by = ?, decided_at = ? "
                "WHERE id = ? AND status = 'pending' AND expires_at > ? RETURNING *",
                (status, rows.clean(by), at, approval_id, at))
            if found is None:
                await self._expire(conn, approval_id, at)
        return rows.approval_from(found) if found else None

    async def use_approval(self, approval_id: str, agent_id: str, input_digest: str, at: float,
                           request_id: str) -> Approval | None:
        async with self._write() as conn:
            found = await self._one(
                conn, f"UPDATE {self._t.approvals} SET status = 'used', used_at = ?, used_by_request = ? "
                "WHERE id = ? AND status = 'approved' AND agent_id = ? AND input_digest = ? AND expires_at > ? "
                "RETURNING *", (at, rows.clean(request_id), approval_id, agent_id, input_digest, at))
            if found is None:
                await self._expire(conn, approval_id, at)
        return rows.approval_from(found) if found else None

    async def _expire(self, conn: aiosqlite.Connection, approval_id: str, at: float) -> None:
        """Mark a pending or approved approval past its TTL as expired, so listings say so."""
        await conn.execute(f"UPDATE {self._t.approvals} SET status = 'expired' WHERE id = ? "
                           "AND status IN ('pending', 'approved') AND expires_at <= ?", (approval_id, at))

    # ---- governance events, reports, flags ---------------------------------------------

    async def add_events(self, events: Sequence[GovernanceEvent]) -> None:
        if not events:
            return
        async with self._write() as conn:
            # OR IGNORE: a batch retried after a failed commit stores each event once.
            await conn.executemany(f"INSERT OR IGNORE INTO {self._t.events} ({', '.join(EVENT_COLUMNS)}) "
                                   f"VALUES ({_marks(len(EVENT_COLUMNS))})", [rows.event_values(e) for e in events])

    async def events(self, since: float = 0.0, until: float | None = None, agent_id: str | None = None,
                     workspace: str | None = None, min_severity: str | None = None,
                     limit: int = 1000) -> list[GovernanceEvent]:
        """Oldest first, `since` <= ts < `until`: the oldest `limit` (page on with `since`)."""
        sevs = rows.severities_from(min_severity)
        where, args = "ts >= ?", [since]
        if until is not None:
            where, args = where + " AND ts < ?", args + [until]
        if agent_id is not None:
            where, args = where + " AND agent_id = ?", args + [agent_id]
        if workspace is not None:
            where, args = where + " AND workspace = ?", args + [workspace]
        where += f" AND severity IN ({_marks(len(sevs))})"
        found = await self._fetch(f"SELECT * FROM {self._t.events} WHERE {where} ORDER BY ts, id LIMIT ?",
                                  (*args, *sevs, max(0, int(limit))))
        return [rows.event_from(r) for r in found]

    async def add_report(self, report: StoredReport) -> None:
        async with self._write() as conn:
            await conn.execute(f"INSERT INTO {self._t.reports} ({', '.join(REPORT_COLUMNS)}) "
                               f"VALUES ({_marks(len(REPORT_COLUMNS))})", rows.report_values(report))

    async def reports(self, limit: int = 20) -> list[StoredReport]:
        found = await self._fetch(f"SELECT * FROM {self._t.reports} ORDER BY created_at DESC, id DESC LIMIT ?",
                                  (max(0, int(limit)),))
        return [rows.report_from(r) for r in found]

    async def report(self, report_id: str) -> StoredReport | None:
        found = await self._fetch(f"SELECT * FROM {self._t.reports} WHERE id = ?", (report_id,))
        return rows.report_from(found[0]) if found else None

    async def flags(self) -> dict[str, Any]:
        found = await self._fetch(f"SELECT name, value FROM {self._t.flags}")
        return {r["name"]: rows.loads(r["value"]) for r in found}

    async def set_flag(self, name: str, value: Any) -> None:
        async with self._write() as conn:
            await conn.execute(f"INSERT INTO {self._t.flags} (name, value) VALUES (?, ?) "
                               "ON CONFLICT (name) DO UPDATE SET value = excluded.value", (name, rows.dumps(value)))

    # ---- replicas ----------------------------------------------------------------------

    async def heartbeat(self, replica_id: str, host: str, pid: int, revision: str | None, started_at: float,
                        at: float) -> None:
        async with self._write() as conn:
            await conn.execute(
                f"INSERT INTO {self._t.replicas} ({', '.join(REPLICA_COLUMNS)}) VALUES ({_marks(len(REPLICA_COLUMNS))}) "
                "ON CONFLICT (replica_id) DO UPDATE SET "
                + ", ".join(f"{c} = excluded.{c}" for c in REPLICA_COLUMNS[1:]),
                rows.replica_values(replica_id, host, pid, revision, started_at, at))

    async def replicas(self, max_age_s: float, now: float | None = None) -> list[dict[str, Any]]:
        """The replicas seen within max_age_s of `now` (default: the clock), by replica id."""
        since = (time.time() if now is None else float(now)) - float(max_age_s)
        found = await self._fetch(f"SELECT * FROM {self._t.replicas} WHERE last_seen >= ? ORDER BY replica_id",
                                  (since,))
        return [rows.replica_from(r) for r in found]


def _filters(**eq: Any) -> tuple[str, list[Any]]:
    """ ' WHERE a = ? AND b = ?' for the arguments that are not None."""
    given = [(k, v) for k, v in eq.items() if v is not None]
    if not given:
        return "", []
    return " WHERE " + " AND ".join(f"{k} = ?" for k, _ in given), [v for _, v in given]
