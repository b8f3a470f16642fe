"""OpenTelemetry tracing, exported over OTLP/HTTP to a real receiver process on 127.0.0.1.

The receiver (tests/support/otlp_receiver.py) decodes each protobuf export with
opentelemetry-proto, as a collector would; the test upstream and the MCP orders
server record the headers they were sent. With tracing off the gateway is
transparent: the client's traceparent travels unchanged and its trace id is audited.
"""
from __future__ import annotations

import json
import logging
import socket
from typing import Any, Callable, Iterator

import httpx
import pytest

from tests.support.harness import KEYS, Gateway, LoopThread
from tests.support.mcp_orders_server import OrdersServer
from tests.support.mcp_raw import RawSession
from tests.support.otlp_receiver import OTLPReceiver
from tests.support.tool_configs import tools_config
from tests.support.upstream_server import UpstreamServer, request_id
from tests.support.waiting import eventually

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{CLIENT_SPAN}-01"
TRACESTATE = "vendor=abc,other=1"
OTLP_SECRET = "collector-token-s3cret"
CHILDREN = {"identity", "policy", "limits", "upstream", "audit.enqueue"}


@pytest.fixture(scope="module")
def receiver() -> Iterator[OTLPReceiver]:
    r = OTLPReceiver()
    yield r
    r.stop()


@pytest.fixture
def traced(make_gateway: Callable[..., Gateway], receiver: OTLPReceiver, upstream: UpstreamServer,
           orders: OrdersServer) -> Gateway:
    return make_gateway(
        tracing={"enabled": True, "endpoint": receiver.endpoint, "service_name": "portcullis-test",
                 "schedule_delay_ms": 20, "headers_env": "TEST_OTLP_HEADERS"},
        tools=tools_config(orders.url, upstream.url),
        environ={"TEST_OTLP_HEADERS": f"Authorization=Bearer%20{OTLP_SECRET}"})


def chat(gw: Gateway, agent: str = "intern-bot", model: str = "gpt-4o-mini", **headers: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=10,
                      headers={"authorization": f"Bearer {KEYS[agent]}", "x-request-id": request_id(), **headers})


def request_spans(receiver: OTLPReceiver, rid: str) -> dict[str, Any]:
    """The exported spans of one gateway request: its root (found by request id) and children."""
    def found() -> dict[str, Any] | None:
        spans = receiver.spans()
        roots = [s for s in spans if s["attributes"].get("portcullis.request_id") == rid]
        if not roots:
            return None
        kids = [s for s in spans if s["parent_span_id"] == roots[0]["span_id"]]
        return {"root": roots[0], **{s["name"]: s for s in kids}}
    return eventually(found, f"the spans of {rid}")


def sent(upstream: UpstreamServer, r: httpx.Response) -> list[Any]:
    """What the upstream got for this chat: the client's x-request-id is passed on."""
    return upstream.received(r.request.headers["x-request-id"])


def parent_of(traceparent: str) -> tuple[str, str]:
    _, trace_id, span_id, _ = traceparent.split("-")
    return trace_id, span_id


