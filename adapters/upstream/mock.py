"""An in-process upstream that answers in the providers' wire formats (no network).

Used by the quickstart config (runs with no provider keys) and by tests that
need a real-looking provider without a socket.
"""
from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Iterator, Mapping

import orjson

from adapters.upstream import wire
from gateway.settings import UpstreamSettings

_JSON = {"content-type": "application/json"}
_SSE = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}


class MockResponse:
    """A finished body or a lazy SSE event iterator, behind the UpstreamResponse shape."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes = b"",
                 events: Iterator[bytes] | None = None) -> None:
        self.status = status
        self.headers = dict(headers)
        self._body = body
        self._events = events
        self._closed = False

    async def read(self) -> bytes:
        if self._events is None:
            return self._body
        return b"".join([chunk async for chunk in self.iter_chunks()])

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        if self._events is None:
            if self._body:
                yield self._body
            return
        for event in self._events:
            if self._closed:
                return
            yield event
            await asyncio.sleep(0)  # let the consumer run between events, as a socket would

    async def aclose(self) -> None:
        self._closed = True


class MockUpstream:
    """Implements gateway.protocols.Upstream with wire.py's deterministic answers."""

    def __init__(self, name: str, settings: UpstreamSettings) -> None:
        self.name = name
        self.settings = settings

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    async def send(self, method: str, path: str, body: bytes, api: str,
                   headers: Mapping[str, str]) -> MockResponse:
        path = path.split("?", 1)[0]
        parsed: Any = {}
        if body:
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError:
                return _error(api, 400, "We could not parse the JSON body of your request.")
        if not isinstance(parsed, dict):
            return _error(api, 400, "The request body must be a JSON object.")
        if wire.wants_stream(path, parsed):
            try:
                events = wire.respond_stream(path, parsed)
            except wire.WireError as e:
                return MockResponse(e.status, _JSON, e.body(api))
            return MockResponse(200, _SSE, events=events)
        status, data = wire.respond(path, parsed, api=api)
        return MockResponse(status, _JSON, data)


def _error(api: str, status: int, message: str) -> MockResponse:
    return MockResponse(status, _JSON, wire.error_body(api, status, message))
