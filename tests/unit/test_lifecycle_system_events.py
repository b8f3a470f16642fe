"""The hooks behind the system governance events: the audit writer's `on_spool`
(`audit.spooling`), called when the writer starts spooling because the real SQLite store cannot
be written, once per episode; and the policy stage's `on_fail_open` (`policy.fail_open`), when
a real (OPA-protocol) engine fails and the stage fails open, at most once a minute."""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from adapters.audit.sqlite import SQLiteAuditStore
from adapters.cache.memory import MemoryDecisionCache
from adapters.policy.opa import OPAEngine
from gateway.audit.writer import AuditWriter
from gateway.metrics import Metrics
from gateway.settings import CacheSettings, PolicySettings
from gateway.settings_audit import AuditSettings
from gateway.stages.policy import PolicyStage
from tests.support.harness import LoopThread
from tests.support.opa_server import OPAServer
from tests.support.waiting import eventually_async
from tests.unit.test_lifecycle_risk_report import ROWS
from tests.unit.test_policy_engine import POLICIES, model_input


async def test_on_spool_is_told_when_spooling_starts(tmp_path: Path) -> None:
    settings = AuditSettings(chain_id="spool", flush_interval_ms=1, batch_size=1, retry_interval_s=0.05)
    store = SQLiteAuditStore(settings, tmp_path / "audit.db", busy_timeout_ms=50)
    await store.start()
    told: list[dict[str, Any]] = []
    writer = AuditWriter(store, settings, tmp_path / "audit.spool", on_spool=told.append)
    await writer.start()
    other = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)  # another process holds the lock
    try:
        await writer.record(ROWS[0])
        await eventually_async(lambda: writer.depth == 0, "the first row stored")
        assert told == []
        other.execute("BEGIN EXCLUSIVE")
        for r in ROWS[1:4]:  # three batches while the store is locked: one spooling episode
            await writer.record(r)
        await eventually_async(lambda: writer.depth == 0, "the rows spooled")
        assert told == [{"rows": 1, "spool": str(tmp_path / "audit.spool")}]
        other.execute("ROLLBACK")
        await eventually_async(lambda: not (tmp_path / "audit.spool").exists(), "the spool replayed")
        other.execute("BEGIN EXCLUSIVE")  # a second episode is told again
        await writer.record(ROWS[4])
        await eventually_async(lambda: len(told) == 2, "the second spooling")
        other.execute("ROLLBACK")
    finally:
        other.close()
        await writer.aclose()
        await store.aclose()
    ids = [r["request_id"] async for r in store_rows(tmp_path, settings)]
    assert ids == [r.request_id for r in ROWS[:5]]


async def store_rows(tmp_path: Path, settings: AuditSettings) -> Any:
    store = SQLiteAuditStore(settings, tmp_path / "audit.db")
    await store.start()
    try:
        async for r in store.iter_chain("spool"):
            yield r
    finally:
        await store.aclose()


def test_on_fail_open_is_told_once_a_minute_with_the_count(loop_thread: LoopThread) -> None:
    server = loop_thread.run(OPAServer(POLICIES).start())
    engine = OPAEngine(PolicySettings(backend="opa", hot_reload=False, opa={"url": server.url, "timeout_s": 5.0}),
                       POLICIES)
    told: list[dict[str, Any]] = []
    try:
        loop_thread.run(engine.start())
        cache = MemoryDecisionCache(CacheSettings())
        loop_thread.run(cache.start())
        stage = PolicyStage(engine, cache, Metrics(), fail_open=True, on_fail_open=told.append)
        doc = model_input("observer", "llm.models", "gpt-4o-mini")
        decision, _ = loop_thread.run(stage.decide(doc))
        assert decision.allow and told == []  # a real decision: nothing to tell
        server.fail = (503, "unavailable", "server is shutting down")
        for model in ("a", "b", "c"):  # uncached inputs: each one evaluated, each one fails open
            decision, _ = loop_thread.run(stage.decide(model_input("observer", "llm.chat", model)))
            assert decision.allow and "fail-open" in decision.reasons[0]
        assert len(told) == 1 and told[0]["requests"] == 1 and "503" in told[0]["error"]
    finally:
        loop_thread.run(engine.aclose())
        loop_thread.run(server.stop())
