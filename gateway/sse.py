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
    __slots__ = ("_held", "_tail")

    def __init__(self) -> None:
        self._held: list[bytes] = []  # the unfinished event, in pieces, joined once it ends
        self._tail = b""  # its last 3 bytes: a blank line may straddle chunks

    def events(self, chunk: bytes) -> list[bytes]:
        if self._held:
            # Only the new bytes can end the held event: look at them alone. Joining and
            # re-scanning the whole event for every chunk was quadratic in its size (a 4 MB
            # event in 4 KB chunks held the event loop for 20 s).
            # Every blank line, LF or CRLF, holds "\n\n" or "\n\r\n".
            edge = self._tail + chunk[:3]
            if not (b"\n\n" in chunk or b"\n\r\n" in chunk or b"\n\n" in edge or b"\n\r\n" in edge):
                self._held.append(chunk)
                self._tail = chunk[-3:] if len(chunk) >= 3 else (self._tail + chunk)[-3:]
                return []
            self._held.append(chunk)
            buf = b"".join(self._held)
            self._held = []
        else:
            buf = chunk
        if b"\r\n" in buf:  # normalise CRLF framing, which the SSE spec allows
            buf = buf.replace(b"\r\n", b"\n")
        parts = buf.split(b"\n\n")
        rest = parts.pop()
        if rest:
            self._held, self._tail = [rest], rest[-3:]
        return [p + b"\n\n" for p in parts]

    def rest(self) -> bytes:
        rest, self._held = b"".join(self._held), []
        return rest.replace(b"\r\n", b"\n") if b"\r\n" in rest else rest


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
