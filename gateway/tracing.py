"""The tracing seam: settings, the protocol a tracer backend implements, and W3C helpers.

Off by default. When off, `Services.tracer` is None and `Exchange.trace` stays None,
and every place that would open a span (the exchange shell: the request and identity;
PolicyStage.decide: policy; admission.reserve: limits; forward.timed: the upstream or
tool call; finish(): audit.enqueue) makes one `is None` check instead: no span object,
clock read or context per request. The OTel SDK backend (adapters/tracing/otel.py) is
loaded by the registry only when enabled.

A client's W3C `traceparent` is honoured either way. With tracing off the gateway
is transparent: the header (and `tracestate`) travel to upstreams and tool servers
unchanged, and its trace id goes into the audit row and logs, so one client trace
still ties the agent, the gateway's audit row and the provider together. With
tracing on, the gateway's spans join that trace and its upstream/tool call span is
the parent it propagates.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Mapping, Protocol
from urllib.parse import unquote

from pydantic import Field

from gateway.configbase import Model
from gateway.http import header

if TYPE_CHECKING:
    from gateway.context import Exchange

# version-traceid-parentid-flags (W3C Trace Context level 1); version ff is invalid.
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_ZERO_TRACE = "0" * 32


class TracingSettings(Model):
    enabled: bool = False
    endpoint: str = Field("http://127.0.0.1:4318/v1/traces", pattern=r"^https?://")  # OTLP/HTTP traces URL
    service_name: str = "portcullis"
    sample_ratio: float = Field(1.0, ge=0.0, le=1.0)  # for traces the client did not sample already
    # Name of an env variable holding exporter headers (OTEL_EXPORTER_OTLP_HEADERS format,
    # "k=v,k2=v2"), e.g. a collector's auth token; resolved at load, never logged.
    headers_env: str | None = None
    headers: dict[str, str] = Field(default_factory=dict, exclude=True, repr=False)
    export_timeout_s: float = Field(5.0, gt=0)  # one OTLP export, retries included
    schedule_delay_ms: int = Field(5000, gt=0)  # BatchSpanProcessor: how long spans wait for a batch
    max_queue_size: int = Field(8192, gt=0)  # spans held for export; beyond it new spans are dropped
    max_export_batch_size: int = Field(512, gt=0)

    def resolved(self, environ: Mapping[str, str]) -> tuple["TracingSettings", list[tuple[str, str]]]:
        """These settings with `headers` read from `headers_env`, and any problem doing so."""
        if not self.headers_env:
            return self, []
        raw = environ.get(self.headers_env)
        if raw is None:
            return self, [("tracing.headers_env", f"environment variable {self.headers_env} is not set")]
        try:
            headers = parse_headers(raw)
        except ValueError as e:  # the message never quotes the value: it is a secret
            return self, [("tracing.headers_env", f"environment variable {self.headers_env}: {e}")]
        return self.model_copy(update={"headers": headers}), []


def parse_headers(raw: str) -> dict[str, str]:
    """OTEL_EXPORTER_OTLP_HEADERS format: comma-separated key=value, values percent-encoded."""
    out = {}
    for i, item in enumerate(p for p in raw.split(",") if p.strip()):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"entry {i + 1} is not key=value")
        out[key.strip().lower()] = unquote(value.strip())
    return out


def client_trace_id(traceparent: str | None) -> str | None:
    """The trace id of a valid W3C traceparent, else None (an invalid header is ignored)."""
    if not traceparent:
        return None
    m = _TRACEPARENT.match(traceparent.strip())
    if m is None or m.group(1) == "ff" or m.group(2) == _ZERO_TRACE or m.group(3) == "0" * 16:
        return None
    if m.group(1) == "00" and m.group(5):  # version 00 has exactly four fields
        return None
    return m.group(2)


class Span(Protocol):
    """One child span, used as a context manager; an exception marks it failed."""

    def set(self, key: str, value: Any) -> None: ...
    def __enter__(self) -> "Span": ...
    def __exit__(self, *exc: Any) -> None: ...


class RequestTrace(Protocol):
    """The spans of one request: a root span and its children."""
    trace_id: str  # 32 lowercase hex digits

    def child(self, name: str, client: bool = False) -> Span: ...
    def propagate(self, span: Span, headers: dict[str, str]) -> None: ...  # traceparent/tracestate in
    def finish(self, attributes: Mapping[str, Any], error: bool) -> None: ...


class Tracer(Protocol):
    async def start(self) -> None: ...
    def request(self, name: str, traceparent: str | None, tracestate: str | None,
                attributes: Mapping[str, Any]) -> RequestTrace: ...
    async def aclose(self) -> None: ...  # exports what is still queued


class _Noop:
    """A span that records nothing (an unsampled request's children): one shared instance."""
    __slots__ = ()

    def set(self, key: str, value: Any) -> None:
        pass

    def __enter__(self) -> "_Noop":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


NOOP: Span = _Noop()


def start_request(tracer: Tracer, scope: dict[str, Any], ex: "Exchange") -> None:
    """Open the request's root span, continuing the client's traceparent when it sent one.

    Named "METHOD surface" (e.g. "POST openai"): the raw path would make span names
    unbounded (tool names, MCP servers, 404 probes); it is in url.path instead.
    """
    tp = header(scope, b"traceparent")
    ex.trace = tracer.request(f"{scope['method']} {ex.api}", tp, header(scope, b"tracestate") if tp else None,
                              {"http.request.method": scope["method"], "url.path": scope["path"][:200],
                               "portcullis.surface": ex.api, "portcullis.request_id": ex.request_id})
    ex.trace_id = ex.trace.trace_id


def end_request(ex: "Exchange") -> None:
    """Close the root span with what the request came to (the audit row's outcome)."""
    assert ex.trace is not None
    ex.trace.finish({"http.response.status_code": ex.status, "portcullis.decision": ex.outcome,
                     "portcullis.agent_id": ex.agent.id if ex.agent else None,
                     "portcullis.action": ex.action, "portcullis.upstream": ex.upstream},
                    error=ex.status >= 500)
