"""Audit row builders and writer helpers shared by the audit test modules."""
from __future__ import annotations

from pathlib import Path

from gateway.audit.writer import AuditWriter
from gateway.settings import AuditSettings
from gateway.types import AuditEvent

CHAIN = "replica-a"


def settings(**kw) -> AuditSettings:
    base = dict(chain_id=CHAIN, batch_size=100, flush_interval_ms=5, retry_interval_s=0.02)
    return AuditSettings(**(base | kw))


def event(i: int, **kw) -> AuditEvent:
    base = dict(
        request_id=f"req-{i}", ts=1_750_000_000.123456 + i, agent_id="billing-bot", tier=2,
        maturity="intern", workspace="finance", auth="api_key", action="llm.chat",
        resource_type="model", resource_name="gpt-4o-mini", upstream="openai", api="openai",
        stream=i % 2 == 0, decision="allow", reasons=("ok", f"r{i}"), policy_revision="rev1",
        cache_hit=i % 3 == 0, status=200, latency_ms=1.23456789 * i, upstream_ms=0.1 + i / 7,
        input_tokens=10 + i, output_tokens=None, client_ip="127.0.0.1", error=None,
        input_digest="d" * 64,
        policy_input={"agent": {"id": "billing-bot", "tier": 2, "labels": {"z": "1", "a": "2"}},
                      "action": "llm.chat", "request": {"api": "openai", "stream": True}, "f": 0.1},
    )
    return AuditEvent(**(base | kw))


class Metrics:
    """Records what the writer reports (implements the AuditMetrics protocol)."""

    def __init__(self) -> None:
        self.depth, self.failures, self.written = 0, 0, 0

    def set_depth(self, n: int) -> None:
        self.depth = n

    def inc_failures(self) -> None:
        self.failures += 1

    def inc_written(self, n: int) -> None:
        self.written += n


async def write_events(store, tmp_path: Path, n: int, start: int = 0, **kw) -> AuditWriter:
    w = AuditWriter(store, settings(**kw), tmp_path / "audit.spool")
    await w.start()
    for i in range(start, start + n):
        await w.record(event(i))
    await w.aclose()
    return w


async def rows_of(store) -> list[dict]:
    return [r async for r in store.iter_chain()]
