"""The console's queries on the PostgreSQL audit store (a mixin of PostgresAuditStore).

See adapters/audit/console_common.py for the rollup. Here it is kept by a
statement-level AFTER INSERT trigger with `REFERENCING NEW TABLE`: one grouped
upsert per batch (not one per row), over exactly the rows the statement inserted,
so the rows ON CONFLICT DO NOTHING skipped (a spool replay) count nothing. Keys are
upserted in key order, so replicas' concurrent batches lock rollup rows in the same
order and cannot deadlock. Text is compared and returned as the audit table stores
it (U+E000-escaped when it held NUL, see postgres.py), decoded on the way out.
"""
from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import asyncpg

from adapters.audit import console_common as cc
from adapters.audit.pg_text import from_text as _untext
from adapters.audit.pg_text import to_text as _text

log = logging.getLogger("portcullis.audit")

_TRIGGER = "portcullis_console_rollup"
_UPGRADE_TIMEOUT_S = 3600.0
_UPSERT = ("n = {t}.n + EXCLUDED.n, cache_hits = {t}.cache_hits + EXCLUDED.cache_hits, "
           "decided = {t}.decided + EXCLUDED.decided")
_COUNTS = ("count(*), count(*) FILTER (WHERE cache_hit), "
           "count(*) FILTER (WHERE policy_revision IS NOT NULL AND decision IS DISTINCT FROM 'bypass')")
_MINUTE = "(floor(extract(epoch FROM ts) / 60) * 60)::bigint"


def _names(table: str) -> dict[str, str]:
    """Quoted names of the console's objects for audit table `table` (each under 63 bytes)."""
    base = table[:48]
    return {"t": f'"{table}"', "rollup": f'"{base}_rollup"', "minutes": f'"{base}_minutes"',
            "fn": f'"{base}_rollup_fn"', "agent_ts": f'"{base}_agent_ts"', "decision_ts": f'"{base}_decision_ts"'}


def _schema(n: dict[str, str]) -> tuple[str, ...]:
    t, rollup, minutes = n["t"], n["rollup"], n["minutes"]
    return (
        (f"CREATE TABLE IF NOT EXISTS {rollup} (minute bigint NOT NULL, agent_id text NOT NULL, "
         "decision text NOT NULL, n bigint NOT NULL, cache_hits bigint NOT NULL, decided bigint NOT NULL, "
         "PRIMARY KEY (minute, agent_id, decision))"),
        (f"CREATE TABLE IF NOT EXISTS {minutes} (minute bigint NOT NULL, decision text NOT NULL, "
         "n bigint NOT NULL, cache_hits bigint NOT NULL, decided bigint NOT NULL, PRIMARY KEY (minute, decision))"),
        f"CREATE INDEX IF NOT EXISTS {n['agent_ts']} ON {t} (agent_id, ts)",
        f"CREATE INDEX IF NOT EXISTS {n['decision_ts']} ON {t} (decision, ts)",
        # SECURITY DEFINER: a role granted just INSERT on the audit table (a table made by a
        # migration) still counts its rows; search_path pinned, as such a function must.
        f"CREATE OR REPLACE FUNCTION {n['fn']}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER "
        "SET search_path FROM CURRENT AS $fn$ BEGIN "
        + _count_into(n, "portcullis_new") + " RETURN NULL; END $fn$",
    )


def _count_into(n: dict[str, str], source: str) -> str:
    """Add the rows of `source` (the transition table, or the audit table itself) to both rollups."""
    rollup, minutes = n["rollup"], n["minutes"]
    return (
        f"INSERT INTO {rollup} AS r (minute, agent_id, decision, n, cache_hits, decided) "
        f"SELECT {_MINUTE}, COALESCE(agent_id, ''), COALESCE(decision, ''), {_COUNTS} FROM {source} "
        f"GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 ON CONFLICT (minute, agent_id, decision) DO UPDATE SET "
        f"{_UPSERT.format(t='r')}; "
        f"INSERT INTO {minutes} AS m (minute, decision, n, cache_hits, decided) "
        f"SELECT {_MINUTE}, COALESCE(decision, ''), {_COUNTS} FROM {source} "
        f"GROUP BY 1, 2 ORDER BY 1, 2 ON CONFLICT (minute, decision) DO UPDATE SET {_UPSERT.format(t='m')};")


