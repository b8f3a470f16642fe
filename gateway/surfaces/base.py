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

    def parse(self, path: str, raw: bytes, max_depth: int) -> "Parsed": ...
    def usage_from_body(self, raw: bytes) -> Usage: ...
    def stream_error_event(self, err: GatewayError, request_id: str) -> bytes: ...
    def Tap(self, parsed: "Parsed") -> Any: ...  # noqa: N802 - a class: feed(chunk), finish(), usage, done


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
    rewrite: bool = False           # the gateway changed the body (e.g. asked for stream usage)
    generates: bool = True          # False (token counting): nothing to cap, no tokens to reserve

    def estimated_input_tokens(self) -> int:
        # ~4 bytes a token over the whole JSON body: an upper-leaning estimate,
        # corrected when the reservation is settled with real usage.
        return len(self.raw) // 4 + 1

    def upstream_body(self) -> bytes:
        # Always what was decided, re-serialized: the raw bytes may carry duplicate keys
        # ({"model": "a", "model": "b"}) that the policy read one way and an upstream another.
        return canonical(self.body)

    def clamp(self, cap: int) -> None:
        if self.max_field:
            self.body[self.max_field] = cap
            self.max_output = cap
            self.rewrite = True


def load_json_object(raw: bytes, max_depth: int) -> dict[str, Any]:
    if not raw:
        raise InvalidRequest("request body is empty; expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InvalidRequest(f"request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object", code="invalid_json")
    check_depth(body, raw, max_depth)
    return body


# orjson.dumps refuses a value nested this many containers deep ("Recursion limit reached");
# settings keep server.max_json_depth below it, and tests/unit/test_json_limits.py pins it.
WRITER_LIMIT = 255


def too_deep(body: Any, raw: bytes, max_depth: int) -> bool:
    """Whether a parsed body nests more than `max_depth` containers deep.

    orjson reads 1,024 levels but writes 254, and the gateway writes every body it
    forwards (canonical()). Depth cannot exceed the number of opening brackets, so small
    bodies are settled by two byte counts. For the rest orjson's writer measures (it
    outruns the counts on large bodies): wrapped in enough arrays, the body reaches the
    writer's limit exactly when it is deeper than `max_depth`. A Python walk of a
    300-message chat would cost ~10x more.
    """
    if len(raw) <= 2 * max_depth:
        return False  # a container takes two bytes
    if len(raw) < 8192 and raw.count(b"{") + raw.count(b"[") <= max_depth:
        return False
    wrapped = body
    for _ in range(WRITER_LIMIT - 1 - max_depth):
        wrapped = [wrapped]
    try:
        orjson.dumps(wrapped)
    except orjson.JSONEncodeError as e:
        if "Recursion" in str(e):
            return True
        raise InvalidRequest(f"request body cannot be forwarded: {e}", code="invalid_json") from None
    return False


def check_depth(body: Any, raw: bytes, max_depth: int) -> None:
    if too_deep(body, raw, max_depth):
        raise InvalidRequest(f"request body nests JSON deeper than {max_depth} levels",
                             code="json_too_deep")


def canonical(body: Any) -> bytes:
    """The bytes forwarded upstream: exactly the parsed value the gateway decided on."""
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError as e:  # unreachable within max_json_depth; still a 400
        raise InvalidRequest(f"request body cannot be forwarded: {e}", code="invalid_json") from None


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


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}


def optional_type(body: dict[str, Any], field: str, *types: type) -> Any:
    """body[field] when absent/null or of one of `types`; else a 400 naming the field."""
    v = body.get(field)
    if v is None or (isinstance(v, types) and not (isinstance(v, bool) and bool not in types)):
        return v
    raise InvalidRequest(f"{field} must be {' or '.join(_JSON_TYPES.get(t, t.__name__) for t in types)}",
                         code="invalid_type", param=field)


def check_tools(body: dict[str, Any]) -> None:
    """`tools` and `functions`, as govern.declared_tools reads them: arrays of objects whose
    names, where given, are strings (else a tool could hide from the tool policy)."""
    for field in ("tools", "functions"):
        for i, t in enumerate(optional_type(body, field, list) or ()):
            if not isinstance(t, dict):
                raise InvalidRequest(f"{field}[{i}] must be an object", code="invalid_type", param=field)
            fn = t.get("function")
            if fn is not None and not (isinstance(fn, dict) and isinstance(fn.get("name"), str)):
                raise InvalidRequest(f"{field}[{i}].function must be an object with a string name",
                                     code="invalid_type", param=field)
            if t.get("name") is not None and not isinstance(t["name"], str):
                raise InvalidRequest(f"{field}[{i}].name must be a string", code="invalid_type", param=field)


def optional_int(body: dict[str, Any], field: str) -> int | None:
    v = body.get(field)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise InvalidRequest(f"{field} must be a positive integer", param=field)
    return v
