"""Anthropic Messages surface: request parsing, usage capture, error format."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from gateway.errors import GatewayError, InvalidRequest
from gateway import sse
from gateway.sse import SSESplitter, sse_data
from gateway.surfaces.base import (Headers, Parsed, check_tools, load_json_object, optional_int, optional_type,
                                   require_model, usage_object)
from gateway.types import LimitResult, Usage

NAME = "anthropic"

ACTIONS = {"/v1/messages": "llm.messages", "/v1/messages/count_tokens": "llm.count_tokens"}
_COUNT_TOKENS = "/v1/messages/count_tokens"

_ERROR_TYPES = {
    "invalid_request": "invalid_request_error",
    "authentication": "authentication_error",
    "permission": "permission_error",
    "not_found": "not_found_error",
    "too_large": "request_too_large",
    "rate_limited": "rate_limit_error",
    "upstream": "api_error",
    "upstream_timeout": "timeout_error",
    "unavailable": "overloaded_error",
    "internal": "api_error",
}


def parse(path: str, raw: bytes, max_depth: int) -> Parsed:
    body = load_json_object(raw, max_depth)
    model = require_model(body)
    if not isinstance(body.get("messages"), list):
        raise InvalidRequest("messages: field required", param="messages")
    check_tools(body)
    stream = optional_type(body, "stream", bool) is True
    if path == _COUNT_TOKENS:  # generates nothing: no max_tokens, no stream, no token reservation
        return Parsed(action=ACTIONS[path], model=model, stream=False, body=body, raw=raw, generates=False)
    max_tokens = optional_int(body, "max_tokens")
    if max_tokens is None:
        raise InvalidRequest("max_tokens: field required", param="max_tokens")
    return Parsed(action=ACTIONS[path], model=model, stream=stream, body=body,
                  raw=raw, max_output=max_tokens, max_field="max_tokens")


def id_headers(request_id: str) -> Headers:
    # The anthropic SDK reads `request-id` (APIError.request_id); keep ours too.
    rid = request_id.encode()
    return [(b"x-request-id", rid), (b"request-id", rid)]


def _reset_at(seconds: float | None) -> bytes:
    # Anthropic sends resets as RFC 3339 instants, not durations.
    at = datetime.now(timezone.utc) + timedelta(seconds=max(0.0, seconds or 0.0))
    return at.isoformat(timespec="seconds").replace("+00:00", "Z").encode()


def limit_headers(r: LimitResult) -> Headers:
    """Anthropic's anthropic-ratelimit-* names, which its SDK and clients read."""
    h: Headers = []
    if r.limit_requests is not None:
        h += [(b"anthropic-ratelimit-requests-limit", str(r.limit_requests).encode()),
              (b"anthropic-ratelimit-requests-remaining", str(r.remaining_requests).encode()),
              (b"anthropic-ratelimit-requests-reset", _reset_at(r.reset_requests_s))]
    if r.limit_tokens is not None:
        h += [(b"anthropic-ratelimit-tokens-limit", str(r.limit_tokens).encode()),
              (b"anthropic-ratelimit-tokens-remaining", str(r.remaining_tokens).encode()),
              (b"anthropic-ratelimit-tokens-reset", _reset_at(r.reset_tokens_s))]
    return h


def error_response(err: GatewayError, call: Any) -> tuple[int, bytes]:
    return err.status, error_body(err, call.ex.request_id)


def error_body(err: GatewayError, request_id: str) -> bytes:
    error = {"type": _ERROR_TYPES.get(err.kind, "api_error"), "message": err.message}
    approval_id = getattr(err, "approval_id", None)
    if approval_id is not None:  # ApprovalRequired: what to ask an operator for, then retry with
        error["approval_id"] = approval_id
    return orjson.dumps({"type": "error", "error": error, "request_id": request_id})


def stream_error_event(err: GatewayError, request_id: str) -> bytes:
    return sse.event(error_body(err, request_id), b"error")


def usage_from_body(raw: bytes) -> Usage:
    u = usage_object(raw)
    if not isinstance(u, dict):
        return Usage()
    return Usage(u.get("input_tokens"), u.get("output_tokens"))


class Tap:
    """Reads usage from message_start (input) and message_delta (output).

    `done` is set by message_stop: a stream that closes without it was cut short.
    """
    __slots__ = ("usage", "done", "_split")

    def __init__(self, parsed: Parsed) -> None:
        self.usage = Usage()
        self.done = False
        self._split = SSESplitter()

    def feed(self, chunk: bytes) -> bytes:
        events = self._split.events(chunk)
        for ev in events:
            if b"message_stop" in ev[:48]:  # its `event:` name or its data's leading "type"
                self.done = True
            if b"message_start" in ev or b"message_delta" in ev:
                data = sse_data(ev)
                if data is None:
                    continue
                msg = data.get("message")
                u = (msg.get("usage") if isinstance(msg, dict) else None) or data.get("usage")
                if isinstance(u, dict):
                    if isinstance(u.get("input_tokens"), int):
                        self.usage.input_tokens = u["input_tokens"]
                    if isinstance(u.get("output_tokens"), int):
                        self.usage.output_tokens = u["output_tokens"]
        return b"".join(events)

    def finish(self) -> bytes:
        return self._split.rest()