def test_a_request_is_one_span_tree_continuing_the_clients_trace(
        traced: Gateway, receiver: OTLPReceiver, upstream: UpstreamServer) -> None:
    first = chat(traced, traceparent=TRACEPARENT, tracestate=TRACESTATE)
    second = chat(traced, traceparent=TRACEPARENT, tracestate=TRACESTATE)
    assert first.status_code == second.status_code == 200
    rid = second.headers["x-request-id"]
    spans = request_spans(receiver, rid)
    root = spans["root"]
    assert set(spans) == {"root", *CHILDREN}
    # The client's trace continued: same trace id, its span is the root's parent.
    assert {s["trace_id"] for s in spans.values()} == {TRACE}
    assert root["parent_span_id"] == CLIENT_SPAN
    assert root["name"] == "POST openai" and root["kind"] == 2  # SPAN_KIND_SERVER
    assert root["resource"]["service.name"] == "portcullis-test"
    assert {k: root["attributes"][k] for k in (
        "http.request.method", "url.path", "http.response.status_code", "portcullis.agent_id",
        "portcullis.decision", "portcullis.surface")} == {
        "http.request.method": "POST", "url.path": "/v1/chat/completions", "http.response.status_code": 200,
        "portcullis.agent_id": "intern-bot", "portcullis.decision": "allow", "portcullis.surface": "openai"}
    assert spans["upstream"]["kind"] == 3  # SPAN_KIND_CLIENT
    assert spans["upstream"]["attributes"] == {"portcullis.upstream": "openai", "portcullis.resource": "gpt-4o-mini"}
    # The second decision came from the cache, the first did not.
    first_spans = request_spans(receiver, first.headers["x-request-id"])
    assert first_spans["policy"]["attributes"]["portcullis.cache_hit"] is False
    assert spans["policy"]["attributes"]["portcullis.cache_hit"] is True
    # Children run in pipeline order, inside the root.
    order = sorted(CHILDREN, key=lambda n: spans[n]["start_ns"])
    assert order == ["identity", "policy", "limits", "upstream", "audit.enqueue"]
    assert all(root["start_ns"] <= spans[n]["start_ns"] <= spans[n]["end_ns"] <= root["end_ns"] for n in CHILDREN)

    # The upstream was sent the gateway's upstream span as its parent, with the client's tracestate.
    [seen] = sent(upstream, second)
    assert parent_of(seen.headers["traceparent"]) == (TRACE, spans["upstream"]["span_id"])
    assert seen.headers["tracestate"] == TRACESTATE
    assert seen.headers["authorization"] == "Bearer sk-provider-openai-secret"  # never the agent's key
    assert KEYS["intern-bot"] not in json.dumps(seen.headers)

    assert traced.audit_row(rid)["trace_id"] == TRACE
    # The exporter sent the headers from headers_env; the secret is in no setting's repr.
    assert any(r.get("authorization") == f"Bearer {OTLP_SECRET}" for r in receiver.requests())
    assert OTLP_SECRET not in repr(traced.settings) and OTLP_SECRET not in traced.settings.model_dump_json()


def test_without_a_traceparent_the_gateway_starts_a_trace(traced: Gateway, receiver: OTLPReceiver,
                                                          upstream: UpstreamServer) -> None:
    r = chat(traced)
    rid = r.headers["x-request-id"]
    spans = request_spans(receiver, rid)
    root = spans["root"]
    assert root["parent_span_id"] is None and root["trace_id"] not in (TRACE, "0" * 32)
    [seen] = sent(upstream, r)
    assert parent_of(seen.headers["traceparent"]) == (root["trace_id"], spans["upstream"]["span_id"])
    assert "tracestate" not in seen.headers
    assert traced.audit_row(rid)["trace_id"] == root["trace_id"]


def test_a_refused_request_is_traced_with_its_outcome(traced: Gateway, receiver: OTLPReceiver,
                                                      upstream: UpstreamServer) -> None:
    r = chat(traced, agent="observer", traceparent=TRACEPARENT)  # tier 0 may not chat
    assert r.status_code == 403
    rid = r.headers["x-request-id"]
    spans = request_spans(receiver, rid)
    assert set(spans) == {"root", "identity", "policy", "audit.enqueue"}  # no limits, no upstream call
    assert spans["root"]["attributes"]["portcullis.decision"] == "deny"
    assert spans["root"]["attributes"]["http.response.status_code"] == 403
    assert sent(upstream, r) == []
    assert traced.audit_row(rid)["trace_id"] == TRACE


def test_http_tool_and_mcp_calls_propagate_the_trace(traced: Gateway, receiver: OTLPReceiver,
                                                     upstream: UpstreamServer, orders: OrdersServer,
                                                     loop_thread: LoopThread) -> None:
    tool = httpx.post(traced.url + "/tools/weather", json={"city": "Oslo"}, timeout=10,
                      headers={"authorization": f"Bearer {KEYS['intern-bot']}", "traceparent": TRACEPARENT})
    assert tool.status_code == 200
    rid = tool.headers["x-request-id"]
    spans = request_spans(receiver, rid)
    assert {"identity", "policy", "limits", "tool", "audit.enqueue"} <= set(spans)
    [seen] = upstream.received(rid)
    assert parent_of(seen.headers["traceparent"]) == (TRACE, spans["tool"]["span_id"])
    assert "authorization" not in seen.headers
    assert traced.audit_row(rid)["trace_id"] == TRACE

    async def mcp_call() -> httpx.Response:
        async with httpx.AsyncClient(timeout=10) as http:
            session = RawSession(http, traced.url + "/mcp/orders",
                                 {"authorization": f"Bearer {KEYS['intern-bot']}", "traceparent": TRACEPARENT})
            await session.start()
            return await session.post({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                                       "params": {"name": "read_orders", "arguments": {"customer": "acme"}}})
    orders.clear()
    resp = loop_thread.run(mcp_call())
    assert resp.status_code == 200
    rid = resp.headers["x-request-id"]
    spans = request_spans(receiver, rid)
    assert spans["policy"]["attributes"]["portcullis.cache_hit"] in (True, False)
    [sent] = [r for r in orders.requests if r.headers.get("x-request-id") == rid]
    assert sent.rpc_method == "tools/call"
    assert parent_of(sent.headers["traceparent"]) == (TRACE, spans["tool"]["span_id"])
    assert "authorization" not in sent.headers
    row = traced.audit_row(rid)
    assert (row["action"], row["trace_id"]) == ("tool.call", TRACE)


