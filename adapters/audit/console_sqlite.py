"""The console's queries on the SQLite audit store (a mixin of SQLiteAuditStore).

See adapters/audit/console_common.py for the rollup. Here insert_batch keeps the rollup
tables itself, in the batch's own transaction: the rows it really inserted are counted in
Python and added with one upsert per (minute, agent, decision), a few statements a batch. (A
row trigger did the same with two upserts per row and cost the writer ~11% of the gateway's
CPU per request: `python -m bench ab --only no_console_rollup`.) A replayed batch counts
nothing twice: when INSERT OR IGNORE skipped a row, the batch is inserted again row by row to
learn which. `ts` is ISO-8601 UTC text, so time bounds are compared as text formatted the same
way (gateway.audit.chain.format_ts).
"""
from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from adapters.audit import console_common as cc
from gateway.audit.chain import format_ts
from gateway.errors import BackendError

ROLLUP, MINUTES, TRIGGER = "audit_rollup", "audit_minutes", "audit_log_rollup"
META = "audit_rollup_meta"  # exists once the stored rows were counted into the rollup
# The minute a row's text ts is in, as epoch seconds ('2025-06-15T14:13:20.123456+00:00' -> ...:13:00).
_MINUTE = "COALESCE(CAST(strftime('%s', substr(ts, 1, 16) || ':00') AS INTEGER), 0)"
_DECIDED = "(policy_revision IS NOT NULL AND decision IS NOT 'bypass')"
_TABLES = (
    (f"CREATE TABLE IF NOT EXISTS {ROLLUP} (minute INTEGER NOT NULL, agent_id TEXT NOT NULL, "
     "decision TEXT NOT NULL, n INTEGER NOT NULL, cache_hits INTEGER NOT NULL, decided INTEGER NOT NULL, "
     "PRIMARY KEY (minute, agent_id, decision)) WITHOUT ROWID"),
    (f"CREATE TABLE IF NOT EXISTS {MINUTES} (minute INTEGER NOT NULL, decision TEXT NOT NULL, "
     "n INTEGER NOT NULL, cache_hits INTEGER NOT NULL, decided INTEGER NOT NULL, "
     "PRIMARY KEY (minute, decision)) WITHOUT ROWID"),
    "CREATE INDEX IF NOT EXISTS audit_log_agent_ts ON audit_log (agent_id, ts)",
    "CREATE INDEX IF NOT EXISTS audit_log_decision_ts ON audit_log (decision, ts)",
)
_UPSERT = ("n = n + excluded.n, cache_hits = cache_hits + excluded.cache_hits, "
           "decided = decided + excluded.decided")
_ADD_ROLLUP = (f"INSERT INTO {ROLLUP} (minute, agent_id, decision, n, cache_hits, decided) "
               f"VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (minute, agent_id, decision) DO UPDATE SET {_UPSERT}")
# The per-minute totals follow the per-agent rollup by triggers on it (a few rows a batch), so
# counting a batch is one executemany: one trip to aiosqlite's thread, not two.
_FOLLOW = tuple(
    f"CREATE TRIGGER IF NOT EXISTS {MINUTES}_{when.lower()} AFTER {when} ON {ROLLUP} BEGIN "
    f"INSERT INTO {MINUTES} (minute, decision, n, cache_hits, decided) VALUES (NEW.minute, NEW.decision, "
    f"{delta('n')}, {delta('cache_hits')}, {delta('decided')}) "
    f"ON CONFLICT (minute, decision) DO UPDATE SET {_UPSERT}; END"
    for when, delta in (("INSERT", lambda c: f"NEW.{c}"), ("UPDATE", lambda c: f"NEW.{c} - OLD.{c}")))
