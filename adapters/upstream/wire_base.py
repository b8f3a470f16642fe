"""Primitives of the mock wire formats: token estimate, errors, the shared turn."""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any

import orjson

MESSAGE_OVERHEAD = 4  # tokens per chat message (role and separators)
REPLY_PRIMING = 3  # tokens that prime the assistant's reply
ANSWER_PREFIX = "You said: "
MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "text-embedding-3-large",
          "claude-sonnet-4-6", "claude-haiku-4-5")
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                    403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                    429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}
_WORD = re.compile(r"\s*\S+\s*")
_SSE_DONE = b"data: [DONE]\n\n"


class WireError(Exception):
    """A request the real API would refuse; render with `body(api)`."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param

    def body(self, api: str) -> bytes:
        return error_body(api, self.status, self.message, param=self.param)


def error_body(api: str, status: int, message: str, *, param: str | None = None) -> bytes:
    """An error body in the provider's own format (`api` is "openai" or "anthropic")."""
    if api == "anthropic":
        kind = _ANTHROPIC_TYPES.get(status, "api_error")
        return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": None}})


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


# ---- the shared turn ------------------------------------------------------------

@dataclass(frozen=True)
class _Turn:
    model: str
    input_tokens: int
    answer: str
    truncated: bool
    seed: str  # hash of the request, for ids

    @property
    def output_tokens(self) -> int:
        return estimate_tokens(self.answer)

    @property
    def finish(self) -> str:  # OpenAI's finish_reason
        return "length" if self.truncated else "stop"

    def pieces(self) -> list[str]:
        return _WORD.findall(self.answer) or [self.answer]


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise WireError(400, "you must provide a model parameter", "model")
    return model


def _limit(body: dict[str, Any], fields: tuple[str, ...], minimum: int = 1) -> int | None:
    for field in (f for f in fields if body.get(f) is not None):
        value = body[field]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise WireError(400, f"Invalid '{field}': integer below minimum value or not an"
                            f" integer. Expected a value >= {minimum}.", field)
        return value
    return None


def _text(content: Any) -> str:
    """Text of a message's content: a string or a list of parts with "text"."""
    if not isinstance(content, list):
        return content if isinstance(content, str) else ""
    return "".join(p["text"] for p in content if isinstance(p, dict)
                   and isinstance(p.get("text"), str))


def _turn(body: dict[str, Any], messages: list[tuple[str, str]], limit: int | None,
          extra_input: int = 0) -> _Turn:
    last_user = next((text for role, text in reversed(messages) if role == "user"), "")
    answer = ANSWER_PREFIX + last_user
    truncated = limit is not None and estimate_tokens(answer) > limit
    if truncated:
        answer = answer[:limit * 4]  # exactly `limit` tokens by the estimate
    input_tokens = extra_input + REPLY_PRIMING + sum(
        MESSAGE_OVERHEAD + estimate_tokens(text) for _, text in messages)
    seed = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return _Turn(_model(body), input_tokens, answer, truncated, seed)


def _messages(body: dict[str, Any], field: str = "messages") -> list[tuple[str, str]]:
    msgs = body.get(field)
    if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
        raise WireError(400, f"'{field}' must be a non-empty array of message objects", field)
    return [(str(m.get("role", "user")), _text(m.get("content"))) for m in msgs]


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def _event(data: dict[str, Any]) -> bytes:
    """A named SSE event (Responses and Anthropic streams); the name is the payload's type."""
    return b"event: " + data["type"].encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


# ---- /v1/chat/completions --------------------------------------------------------
