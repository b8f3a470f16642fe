"""The audit journal (gateway/audit/journal.py): rows a killed writer still held are replayed once.

Kills are real: a writer runs in a subprocess, takes rows that it cannot store yet (an hour's
flush interval), and gets SIGKILL. The other cases build the journal a killed run leaves with
the Journal's own methods, then start a writer on it over a real SQLite store.
"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest

from adapters.audit.sqlite import SQLiteAuditStore
from gateway.audit.chain import GENESIS, event_to_row, link
from gateway.audit.journal import INTERRUPTED, Journal, journal_path, read
from gateway.audit.spool import SpoolFile
from gateway.audit.verify import verify
from gateway.audit.writer import AuditWriter
from tests.support.audit_rows import CHAIN, event, rows_of, settings

REPO = Path(__file__).resolve().parents[2]

# A writer that admits 6 requests, finishes 4 of them (rows queued, not stored: the flush
# interval is an hour and the batch size 1000), then waits to be killed.
CHILD = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from adapters.audit.sqlite import SQLiteAuditStore
    from gateway.audit.writer import AuditWriter
    from tests.support.audit_rows import event, settings

    async def main(tmp):
        s = settings(batch_size=1000, flush_interval_ms=3_600_000)
        store = SQLiteAuditStore(s, tmp / "audit.db")
        await store.start()
        w = AuditWriter(store, s, tmp / "audit.spool")
        await w.start()
        for i in range(6):
            await w.admit()
            e = event(i)
            w.journal.begun(e.request_id, e.ts, e.api, e.client_ip, e.trace_id)
        for i in range(4):
            w.submit(event(i))
        print("ready", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main(Path(sys.argv[1])))
""")


async def start_writer(tmp: Path, **kw) -> tuple[SQLiteAuditStore, AuditWriter]:
    store = SQLiteAuditStore(settings(), tmp / "audit.db")
    await store.start()
    w = AuditWriter(store, settings(**kw), tmp / "audit.spool")
    await w.start()
    return store, w


def chained(events, seq0: int = 0, prev: str = GENESIS) -> list[dict]:
    rows = []
    for i, e in enumerate(events):
        row = event_to_row(e) | {"chain_id": CHAIN, "seq": seq0 + i + 1, "prev_hash": prev}
        row["hash"] = prev = link(prev, row)
        rows.append(row)
    return rows


def killed_journal(tmp: Path, events, *, storing: list[dict] | None = None, committed: int = 0) -> Path:
    """The journal a killed writer leaves: `events` submitted, `committed` of them durable, and
    `storing` (chained rows) the insert it was in when killed."""
    j = Journal(journal_path(tmp / "audit.spool"))
    j.open([])
    for e in events:
        j.begun(e.request_id, e.ts, e.api, e.client_ip, e.trace_id)
        j.submitted(e)
    j.committed(committed)
    if storing:
        j.storing(storing)
    j.close(remove=False)  # what a kill leaves: the file, as written
    return j.path


