"""The console's audit queries, one suite run against both stores (real SQLite, real PostgreSQL).

Every expectation is computed here from the rows written, in plain Python, and compared
with what the store answers from its rollup (kept as rows are inserted) and its indexes.
"""
from __future__ import annotations

import asyncio
import math
import random
from typing import Any

import pytest

from adapters.audit.console_common import percentile
from adapters.audit.postgres import PostgresAuditStore
from gateway.audit.chain import GENESIS, event_to_row, link
from tests.support import audit_backends, pg
from tests.support.audit_backends import BACKENDS, backend_fixture, store_fixture  # noqa: F401 - fixtures
from tests.support.audit_rows import event, settings
from tests.support.services import unique

T0 = 1_750_000_000.0  # 2025-06-15T15:06:40Z: not on a minute, hour or day boundary
DECISIONS = ("allow", "deny", "rate_limited", "error", "bypass")



def chain(specs: list[dict[str, Any]], chain_id: str = "replica-a", first: int = 0) -> list[dict]:
    """Rows of one chain from per-row event overrides, linked as the writer links them."""
    rows, prev = [], GENESIS
    for seq, kw in enumerate(specs, 1):
        row = event_to_row(event(first + seq, **kw)) | {"chain_id": chain_id, "seq": seq, "prev_hash": prev}
        row["hash"] = prev = link(prev, row)
        rows.append(row)
    return rows