# Counting the rows already stored (a database made before the console): what insert_batch would have.
_BACKFILL = (
    (f"INSERT INTO {ROLLUP} SELECT {_MINUTE}, COALESCE(agent_id, ''), COALESCE(decision, ''), "
     f"count(*), sum(cache_hit IS 1), sum({_DECIDED}) FROM audit_log GROUP BY 1, 2, 3"),
    (f"INSERT INTO {MINUTES} SELECT minute, decision, sum(n), sum(cache_hits), sum(decided) FROM {ROLLUP} "
     "GROUP BY 1, 2"),
)
_RECENT = ", ".join(cc.RECENT_FIELDS)


def _minute_of(ts: str) -> int:
    """The epoch minute of a row's ts text, as SQLite's strftime('%s') of its first 16 characters."""
    try:
        return int(datetime.fromisoformat(ts[:16] + ":00+00:00").timestamp())
    except ValueError:
        return 0


def _epoch(ts: Any) -> float | None:
    if not isinstance(ts, str):
        return None
    try:
        return datetime.fromisoformat(ts).timestamp()
    except ValueError:
        return None


def _recent(r: tuple[Any, ...]) -> dict[str, Any]:
    row = dict(zip(cc.RECENT_FIELDS, r))
    row["ts"] = _epoch(row["ts"])
    row["reasons"] = cc.reasons_list(row["reasons"])
    return row


