"""AuditStore.iter_inputs (what `policy replay` reads), on every store: SQLite and the real PostgreSQL.

Rows are written by the real AuditWriter; the filters run in the store, the rows come back in
chunks (more rows than one chunk here), and rows without a decided input are never returned.
"""
from __future__ import annotations

import orjson
import pytest

from gateway.audit.chain import format_ts
from gateway.audit.writer import AuditWriter
from gateway.replay.source import parse_when, read_inputs
from tests.support import audit_backends
from tests.support.audit_backends import BACKENDS
from tests.support.audit_rows import event, settings

T0 = 1_750_000_000.0
N = 12_000  # more than two of the stores' 5,000-row chunks


@pytest.fixture(params=BACKENDS)
async def backend(request, tmp_path):
    b = audit_backends.backend(request.param, tmp_path)
    yield b
    await b.cleanup()


def _input(agent: str, model: str) -> dict:
    return {"agent": {"id": agent, "tier": 1}, "action": "llm.chat",
            "resource": {"type": "model", "name": model}, "request": {"api": "openai", "stream": False}}


async def _fill(store, tmp_path) -> None:
    """N decided rows over 3 agents x 4 models (digest = agent+model), one second apart, plus
    rows replay must skip: a lifecycle row (a policy_input, no digest) and a 401 (neither)."""
    w = AuditWriter(store, settings(batch_size=2000), tmp_path / "audit.spool")
    await w.start()
    agents = ("a-one", "a-two", "\ue000odd\x00agent")  # a name PostgreSQL stores escaped
    for i in range(N):
        agent, model = agents[i % 3], f"m{i % 4}"
        await w.record(event(i, ts=T0 + i, agent_id=agent, action="llm.chat" if i % 4 else "llm.embedding",
                             input_digest=f"{agent}/{model}", policy_input=_input(agent, model),
                             policy_revision="rev-a" if i < N - 100 else "rev-b"))
    await w.record(event(N, ts=T0 + 1, agent_id="a-one", action="agent.lifecycle", input_digest=None,
                         policy_input={"actor": "ops", "change": "revoke"}))
    await w.record(event(N + 1, ts=T0 + 2, agent_id=None, action=None, input_digest=None, policy_input=None))
    await w.aclose()


async def test_iter_inputs_filters_in_the_store_and_skips_rows_without_a_decided_input(backend, tmp_path):
    store = backend.store()
    await store.start()
    await _fill(store, tmp_path)

    rows = [r async for r in store.iter_inputs()]
    assert len(rows) == N
    assert set(rows[0]) == {"ts", "agent_id", "action", "policy_input", "input_digest", "policy_revision"}
    one = next(r for r in rows if r["ts"] == format_ts(T0 + 5))
    assert one["agent_id"] == "\ue000odd\x00agent" and one["action"] == "llm.chat"
    assert orjson.loads(one["policy_input"]) == _input("\ue000odd\x00agent", "m1")
    assert one["input_digest"] == "\ue000odd\x00agent/m1" and one["policy_revision"] == "rev-a"

    window = [r async for r in store.iter_inputs(format_ts(T0 + 10), format_ts(T0 + 20))]
    assert sorted(r["ts"] for r in window) == [format_ts(T0 + i) for i in range(10, 20)]  # since in, until out
    odd = [r async for r in store.iter_inputs(agent="\ue000odd\x00agent", action="llm.embedding")]
    assert len(odd) == N // 12 and {r["input_digest"] for r in odd} == {"\ue000odd\x00agent/m0"}
    assert [r async for r in store.iter_inputs(since=format_ts(T0 + N))] == []

    rec = await read_inputs(store)
    assert rec.rows == N and len(rec.inputs) == 12
    assert {d: e.requests for d, e in rec.inputs.items()} == {f"{a}/m{m}": N // 12 for a in
                                                             ("a-one", "a-two", "\ue000odd\x00agent") for m in range(4)}
    assert rec.inputs["a-two/m3"].policy_input == _input("a-two", "m3")
    assert rec.revisions == {"rev-a": N - 100, "rev-b": 100}
    assert (rec.first_ts, rec.last_ts) == (format_ts(T0), format_ts(T0 + N - 1))
    seen: list[int] = []
    await read_inputs(store, agent="a-one", progress=seen.append, every=1000)
    assert seen == [1000, 2000, 3000, 4000, 4000]  # every 1,000 rows, then once at the end
    await store.aclose()


def test_parse_when_takes_durations_iso_times_and_all():
    now = 1_750_000_000.0
    assert parse_when("7d", now) == format_ts(now - 7 * 86400)
    assert parse_when("36h", now) == format_ts(now - 36 * 3600)
    assert parse_when("90m", now) == format_ts(now - 5400)
    assert parse_when("2025-06-15", now) == "2025-06-15T00:00:00.000000+00:00"
    assert parse_when("2025-06-15T12:00:00+02:00", now) == "2025-06-15T10:00:00.000000+00:00"
    assert parse_when("2025-06-15T12:00:00Z", now) == "2025-06-15T12:00:00.000000+00:00"
    assert parse_when("all", now) is None and parse_when(None, now) is None
    with pytest.raises(ValueError, match="neither a duration"):
        parse_when("last tuesday", now)
