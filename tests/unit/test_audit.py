"""Audit chain, verify and writer, and what only the SQLite store has, on real files in tmp_path.

What every store must do is tested once for all of them in test_audit_stores.py.
"""
from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import orjson
import pytest

from adapters.audit.sqlite import SQLiteAuditStore
from gateway.audit.chain import (
    CHAIN_FIELDS, GENESIS, ROW_FIELDS, event_to_row, link, row_from_store,
)
from gateway.audit.verify import format_report, tail_text, verify
from gateway.audit.writer import AuditWriter
from gateway.errors import BackendError, Unavailable
from tests.support.audit_rows import CHAIN, Metrics, event, rows_of, settings, write_events
from tests.support.waiting import eventually_async


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "var" / "audit.db"


@pytest.fixture
async def store(db: Path):
    s = SQLiteAuditStore(settings(), db, busy_timeout_ms=50)
    await s.start()
    yield s
    await s.aclose()


def sqlite_values(row: dict) -> list:
    return [orjson.dumps(row[f]).decode() if f in ("reasons", "policy_input") else row[f]
            for f in ROW_FIELDS]


def raw(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(db, isolation_level=None, timeout=5)


# ---- chain ----------------------------------------------------------------------


def test_event_row_has_exactly_the_audit_columns():
    row = event_to_row(event(1))
    assert tuple(row) == tuple(f for f in ROW_FIELDS if f not in CHAIN_FIELDS)
    assert row["ts"] == "2025-06-15T15:06:41.123456+00:00"
    assert row["latency_ms"] == 1.235 and row["reasons"] == ["ok", "r1"]
    assert row["policy_input"]["agent"]["labels"] == {"z": "1", "a": "2"}


def test_link_covers_every_field_but_hash():
    row = event_to_row(event(1)) | {"chain_id": CHAIN, "seq": 1, "prev_hash": GENESIS}
    h = link(GENESIS, row)
    assert link(GENESIS, row | {"hash": "x"}) == h
    for f in ROW_FIELDS:
        if f != "hash":
            assert link(GENESIS, row | {f: "tampered"}) != h, f
    assert link("1" * 64, row) != h


def test_row_from_store_does_not_repair_tampered_values():
    row = event_to_row(event(1)) | {"chain_id": CHAIN, "seq": 1, "prev_hash": GENESIS}
    row["hash"] = link(GENESIS, row)
    stored = row | {"stream": 0, "cache_hit": 0, "reasons": '["ok","r1"]', "tier": 2.0}
    assert link(GENESIS, row_from_store(stored)) == row["hash"]
    assert link(GENESIS, row_from_store(row | {"tier": 2.5})) != row["hash"]
    assert link(GENESIS, row_from_store(row | {"stream": 2})) != row["hash"]


# ---- the SQLite store -------------------------------------------------------------


async def test_writable_and_insert_fail_while_another_connection_locks(store, db, tmp_path):
    await write_events(store, tmp_path, 1)
    assert await store.writable()
    lock = raw(db)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        assert not await store.writable()
        rows = await rows_of(store)
        with pytest.raises(BackendError):
            await store.insert_batch([dict(rows[0], seq=2, prev_hash=rows[0]["hash"])])
    finally:
        lock.rollback()
        lock.close()
    assert await store.writable()


async def test_tail_returns_newest_rows_oldest_first(store, tmp_path):
    await write_events(store, tmp_path, 30)
    tail = await store.tail(5)
    assert [r["request_id"] for r in tail] == [f"req-{i}" for i in range(25, 30)]
    text = await tail_text(store, 3)
    lines = text.splitlines()
    assert len(lines) == 3 and "req-29" in lines[-1] and "#30" in lines[-1]
    assert "billing-bot llm.chat gpt-4o-mini allow 200" in lines[-1] and "ok; r29" in lines[-1]


# ---- verify ---------------------------------------------------------------------


async def test_long_chain_verifies_clean(store, tmp_path):
    await write_events(store, tmp_path, 1200)
    report = await verify(store)
    assert report.ok and report.rows == 1200 and [c.chain_id for c in report.chains] == [CHAIN]
    text, code = format_report(report)
    assert code == 0 and "1200 rows, ok" in text


async def test_two_chains_verify_independently(store, tmp_path):
    await write_events(store, tmp_path, 10)
    await write_events(store, tmp_path, 7, chain_id="replica-b")
    report = await verify(store)
    assert report.ok and {c.chain_id: c.rows for c in report.chains} == {CHAIN: 10, "replica-b": 7}


async def test_a_json_edit_in_sqlite_is_reported(store, db, tmp_path):
    await write_events(store, tmp_path, 100)
    with raw(db) as conn:
        sql = "UPDATE audit_log SET policy_input = json_set(policy_input, '$.agent.tier', 4) WHERE seq = 37"
        assert conn.execute(sql).rowcount == 1
    b = (await verify(store)).chains[0].first_break
    assert (b.chain_id, b.seq, b.reason) == (CHAIN, 37, "edited")


async def test_forged_inserted_row_is_reported(store, db, tmp_path):
    await write_events(store, tmp_path, 100)
    rows = await rows_of(store)
    # A careful forger: renumber rows 40.. and insert a row correctly linked to row 39.
    forged = dict(rows[38], seq=40, request_id="forged", decision="allow", prev_hash=rows[38]["hash"])
    forged["hash"] = link(forged["prev_hash"], forged)
    with raw(db) as conn:
        conn.execute("UPDATE audit_log SET seq = -seq WHERE seq >= 40")
        conn.execute("UPDATE audit_log SET seq = 1 - seq WHERE seq < 0")
        conn.execute(f"INSERT INTO audit_log ({', '.join(ROW_FIELDS)}) "
                     f"VALUES ({', '.join('?' * len(ROW_FIELDS))})", sqlite_values(forged))
    report = await verify(store)
    assert report.rows == 101
    b = report.chains[0].first_break
    assert (b.seq, b.reason) == (41, "inserted or reordered")


async def test_empty_store_verifies_with_exit_zero(store):
    text, code = format_report(await verify(store))
    assert code == 0 and "empty" in text


# ---- writer ---------------------------------------------------------------------


async def test_batches_write_every_row_with_contiguous_seq(store, tmp_path):
    metrics = Metrics()
    w = AuditWriter(store, settings(batch_size=128), tmp_path / "audit.spool", metrics)
    await w.start()
    for i in range(2000):
        await w.admit()
        w.submit(event(i))
    await w.aclose()
    rows = await rows_of(store)
    assert [r["seq"] for r in rows] == list(range(1, 2001))
    assert sorted(r["request_id"] for r in rows) == sorted(f"req-{i}" for i in range(2000))
    assert (metrics.written, metrics.failures, metrics.depth, w.depth) == (2000, 0, 0, 0)
    assert (await verify(store)).ok


async def test_aclose_flushes_everything_queued(store, tmp_path):
    # A batch that never fills and a flush interval far away: only aclose() writes.
    w = AuditWriter(store, settings(batch_size=1000, flush_interval_ms=3_600_000), tmp_path / "s")
    await w.start()
    for i in range(50):
        await w.record(event(i))
    await asyncio.sleep(0.01)
    assert w.depth == 50 and await rows_of(store) == []
    await w.aclose()
    assert len(await rows_of(store)) == 50 and w.depth == 0


def spool_lines(path: Path) -> int:
    return len(path.read_bytes().splitlines()) if path.exists() else 0


async def test_store_down_spools_then_replays(store, db, tmp_path):
    spool = tmp_path / "spool" / "audit.spool"
    metrics = Metrics()
    w = AuditWriter(store, settings(), spool, metrics)
    await w.start()
    await w.record(event(0))
    await eventually_async(lambda: w.depth == 0, "the first row written")
    lock = raw(db)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        for i in range(1, 301):
            await w.record(event(i))
        await eventually_async(lambda: w.depth == 0, "300 rows durable in the spool")  # the store is locked
        assert spool_lines(spool) == 300 and metrics.failures >= 1
        assert lock.execute("SELECT count(*) FROM audit_log").fetchone()[0] == 1
    finally:
        lock.rollback()
        lock.close()
    await eventually_async(lambda: not spool.exists(), "the periodic retry to replay the spool")
    for i in range(301, 351):
        await w.record(event(i))
    await w.aclose()
    rows = await rows_of(store)
    assert [r["seq"] for r in rows] == list(range(1, 352))
    assert [r["request_id"] for r in rows] == [f"req-{i}" for i in range(351)]
    assert (await verify(store)).ok and metrics.written == 351


async def test_spool_from_an_earlier_run_is_replayed_on_start(store, db, tmp_path):
    spool = tmp_path / "audit.spool"
    await write_events(store, tmp_path, 10)
    lock = raw(db)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        await write_events(store, tmp_path, 20, start=10)  # closes with rows only in the spool
        assert spool_lines(spool) == 20
        # Restart while the store is still down: the chain continues from the spool.
        w = AuditWriter(store, settings(), spool)
        await w.start()
        for i in range(30, 40):
            await w.record(event(i))
        await eventually_async(lambda: w.depth == 0, "10 more rows in the spool")
        assert spool_lines(spool) == 30
    finally:
        lock.rollback()
        lock.close()
    await w.aclose()
    assert not spool.exists()
    rows = await rows_of(store)
    assert [r["seq"] for r in rows] == list(range(1, 41))
    assert [r["request_id"] for r in rows] == [f"req-{i}" for i in range(40)]
    assert (await verify(store)).ok


async def test_partial_last_spool_line_is_dropped_and_replay_is_idempotent(store, tmp_path):
    spool = tmp_path / "audit.spool"
    await write_events(store, tmp_path, 10)
    rows = await rows_of(store)
    # As if an earlier run replayed these rows but crashed before removing the spool.
    spool.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows[5:]) + b'{"chain_id": "repl')
    await write_events(store, tmp_path, 5, start=10)
    rows = await rows_of(store)
    assert [r["seq"] for r in rows] == list(range(1, 16)) and not spool.exists()
    assert (await verify(store)).ok


