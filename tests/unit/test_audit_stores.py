"""The AuditStore contract, one suite run against every implementation (uvicorn style).

SQLite on a tmp file; PostgreSQL on the machine's real server, one table per test,
dropped afterwards. Tampering is done with each backend's own SQL.
"""
from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from gateway.audit.chain import GENESIS, ROW_FIELDS, ChainConflict, event_to_row, link
from gateway.audit.verify import format_report, verify
from gateway.audit.writer import AuditWriter
from gateway.errors import BackendError
from gateway.protocols import AuditStore
from tests.support.audit_backends import BACKENDS, backend_fixture, store_fixture  # noqa: F401 - fixtures
from tests.support.audit_rows import CHAIN, event, rows_of, settings, write_events


def chained(n: int, chain_id: str = CHAIN, start: int = 0, ts0: float = 1_750_000_000.0, **kw: Any) -> list[dict]:
    """n rows of one chain, seq 1..n, linked exactly as the writer links them."""
    rows, prev = [], GENESIS
    for seq in range(1, n + 1):
        row = event_to_row(event(start + seq - 1, ts=ts0 + seq, **kw))
        row |= {"chain_id": chain_id, "seq": seq, "prev_hash": prev}
        row["hash"] = prev = link(prev, row)
        rows.append(row)
    return rows


# Values a store must give back exactly, or `audit verify` would cry wolf.
AWKWARD = [
    dict(resource_name="gpt-4o-mini\x00x", error="unknown route: GET /nope\x00", agent_id="ünïcødé ✓ 🚀"),
    dict(resource_name="\ue000 looks like an escape", client_ip=None, tier=None, reasons=()),
    dict(policy_input=None, latency_ms=float("nan"), upstream_ms=0.0005, input_tokens=2**62, status=0),
    dict(policy_input={"n": [1e20, 1e-7, -0.0, 2**53 + 1, True, None], "s": "nul \x00 \ue000 \u2028",
                       "nested": {"b": {"y": 1, "x": 2}, "a": []}}, reasons=("a\x00b", "\"quoted\"")),
    dict(ts=4_102_444_800.000001, error="x" * 10_000),
    dict(ts=-1.5, request_id="before 1970"),
]


async def test_implements_protocol_and_rows_round_trip_exactly(store):
    assert isinstance(store, AuditStore)
    awkward, prev = [], GENESIS
    for seq, kw in enumerate(AWKWARD, 1):
        row = event_to_row(event(100 + seq, **kw)) | {"chain_id": "awkward", "seq": seq, "prev_hash": prev}
        row["hash"] = prev = link(prev, row)
        awkward.append(row)
    rows = chained(20) + awkward
    await store.insert_batch(rows)
    stored = await rows_of(store)
    assert all(tuple(r) == ROW_FIELDS for r in stored)  # no extra (secret) columns
    assert stored == sorted(rows, key=lambda r: (r["chain_id"], r["seq"]))
    report = await verify(store)
    assert report.ok and {c.chain_id: c.rows for c in report.chains} == {CHAIN: 20, "awkward": len(AWKWARD)}


async def test_replay_of_stored_rows_is_idempotent(store):
    rows = chained(8)
    await store.insert_batch(rows[:5])
    await store.insert_batch(rows[:5])       # the same batch again
    await store.insert_batch(rows[2:8])      # overlaps: 3..5 stored, 6..8 new
    assert await rows_of(store) == rows
    assert await store.last_link(CHAIN) == (8, rows[-1]["hash"])


async def test_a_different_row_at_a_stored_key_conflicts_and_the_batch_rolls_back(store):
    rows = chained(6)
    await store.insert_batch(rows[:5])
    forged = dict(rows[2], decision="deny")
    forged["hash"] = link(forged["prev_hash"], forged)
    with pytest.raises(ChainConflict) as exc:
        await store.insert_batch([rows[5], forged])  # a new row and a conflicting one
    assert isinstance(exc.value, BackendError) and "seq 3" in str(exc.value)
    assert await rows_of(store) == rows[:5]  # row 6 was not committed either: one transaction
    await store.insert_batch([rows[5]])
    assert await rows_of(store) == rows


async def test_last_link_is_per_chain(store):
    a, b = chained(7, "replica-a"), chained(3, "replica-b")
    assert await store.last_link("replica-a") is None
    await store.insert_batch(a + b)
    assert await store.last_link("replica-a") == (7, a[-1]["hash"])
    assert await store.last_link("replica-b") == (3, b[-1]["hash"])
    assert await store.last_link("replica-c") is None


