"""The request path's cheaper forms (issue 10's benchmark target) record exactly what the plain ones did.

- Exchange.audit_event() builds the event positionally: every field lands where its name says.
- The row journaled before the last chunk is reused by finish() (final_event) only while what it
  records is unchanged but the timings; anything else gets a fresh event.
- The journal's B record is an array; journals holding the older object form still replay.
- The per-request metrics are plain counts rendered at scrape time, with the names, labels and
  cumulative buckets prometheus_client's Counter and Histogram gave them.
- The breaker's error-rate window still expires old buckets when it skips the expiry on the hot path.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import orjson

from gateway.audit.journal import INTERRUPTED, Journal, read, recover
from gateway.breaker import _Window
from gateway.context import Exchange
from gateway.metrics import Metrics
from gateway.types import Agent, AuditEvent, Decision, Principal, Usage


def full_exchange() -> Exchange:
    """An exchange with a distinct value in every field an audit event reads."""
    ex = Exchange(request_id="req_1", api="openai", client_ip="10.0.0.9", ts=1700000000.25)
    ex.agent = Agent("builder", 2, "supervised", "finance", {"team": "payments"})
    ex.principal = Principal("finance", "api_key", ex.agent)
    ex.action, ex.resource_type, ex.resource_name, ex.upstream = "llm.chat", "model", "gpt-4o-mini", "fast"
    ex.stream, ex.outcome, ex.status, ex.error = True, "allow", 201, None
    ex.decision = Decision(True, ("r1", "r2"), {}, 60, "rev-9", True)
    ex.upstream_ms, ex.usage = 12.5, Usage(11, 22)
    ex.input_digest, ex.policy_input, ex.trace_id = "d" * 64, {"agent": {"id": "builder"}}, "t" * 32
    return ex


def test_audit_event_puts_every_field_under_its_own_name() -> None:
    ex = full_exchange()
    ev = ex.audit_event()
    expected = {
        "request_id": "req_1", "ts": 1700000000.25, "agent_id": "builder", "tier": 2, "maturity": "supervised",
        "workspace": "finance", "auth": "api_key", "action": "llm.chat", "resource_type": "model",
        "resource_name": "gpt-4o-mini", "upstream": "fast", "api": "openai", "stream": True, "decision": "allow",
        "reasons": ("r1", "r2"), "policy_revision": "rev-9", "cache_hit": True, "status": 201,
        "upstream_ms": 12.5, "input_tokens": 11, "output_tokens": 22, "client_ip": "10.0.0.9", "error": None,
        "input_digest": "d" * 64, "policy_input": {"agent": {"id": "builder"}}, "trace_id": "t" * 32,
        # Filled later, off the request path, by the shadow runner (gateway/shadow/runner.py).
        "shadow_decision": None, "shadow_revision": None,
    }
    names = [f.name for f in dataclasses.fields(AuditEvent)]
    assert sorted(names) == sorted([*expected, "latency_ms"])  # a new field needs a place in audit_event()
    assert {k: getattr(ev, k) for k in expected} == expected
    assert isinstance(ev.latency_ms, float) and ev.latency_ms >= 0


def test_final_event_reuses_the_sealed_row_with_the_final_timings() -> None:
    ex = full_exchange()
    ex.upstream_ms = None  # the upstream timer ends after the last chunk is sent
    sealed = ex.seal()
    assert sealed.upstream_ms is None
    ex.upstream_ms = 40.0
    ev = ex.final_event()
    assert ev is sealed
    assert ev.upstream_ms == 40.0 and ev.latency_ms >= sealed.latency_ms
    assert dataclasses.replace(ev, latency_ms=0.0, upstream_ms=None) == \
        dataclasses.replace(ex.audit_event(), latency_ms=0.0, upstream_ms=None)


def test_final_event_is_rebuilt_when_the_outcome_changed_after_the_seal() -> None:
    changes = {
        "status": lambda ex: setattr(ex, "status", 499),
        "error": lambda ex: setattr(ex, "error", "client disconnected mid-stream"),
        "outcome": lambda ex: setattr(ex, "outcome", "error"),
        "usage in place": lambda ex: setattr(ex.usage, "output_tokens", 99),
        "decision": lambda ex: setattr(ex, "decision", dataclasses.replace(ex.decision, reasons=("clamped",))),
        "resource": lambda ex: setattr(ex, "resource_name", "other"),
    }
    for what, change in changes.items():
        ex = full_exchange()
        sealed = ex.seal()
        change(ex)
        ev = ex.final_event()
        assert ev is not sealed, what
        fresh = ex.audit_event()
        assert dataclasses.replace(ev, latency_ms=0.0) == dataclasses.replace(fresh, latency_ms=0.0), what


def test_without_a_seal_final_event_builds_the_row() -> None:
    ex = full_exchange()
    assert ex.final_event().status == 201


def test_begun_records_are_arrays_and_both_forms_replay(tmp_path: Path) -> None:
    j = Journal(tmp_path / "a.journal")
    j.open([])
    j.begun("req_new", 1700000001.5, "anthropic", "10.1.1.1", "a" * 32)
    j.close(remove=False)
    data = (tmp_path / "a.journal").read_bytes()
    assert data.startswith(b'B["req_new",1700000001.5,"anthropic","10.1.1.1","' + b"a" * 32 + b'"]\n')
    old = b"B" + orjson.dumps({"request_id": "req_old", "ts": 1700000000.5, "api": "openai",
                               "client_ip": None, "trace_id": None}) + b"\n"
    (tmp_path / "a.journal").write_bytes(data + old)
    found = read(tmp_path / "a.journal")
    assert found.skipped == 0
    assert found.begun["req_new"] == {"request_id": "req_new", "ts": 1700000001.5, "api": "anthropic",
                                      "client_ip": "10.1.1.1", "trace_id": "a" * 32}
    rows = {r.request_id: r for r in recover(found, (), 0)}
    assert set(rows) == {"req_new", "req_old"}
    assert rows["req_new"].error == INTERRUPTED and rows["req_new"].api == "anthropic"
    assert rows["req_new"].client_ip == "10.1.1.1" and rows["req_new"].trace_id == "a" * 32
    assert rows["req_old"].api == "openai" and rows["req_old"].ts == 1700000000.5


def test_per_request_metrics_render_as_counters_and_histograms() -> None:
    m = Metrics()
    for _ in range(3):
        m.count_request("openai", "allow", 200)
    m.count_request("mcp", "deny", 200)
    m.count_agent("builder", "allow")
    for s in (0.004, 0.02, 0.02, 200.0):
        m.observe_upstream("fast", s)
    m.overhead.observe(0.0003)
    m.overhead.observe(0.0001)  # on a bucket's bound: counted in it (le)
    text = m.render().decode()
    assert 'portcullis_requests_total{decision="allow",status="200",surface="openai"} 3.0' in text
    assert 'portcullis_requests_total{decision="deny",status="200",surface="mcp"} 1.0' in text
    assert 'portcullis_requests_created{decision="allow",status="200",surface="openai"}' in text
    assert 'portcullis_agent_requests_total{agent="builder",decision="allow"} 1.0' in text
    assert 'portcullis_upstream_seconds_bucket{le="0.005",upstream="fast"} 1.0' in text
    assert 'portcullis_upstream_seconds_bucket{le="0.025",upstream="fast"} 3.0' in text
    assert 'portcullis_upstream_seconds_bucket{le="120.0",upstream="fast"} 3.0' in text
    assert 'portcullis_upstream_seconds_bucket{le="+Inf",upstream="fast"} 4.0' in text
    assert 'portcullis_upstream_seconds_count{upstream="fast"} 4.0' in text
    assert 'portcullis_upstream_seconds_sum{upstream="fast"} 200.044' in text
    assert 'portcullis_overhead_seconds_bucket{le="5e-05"} 0.0' in text
    assert 'portcullis_overhead_seconds_bucket{le="0.0001"} 1.0' in text
    assert 'portcullis_overhead_seconds_bucket{le="0.0005"} 2.0' in text
    assert "# TYPE portcullis_overhead_seconds histogram" in text
    assert "# HELP portcullis_requests_total Requests by surface, decision and status" in text


def test_breaker_window_expires_old_buckets_on_the_next_new_bucket() -> None:
    w = _Window(10.0)  # ten 1-second buckets
    w.add(100.1, True)
    w.add(100.5, False)
    w.add(100.9, True)  # same bucket: no expiry needed
    assert (w.total, w.failed) == (3, 2)
    w.add(105.0, False)
    assert (w.total, w.failed) == (4, 2)
    w.add(110.2, False)  # bucket 110: bucket 100 is now out of the window
    assert (w.total, w.failed) == (2, 0)
    w.clear()
    w.add(110.3, True)  # the bucket cleared above is not reused
    assert (w.total, w.failed) == (1, 1)

