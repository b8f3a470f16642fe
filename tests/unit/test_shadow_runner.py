"""ShadowRunner's bounds on the real embedded engine: a full queue drops the shadow decision (never
the row), closing decides what is queued, and a closed runner hands rows straight back."""
from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gateway import registry
from gateway.settings import PolicySettings
from gateway.settings_shadow import ShadowSettings
from gateway.shadow.runner import ShadowRunner
from gateway.stages.policy import digest, policy_input
from gateway.types import Agent, AuditEvent, Decision

REPO = Path(__file__).resolve().parents[2]


def event(i: int, model: str = "gpt-4o") -> tuple[AuditEvent, Decision]:
    agent = Agent(f"agent-{i}", 2, "supervised", "ws")
    doc = policy_input(agent, "api_key", "llm.chat", {"type": "model", "name": model}, {"stream": False})
    ev = AuditEvent(f"req-{i}", 0.0, agent.id, 2, "supervised", "ws", "api_key", "llm.chat", "model", model,
                    "openai", "openai", False, "allow", (), "rev", False, 200, 1.0, 0.5, None, None, None, None,
                    digest(doc), doc)
    return ev, Decision(allow=True, obligations={"max_output_tokens": 1}, revision="rev")


def runner(sink: list[AuditEvent], **shadow) -> tuple[ShadowRunner, CollectorRegistry]:
    settings = PolicySettings(dir=str(REPO / "policies_rego"), hot_reload=False, evaluator="interpreter")
    engine = registry.load("policy", "regorus")(settings, REPO / "policies_rego")
    reg = CollectorRegistry()
    return ShadowRunner(ShadowSettings(dir=str(REPO / "policies_rego"), **shadow), engine, sink.append, reg), reg


async def test_a_full_queue_drops_shadow_decisions_not_rows_and_close_decides_the_rest() -> None:
    sink: list[AuditEvent] = []
    r, reg = runner(sink, queue_size=3)
    await r.start()
    revision = r.revision
    try:
        taken = [r.offer(*event(i)) for i in range(5)]  # no await between: the worker has not run
        assert taken == [True, True, True, False, False]
        assert reg.get_sample_value("portcullis_shadow_dropped_total") == 2
        assert reg.get_sample_value("portcullis_shadow_queue_depth") == 3
        assert sink == []  # the caller submits the two refused ones itself
    finally:
        await r.aclose()  # decides the three queued before returning
    assert [e.request_id for e in sink] == ["req-0", "req-1", "req-2"]
    assert revision and all(e.shadow_revision == revision for e in sink)
    # The serving decision said max_output_tokens 1; the shadow set (the default one) says 4096.
    assert all(e.shadow_decision["kind"] == "obligations" for e in sink)
    assert sink[0].shadow_decision["decision"]["obligations"]["max_output_tokens"] == 4096
    assert reg.get_sample_value("portcullis_shadow_disagreements_total",
                                {"action": "llm.chat", "kind": "obligations"}) == 3
    assert not r.offer(*event(9))  # closed: the caller writes the row now


async def test_sampling_and_what_is_never_sampled() -> None:
    sink: list[AuditEvent] = []
    r, _ = runner(sink, sample=0.5)
    r._rand = iter([0.7, 0.2]).__next__  # the runner's own randomness, made repeatable
    await r.start()
    try:
        assert not r.offer(*event(1))  # 0.7 >= 0.5: not sampled
        assert r.offer(*event(2))  # 0.2 < 0.5
        ev, d = event(3)
        assert not r.offer(ev, None)  # no serving decision (a refused credential, a tools/list batch)
        assert not r.offer(dataclasses.replace(ev, decision="bypass"), d)  # nothing decided it
        for _ in range(50):
            if sink:
                break
            await asyncio.sleep(0.01)
        assert [e.request_id for e in sink] == ["req-2"]
    finally:
        await r.aclose()


@pytest.mark.parametrize("batch", [1, 64])
async def test_the_worker_yields_between_batches(batch: int) -> None:
    sink: list[AuditEvent] = []
    r, _ = runner(sink, batch=batch)
    await r.start()
    try:
        for i in range(8):
            r.offer(*event(i))
        while not sink:  # the worker's first turn
            await asyncio.sleep(0)
        # One turn decides one batch, then lets the requests sharing the loop run.
        assert len(sink) == min(batch, 8)
    finally:
        await r.aclose()
    assert len(sink) == 8