class SQLiteConsoleQueries:
    """Mixed into SQLiteAuditStore: uses its `_writer` and `_conns()`."""

    _writer: Any
    _conns: Any  # SQLiteAuditStore._conns() -> (writer, reader)

    async def _console_schema(self) -> None:
        """Rollup tables, their trigger and the console's indexes; called by start() (autocommit
        connection). A database from before them is upgraded in place: its rows are counted into
        the rollup in the same write transaction that creates the trigger, so no row is missed
        or counted twice while other processes keep inserting."""
        conn = self._writer
        await conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _TABLES:
                await conn.execute(stmt)
            async with conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?",
                                    (META,)) as cur:
                counted = (await cur.fetchone())[0] > 0
            if not counted:  # rows stored before the rollup existed: counted once, now
                for when in ("insert", "update"):  # the backfill fills both tables itself
                    await conn.execute(f"DROP TRIGGER IF EXISTS {MINUTES}_{when}")
                await conn.execute(f"DELETE FROM {ROLLUP}")
                await conn.execute(f"DELETE FROM {MINUTES}")
                for stmt in _BACKFILL:
                    await conn.execute(stmt)
                await conn.execute(f"CREATE TABLE {META} (counted_since TEXT)")
                await conn.execute(f"INSERT INTO {META} VALUES (datetime('now'))")
            await conn.execute(f"DROP TRIGGER IF EXISTS {TRIGGER}")  # an earlier build counted by trigger
            for stmt in _FOLLOW:  # after the backfill, which fills both tables itself
                await conn.execute(stmt)
            await conn.execute("COMMIT")
        except BaseException:
            try:
                await conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise

    @staticmethod
    async def _count_rows(conn: Any, rows: Sequence[Mapping[str, Any]]) -> None:
        """Add the rows just inserted to both rollups (inside the caller's transaction)."""
        per_agent: dict[tuple[int, str, str], list[int]] = {}
        minutes: dict[str, int] = {}
        for r in rows:
            ts = r["ts"]
            key = ts[:16]  # "YYYY-MM-DDTHH:MM": the minute, as text
            minute = minutes.get(key)
            if minute is None:
                minute = minutes[key] = _minute_of(ts)
            decision = r["decision"] or ""
            c = per_agent.setdefault((minute, r["agent_id"] or "", decision), [0, 0, 0])
            c[0] += 1
            c[1] += bool(r["cache_hit"])
            c[2] += r["policy_revision"] is not None and decision != "bypass"
        if per_agent:  # the per-minute totals follow by trigger (_FOLLOW)
            await conn.executemany(_ADD_ROLLUP, [(*k, *c) for k, c in per_agent.items()])

    async def _console_fetch(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        _, reader = self._conns()
        try:
            async with reader.execute(sql, args) as cur:
                return list(await cur.fetchall())
        except sqlite3.Error as e:
            raise BackendError(f"audit sqlite read failed: {e}") from e

    async def decision_series(self, since: float, until: float, bucket_s: int) -> list[dict[str, Any]]:
        """Requests per bucket and decision, since..until, in whole buckets of bucket_s (epoch-aligned)."""
        start, end, b = cc.bucket_bounds(since, until, bucket_s)
        found = await self._console_fetch(
            f"SELECT (minute - ?) / ? * ? + ? AS t, decision, sum(n) FROM {MINUTES} "
            "WHERE minute >= ? AND minute < ? GROUP BY 1, 2", (start, b, b, start, start, end))
        return cc.dense_series(found, start, end, b)

    async def agent_activity(self, since: float) -> dict[str, dict[str, Any]]:
        """Per agent with requests since `since` (from its minute on): requests, last decision and its time."""
        found = await self._console_fetch(
            f"SELECT r.agent_id, r.n, (SELECT decision FROM audit_log a WHERE a.agent_id = r.agent_id "
            "ORDER BY ts DESC LIMIT 1), (SELECT max(ts) FROM audit_log a WHERE a.agent_id = r.agent_id) "
            f"FROM (SELECT agent_id, sum(n) AS n FROM {ROLLUP} WHERE minute >= ? AND agent_id != '' "
            "GROUP BY agent_id) r", (cc.minute_of(since),))
        return {a: {"requests": int(n), "last_decision": d, "last_ts": _epoch(ts)} for a, n, d, ts in found}

    async def cache_hit_rate(self, since: float) -> float | None:
        """Decision-cache hits / policy decisions since `since` (None: no decision)."""
        found = await self._console_fetch(f"SELECT sum(cache_hits), sum(decided) FROM {MINUTES} WHERE minute >= ?",
                                          (cc.minute_of(since),))
        return cc.rate(*found[0])

    async def overhead_percentiles(self, since: float) -> dict[str, float | None]:
        """p50/p99 of latency_ms - upstream_ms over the newest OVERHEAD_ROWS forwarded rows since `since`."""
        found = await self._console_fetch(
            "SELECT latency_ms - upstream_ms FROM audit_log WHERE ts >= ? AND upstream_ms IS NOT NULL "
            "AND latency_ms IS NOT NULL ORDER BY ts DESC LIMIT ?", (format_ts(since), cc.OVERHEAD_ROWS))
        ordered = sorted(float(r[0]) for r in found)
        return {"p50": cc.ms(cc.percentile(ordered, 0.5)), "p99": cc.ms(cc.percentile(ordered, 0.99))}

    async def recent_rows(self, *, limit: int = 50, before: tuple[float, str] | None = None,
                          after_ts: float | None = None, agent: str | None = None, decision: str | None = None,
                          api: str | None = None) -> list[dict[str, Any]]:
        """Newest first, keyset-paged by (ts, request_id) `before`; oldest first after `after_ts`
        (the live stream). A second filter, or `api`, is applied to at most SCAN_ROWS rows."""
        indexed, rest = cc.plan(agent=agent, decision=decision, api=api)
        where, args = [f"{c} = ?" for c, _ in indexed], [v for _, v in indexed]
        if after_ts is not None:
            where.append("ts > ?")
            args.append(format_ts(after_ts))
            order = "ts, request_id"
        else:
            order = "ts DESC, request_id DESC"
            if before is not None:
                ts = format_ts(before[0])
                where.append("ts <= ? AND (ts < ? OR request_id < ?)")
                args += [ts, ts, before[1]]
        sql = f"SELECT {_RECENT} FROM audit_log{' WHERE ' + ' AND '.join(where) if where else ''} ORDER BY {order}"
        if rest:
            sql = (f"SELECT * FROM ({sql} LIMIT {cc.SCAN_ROWS}) WHERE {' AND '.join(f'{c} = ?' for c, _ in rest)} "
                   f"ORDER BY {order}")
            args += [v for _, v in rest]
        found = await self._console_fetch(sql + " LIMIT ?", (*args, cc.clamp_limit(limit)))
        return [_recent(r) for r in found]