def spread(n: int, seconds: float, seed: int = 1, **fixed: Any) -> list[dict[str, Any]]:
    """n row specs at random times in the `seconds` before T0, random agents and outcomes."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        decision = rnd.choice(DECISIONS)
        spec = {"ts": T0 - rnd.uniform(0, seconds), "request_id": f"r{seed}-{i:05d}",
                    "agent_id": rnd.choice(["alpha", "beta", "gamma"]), "decision": decision,
                    "api": rnd.choice(["openai", "anthropic", "mcp"]), "cache_hit": rnd.random() < 0.4,
                    "policy_revision": None if rnd.random() < 0.1 else ("bypass" if decision == "bypass" else "rev1"),
                    "latency_ms": rnd.uniform(1, 500), "upstream_ms": None if rnd.random() < 0.2 else rnd.uniform(0, 1)}
        out.append(spec | fixed)
    return out


def expected_series(specs: list[dict], since: float, until: float, b: int) -> list[dict[str, Any]]:
    start = math.floor(since / b) * b
    end = math.floor(until / b) * b + b
    out = {t: dict.fromkeys(DECISIONS, 0) for t in range(start, end, b)}
    for s in specs:
        t = math.floor(math.floor(s["ts"] / 60) * 60 / b) * b
        if t in out:
            out[t][s["decision"]] += 1
    return [{"t": t, **c} for t, c in out.items()]


def newest_first(specs: list[dict]) -> list[tuple[float, str]]:
    return sorted(((round(s["ts"], 6), s["request_id"]) for s in specs), reverse=True)


# ---- the rollup ----------------------------------------------------------------------------

async def test_counts_match_the_rows_and_a_replayed_batch_counts_once(store):
    specs = spread(600, 3000)
    rows = chain(specs)
    await store.insert_batch(rows[:400])
    await store.insert_batch(rows[:400])        # the same batch again (a spool replay)
    await store.insert_batch(rows[300:])        # overlapping: 300..399 skipped, the rest new
    await store.insert_batch(rows[550:])        # all skipped
    series = await store.decision_series(T0 - 3600, T0, 60)
    assert series == expected_series(specs, T0 - 3600, T0, 60)
    totals = {d: sum(b[d] for b in series) for d in DECISIONS}
    assert sum(totals.values()) == 600 and totals == {d: sum(s["decision"] == d for s in specs) for d in DECISIONS}
    activity = await store.agent_activity(T0 - 3600)
    assert {a: v["requests"] for a, v in activity.items()} == {
        a: sum(s["agent_id"] == a for s in specs) for a in ("alpha", "beta", "gamma")}


async def test_series_buckets_for_an_hour_a_day_and_a_week(store):
    specs = spread(3000, 8 * 86400, seed=2)
    for i in range(0, 3000, 500):
        await store.insert_batch(chain(specs[i:i + 500], f"c{i}", first=i))
    for window, bucket in ((3600, 60), (86400, 600), (86400, 3600), (7 * 86400, 3600), (7 * 86400, 86400)):
        got = await store.decision_series(T0 - window, T0, bucket)
        assert got == expected_series(specs, T0 - window, T0, bucket), (window, bucket)
        assert len(got) == window // bucket + 1 and all(b["t"] % bucket == 0 for b in got)
    assert await store.decision_series(T0 + 3600, T0 + 7200, 60) == [
        {"t": t, **dict.fromkeys(DECISIONS, 0)} for t in range(int(T0 + 3600) // 60 * 60, int(T0 + 7200) // 60 * 60 + 60, 60)]
    with pytest.raises(ValueError):
        await store.decision_series(0, T0, 60)  # millions of buckets: refused, not computed


async def test_agent_activity_counts_since_and_names_the_last_decision(store):
    specs = [{"ts": T0 - 7200, "agent_id": "alpha", "decision": "allow", "request_id": "a0"},
             {"ts": T0 - 30, "agent_id": "alpha", "decision": "allow", "request_id": "a1"},
             {"ts": T0 - 10, "agent_id": "alpha", "decision": "deny", "request_id": "a2"},
             {"ts": T0 - 5000, "agent_id": "old", "decision": "error", "request_id": "o1"},
             {"ts": T0 - 20, "agent_id": None, "decision": "error", "request_id": "anon"},
             {"ts": T0 - 40, "agent_id": "beta", "decision": "rate_limited", "request_id": "b1"}]
    await store.insert_batch(chain(specs))
    got = await store.agent_activity(T0 - 3600)
    assert got == {"alpha": {"requests": 2, "last_decision": "deny", "last_ts": T0 - 10},
                   "beta": {"requests": 1, "last_decision": "rate_limited", "last_ts": T0 - 40}}
    assert (await store.agent_activity(0))["alpha"]["requests"] == 3
    assert await store.agent_activity(T0 + 60) == {}


async def test_cache_hit_rate_over_policy_decisions(store):
    assert await store.cache_hit_rate(0) is None
    specs = ([{"ts": T0 - 100, "cache_hit": True, "policy_revision": "rev1"}] * 3
             + [{"ts": T0 - 100, "cache_hit": False, "policy_revision": "rev1"}] * 5
             + [{"ts": T0 - 100, "cache_hit": False, "policy_revision": None, "decision": "error"}] * 4  # no decision
             + [{"ts": T0 - 100, "cache_hit": False, "policy_revision": "bypass", "decision": "bypass"}] * 2
             + [{"ts": T0 - 9000, "cache_hit": True, "policy_revision": "rev1"}] * 8)  # before the window
    await store.insert_batch(chain([dict(s, request_id=f"q{i}") for i, s in enumerate(specs)]))
    assert await store.cache_hit_rate(T0 - 3600) == pytest.approx(3 / 8)
    assert await store.cache_hit_rate(0) == pytest.approx(11 / 16)
    assert await store.cache_hit_rate(T0 + 60) is None


async def test_overhead_percentiles_of_forwarded_rows_in_the_window(store):
    assert await store.overhead_percentiles(0) == {"p50": None, "p99": None}
    rnd = random.Random(3)
    inside = [{"ts": T0 - rnd.uniform(0, 3000), "latency_ms": rnd.uniform(5, 400), "upstream_ms": rnd.uniform(0, 4)}
              for _ in range(301)]
    noise = ([{"ts": T0 - 100, "latency_ms": 900.0, "upstream_ms": None}] * 50       # not forwarded
             + [{"ts": T0 - 7200, "latency_ms": 5000.0, "upstream_ms": 1.0}] * 50)   # before the window
    rows = chain([dict(s, request_id=f"o{i}") for i, s in enumerate(inside + noise)])
    await store.insert_batch(rows)
    # What the store kept (rounded to 3 decimals by the row), as the expectation's input.
    kept = sorted(r["latency_ms"] - r["upstream_ms"] for r in rows[:301])
    got = await store.overhead_percentiles(T0 - 3600)
    assert got["p50"] == pytest.approx(percentile(kept, 0.5), abs=1e-3)
    assert got["p99"] == pytest.approx(percentile(kept, 0.99), abs=1e-3)
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5 and percentile([7.0], 0.99) == 7.0


# ---- recent rows ---------------------------------------------------------------------------

async def _pages(store, limit: int, **filters: Any) -> list[tuple[float, str]]:
    seen, before = [], None
    while True:
        page = await store.recent_rows(limit=limit, before=before, **filters)
        assert len(page) <= limit
        seen += [(round(r["ts"], 6), r["request_id"]) for r in page]
        if len(page) < limit:
            return seen
        before = (page[-1]["ts"], page[-1]["request_id"])


async def test_recent_rows_keyset_pages_with_filters(store):
    specs = spread(700, 5000, seed=4)
    # Ties: several rows in one microsecond, told apart by request_id.
    specs += [{"ts": T0 - 1234.5, "request_id": f"tie-{k}", "agent_id": "alpha", "decision": "deny", "api": "openai"}
              for k in "cab"]
    await store.insert_batch(chain(specs[:350], "c1"))
    await store.insert_batch(chain(specs[350:], "c2", first=350))
    assert await _pages(store, 37) == newest_first(specs)
    for filters in ({"agent": "alpha"}, {"decision": "deny"}, {"api": "mcp"},
                    {"agent": "beta", "decision": "allow"}, {"decision": "error", "api": "anthropic"},
                    {"agent": "gamma", "decision": "rate_limited", "api": "openai"}, {"agent": "nobody"}):
        key = {"agent": "agent_id", "decision": "decision", "api": "api"}
        want = [s for s in specs if all(s[key[k]] == v for k, v in filters.items())]
        assert await _pages(store, 25, **filters) == newest_first(want), filters

    row = (await store.recent_rows(limit=1, agent="alpha"))[0]
    assert set(row) == {"request_id", "ts", "agent_id", "action", "resource_type", "resource_name", "api",
                        "decision", "reasons", "status", "latency_ms", "upstream_ms"}
    assert isinstance(row["reasons"], list) and isinstance(row["ts"], float)
    assert await store.recent_rows(limit=0) == []


async def test_recent_rows_after_a_time_come_oldest_first(store):
    specs = spread(200, 600, seed=5)
    await store.insert_batch(chain(specs))
    cut = sorted(s["ts"] for s in specs)[150]
    got = await store.recent_rows(limit=500, after_ts=cut)
    assert [(round(r["ts"], 6), r["request_id"]) for r in got] == sorted(newest_first(specs))[151:]
    denied = await store.recent_rows(limit=3, after_ts=cut, decision="deny")
    assert [r["request_id"] for r in denied] == [
        rid for _, rid in sorted(newest_first([s for s in specs if s["decision"] == "deny" and s["ts"] > cut]))][:3]


async def test_text_a_client_chose_is_matched_and_returned_as_sent(store):
    odd = "bot\x00 ünï \ue000"
    await store.insert_batch(chain([{"ts": T0 - 5, "agent_id": odd, "request_id": "n1", "reasons": ("x\x00y",)},
                                    {"ts": T0 - 4, "agent_id": "plain", "request_id": "n2"}]))
    [row] = await store.recent_rows(agent=odd)
    assert (row["agent_id"], row["reasons"]) == (odd, ["x\x00y"])
    assert (await store.agent_activity(0))[odd] == {"requests": 1, "last_decision": "allow", "last_ts": T0 - 5}


# ---- concurrency and upgrades --------------------------------------------------------------

async def test_two_writers_count_exactly(backend, store):
    other = backend.store()
    await other.start()
    a, b = spread(400, 120, seed=6), spread(400, 120, seed=7)
    ra, rb = chain(a, "replica-a"), chain(b, "replica-b")
    await asyncio.gather(*(s.insert_batch(rows[i:i + 40]) for s, rows in ((store, ra), (other, rb))
                           for i in range(0, 400, 40)))
    assert await store.decision_series(T0 - 3600, T0, 3600) == expected_series(a + b, T0 - 3600, T0, 3600)


async def _make_old(backend) -> None:
    """Take the console's objects away: the database as a version before the console left it."""
    if backend.table == "audit_log":
        for stmt in ("DROP TABLE audit_rollup_meta", "DROP TABLE audit_rollup", "DROP TABLE audit_minutes",
                     "DROP INDEX audit_log_agent_ts", "DROP INDEX audit_log_decision_ts"):
            await backend.sql(stmt)
    else:
        t = backend.table
        for stmt in (f'DROP TRIGGER portcullis_console_rollup ON "{t}"', f'DROP FUNCTION "{t}_rollup_fn"',
                     f'DROP TABLE "{t}_rollup", "{t}_minutes"', f'DROP INDEX "{t}_agent_ts", "{t}_decision_ts"'):
            await pg.execute(backend.dsn, stmt)