async def test_queue_full_refuse_raises_unavailable(store, tmp_path):
    w = AuditWriter(store, settings(queue_max=3, on_full="refuse"), tmp_path / "s")
    await w.start()
    for _ in range(3):
        await w.admit()
    with pytest.raises(Unavailable) as exc:
        await w.admit()
    assert exc.value.status == 503
    for i in range(3):
        w.submit(event(i))
    await eventually_async(lambda: w.depth == 0, "3 rows durable")
    await w.record(event(3))  # slots are back once rows are durable
    await w.aclose()
    assert len(await rows_of(store)) == 4


async def test_queue_full_wait_waits_for_a_free_slot(store, tmp_path):
    w = AuditWriter(store, settings(queue_max=2, on_full="wait", full_wait_s=60), tmp_path / "s")
    await w.start()
    await w.admit()
    await w.admit()
    waiter = asyncio.create_task(w.admit())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiter.done()
    w.submit(event(0))
    await waiter  # admitted once event 0 is durable
    w.submit(event(1))
    w.submit(event(2))
    await w.aclose()
    assert len(await rows_of(store)) == 3


async def test_queue_full_wait_gives_up_after_full_wait_s(store, tmp_path):
    w = AuditWriter(store, settings(queue_max=1, on_full="wait", full_wait_s=0), tmp_path / "s")
    await w.start()
    await w.admit()
    with pytest.raises(Unavailable):
        await w.admit()
    w.submit(event(0))
    await w.aclose()


async def test_submit_without_admit_is_an_error(store, tmp_path):
    w = AuditWriter(store, settings(), tmp_path / "s")
    await w.start()
    with pytest.raises(RuntimeError):
        w.submit(event(0))
    await w.aclose()
    with pytest.raises(Unavailable):
        await w.admit()  # closed writers admit nothing
