"""What every client-facing surface provides to the pipeline."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from gateway.errors import GatewayError, InvalidRequest
from gateway.types import LimitResult, Usage

if TYPE_CHECKING:
    from gateway.exchange import Call

Headers = list[tuple[bytes, bytes]]


class Surface(Protocol):
    """How one client-facing API speaks: its error format and its response headers."""
    NAME: str

    def error_body(self, err: GatewayError, request_id: str) -> bytes: ...
    def error_response(self, err: GatewayError, call: "Call") -> tuple[int, bytes]: ...
    def id_headers(self, request_id: str) -> Headers: ...
    def limit_headers(self, r: LimitResult) -> Headers: ...


class LLMSurface(Surface, Protocol):
    """A surface the LLM endpoint forwards: parses bodies, reads usage, frames stream errors."""
    ACTIONS: dict[str, str]

    def parse(self, path: str, raw: bytes) -> "Parsed": ...
    def usage_from_body(self, raw: bytes) -> Usage: ...
    def stream_error_event(self, err: GatewayError, request_id: str) -> bytes: ...
    def Tap(self, parsed: "Parsed") -> Any: ...  # noqa: N802 - a class: feed(chunk), finish(), usage


def request_id_header(request_id: str) -> Headers:
    return [(b"x-request-id", request_id.encode())]


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
    generates: bool = True          # False (token counting): nothing to cap, no tokens to reserve

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


# Unicode's control characters (Cc): C0, DEL and C1.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def has_control(value: str) -> bool:
    return _CONTROL.search(value) is not None


def check_name(value: str, field: str) -> str:
    """Refuse a name (model, tool) with a control character: no provider or tool has one, and
    the policy engines disagree on them (a NUL is regorus' internal glob placeholder)."""
    if has_control(value):
        raise InvalidRequest(f"{field} must not contain control characters (U+0000-U+001F, U+007F-U+009F)",
                             code=f"invalid_{field}", param=field)
    return value


def require_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("you must provide a model parameter", code="missing_model", param="model")
    return check_name(model, "model")


def optional_int(body: dict[str, Any], field: str) -> int | None:
    v = body.get(field)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise InvalidRequest(f"{field} must be a positive integer", param=field)
    return v