async def test_an_old_database_is_upgraded_in_place(backend, store):
    specs = spread(500, 3000, seed=8)
    rows = chain(specs)
    await store.insert_batch(rows[:300])
    await store.aclose()
    await _make_old(backend)
    old = backend.store()
    await old.start()  # the upgrade: counts the 300 rows already there ...
    await old.insert_batch(rows[250:])  # ... then the writer counts the 200 new ones, not the replayed 50
    want = expected_series(specs, T0 - 3600, T0, 60)
    assert await old.decision_series(T0 - 3600, T0, 60) == want
    await old.aclose()
    again = backend.store()
    await again.start()  # a second start changes nothing
    assert await again.decision_series(T0 - 3600, T0, 60) == want
    assert [r["request_id"] for r in await again.recent_rows(limit=3, agent="beta", decision="deny")] == [
        rid for _, rid in newest_first([s for s in specs if (s["agent_id"], s["decision"]) == ("beta", "deny")])][:3]


async def test_a_postgres_role_granted_only_insert_and_select_writes_and_is_counted(tmp_path):
    """The deployment the store supports: the owner (a migration) made the table; the gateway's
    role may only INSERT and SELECT on it. Its rows are counted all the same (the trigger's
    function runs as its owner), and on a table from before the console it starts and writes."""
    backend = audit_backends.backend("postgres", tmp_path)
    role = unique("console_writer_")
    await pg.execute(backend.dsn, f'CREATE ROLE "{role}" LOGIN')
    try:
        owner = backend.store()
        await owner.start()
        await pg.execute(backend.dsn, f'GRANT SELECT, INSERT ON "{backend.table}" TO "{role}"')
        as_role = backend.dsn.replace("postgres@", f"{role}@")
        writer = PostgresAuditStore(settings(backend="postgres", dsn=as_role, table=backend.table))
        backend.stores.append(writer)
        await writer.start()
        specs = spread(200, 600, seed=10)
        await writer.insert_batch(chain(specs))
        assert await owner.decision_series(T0 - 3600, T0, 3600) == expected_series(specs, T0 - 3600, T0, 3600)

        await owner.aclose()
        await writer.aclose()
        await _make_old(backend)
        old = PostgresAuditStore(settings(backend="postgres", dsn=as_role, table=backend.table))
        backend.stores.append(old)
        await old.start()  # may not add the console's objects: starts without them
        more = spread(10, 60, seed=11)
        await old.insert_batch(chain(more, "replica-b"))
        assert len(await old.recent_rows(limit=1000)) == 210
    finally:
        await backend.cleanup()
        await pg.execute(backend.dsn, f'DROP OWNED BY "{role}"')
        await pg.execute(backend.dsn, f'DROP ROLE "{role}"')


