"""Server-sent events framing, shared by the LLM surfaces and the MCP relay."""
from __future__ import annotations

from typing import Any

import orjson

# Response headers of every stream the gateway relays: no caching, and no
# buffering by a fronting proxy (nginx honours X-Accel-Buffering).
HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
           (b"x-accel-buffering", b"no")]
CONTENT_TYPE = b"text/event-stream"


class SSESplitter:
    """Cuts a byte stream into complete SSE events without waiting for the end.

    Only whole events are handed on, so a tap can inspect or drop one; the
    bytes of an event still arriving are held until its blank line comes.
    """
    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def events(self, chunk: bytes) -> list[bytes]:
        buf = self._buf + chunk if self._buf else chunk
        if b"\r\n" in buf:  # normalise CRLF framing, which the SSE spec allows
            buf = buf.replace(b"\r\n", b"\n")
        parts = buf.split(b"\n\n")
        self._buf = parts.pop()
        return [p + b"\n\n" for p in parts]

    def rest(self) -> bytes:
        rest, self._buf = self._buf, b""
        return rest


def data_lines(event: bytes) -> bytes | None:
    """The joined `data:` lines of one event, or None when it has none."""
    lines = [ln[5:].lstrip() for ln in event.split(b"\n") if ln.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


def sse_data(event: bytes) -> dict[str, Any] | None:
    """The JSON object in an event's data lines, or None."""
    data = data_lines(event)
    if data is None or data == b"[DONE]":
        return None
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def event(data: bytes, name: bytes | None = None) -> bytes:
    """One event carrying `data` (a single line of JSON), optionally named."""
    head = b"event: " + name + b"\n" if name else b""
    return head + b"data: " + data + b"\n\n"
