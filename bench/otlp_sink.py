"""An OTLP/HTTP trace sink for `python -m bench ab --only tracing`: accepts and drops exports.

A stdlib server answering every POST 200 with an empty ExportTraceServiceResponse (which
serializes to zero bytes), so the gateway's exporter does its full work (encode, POST)
and the receiving side costs the measured gateway nothing. It counts spans-bearing
requests, shown at GET /, so a run can confirm spans were really exported.

    python -m bench.otlp_sink --port 4318
"""
from __future__ import annotations

import argparse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Sink(BaseHTTPRequestHandler):
    exports = 0
    received_bytes = 0

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        n = int(self.headers.get("content-length", "0"))
        self.rfile.read(n)
        _Sink.exports += 1
        _Sink.received_bytes += n
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        body = f"exports {_Sink.exports} bytes {_Sink.received_bytes}\n".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    ThreadingHTTPServer(("127.0.0.1", args.port), _Sink).serve_forever()


if __name__ == "__main__":
    main()
