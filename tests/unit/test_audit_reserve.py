"""The audit writer's reserve: rows of requests refused before any governed work are
recorded while agents fill the queue, and cannot take the agents' slots."""
from __future__ import annotations

from pathlib import Path

import pytest

from adapters.audit.sqlite import SQLiteAuditStore
from gateway.audit.writer import AuditWriter
from gateway.errors import Unavailable
from tests.support.audit_rows import event, rows_of, settings
from tests.support.waiting import eventually_async


@pytest.fixture
async def store(tmp_path: Path):
    s = SQLiteAuditStore(settings(), tmp_path / "audit.db", busy_timeout_ms=50)
    await s.start()
    yield s
    await s.aclose()


async def test_early_rows_use_the_reserve_when_the_queue_is_full(store, tmp_path):
    w = AuditWriter(store, settings(queue_max=2, reserve_max=2, on_full="refuse", full_wait_s=0), tmp_path / "s")
    await w.start()
    await w.admit()
    await w.admit()
    with pytest.raises(Unavailable):  # the agents' queue is full
        await w.admit()
    await w.admit(early=True)  # a 408/413/431 row still gets a slot
    await w.admit(early=True)
    with pytest.raises(Unavailable):  # the reserve is bounded too
        await w.admit(early=True)
    assert w.depth == 4
    for i in range(4):
        w.submit(event(i))
    await eventually_async(lambda: w.depth == 0, "4 rows durable")
    # Every slot is back, in both pools: two agents, then two early rows, fit again.
    await w.admit()
    await w.admit()
    await w.admit(early=True)
    await w.admit(early=True)
    for i in range(4, 8):
        w.submit(event(i))
    await w.aclose()
    assert len(await rows_of(store)) == 8


async def test_early_rows_take_the_queue_first(store, tmp_path):
    """While the queue has room, early rows use it (the reserve is for when it is full)."""
    w = AuditWriter(store, settings(queue_max=1, reserve_max=1, on_full="refuse"), tmp_path / "s")
    await w.start()
    await w.admit(early=True)
    with pytest.raises(Unavailable):
        await w.admit()
    await w.admit(early=True)  # the reserve
    w.submit(event(0))
    w.submit(event(1))
    await w.aclose()
    assert len(await rows_of(store)) == 2
