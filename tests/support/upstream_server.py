"""A local provider for tests: wire.py's formats over a real uvicorn socket.

Records each request under the x-request-id it arrived with, so a test reads what
its own request sent (`received(rid)`) however many tests share the server. It
injects faults chosen by the request's model name:
  fault-500              answers 500 with an OpenAI error body
  fault-slow             waits `slow_s` before answering (longer than a short read timeout)
  fault-stall-midstream  streams a few events, then goes silent for `slow_s`
  fault-die-midstream    streams a few events, then drops the connection

CloseDelimitedUpstream frames its streams by closing the connection instead (no chunked
encoding, no Content-Length), so a cut cannot be told from an end by HTTP framing alone.
"""
from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from adapters.upstream import wire
from tests.support.harness import Served, serve

FAULT_EVENTS = 3  # events sent before a mid-stream fault


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None


class _Dropped(Exception):
    """Raised inside a streaming body: uvicorn then closes the socket mid-response."""


def request_id() -> str:
    """A fresh x-request-id for a test to send, and to look its request up by."""
    return f"test-{uuid.uuid4().hex}"


@dataclass
class UpstreamServer:
    slow_s: float = 5.0
    _received: dict[str, list[Recorded]] = field(default_factory=dict)
    _served: Served | None = None

    @property
    def url(self) -> str:
        assert self._served is not None, "start() the server first"
        return self._served.url

    def received(self, request_id: str) -> list[Recorded]:
        """What arrived with this x-request-id: [] if it was never forwarded."""
        return list(self._received.get(request_id, ()))

    async def start(self) -> None:
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["GET", "POST"])])
        self._served = await serve(_drops_quietly(app), lifespan="off")

    async def stop(self) -> None:
        if self._served is not None:
            await self._served.stop()
            self._served = None

    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        seen = Recorded(request.method, request.url.path, {k.lower(): v for k, v in request.headers.items()}, body)
        if rid := seen.headers.get("x-request-id"):
            self._received.setdefault(rid, []).append(seen)
        if request.url.path.startswith("/tools/"):
            return self._tool(request, body)
        api = "anthropic" if request.url.path.startswith("/v1/messages") else "openai"
        try:
            parsed = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            return _json(400, wire.error_body(api, 400, "could not parse the JSON body"))
        model = parsed.get("model") if isinstance(parsed, dict) else None
        if model == "fault-500":
            return _json(500, wire.error_body(api, 500, "The server had an error"))
        if model == "fault-slow":
            await self._idle(request)
        path = request.url.path
        if not isinstance(parsed, dict) or not wire.wants_stream(path, parsed):
            status, data = wire.respond(path, parsed, api=api)
            return _json(status, data)
        try:
            events = wire.respond_stream(path, parsed)
        except wire.WireError as e:
            return _json(e.status, e.body(api))
        return StreamingResponse(self._stream(events, model), media_type="text/event-stream")

    @staticmethod
    def _tool(request: Request, body: bytes) -> Response:
        """Plain HTTP tools: /tools/weather answers a forecast, /tools/broken a 500."""
        if request.url.path == "/tools/broken":
            return _json(500, orjson.dumps({"error": "tool crashed"}))
        args = dict(request.query_params) if request.method == "GET" else orjson.loads(body or b"{}")
        city = args.get("city", "nowhere")
        return _json(200, orjson.dumps({"city": city, "forecast": "sunny", "temp_c": 21,
                                        "method": request.method}))

    async def _stream(self, events: Any, model: Any) -> AsyncIterator[bytes]:
        for i, event in enumerate(events):
            if i == FAULT_EVENTS and model == "fault-die-midstream":
                raise _Dropped("dropping the connection on purpose")
            if i == FAULT_EVENTS and model == "fault-stall-midstream":
                await asyncio.sleep(self.slow_s)
            yield event
            await asyncio.sleep(0)  # flush each event on its own

    async def _idle(self, request: Request) -> None:
        # Ends early when the client gives up, so stop() need not wait out the sleep.
        async def disconnected() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
        try:
            await asyncio.wait_for(disconnected(), self.slow_s)
        except TimeoutError:
            pass


class CloseDelimitedUpstream:
    """Streams wire.py's SSE answers in close-delimited bodies, over a raw asyncio socket.

    Model `fault-cut` sends FAULT_EVENTS events and half of the next, then FIN: the
    protocol's last event ([DONE], response.completed, message_stop) never comes.
    Any other model gets the whole stream, then FIN.
    """

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the server first"
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    @staticmethod
    async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            path = head[0].split(" ")[1]
            length = next((int(h.split(":", 1)[1]) for h in head[1:] if h.lower().startswith("content-length:")), 0)
            body = orjson.loads(await reader.readexactly(length))
            events = list(wire.respond_stream(path, body))
            if body.get("model") == "fault-cut":
                events = events[:FAULT_EVENTS] + [events[FAULT_EVENTS][:20]]
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
            for event in events:
                writer.write(event)
                await writer.drain()  # each event on its own
        finally:
            writer.close()  # FIN: the end of the body, whole or not


def _drops_quietly(app: Any) -> Any:
    """Swallow _Dropped: uvicorn then sees an unfinished response and closes the
    socket (one log line instead of a traceback)."""
    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        try:
            await app(scope, receive, send)
        except _Dropped:
            pass
    return wrapped


def _json(status: int, data: bytes) -> Response:
    return Response(data, status_code=status, media_type="application/json")
