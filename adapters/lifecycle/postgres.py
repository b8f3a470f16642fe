"""Fleet agent state store: tables in one PostgreSQL shared by every replica, through an asyncpg pool.

Every write is one statement or one transaction, so N replicas counting into the same row
count exactly: count() is a single INSERT ... ON CONFLICT DO UPDATE ... RETURNING whose
arithmetic mirrors rows.counted (the row lock serializes concurrent counts);
use_approval is one conditional UPDATE, so two replicas can never both use one approval;
a partial unique index allows one pending proposal per agent. Tables are
`<table_prefix><name>`, created on start with IF NOT EXISTS under an advisory lock
(replicas starting together). asyncpg and socket errors become BackendError; messages
name the server but never the DSN's password. A readiness Dependency: /readyz probes it,
and a start() that failed at boot is retried in the background.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import astuple
from pathlib import Path
from typing import Any

import asyncpg

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
    Tables,
)
from adapters.pgbase import ERRORS as _ERRORS
from adapters.pgbase import PostgresBase
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

# Column types for `SETTABLE` values bound in apply(): the casts asyncpg needs to encode them.
_CASTS = {"revoked": "boolean", "revoked_reason": "text", "tier": "integer", "maturity": "text",
          "window_start": "double precision", "total_errors": "integer", "violations": "integer",
          "same_errors": "jsonb", "consecutive_compliant": "integer", "budget_warned": "boolean"}


def _schema(t: Tables) -> tuple[str, ...]:
    return (
        (f'CREATE TABLE IF NOT EXISTS "{t.state}" (agent_id text PRIMARY KEY, '
        "revoked boolean NOT NULL DEFAULT false, revoked_reason text, tier integer, maturity text, "
        "window_start double precision NOT NULL DEFAULT 0, total_errors integer NOT NULL DEFAULT 0, "
        "violations integer NOT NULL DEFAULT 0, same_errors jsonb NOT NULL DEFAULT '{}', "
        "consecutive_compliant integer NOT NULL DEFAULT 0, budget_warned boolean NOT NULL DEFAULT false, "
        "updated_at double precision NOT NULL DEFAULT 0, version bigint NOT NULL DEFAULT 0)"),
        (f'CREATE TABLE IF NOT EXISTS "{t.changes}" (id bigserial PRIMARY KEY, agent_id text NOT NULL, '
        "change text NOT NULL, actor text NOT NULL, reason text NOT NULL, old json NOT NULL, new json NOT NULL, "
        "ts double precision NOT NULL, rule text)"),
        f'CREATE INDEX IF NOT EXISTS "{t.changes}_agent_ts" ON "{t.changes}" (agent_id, ts)',
        f'CREATE INDEX IF NOT EXISTS "{t.changes}_ts" ON "{t.changes}" (ts)',
        (f'CREATE TABLE IF NOT EXISTS "{t.proposals}" (id text PRIMARY KEY, agent_id text NOT NULL, '
        "created_at double precision NOT NULL, from_tier integer NOT NULL, to_tier integer NOT NULL, "
        "from_maturity text NOT NULL, to_maturity text NOT NULL, status text NOT NULL, reason text NOT NULL, "
        "decided_by text, decided_at double precision)"),
        (f'CREATE UNIQUE INDEX IF NOT EXISTS "{t.proposals}_pending" ON "{t.proposals}" (agent_id) '
        "WHERE status = 'pending'"),
        (f'CREATE TABLE IF NOT EXISTS "{t.approvals}" (id text PRIMARY KEY, agent_id text NOT NULL, '
        "action text NOT NULL, resource_type text, resource_name text, input_digest text NOT NULL, "
        "reason text NOT NULL, created_at double precision NOT NULL, expires_at double precision NOT NULL, "
        "status text NOT NULL, decided_by text, decided_at double precision, used_at double precision, "
        "used_by_request text)"),
        f'CREATE INDEX IF NOT EXISTS "{t.approvals}_created" ON "{t.approvals}" (created_at)',
        (f'CREATE TABLE IF NOT EXISTS "{t.events}" (id text PRIMARY KEY, ts double precision NOT NULL, '
        "agent_id text, workspace text, event_type text NOT NULL, severity text NOT NULL, details json NOT NULL)"),
        f'CREATE INDEX IF NOT EXISTS "{t.events}_ts" ON "{t.events}" (ts)',
        (f'CREATE TABLE IF NOT EXISTS "{t.reports}" (id text PRIMARY KEY, created_at double precision NOT NULL, '
        "period_start double precision NOT NULL, period_end double precision NOT NULL, body json NOT NULL)"),
        f'CREATE TABLE IF NOT EXISTS "{t.flags}" (name text PRIMARY KEY, value json NOT NULL)',
        (f'CREATE TABLE IF NOT EXISTS "{t.replicas}" (replica_id text PRIMARY KEY, host text NOT NULL, '
         "pid integer NOT NULL, revision text, started_at double precision NOT NULL, "
         "last_seen double precision NOT NULL)"),
    )


def _count_sql(table: str) -> str:
    """One atomic count. $1 agent, $2 ts, $3 window_s, $4 errors +, $5 violations +,
    $6 signature (NULL: none), $7 compliant requests (0: an error). Every SET reads the old row (s.*)."""
    reset = "($2::float8 - s.window_start >= $3::float8)"
    same = f"(CASE WHEN {reset} THEN '{{}}'::jsonb ELSE s.same_errors END)"
    return (
        f'INSERT INTO "{table}" AS s (agent_id, window_start, total_errors, violations, same_errors, '
        "consecutive_compliant, budget_warned, updated_at, version) VALUES ($1, $2::float8, $4::int, $5::int, "
        "CASE WHEN $6::text IS NULL THEN '{}'::jsonb ELSE jsonb_build_object($6::text, 1) END, "
        "$7::int, false, $2::float8, 1) "
        "ON CONFLICT (agent_id) DO UPDATE SET "
        f"window_start = CASE WHEN {reset} THEN $2::float8 ELSE s.window_start END, "
        f"total_errors = (CASE WHEN {reset} THEN 0 ELSE s.total_errors END) + $4::int, "
        f"violations = (CASE WHEN {reset} THEN 0 ELSE s.violations END) + $5::int, "
        f"same_errors = {same} || CASE WHEN $6::text IS NULL THEN '{{}}'::jsonb ELSE "
        f"jsonb_build_object($6::text, COALESCE(({same} ->> $6::text)::int, 0) + 1) END, "
        "consecutive_compliant = CASE WHEN $7::int > 0 THEN s.consecutive_compliant + $7::int ELSE 0 END, "
        f"budget_warned = {reset} IS NOT TRUE AND s.budget_warned, "
        "updated_at = $2::float8, version = s.version + 1 RETURNING *")


def _marks(n: int, start: int = 1) -> str:
    return ", ".join(f"${i}" for i in range(start, start + n))


class PostgresLifecycleStore(PostgresBase):

    def __init__(self, settings: LifecycleSettings, path: Path | None = None, *, pool_min_size: int = 1,
                 pool_max_size: int = 10, timeout_s: float = 10.0) -> None:
        # `path` is the SQLite file; accepted so both stores are built the same way, unused here.
        self._settings = settings
        self._pool_sizes = (min(pool_min_size, pool_max_size), pool_max_size)
        self._init_pg(settings.dsn, f"lifecycle postgres {{where}} tables {settings.table_prefix}*", timeout_s)
        self._t = t = Tables.named(settings.table_prefix)
        self._count = _count_sql(t.state)
        self._insert_change = (f'INSERT INTO "{t.changes}" ({", ".join(CHANGE_COLUMNS)}) '
                               "VALUES ($1, $2, $3, $4, $5::json, $6::json, $7, $8)")

    # ---- connections ---------------------------------------------------------------

    async def start(self) -> None:
        lo, hi = self._pool_sizes
        try:
            self._pool = await asyncpg.create_pool(
                self._settings.dsn, min_size=lo, max_size=hi, timeout=self._timeout,
                command_timeout=self._timeout, server_settings={"application_name": "portcullis-lifecycle"})
            async with self._pool.acquire(timeout=self._timeout) as conn, conn.transaction():
                # Replicas starting together: concurrent CREATE ... IF NOT EXISTS can still collide.
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))",
                                   f"portcullis:lifecycle:{self._settings.table_prefix}")
                # DDL only when a table is missing, so a role granted just DML on tables made by
                # a migration can start (CREATE ... IF NOT EXISTS still needs CREATE on the schema).
                if not await conn.fetchval("SELECT bool_and(to_regclass(n) IS NOT NULL) FROM unnest($1::text[]) n",
                                           [f'"{name}"' for name in astuple(self._t)]):
                    for stmt in _schema(self._t):
                        await conn.execute(stmt)
        except (*_ERRORS, ValueError) as e:
            raise await self._failed_start(e)  # its cause is set (scrubbed) by _error()
        self._down = None

    async def _write(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """One statement (its own transaction); the rows it returns."""
        return await self._fetch(sql, *args, what="write failed")

    # ---- agent state -----------------------------------------------------------------

    async def states(self) -> dict[str, AgentState]:
        return {r["agent_id"]: rows.state_from(r) for r in await self._fetch(f'SELECT * FROM "{self._t.state}"')}

    async def state(self, agent_id: str) -> AgentState | None:
        found = await self._fetch(f'SELECT * FROM "{self._t.state}" WHERE agent_id = $1', agent_id)
        return rows.state_from(found[0]) if found else None

    async def count(self, outcome: Outcome, window_s: float) -> AgentState:
        d_err, d_viol, sig, compliant = rows.deltas(outcome)
        found = await self._write(self._count, outcome.agent_id, float(outcome.ts), float(window_s),
                                  d_err, d_viol, sig, compliant)
        return rows.state_from(found[0])

    async def apply(self, change: LifecycleChange) -> AgentState:
        new = rows.settable(change.new)
        cols = list(new)
        values = [rows.dumps(v) if c == "same_errors" else v for c, v in new.items()]
        n = len(cols)
        sets = "".join(f"{c} = EXCLUDED.{c}, " for c in cols)
        sql = (f'INSERT INTO "{self._t.state}" AS s (agent_id, {"".join(c + ", " for c in cols)}updated_at, version) '
               f"VALUES ($1, {''.join(f'${i}::{_CASTS[c]}, ' for i, c in enumerate(cols, 2))}${n + 2}, 1) "
               f"ON CONFLICT (agent_id) DO UPDATE SET {sets}updated_at = EXCLUDED.updated_at, "
               "version = s.version + 1 RETURNING *")
        pool = self._pool_or_fail()
        try:
            async with pool.acquire(timeout=self._timeout) as conn, conn.transaction():
                found = await conn.fetchrow(sql, change.agent_id, *values, float(change.ts))
                await conn.execute(self._insert_change, *rows.change_values(change))
        except _ERRORS as e:
            raise self._error(f"apply {change.change} failed", e)
        return rows.state_from(found)

    async def changes(self, agent_id: str | None = None, since: float = 0.0,
                      limit: int = 1000) -> list[LifecycleChange]:
        where, args = "ts >= $1", [float(since)]
        if agent_id is not None:
            where, args = where + " AND agent_id = $2", args + [agent_id]
        found = await self._fetch(f'SELECT * FROM "{self._t.changes}" WHERE {where} '
                                  f"ORDER BY ts DESC, id DESC LIMIT ${len(args) + 1}", *args, max(0, int(limit)))
        return [rows.change_from(r) for r in found]

    # ---- proposals -------------------------------------------------------------------

    async def add_proposal(self, proposal: Proposal) -> bool:
        # No conflict target: the partial unique index (one pending per agent) is the one that fires.
        found = await self._write(
            f'INSERT INTO "{self._t.proposals}" ({", ".join(PROPOSAL_COLUMNS)}) '
            f"VALUES ({_marks(len(PROPOSAL_COLUMNS))}) ON CONFLICT DO NOTHING RETURNING id",
            *rows.proposal_values(proposal))
        return bool(found)

    async def proposals(self, status: str | None = None, agent_id: str | None = None) -> list[Proposal]:
        """Newest first."""
        where, args = _filters(status=status, agent_id=agent_id)
        found = await self._fetch(f'SELECT * FROM "{self._t.proposals}"{where} ORDER BY created_at DESC, id DESC',
                                  *args)
        return [rows.proposal_from(r) for r in found]

    async def proposal(self, proposal_id: str) -> Proposal | None:
        found = await self._fetch(f'SELECT * FROM "{self._t.proposals}" WHERE id = $1', proposal_id)
        return rows.proposal_from(found[0]) if found else None

    async def decide_proposal(self, proposal_id: str, status: str, by: str, reason: str,
                              at: float) -> Proposal | None:
        """A non-empty `reason` replaces the proposal's (the decision's reason is the one kept)."""
        if status not in PROPOSAL_DECISIONS:
            raise ValueError(f"a proposal cannot be decided as {status!r}")
        found = await self._write(
            f'UPDATE "{self._t.proposals}" SET status = $1, decided_by = $2, decided_at = $3, '
            "reason = CASE WHEN $4 = '' THEN reason ELSE $4 END WHERE id = $5 AND status = 'pending' RETURNING *",
            status, rows.clean(by), float(at), rows.clean(reason), proposal_id)
        return rows.proposal_from(found[0]) if found else None

    # ---- approvals -------------------------------------------------------------------

    async def add_approval(self, approval: Approval) -> None:
        await self._write(f'INSERT INTO "{self._t.approvals}" ({", ".join(APPROVAL_COLUMNS)}) '
                          f"VALUES ({_marks(len(APPROVAL_COLUMNS))})", *rows.approval_values(approval))

    async def approval(self, approval_id: str) -> Approval | None:
        found = await self._fetch(f'SELECT * FROM "{self._t.approvals}" WHERE id = $1', approval_id)
        return rows.approval_from(found[0]) if found else None

    async def approvals(self, status: str | None = None, agent_id: str | None = None) -> list[Approval]:
        """Newest first."""
        where, args = _filters(status=status, agent_id=agent_id)
        found = await self._fetch(f'SELECT * FROM "{self._t.approvals}"{where} ORDER BY created_at DESC, id DESC',
                                  *args)
        return [rows.approval_from(r) for r in found]

    async def decide_approval(self, approval_id: str, status: str, by: str, at: float) -> Approval | None:
        if status not in APPROVAL_DECISIONS:
            raise ValueError(f"an approval cannot be decided as {status!r}")
        found = await self._write(
            f'UPDATE "{self._t.approvals}" SET status = $1, decided_by = $2, decided_at = $3 '
            "WHERE id = $4 AND status = 'pending' AND expires_at > $3 RETURNING *",
            status, rows.clean(by), float(at), approval_id)
        if not found:
            await self._expire(approval_id, at)
        return rows.approval_from(found[0]) if found else None

    async def use_approval(self, approval_id: str, agent_id: str, input_digest: str, at: float,
                           request_id: str) -> Approval | None:
        # One conditional UPDATE: of two replicas racing, the second finds status 'used'.
        found = await self._write(
            f'UPDATE "{self._t.approvals}" SET status = \'used\', used_at = $1, used_by_request = $2 '
            "WHERE id = $3 AND status = 'approved' AND agent_id = $4 AND input_digest = $5 AND expires_at > $1 "
            "RETURNING *", float(at), rows.clean(request_id), approval_id, agent_id, input_digest)
        if not found:
            await self._expire(approval_id, at)
        return rows.approval_from(found[0]) if found else None

    async def _expire(self, approval_id: str, at: float) -> None:
        """Mark a pending or approved approval past its TTL as expired, so listings say so."""
        await self._write(f'UPDATE "{self._t.approvals}" SET status = \'expired\' WHERE id = $1 '
                          "AND status IN ('pending', 'approved') AND expires_at <= $2", approval_id, float(at))

    # ---- governance events, reports, flags ---------------------------------------------

    async def add_events(self, events: Sequence[GovernanceEvent]) -> None:
        if not events:
            return
        pool = self._pool_or_fail()
        try:
            async with pool.acquire(timeout=self._timeout) as conn:
                # ON CONFLICT: a batch retried after a lost commit reply stores each event once.
                await conn.executemany(
                    f'INSERT INTO "{self._t.events}" ({", ".join(EVENT_COLUMNS)}) '
                    "VALUES ($1, $2, $3, $4, $5, $6, $7::json) ON CONFLICT (id) DO NOTHING",
                    [rows.event_values(e) for e in events])
        except _ERRORS as e:
            raise self._error(f"insert of {len(events)} events failed", e)

    async def events(self, since: float = 0.0, until: float | None = None, agent_id: str | None = None,
                     workspace: str | None = None, min_severity: str | None = None,
                     limit: int = 1000) -> list[GovernanceEvent]:
        """Oldest first, `since` <= ts < `until`: the oldest `limit` (page on with `since`)."""
        args: list[Any] = [float(since), list(rows.severities_from(min_severity))]
        where = "ts >= $1 AND severity = ANY($2::text[])"
        for col, v in (("ts <", until), ("agent_id =", agent_id), ("workspace =", workspace)):
            if v is not None:
                args.append(float(v) if col == "ts <" else v)
                where += f" AND {col} ${len(args)}"
        found = await self._fetch(f'SELECT * FROM "{self._t.events}" WHERE {where} '
                                  f"ORDER BY ts, id LIMIT ${len(args) + 1}", *args, max(0, int(limit)))
        return [rows.event_from(r) for r in found]

    async def add_report(self, report: StoredReport) -> None:
        await self._write(f'INSERT INTO "{self._t.reports}" ({", ".join(REPORT_COLUMNS)}) '
                          "VALUES ($1, $2, $3, $4, $5::json)", *rows.report_values(report))

    async def reports(self, limit: int = 20) -> list[StoredReport]:
        found = await self._fetch(f'SELECT * FROM "{self._t.reports}" ORDER BY created_at DESC, id DESC LIMIT $1',
                                  max(0, int(limit)))
        return [rows.report_from(r) for r in found]

    async def report(self, report_id: str) -> StoredReport | None:
        found = await self._fetch(f'SELECT * FROM "{self._t.reports}" WHERE id = $1', report_id)
        return rows.report_from(found[0]) if found else None

    async def flags(self) -> dict[str, Any]:
        found = await self._fetch(f'SELECT name, value FROM "{self._t.flags}"')
        return {r["name"]: rows.loads(r["value"]) for r in found}

    async def set_flag(self, name: str, value: Any) -> None:
        await self._write(f'INSERT INTO "{self._t.flags}" (name, value) VALUES ($1, $2::json) '
                          "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value", name, rows.dumps(value))

    # ---- replicas ----------------------------------------------------------------------

    async def heartbeat(self, replica_id: str, host: str, pid: int, revision: str | None, started_at: float,
                        at: float) -> None:
        await self._write(
            f'INSERT INTO "{self._t.replicas}" ({", ".join(REPLICA_COLUMNS)}) VALUES ({_marks(len(REPLICA_COLUMNS))}) '
            "ON CONFLICT (replica_id) DO UPDATE SET " + ", ".join(f"{c} = EXCLUDED.{c}" for c in REPLICA_COLUMNS[1:]),
            *rows.replica_values(replica_id, host, pid, revision, started_at, at))

    async def replicas(self, max_age_s: float, now: float | None = None) -> list[dict[str, Any]]:
        """The replicas seen within max_age_s of `now` (default: the clock), by replica id."""
        since = (time.time() if now is None else float(now)) - float(max_age_s)
        found = await self._fetch(f'SELECT * FROM "{self._t.replicas}" WHERE last_seen >= $1 ORDER BY replica_id',
                                  since)
        return [rows.replica_from(r) for r in found]


def _filters(**eq: Any) -> tuple[str, list[Any]]:
    """ ' WHERE a = $1 AND b = $2' for the arguments that are not None."""
    given = [(k, v) for k, v in eq.items() if v is not None]
    if not given:
        return "", []
    return (" WHERE " + " AND ".join(f"{k} = ${i}" for i, (k, _) in enumerate(given, 1)),
            [v for _, v in given])