def _dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _recent(r: asyncpg.Record) -> dict[str, Any]:
    row = {f: r[f] for f in cc.RECENT_FIELDS}
    for f in ("request_id", "agent_id", "action", "resource_type", "resource_name", "api", "decision"):
        row[f] = _untext(row[f])
    row["ts"] = row["ts"].timestamp() if isinstance(row["ts"], datetime) else None
    row["reasons"] = cc.reasons_list(row["reasons"])
    return row


class PostgresConsoleQueries:
    """Mixed into PostgresAuditStore: uses its `_settings`, `_table` and `_fetch()`."""

    _settings: Any
    _fetch: Any  # PostgresAuditStore._fetch(sql, *args) -> records, errors as BackendError

    @property
    def _console(self) -> dict[str, str]:
        return _names(self._settings.table)

    async def _console_schema(self, conn: asyncpg.Connection) -> None:
        """Rollup tables, their trigger and the console's indexes, made when missing; called by
        start() inside its transaction (under the advisory lock). A table from before them is
        upgraded in place: with inserts blocked (SHARE ROW EXCLUSIVE, which CREATE TRIGGER takes
        anyway) its rows are counted and the trigger created in one transaction, so no row is
        missed or counted twice. A read-only server or a role that may not create them starts
        without them (the console's reads then fail, nothing else does)."""
        n = self._console
        have = await conn.fetchrow(
            "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass($1) AND tgname = $2) AS trig, "
            "to_regclass($3) IS NOT NULL AND to_regclass($4) IS NOT NULL AS idx, "
            "pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on' AS ro",
            n["t"], _TRIGGER, n["agent_ts"], n["decision_ts"])
        if (have["trig"] and have["idx"]) or have["ro"]:
            return
        # A one-time step whose length grows with the table (an index build, a count of every
        # row), so not under the store's per-statement timeout.
        t = _UPGRADE_TIMEOUT_S
        try:
            async with conn.transaction():  # a savepoint: a refusal leaves start()'s transaction usable
                await conn.execute(f"LOCK TABLE {n['t']} IN SHARE ROW EXCLUSIVE MODE", timeout=t)
                if not have["trig"]:
                    rows = await conn.fetchval("SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass($1)",
                                               n["t"])
                    if rows and rows > 100_000:
                        log.warning("audit table %s: adding the console's rollup and indexes, counting about %d "
                                    "rows once; inserts wait (and spool) meanwhile", n["t"], rows)
                for stmt in _schema(n):
                    await conn.execute(stmt, timeout=t)
                if not have["trig"]:
                    await conn.execute(f"TRUNCATE {n['rollup']}, {n['minutes']}")
                    await conn.execute(_count_into(n, n["t"]), timeout=t)
                    await conn.execute(f"CREATE TRIGGER {_TRIGGER} AFTER INSERT ON {n['t']} REFERENCING NEW TABLE "
                                       f"AS portcullis_new FOR EACH STATEMENT EXECUTE FUNCTION {n['fn']}()")
        except asyncpg.InsufficientPrivilegeError as e:
            log.warning("audit table %s: no console rollup (%s); the console cannot read it", n["t"], e)

    async def decision_series(self, since: float, until: float, bucket_s: int) -> list[dict[str, Any]]:
        """Requests per bucket and decision, since..until, in whole buckets of bucket_s (epoch-aligned)."""
        start, end, b = cc.bucket_bounds(since, until, bucket_s)
        found = await self._fetch(
            f"SELECT (minute - $1) / $3 * $3 + $1 AS t, decision, sum(n) AS n FROM {self._console['minutes']} "
            "WHERE minute >= $1 AND minute < $2 GROUP BY 1, 2", start, end, b)
        return cc.dense_series(((r["t"], _untext(r["decision"]), r["n"]) for r in found), start, end, b)

    async def agent_activity(self, since: float) -> dict[str, dict[str, Any]]:
        """Per agent with requests since `since` (from its minute on): requests, last decision and its time."""
        n = self._console
        found = await self._fetch(
            f"WITH a AS (SELECT agent_id, sum(n) AS n FROM {n['rollup']} WHERE minute >= $1 AND agent_id <> '' "
            "GROUP BY agent_id) SELECT a.agent_id, a.n, l.decision, l.ts FROM a LEFT JOIN LATERAL "
            f"(SELECT decision, ts FROM {n['t']} x WHERE x.agent_id = a.agent_id ORDER BY ts DESC LIMIT 1) l "
            "ON true", cc.minute_of(since))
        return {_untext(r["agent_id"]): {"requests": int(r["n"]), "last_decision": _untext(r["decision"]),
                                         "last_ts": r["ts"].timestamp() if r["ts"] is not None else None}
                for r in found}

    async def cache_hit_rate(self, since: float) -> float | None:
        """Decision-cache hits / policy decisions since `since` (None: no decision)."""
        found = await self._fetch(f"SELECT sum(cache_hits) AS h, sum(decided) AS d FROM {self._console['minutes']} "
                                  "WHERE minute >= $1", cc.minute_of(since))
        return cc.rate(found[0]["h"], found[0]["d"])

    async def overhead_percentiles(self, since: float) -> dict[str, float | None]:
        """p50/p99 of latency_ms - upstream_ms over the newest OVERHEAD_ROWS forwarded rows since `since`."""
        found = await self._fetch(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d) AS p50, "
            "percentile_cont(0.99) WITHIN GROUP (ORDER BY d) AS p99 FROM (SELECT latency_ms - upstream_ms AS d "
            f"FROM {self._console['t']} WHERE ts >= $1 AND upstream_ms IS NOT NULL AND latency_ms IS NOT NULL "
            "ORDER BY ts DESC LIMIT $2) s", _dt(since), cc.OVERHEAD_ROWS)
        return {"p50": cc.ms(found[0]["p50"]), "p99": cc.ms(found[0]["p99"])}

    def recent_sql(self, *, before: tuple[float, str] | None = None, after_ts: float | None = None,
                   agent: str | None = None, decision: str | None = None,
                   api: str | None = None) -> tuple[str, list[Any]]:
        """The recent_rows query and its arguments but the limit (the last, $N): for EXPLAIN."""
        indexed, rest = cc.plan(agent=agent, decision=decision, api=api)
        args: list[Any] = [_text(v) for _, v in indexed]
        where = [f"{c} = ${i}" for i, (c, _) in enumerate(indexed, 1)]
        if after_ts is not None:
            args.append(_dt(after_ts))
            where.append(f"ts > ${len(args)}")
            order = "ts, request_id"
        else:
            order = "ts DESC, request_id DESC"
            if before is not None:
                args += [_dt(before[0]), _text(before[1])]
                where.append(f"ts <= ${len(args) - 1} AND (ts < ${len(args) - 1} OR request_id < ${len(args)})")
        cols = ", ".join(cc.RECENT_FIELDS)
        sql = f"SELECT {cols} FROM {self._console['t']}{' WHERE ' + ' AND '.join(where) if where else ''} " \
              f"ORDER BY {order}"
        if rest:
            conds = []
            for c, v in rest:
                args.append(_text(v))
                conds.append(f"{c} = ${len(args)}")
            sql = f"SELECT * FROM ({sql} LIMIT {cc.SCAN_ROWS}) s WHERE {' AND '.join(conds)} ORDER BY {order}"
        return f"{sql} LIMIT ${len(args) + 1}", args

    async def recent_rows(self, *, limit: int = 50, before: tuple[float, str] | None = None,
                          after_ts: float | None = None, agent: str | None = None, decision: str | None = None,
                          api: str | None = None) -> list[dict[str, Any]]:
        """Newest first, keyset-paged by (ts, request_id) `before`; oldest first after `after_ts`
        (the live stream). A second filter, or `api`, is applied to at most SCAN_ROWS rows."""
        sql, args = self.recent_sql(before=before, after_ts=after_ts, agent=agent, decision=decision, api=api)
        return [_recent(r) for r in await self._fetch(sql, *args, cc.clamp_limit(limit))]
