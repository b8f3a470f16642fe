"""The audit row's `trace_id`: added after rows were first written, without breaking their chains.

Rows without a trace id hash exactly as before the column existed; a store made by an
older version gets the column on start (SQLite and PostgreSQL) and its old rows still
verify beside new ones; editing a trace id, or nulling one, is caught like any edit.
"""
from __future__ import annotations

import hashlib

import orjson
import pytest

from gateway.audit.chain import GENESIS, ROW_FIELDS, event_to_row, link
from gateway.audit.verify import verify
from gateway.audit.writer import AuditWriter
from tests.support import audit_backends, pg
from tests.support.audit_backends import BACKENDS
from tests.support.audit_rows import event, rows_of, settings, write_events

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
# The canonical form as it was before trace_id existed: every column but hash.
# (shadow_decision and shadow_revision came later still: absent from that form too.)
OLD_FIELDS = [f for f in ROW_FIELDS if f not in ("hash", "trace_id", "shadow_decision", "shadow_revision")]


def old_link(prev: str, row: dict) -> str:
    return hashlib.sha256(prev.encode("ascii") + orjson.dumps({k: row[k] for k in OLD_FIELDS},
                                                              option=orjson.OPT_SORT_KEYS)).hexdigest()


def test_a_row_without_trace_id_hashes_as_before_the_field_existed() -> None:
    row = event_to_row(event(1)) | {"chain_id": "c", "seq": 1, "prev_hash": GENESIS}
    assert row["trace_id"] is None
    assert link(GENESIS, row) == old_link(GENESIS, row)
    without = {k: v for k, v in row.items() if k != "trace_id"}  # as read from an old spool line
    assert link(GENESIS, without) == old_link(GENESIS, row)


def test_a_trace_id_is_part_of_the_hash() -> None:
    row = event_to_row(event(1, trace_id=TRACE)) | {"chain_id": "c", "seq": 1, "prev_hash": GENESIS}
    assert row["trace_id"] == TRACE
    h = link(GENESIS, row)
    assert h != old_link(GENESIS, row)
    assert link(GENESIS, row | {"trace_id": "0" * 31 + "1"}) != h
    assert link(GENESIS, row | {"trace_id": ""}) != old_link(GENESIS, row)  # empty is not absent


async def drop_trace_column(backend) -> None:
    if isinstance(backend, audit_backends.PostgresBackend):  # DDL reports no row count
        await pg.execute(backend.dsn, f'ALTER TABLE "{backend.table}" DROP COLUMN trace_id')
    else:
        await backend.sql("ALTER TABLE {t} DROP COLUMN trace_id")


@pytest.fixture(params=BACKENDS)
async def backend(request, tmp_path):
    b = audit_backends.backend(request.param, tmp_path)
    yield b
    await b.cleanup()


async def test_an_old_store_is_migrated_and_its_rows_still_verify(backend, tmp_path) -> None:
    # A store as an older version left it: rows written, then no trace_id column at all.
    old = backend.store()
    await old.start()
    await write_events(old, tmp_path / "a", 3)
    await old.aclose()
    await drop_trace_column(backend)

    store = backend.store()
    await store.start()  # adds the column
    before = await rows_of(store)
    assert [r["trace_id"] for r in before] == [None] * 3
    assert all(r["hash"] == old_link(r["prev_hash"], r) for r in before)  # hashed the old way
    await write_events(store, tmp_path / "a", 2, start=3)
    # New rows carry trace ids when there is one.
    writer = AuditWriter(store, settings(), tmp_path / "a" / "audit.spool")
    await writer.start()
    await writer.record(event(10, trace_id=TRACE))
    await writer.record(event(11))
    await writer.aclose()
    rows = await rows_of(store)
    assert [r["seq"] for r in rows] == list(range(1, 8))
    assert [r["trace_id"] for r in rows] == [None] * 5 + [TRACE, None]
    report = await verify(store)
    assert report.ok and report.rows == 7

    # A trace id edited into an old row, or nulled out of a new one, breaks the chain there.
    assert await backend.sql("UPDATE {t} SET trace_id = $1 WHERE seq = 2", TRACE) == 1
    report = await verify(store)
    assert not report.ok and (report.chains[0].first_break.seq, report.chains[0].first_break.reason) == (2, "edited")
    assert await backend.sql("UPDATE {t} SET trace_id = NULL WHERE seq = 2") == 1
    assert (await verify(store)).ok
    assert await backend.sql("UPDATE {t} SET trace_id = NULL WHERE seq = 6") == 1
    report = await verify(store)
    assert (report.chains[0].first_break.seq, report.chains[0].first_break.reason) == (6, "edited")


async def test_start_on_a_current_store_changes_nothing(backend, tmp_path) -> None:
    store = backend.store()
    await store.start()
    await write_events(store, tmp_path, 2)
    await store.aclose()
    again = backend.store()
    await again.start()  # the migration finds every column: no ALTER, rows intact
    assert len(await rows_of(again)) == 2 and (await verify(again)).ok


def test_shadow_columns_are_in_the_hash_only_when_set() -> None:
    """policy.shadow's columns: absent, the row hashes as before them; set, an edit is caught."""
    row = event_to_row(event(1)) | {"chain_id": "c", "seq": 1, "prev_hash": GENESIS}
    assert row["shadow_decision"] is None and row["shadow_revision"] is None
    assert link(GENESIS, row) == old_link(GENESIS, row)
    shadowed = row | {"shadow_revision": "abc", "shadow_decision": {"kind": "allow_to_deny",
                                                                    "decision": {"allow": False}}}
    h = link(GENESIS, shadowed)
    assert h != old_link(GENESIS, row)
    assert link(GENESIS, shadowed | {"shadow_revision": "abd"}) != h
    assert link(GENESIS, shadowed | {"shadow_decision": {"kind": "obligations", "decision": {"allow": False}}}) != h
    assert link(GENESIS, shadowed | {"shadow_decision": None}) != h
