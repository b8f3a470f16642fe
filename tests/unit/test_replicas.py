"""Replica heartbeats in the lifecycle store (the console's "revision on every replica"),
and the `policy.reloaded` event an accepted reload emits.

Both stores for real (SQLite file, the machine's PostgreSQL under a unique table prefix);
the runtime side through real gateways.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.lifecycle.postgres import PostgresLifecycleStore
from adapters.lifecycle.sqlite import SQLiteLifecycleStore
from adapters.policy.bundle import collect
from gateway.protocols import LifecycleStore
from gateway.settings_lifecycle import LifecycleSettings
from tests.support import pg
from tests.support.harness import REPO, Gateway, LoopThread, copy_policies
from tests.support.services import pg_dsn, unique
from tests.support.waiting import eventually


async def _drop_prefixed(dsn: str, prefix: str) -> None:
    for r in await pg.fetch(dsn, "SELECT tablename FROM pg_tables WHERE tablename LIKE $1", prefix + "%"):
        await pg.drop_table(dsn, r["tablename"])


@pytest.fixture(params=["sqlite", "postgres"])
async def stores(request, tmp_path):
    """A function making started stores on one database (two calls: two replicas' stores)."""
    made: list[Any] = []
    if request.param == "sqlite":
        settings, dsn = LifecycleSettings(), None
    else:
        dsn = pg_dsn()
        settings = LifecycleSettings(store="postgres", dsn=dsn, table_prefix=unique("rep_t_"))

    async def make() -> Any:
        s: Any = (SQLiteLifecycleStore(settings, tmp_path / "lifecycle.db") if dsn is None
                  else PostgresLifecycleStore(settings))
        await s.start()
        made.append(s)
        return s

    yield make
    for s in made:
        await s.aclose()
    if dsn is not None:
        await _drop_prefixed(dsn, settings.table_prefix)


async def test_heartbeats_upsert_and_age_out(stores):
    a, b = await stores(), await stores()
    assert isinstance(a, LifecycleStore)
    assert await a.replicas(60, now=1000.0) == []
    await a.heartbeat("r1", "host-a", 11, "rev-1", 900.0, at=950.0)
    await b.heartbeat("r2", "host-b", 22, None, 905.0, at=990.0)
    assert await b.replicas(60, now=1000.0) == [
        {"replica_id": "r1", "host": "host-a", "pid": 11, "revision": "rev-1", "started_at": 900.0, "last_seen": 950.0},
        {"replica_id": "r2", "host": "host-b", "pid": 22, "revision": None, "started_at": 905.0, "last_seen": 990.0}]
    # The next beat of r1 replaces its row: a new revision, seen later; r2 has gone quiet.
    await b.heartbeat("r1", "host-a", 11, "rev-2", 900.0, at=1100.0)
    assert await a.replicas(60, now=1120.0) == [
        {"replica_id": "r1", "host": "host-a", "pid": 11, "revision": "rev-2", "started_at": 900.0,
         "last_seen": 1100.0}]
    assert [r["replica_id"] for r in await a.replicas(1e9, now=1120.0)] == ["r1", "r2"]
    # Free text a host could carry (NUL) is stored, cleaned like every lifecycle text.
    await a.heartbeat("r3", "odd\x00host", 1, "rev", 1.0, at=time.time())
    [r3] = [r for r in await a.replicas(60) if r["replica_id"] == "r3"]
    assert r3["host"] == "odd\ufffdhost"


def test_a_gateway_beats_at_start_and_after_an_accepted_reload(
        make_gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    pol = copy_policies(tmp_path / "policies")
    gw = make_gateway(policy_dir=pol, policy__hot_reload=True)
    lc = gw.lifecycle
    before = collect(pol).revision
    [me] = gw.loop.run(lc.store.replicas(60))
    assert (me["replica_id"], me["revision"], me["pid"]) == (lc.replica["replica_id"], before, os.getpid())

    rego = pol / "portcullis" / "decision.rego"  # not a *_test.rego: those are not in the revision
    rego.write_text(rego.read_text() + "\n# an edit that changes the revision\n")

    def reloaded() -> list[Any]:
        gw.loop.run(lc.events.flush())
        return [e for e in gw.loop.run(lc.store.events()) if e.event_type == "policy.reloaded"]

    [event] = eventually(reloaded, "a policy.reloaded event")
    after = collect(pol).revision
    assert after != before
    assert (event.severity, event.details["revision"], event.details["replica"]) == (
        "LOW", after, lc.replica["replica_id"])
    eventually(lambda: gw.loop.run(lc.store.replicas(60))[0]["revision"] == after, "the new revision in the beat")
    assert not [e for e in gw.loop.run(lc.store.events()) if e.event_type == "policy.reload_rejected"]


def test_two_replicas_on_one_postgres_list_each_other(
        loop_thread: LoopThread, make_gateway: Callable[..., Gateway]) -> None:
    dsn, prefix = pg_dsn(), unique("rep_gw_") + "_"
    try:
        lifecycle = {"store": "postgres", "dsn": dsn, "table_prefix": prefix}
        gw1, gw2 = make_gateway(lifecycle=lifecycle), make_gateway(lifecycle=lifecycle)
        seen = gw1.loop.run(gw1.lifecycle.store.replicas(60))
        assert {r["replica_id"] for r in seen} == {gw1.lifecycle.replica["replica_id"],
                                                   gw2.lifecycle.replica["replica_id"]}
        assert {r["revision"] for r in seen} == {collect(REPO / "policies_rego").revision}
        # A replica that stops beating drops out once its last beat is older than max_age_s.
        last = max(r["last_seen"] for r in seen)
        assert gw1.loop.run(gw1.lifecycle.store.replicas(60, now=last + 61)) == []
    finally:
        loop_thread.run(_drop_prefixed(dsn, prefix))
