"""OpenAI-compatible surface: request parsing, usage capture, error format."""
from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import GatewayError, InvalidRequest
from gateway import sse
from gateway.sse import SSESplitter, sse_data
from gateway.surfaces.base import (Headers, Parsed, check_tools, load_json_object, optional_int, optional_type,
                                   request_id_header, require_model, usage_object)
from gateway.types import LimitResult, Usage

NAME = "openai"

ACTIONS = {
    "/v1/chat/completions": "llm.chat",
    "/v1/completions": "llm.completion",
    "/v1/embeddings": "llm.embedding",
    "/v1/responses": "llm.responses",
}

# Which body field caps output tokens, per endpoint (the first present wins).
_MAX_FIELDS = {
    "/v1/chat/completions": ("max_completion_tokens", "max_tokens"),
    "/v1/completions": ("max_tokens",),
    "/v1/responses": ("max_output_tokens",),
    "/v1/embeddings": (),
}

_ERROR_TYPES = {
    "invalid_request": "invalid_request_error",
    "authentication": "authentication_error",
    "permission": "permission_error",
    "not_found": "invalid_request_error",
    "too_large": "invalid_request_error",
    "rate_limited": "rate_limit_error",
    "upstream": "api_error",
    "upstream_timeout": "timeout_error",
    "unavailable": "api_error",
    "internal": "api_error",
}


def parse(path: str, raw: bytes, max_depth: int) -> Parsed:
    body = load_json_object(raw, max_depth)
    model = require_model(body)
    # Every field read here is type-checked first: a wrong type is the client's 400, never a 500.
    stream = optional_type(body, "stream", bool) is True
    if path == "/v1/embeddings" and body.get("input") is None:
        raise InvalidRequest("you must provide an input parameter", param="input")
    if path == "/v1/chat/completions" and not isinstance(body.get("messages"), list):
        raise InvalidRequest("messages must be a list", param="messages")
    if path in ("/v1/embeddings", "/v1/responses"):
        optional_type(body, "input", str, list)
    check_tools(body)
    p = Parsed(action=ACTIONS[path], model=model, stream=stream, body=body, raw=raw)
    fields = _MAX_FIELDS[path]
    for f in fields:
        v = optional_int(body, f)
        if v is not None:
            p.max_output, p.max_field = v, f
            break
    else:
        p.max_field = fields[0] if fields else None
    if stream and path in ("/v1/chat/completions", "/v1/completions"):
        opts = optional_type(body, "stream_options", dict)
        p.wants_usage = isinstance(opts, dict) and optional_type(opts, "include_usage", bool) is True
        if not p.wants_usage:
            # Usage is only reported in streams that ask for it: ask upstream,
            # and drop the usage chunk before it reaches a client that did not.
            body["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
            p.rewrite = True
    return p


def _duration(seconds: float) -> str:
    # OpenAI's reset format: "20ms", "1.5s", "6m0s".
    if seconds < 1:
        return f"{max(0, int(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s}s"


def limit_headers(r: LimitResult) -> Headers:
    """OpenAI's x-ratelimit-* names (DESIGN contract 3)."""
    h: Headers = []
    if r.limit_requests is not None:
        h += [(b"x-ratelimit-limit-requests", str(r.limit_requests).encode()),
              (b"x-ratelimit-remaining-requests", str(r.remaining_requests).encode()),
              (b"x-ratelimit-reset-requests", _duration(r.reset_requests_s or 0).encode())]
    if r.limit_tokens is not None:
        h += [(b"x-ratelimit-limit-tokens", str(r.limit_tokens).encode()),
              (b"x-ratelimit-remaining-tokens", str(r.remaining_tokens).encode()),
              (b"x-ratelimit-reset-tokens", _duration(r.reset_tokens_s or 0).encode())]
    return h


id_headers = request_id_header


def error_response(err: GatewayError, call: Any) -> tuple[int, bytes]:
    return err.status, error_body(err, call.ex.request_id)


def error_body(err: GatewayError, request_id: str) -> bytes:
    error = {
        "message": err.message,
        "type": _ERROR_TYPES.get(err.kind, "api_error"),
        "code": err.code,
        "param": err.param,
        "request_id": request_id,
    }
    approval_id = getattr(err, "approval_id", None)
    if approval_id is not None:  # ApprovalRequired: what to ask an operator for, then retry with
        error["approval_id"] = approval_id
    return orjson.dumps({"error": error})


def stream_error_event(err: GatewayError, request_id: str) -> bytes:
    return sse.event(error_body(err, request_id))


def usage_from_body(raw: bytes) -> Usage:
    return _usage(usage_object(raw))


def _usage(u: Any) -> Usage:
    if not isinstance(u, dict):
        return Usage()
    # chat/completions/embeddings use prompt/completion; the Responses API input/output.
    inp = u.get("prompt_tokens", u.get("input_tokens"))
    out = u.get("completion_tokens", u.get("output_tokens"))
    if out is None and inp is not None:
        out = 0  # embeddings report no completion tokens
    return Usage(inp if isinstance(inp, int) else None, out if isinstance(out, int) else None)


def _is_last(ev: bytes, responses: bool) -> bool:
    """Whether an event ends its stream: a Responses API end, else `[DONE]` (chat, completions)."""
    if responses:
        head = ev[:64]  # its `event:` name or its data's leading "type"; a delta's text comes later
        return b"response.completed" in head or b"response.incomplete" in head or b"response.failed" in head
    return b"[DONE]" in ev and sse.data_lines(ev) == b"[DONE]"


class Tap:
    """Records usage from an OpenAI SSE stream; drops the usage chunk if unasked.

    `done` is set by the stream's last event: a stream that closes without it was cut short.
    """
    __slots__ = ("usage", "done", "_split", "_drop_usage_chunk", "_responses")

    def __init__(self, parsed: Parsed) -> None:
        self.usage = Usage()
        self.done = False
        self._responses = parsed.action == "llm.responses"
        self._split = SSESplitter()
        self._drop_usage_chunk = parsed.stream and not parsed.wants_usage and parsed.rewrite

    def feed(self, chunk: bytes) -> bytes:
        out = []
        for ev in self._split.events(chunk):
            if not self.done and _is_last(ev, self._responses):
                self.done = True
            if b'"usage"' in ev and b'"usage":null' not in ev:
                data = sse_data(ev)
                if data is not None:
                    resp = data.get("response")  # Responses API: response.completed
                    u = _usage(resp.get("usage") if isinstance(resp, dict) else data.get("usage"))
                    if u.input_tokens is not None:
                        self.usage = u
                    if self._drop_usage_chunk and data.get("choices") == []:
                        continue
            out.append(ev)
        return b"".join(out)

    def finish(self) -> bytes:
        return self._split.rest()