async def test_tail_is_the_newest_rows_by_time_oldest_first(store):
    # Two chains whose timestamps interleave: b's rows fall between a's.
    a, b = chained(10, "replica-a", ts0=1000.0), chained(10, "replica-b", ts0=1000.5)
    await store.insert_batch(b)
    await store.insert_batch(a)
    tail = await store.tail(4)
    assert [(r["chain_id"], r["seq"]) for r in tail] == [
        ("replica-a", 9), ("replica-b", 9), ("replica-a", 10), ("replica-b", 10)]
    assert tail[-1] == b[-1]
    assert await store.tail(0) == []
    assert len(await store.tail(1000)) == 20


async def test_iter_chain_orders_by_chain_then_seq_whatever_the_insert_order(store):
    # More rows than one read page, inserted in shuffled batches; chain ids that sort
    # differently byte-wise ("B" < "a") than in most locales ("a" < "B").
    chains = {"a-chain": chained(2000, "a-chain"), "B-chain": chained(1001, "B-chain"), "c": chained(1, "c")}
    batches = [rows[i:i + 250] for rows in chains.values() for i in range(0, len(rows), 250)]
    random.Random(7).shuffle(batches)
    for batch in batches:
        await store.insert_batch(batch)
    everything = await rows_of(store)
    assert everything == chains["B-chain"] + chains["a-chain"] + chains["c"]
    assert [r async for r in store.iter_chain("a-chain")] == chains["a-chain"]
    assert [r async for r in store.iter_chain("nope")] == []
    assert (await verify(store)).ok


async def test_writable_until_closed_and_no_use_after_close(backend, store):
    assert await store.writable()
    await store.aclose()
    assert not await store.writable()
    with pytest.raises(BackendError):
        await store.insert_batch(chained(1))
    with pytest.raises(BackendError):
        await store.last_link(CHAIN)
    unstarted = backend.store()
    assert not await unstarted.writable()


async def test_two_writers_interleave_their_chains_in_one_store(backend, tmp_path):
    # Two replicas: two stores (connections/pools) on the same table, writing at once.
    stores = [backend.store(), backend.store()]
    for s in stores:
        await s.start()

    async def replica(store, chain_id: str, n: int) -> None:
        w = AuditWriter(store, settings(chain_id=chain_id, batch_size=16), tmp_path / f"{chain_id}.spool")
        await w.start()
        for i in range(n):
            await w.record(event(i))
            if i % 5 == 0:
                await asyncio.sleep(0)  # let the other replica's writer run
        await w.aclose()

    await asyncio.gather(replica(stores[0], "replica-a", 300), replica(stores[1], "replica-b", 250))
    report = await verify(stores[0])
    assert report.ok and {c.chain_id: c.rows for c in report.chains} == {"replica-a": 300, "replica-b": 250}
    rows = await rows_of(stores[1])
    assert [r["request_id"] for r in rows if r["chain_id"] == "replica-b"] == [f"req-{i}" for i in range(250)]


async def test_writer_rows_land_and_a_restarted_writer_continues_the_chain(backend, tmp_path):
    for start in (0, 150):  # a new store object each time, as after a restart
        s = backend.store()
        await s.start()
        await write_events(s, tmp_path, 150, start=start, batch_size=64)
        await s.aclose()
    s = backend.store()
    await s.start()
    rows = await rows_of(s)
    assert [r["seq"] for r in rows] == list(range(1, 301))
    assert [r["request_id"] for r in rows] == [f"req-{i}" for i in range(300)]
    assert rows[150]["prev_hash"] == rows[149]["hash"]
    assert (await verify(s)).ok


@pytest.mark.parametrize("stmt", [
    "UPDATE {t} SET decision = 'deny' WHERE seq = 37",
    "UPDATE {t} SET latency_ms = latency_ms + 0.001 WHERE seq = 37",
    "UPDATE {t} SET resource_name = NULL WHERE seq = 37",
])
async def test_an_edited_row_fails_verify(backend, store, tmp_path, stmt):
    await write_events(store, tmp_path, 100)
    assert (await verify(store)).ok
    assert await backend.sql(stmt) == 1
    report = await verify(store)
    assert not report.ok and report.rows == 100
    b = report.chains[0].first_break
    assert (b.chain_id, b.seq, b.reason) == (CHAIN, 37, "edited")
    text, code = format_report(report)
    assert code == 1 and "BROKEN at seq 37: edited" in text


@pytest.mark.parametrize("seq", [1, 50], ids=["first", "middle"])
async def test_a_deleted_row_fails_verify(backend, store, tmp_path, seq):
    await write_events(store, tmp_path, 100)
    assert await backend.sql("DELETE FROM {t} WHERE seq = $1", seq) == 1
    report = await verify(store)
    b = report.chains[0].first_break
    assert report.rows == 99 and (b.seq, b.reason) == (seq + 1, f"deleted rows before seq {seq + 1}")
    assert format_report(report)[1] == 1