async def test_rows_a_sigkilled_writer_held_are_stored_once_after_restart(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert child.stdout.readline() == b"ready\n"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert child.returncode == -signal.SIGKILL
    store, w = await start_writer(tmp_path)
    try:
        await w.aclose()
        rows = await rows_of(store)
        # the 4 finished rows as they were, then the 2 admitted but unfinished as interrupted
        assert [r["request_id"] for r in rows] == [f"req-{i}" for i in range(6)]
        for i, r in enumerate(rows[:4]):
            assert {k: r[k] for k in event_to_row(event(i))} == event_to_row(event(i))
        for r in rows[4:]:
            assert (r["decision"], r["status"], r["error"], r["agent_id"]) == ("error", 0, INTERRUPTED, None)
            assert r["client_ip"] == "127.0.0.1" and r["api"] == "openai"
        assert (await verify(store)).ok
        assert not journal_path(tmp_path / "audit.spool").exists()  # all stored: nothing left to replay
    finally:
        await store.aclose()
    # A second restart finds nothing more to replay.
    store, w = await start_writer(tmp_path)
    await w.aclose()
    assert len(await rows_of(store)) == 6
    await store.aclose()


@pytest.mark.parametrize("insert_committed", [True, False])
async def test_an_insert_cut_by_the_kill_is_replayed_only_if_it_did_not_commit(tmp_path, insert_committed):
    """Killed after `P` (the batch about to be inserted) and before `C` (durable): the store's
    chain head says whether the insert made it. Both orders of kill and commit."""
    events = [event(i) for i in range(5)]
    rows = chained(events)
    killed_journal(tmp_path, events, storing=rows[2:], committed=2)
    store = SQLiteAuditStore(settings(), tmp_path / "audit.db")
    await store.start()
    await store.insert_batch(rows[:2] + (rows[2:] if insert_committed else []))
    await store.aclose()
    store, w = await start_writer(tmp_path)
    await w.aclose()
    stored = await rows_of(store)
    assert [r["request_id"] for r in stored] == [f"req-{i}" for i in range(5)]  # each exactly once
    assert [r["seq"] for r in stored] == [1, 2, 3, 4, 5]
    assert (await verify(store)).ok
    await store.aclose()


async def test_rows_already_in_the_spool_are_not_replayed_twice(tmp_path):
    """Killed after spooling a batch (the store was down), before marking it durable."""
    events = [event(i) for i in range(4)]
    killed_journal(tmp_path, events)
    SpoolFile(tmp_path / "audit.spool").append(chained(events))
    store, w = await start_writer(tmp_path)
    await w.aclose()
    assert [r["request_id"] for r in await rows_of(store)] == [f"req-{i}" for i in range(4)]
    await store.aclose()


async def test_a_record_torn_by_the_kill_is_ignored(tmp_path):
    events = [event(i) for i in range(3)]
    path = killed_journal(tmp_path, events)
    whole = path.read_bytes().rstrip(b"\0")  # a mapped file: the records, then its zeroed tail
    torn = b"F" + orjson.dumps({"request_id": "req-torn", "ts": 1.0})[:-9]  # no newline: cut mid-write
    path.write_bytes(whole + torn)
    found = read(path)
    assert set(found.finished) == {"req-0", "req-1", "req-2"} and found.skipped == 0
    store, w = await start_writer(tmp_path)
    await w.aclose()
    assert [r["request_id"] for r in await rows_of(store)] == ["req-0", "req-1", "req-2"]
    await store.aclose()


async def test_committed_rows_are_not_replayed(tmp_path):
    events = [event(i) for i in range(4)]
    rows = chained(events)
    killed_journal(tmp_path, events, committed=4)
    store = SQLiteAuditStore(settings(), tmp_path / "audit.db")
    await store.start()
    await store.insert_batch(rows)
    await store.aclose()
    store, w = await start_writer(tmp_path)
    await w.aclose()
    assert len(await rows_of(store)) == 4
    await store.aclose()


def test_the_journal_is_compacted_to_what_is_still_needed(tmp_path):
    j = Journal(tmp_path / "j", max_bytes=8192)
    j.open([])
    j.begun("slow-stream", 1.0, "openai", None, None)  # in flight throughout
    sizes = []
    for i in range(200):
        e = event(i)
        j.begun(e.request_id, e.ts, e.api, e.client_ip, e.trace_id)
        j.submitted(e)
        if i % 10 == 9:
            j.committed(10)
        sizes.append(j.size)
    # one batch of 10 rows (~8.5 kB) past the limit at most, never the 200 rows (~170 kB) written
    assert max(sizes) < 8192 + 10_000 and min(sizes[100:]) < 2000
    for i in range(200, 215):  # the store is slow: 15 rows wait
        e = event(i)
        j.begun(e.request_id, e.ts, e.api, e.client_ip, e.trace_id)
        j.submitted(e)
    j.committed(3)  # past the limit: compacted, after marking the oldest 3 durable
    assert len((tmp_path / "j").read_bytes().rstrip(b"\0")) == j.size < 15 * 1000
    found = read(tmp_path / "j")
    assert set(found.begun) == {"slow-stream"} and not found.committed
    assert set(found.finished) == {f"req-{i}" for i in range(203, 215)}
    j.close()
    assert (tmp_path / "j").exists()  # rows still pending: kept for the next start


def test_a_row_recorded_as_the_response_ended_is_not_written_again_unless_it_changed(tmp_path):
    j = Journal(tmp_path / "j")
    j.open([])
    a, b = event(1), event(2)
    j.finished(a)
    j.finished(b)
    j.submitted(a)  # unchanged since the response ended: the record is already there
    j.submitted(event(2, status=499, error="client disconnected mid-stream"))
    lines = (tmp_path / "j").read_bytes().rstrip(b"\0").splitlines()
    assert [line[:1] for line in lines] == [b"F", b"F", b"F"]
    assert read(tmp_path / "j").finished["req-2"]["status"] == 499  # the last record wins
    j.committed(2)
    j.close()
    assert not (tmp_path / "j").exists()  # nothing pending: removed


async def test_a_clean_stop_leaves_no_journal_and_a_disabled_one_writes_none(tmp_path):
    store, w = await start_writer(tmp_path)
    for i in range(3):
        await w.record(event(i))
    assert journal_path(tmp_path / "audit.spool").exists()
    await w.aclose()
    assert not journal_path(tmp_path / "audit.spool").exists()
    await store.aclose()
    store, w = await start_writer(tmp_path / "off", journal=False)
    await w.record(event(9))
    assert not journal_path(tmp_path / "off" / "audit.spool").exists()
    await w.aclose()
    await store.aclose()


async def test_replayed_rows_take_no_queue_slot(tmp_path):
    """More rows to replay than the queue holds: they are stored and the slots all come back."""
    events = [event(i) for i in range(5)]
    killed_journal(tmp_path, events)
    store, w = await start_writer(tmp_path, queue_max=2, on_full="refuse")
    for i in range(10, 12):
        await w.record(event(i))
    await asyncio.wait_for(w.aclose(), 10)
    assert len(await rows_of(store)) == 7 and w.depth == 0
    await store.aclose()