# ---- tracing off (the default) ------------------------------------------------------------

def test_off_the_clients_trace_passes_through_and_is_audited(gateway: Gateway, upstream: UpstreamServer,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    assert gateway.app.state.services.tracer is None
    r = chat(gateway, traceparent=TRACEPARENT, tracestate=TRACESTATE)
    rid = r.headers["x-request-id"]
    [seen] = sent(upstream, r)
    assert (seen.headers["traceparent"], seen.headers["tracestate"]) == (TRACEPARENT, TRACESTATE)  # unchanged
    assert gateway.audit_row(rid)["trace_id"] == TRACE

    plain = chat(gateway)
    assert gateway.audit_row(plain.headers["x-request-id"])["trace_id"] is None
    assert "traceparent" not in sent(upstream, plain)[0].headers
    bad = chat(gateway, traceparent=f"00-{'0' * 32}-{CLIENT_SPAN}-01")  # an all-zero trace id is invalid
    assert gateway.audit_row(bad.headers["x-request-id"])["trace_id"] is None

    # The request's log line carries the trace id (a refusal is logged at DEBUG).
    with caplog.at_level(logging.DEBUG, logger="portcullis.exchange"):
        failed = chat(gateway, agent="observer", traceparent=TRACEPARENT)
        rid = failed.headers["x-request-id"]
        gateway.audit_row(rid)
    [rec] = [r for r in caplog.records if getattr(r, "request_id", None) == rid]
    assert rec.trace_id == TRACE


def test_unsampled_requests_export_nothing_but_keep_their_trace_id(
        make_gateway: Callable[..., Gateway], receiver: OTLPReceiver, upstream: UpstreamServer) -> None:
    gw = make_gateway(tracing={"enabled": True, "endpoint": receiver.endpoint, "sample_ratio": 0.0,
                               "schedule_delay_ms": 20})
    quiet = chat(gw)
    [seen] = sent(upstream, quiet)
    version, trace_id, parent, flags = seen.headers["traceparent"].split("-")
    assert version == "00" and int(flags, 16) & 1 == 0  # the upstream is told: not sampled
    assert gw.audit_row(quiet.headers["x-request-id"])["trace_id"] == trace_id
    # A client's sampled trace is still recorded (parent-based); its spans are exported after
    # any the unsampled request could have queued (one FIFO queue), so by then none came.
    loud = chat(gw, traceparent=TRACEPARENT)
    assert request_spans(receiver, loud.headers["x-request-id"])["root"]["trace_id"] == TRACE
    assert receiver.spans(trace_id) == []


def test_an_unreachable_collector_costs_spans_never_requests(make_gateway: Callable[..., Gateway],
                                                             upstream: UpstreamServer) -> None:
    with socket.socket() as held:  # bound, never listening: every export is refused
        held.bind(("127.0.0.1", 0))
        gw = make_gateway(tracing={"enabled": True, "endpoint": f"http://127.0.0.1:{held.getsockname()[1]}/v1/traces",
                                   "schedule_delay_ms": 20, "export_timeout_s": 1})
        r = chat(gw, traceparent=TRACEPARENT)
        assert r.status_code == 200
        assert gw.audit_row(r.headers["x-request-id"])["trace_id"] == TRACE
        gw.stop()  # closes the tracer too (its last export refused), without hanging
