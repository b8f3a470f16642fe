"""gateway.tracing.Tracer on the OpenTelemetry SDK, exporting OTLP/HTTP protobuf.

Its own TracerProvider, never the process-global one (no global state: two apps in
one process, as the tests run them, keep separate exporters). Parents are passed
explicitly rather than through the contextvar-based current span, so a stream pump
running as its own task cannot pick up a stranger's span. Spans are exported by the
SDK's BatchSpanProcessor from its own thread, off the event loop; `aclose()` flushes
it (in a worker thread: the exporter's HTTP call blocks), after the audit writer's flush:
the app closes the tracer last, so an unreachable collector delays only the exit.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Mapping

from opentelemetry import trace as otel
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.tracing import NOOP, TracingSettings

log = logging.getLogger("portcullis.tracing")
_PROPAGATOR = TraceContextTextMapPropagator()
_SDK_QUEUE_LOGGER = "opentelemetry.sdk._shared_internal"  # where the batch processor logs drops


class DropsLogged(logging.Filter):
    """The SDK logs a warning for every span dropped from a full queue: with a slow collector
    under load, a log line per span. Let one through per `interval_s`, counting the rest."""

    def __init__(self, interval_s: float = 10.0) -> None:
        super().__init__()
        self._interval = interval_s
        self._next = 0.0
        self._dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Queue full"):
            return True
        self._dropped += 1
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self._interval
        record.msg, record.args = ("tracing: span export queue full (tracing.max_queue_size), %d span(s) "
                                   "dropped since the last report", (self._dropped,))
        self._dropped = 0
        return True


class OTelSpan:
    """A child span as a context manager; an exception sets its status to ERROR."""
    __slots__ = ("span",)

    def __init__(self, span: otel.Span) -> None:
        self.span = span

    def set(self, key: str, value: Any) -> None:
        self.span.set_attribute(key, value)

    def __enter__(self) -> "OTelSpan":
        return self

    def __exit__(self, et: Any, e: Any, tb: Any) -> None:
        if e is not None:
            # The type only: messages may quote client input, and nothing secret may leave.
            self.span.set_status(Status(StatusCode.ERROR, type(e).__name__))
        self.span.end()


class OTelRequestTrace:
    __slots__ = ("_tracer", "_root", "_ctx", "_recording", "trace_id")

    def __init__(self, tracer: otel.Tracer, root: otel.Span) -> None:
        self._tracer = tracer
        self._root = root
        self._recording = root.is_recording()
        self._ctx = otel.set_span_in_context(root)
        self.trace_id = format(root.get_span_context().trace_id, "032x")

    def child(self, name: str, client: bool = False) -> Any:
        if not self._recording:  # not sampled: its children would not be either; skip making them
            return NOOP
        return OTelSpan(self._tracer.start_span(
            name, context=self._ctx, kind=SpanKind.CLIENT if client else SpanKind.INTERNAL))

    def propagate(self, span: Any, headers: dict[str, str]) -> None:
        parent = span.span if isinstance(span, OTelSpan) else self._root
        headers.pop("tracestate", None)  # the propagator writes the span's own, or none
        _PROPAGATOR.inject(headers, context=otel.set_span_in_context(parent))

    def finish(self, attributes: Mapping[str, Any], error: bool) -> None:
        root = self._root
        if not self._recording:
            root.end()
            return
        root.set_attributes({k: v for k, v in attributes.items() if v is not None})
        if error:
            root.set_status(Status(StatusCode.ERROR))
        root.end()


class OTelTracer:
    """Implements gateway.tracing.Tracer."""

    def __init__(self, settings: TracingSettings) -> None:
        self.settings = settings
        self._provider: TracerProvider | None = None
        self._tracer: otel.Tracer | None = None
        self._drops = DropsLogged()

    async def start(self) -> None:
        s = self.settings
        # Explicit arguments throughout: the exporter would otherwise read OTEL_* variables.
        exporter = OTLPSpanExporter(endpoint=s.endpoint, headers=dict(s.headers), timeout=s.export_timeout_s,
                                    compression=Compression.NoCompression)
        # Resource(), not Resource.create(): the latter merges OTEL_* variables from the environment.
        self._provider = TracerProvider(resource=Resource({"service.name": s.service_name,
                                                           "telemetry.sdk.language": "python",
                                                           "telemetry.sdk.name": "opentelemetry"}),
                                        sampler=ParentBasedTraceIdRatio(s.sample_ratio))
        self._provider.add_span_processor(BatchSpanProcessor(
            exporter, schedule_delay_millis=s.schedule_delay_ms, max_queue_size=s.max_queue_size,
            max_export_batch_size=min(s.max_export_batch_size, s.max_queue_size),
            export_timeout_millis=s.export_timeout_s * 1000))
        self._tracer = self._provider.get_tracer("portcullis")
        logging.getLogger(_SDK_QUEUE_LOGGER).addFilter(self._drops)
        log.info("tracing on", extra={"endpoint": s.endpoint, "sample_ratio": s.sample_ratio})

    def request(self, name: str, traceparent: str | None, tracestate: str | None,
                attributes: Mapping[str, Any]) -> OTelRequestTrace:
        assert self._tracer is not None, "tracer used before start()"
        carrier = {}
        if traceparent is not None:
            carrier["traceparent"] = traceparent
            if tracestate is not None:
                carrier["tracestate"] = tracestate
        # An absent or invalid traceparent extracts to an empty context: a new trace starts.
        ctx = _PROPAGATOR.extract(carrier) if carrier else None
        root = self._tracer.start_span(name, context=ctx, kind=SpanKind.SERVER, attributes=attributes)
        return OTelRequestTrace(self._tracer, root)

    async def aclose(self) -> None:
        provider, self._provider = self._provider, None
        if provider is not None:
            await asyncio.to_thread(provider.shutdown)  # flushes the batch processor
            logging.getLogger(_SDK_QUEUE_LOGGER).removeFilter(self._drops)