# ---- PostgreSQL plans ----------------------------------------------------------------------

async def test_postgres_queries_use_the_indexes(tmp_path):
    backend = audit_backends.backend("postgres", tmp_path)
    try:
        store = backend.store()
        await store.start()
        await _check_plans(backend, store)
    finally:
        await backend.cleanup()


async def _check_plans(backend, store) -> None:
    specs = spread(20000, 7 * 86400, seed=9)
    rows = chain(specs)
    for i in range(0, len(rows), 5000):
        await store.insert_batch(rows[i:i + 5000])
    t = backend.table
    await pg.execute(backend.dsn, f'ANALYZE "{t}"')

    async def plan(sql: str, *args: Any) -> str:
        found = await pg.fetch(backend.dsn, "EXPLAIN " + sql, *args)
        return "\n".join(r["QUERY PLAN"] for r in found)

    for filters, index in (({}, f"{t}_ts"), ({"agent": "alpha"}, f"{t}_agent_ts"),
                           ({"decision": "deny"}, f"{t}_decision_ts"),
                           ({"agent": "beta", "api": "mcp"}, f"{t}_agent_ts"),
                           ({"before": (T0 - 86400, "r9-00001")}, f"{t}_ts"),
                           ({"after_ts": T0 - 60}, f"{t}_ts")):
        sql, args = store.recent_sql(**filters)
        text = await plan(sql, *args, 50)
        assert index in text and "Seq Scan" not in text, (filters, text)
    text = await plan(f'SELECT decision, ts FROM "{t}" WHERE agent_id = $1 ORDER BY ts DESC LIMIT 1', "alpha")
    assert f"{t}_agent_ts" in text and "Seq Scan" not in text, text
    text = await plan(f'SELECT latency_ms - upstream_ms FROM "{t}" WHERE ts >= $1 AND upstream_ms IS NOT NULL '
                      "ORDER BY ts DESC LIMIT 50000", pg_ts(T0 - 3600))
    assert f"{t}_ts" in text and "Seq Scan" not in text, text


def pg_ts(epoch: float) -> Any:
    from datetime import UTC, datetime
    return datetime.fromtimestamp(epoch, UTC)
