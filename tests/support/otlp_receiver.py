"""A real OTLP/HTTP trace receiver, run as its own process on 127.0.0.1.

`python -m tests.support.otlp_receiver` listens on a free port, prints it on stdout,
and serves:
  POST /v1/traces  a protobuf ExportTraceServiceRequest (gzip accepted), decoded with
                   opentelemetry-proto like a collector does; answers an empty
                   ExportTraceServiceResponse
  GET  /spans      every span received so far, as JSON (ids as lowercase hex)
  GET  /requests   each export request's headers (to check exporter headers)

`OTLPReceiver` starts and stops it from a test.
"""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind) if kind else None


def decode(body: bytes) -> list[dict[str, Any]]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    req = ExportTraceServiceRequest()
    req.ParseFromString(body)
    out = []
    for rs in req.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in rs.resource.attributes}
        for ss in rs.scope_spans:
            for sp in ss.spans:
                out.append({
                    "trace_id": sp.trace_id.hex(), "span_id": sp.span_id.hex(),
                    "parent_span_id": sp.parent_span_id.hex() or None, "trace_state": sp.trace_state,
                    "name": sp.name, "kind": sp.kind, "scope": ss.scope.name,
                    "start_ns": sp.start_time_unix_nano, "end_ns": sp.end_time_unix_nano,
                    "attributes": {kv.key: _value(kv.value) for kv in sp.attributes},
                    "status": sp.status.code, "resource": resource,
                })
    return out


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        if self.path != "/v1/traces" or self.headers.get("content-type") != "application/x-protobuf":
            self._answer(404, b"", "text/plain")
            return
        try:
            spans = decode(body)
        except Exception as e:  # a malformed export is the exporter's bug: say so
            self._answer(400, str(e).encode(), "text/plain")
            return
        with self.server.lock:
            self.server.spans.extend(spans)
            self.server.requests.append({k.lower(): v for k, v in self.headers.items()})
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
        self._answer(200, ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf")

    def do_GET(self) -> None:  # noqa: N802
        with self.server.lock:
            data = {"/spans": self.server.spans, "/requests": self.server.requests}.get(self.path)
            body = json.dumps(data).encode() if data is not None else b""
        self._answer(200 if data is not None else 404, body, "application/json")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.spans: list[dict[str, Any]] = []
        self.requests: list[dict[str, str]] = []


def main() -> None:
    server = _Server()
    print(server.server_address[1], flush=True)
    server.serve_forever()


class OTLPReceiver:
    """The receiver process, for a test: `endpoint` goes into tracing.endpoint."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.support.otlp_receiver"], cwd=REPO,
                                     stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip():
            raise RuntimeError(f"OTLP receiver did not start (exit {self.proc.poll()})")
        self.port = int(line)
        self.url = f"http://127.0.0.1:{self.port}"
        self.endpoint = self.url + "/v1/traces"

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=5) as r:
            return json.loads(r.read())

    def spans(self, trace_id: str | None = None) -> list[dict[str, Any]]:
        return [s for s in self._get("/spans") if trace_id is None or s["trace_id"] == trace_id]

    def requests(self) -> list[dict[str, str]]:
        return self._get("/requests")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


if __name__ == "__main__":
    main()
