"""What every client-facing surface provides to the pipeline."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from gateway.errors import InvalidRequest
from gateway.types import Usage


@dataclass(slots=True)
class Parsed:
    """A request body understood well enough to decide on and forward."""
    action: str
    model: str
    stream: bool
    body: dict[str, Any]
    raw: bytes
    max_output: int | None = None   # what the client asked for, if anything
    max_field: str | None = None    # the body field that carries the output cap
    wants_usage: bool = False       # client asked for the usage chunk in a stream
    rewrite: bool = False           # body must be re-serialized before forwarding

    def estimated_input_tokens(self) -> int:
        # ~4 bytes a token over the whole JSON body: an upper-leaning estimate,
        # corrected when the reservation is settled with real usage.
        return len(self.raw) // 4 + 1

    def upstream_body(self) -> bytes:
        return orjson.dumps(self.body) if self.rewrite else self.raw

    def clamp(self, cap: int) -> None:
        if self.max_field:
            self.body[self.max_field] = cap
            self.max_output = cap
            self.rewrite = True


def load_json_object(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise InvalidRequest("request body is empty; expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InvalidRequest(f"request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object", code="invalid_json")
    return body


def usage_object(raw: bytes) -> Any:
    """The `usage` member of a response body, or None; a bad body is not an error here."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return body.get("usage") if isinstance(body, dict) else None


def require_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("you must provide a model parameter", code="missing_model", param="model")
    return model


def optional_int(body: dict[str, Any], field: str) -> int | None:
    v = body.get(field)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise InvalidRequest(f"{field} must be a positive integer", param=field)
    return v


class StreamTap(Protocol):
    """Sees a stream's bytes on the way through: records usage, may drop events."""
    usage: Usage

    def feed(self, chunk: bytes) -> bytes: ...
    def finish(self) -> bytes: ...


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


def sse_data(event: bytes) -> dict[str, Any] | None:
    """The JSON object in an event's data lines, or None."""
    lines = [ln[5:].lstrip() for ln in event.split(b"\n") if ln.startswith(b"data:")]
    if not lines:
        return None
    data = b"\n".join(lines)
    if data == b"[DONE]":
        return None
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None
