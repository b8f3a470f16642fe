"""Deterministic OpenAI / Anthropic wire formats, as pure functions.

The answer echoes the last user message ("You said: …"). Tokens are estimated
(4 characters a token, plus per-message overhead) alike for input and output.
Ids derive from a hash of the request. Embeddings default to 1536 dimensions
(3072 for "-large" models) and honour `dimensions`.
"""
from __future__ import annotations

import base64
import hashlib
import math
import re
import time
from array import array
from dataclasses import dataclass
from typing import Any, Iterator

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


def wants_stream(path: str, body: dict[str, Any]) -> bool:
    return body.get("stream") is True and path in _STREAMERS


def respond(path: str, body: dict[str, Any], *, api: str = "openai",
            now: int | None = None) -> tuple[int, bytes]:
    """The non-streamed answer to `body` at `path`, or an error: (status, JSON bytes)."""
    handler = _RESPONDERS.get(path)
    if handler is None:
        return 404, error_body(api, 404, f"Invalid URL (POST {path})")
    try:
        return 200, orjson.dumps(handler(body, int(time.time()) if now is None else now))
    except WireError as e:
        return e.status, e.body(api)


def respond_stream(path: str, body: dict[str, Any], *, now: int | None = None) -> Iterator[bytes]:
    """The streamed answer, one SSE event per item; raises WireError before the first."""
    streamer = _STREAMERS.get(path)
    if streamer is None:
        raise WireError(404, f"Invalid URL (POST {path})")
    return streamer(body, int(time.time()) if now is None else now)


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

def _chat_turn(body: dict[str, Any]) -> _Turn:
    return _turn(body, _messages(body), _limit(body, ("max_completion_tokens", "max_tokens")))


def _openai_usage(t: _Turn) -> dict[str, Any]:
    return {"prompt_tokens": t.input_tokens, "completion_tokens": t.output_tokens,
            "total_tokens": t.input_tokens + t.output_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0,
                                          "rejected_prediction_tokens": 0}}


def _chat(body: dict[str, Any], now: int) -> dict[str, Any]:
    t = _chat_turn(body)
    return {"id": f"chatcmpl-{t.seed[:29]}", "object": "chat.completion", "created": now,
            "model": t.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": t.answer,
                                                 "refusal": None, "annotations": []},
                         "logprobs": None, "finish_reason": t.finish}],
            "usage": _openai_usage(t), "service_tier": "default", "system_fingerprint": "fp_mock"}


def _include_usage(body: dict[str, Any]) -> bool:
    opts = body.get("stream_options")
    return isinstance(opts, dict) and opts.get("include_usage") is True


def _chat_choice(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}


def _chat_stream(body: dict[str, Any], now: int) -> Iterator[bytes]:
    t = _chat_turn(body)
    base = {"id": f"chatcmpl-{t.seed[:29]}", "object": "chat.completion.chunk", "created": now,
            "model": t.model, "service_tier": "default", "system_fingerprint": "fp_mock"}
    choices = [_chat_choice({"role": "assistant", "content": "", "refusal": None}, None)]
    choices += [_chat_choice({"content": p}, None) for p in t.pieces()]
    return _openai_stream(body, t, base, choices + [_chat_choice({}, t.finish)])


def _openai_stream(body: dict[str, Any], t: _Turn, base: dict[str, Any],
                   choices: list[dict[str, Any]]) -> Iterator[bytes]:
    """One chunk per choice; with include_usage, every chunk says "usage": null and a
    last chunk with no choices carries the usage, as OpenAI does."""
    usage = _include_usage(body)
    tail = {"usage": None} if usage else {}
    for choice in choices:
        yield _sse({**base, "choices": [choice], **tail})
    if usage:
        yield _sse({**base, "choices": [], "usage": _openai_usage(t)})
    yield _SSE_DONE


# ---- /v1/completions -------------------------------------------------------------

def _completion_turn(body: dict[str, Any]) -> _Turn:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise WireError(400, "'prompt' must be a string (or an array of one string)", "prompt")
    t = _turn(body, [("user", prompt)], _limit(body, ("max_tokens",)) or 16)  # API default 16
    # A bare prompt has no chat framing: count only its text.
    return _Turn(t.model, estimate_tokens(prompt), t.answer, t.truncated, t.seed)


def _completion_choice(text: str, finish: str | None) -> dict[str, Any]:
    return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}


def _completion(body: dict[str, Any], now: int) -> dict[str, Any]:
    t = _completion_turn(body)
    return {"id": f"cmpl-{t.seed[:29]}", "object": "text_completion", "created": now,
            "model": t.model, "system_fingerprint": "fp_mock",
            "choices": [_completion_choice(t.answer, t.finish)],
            "usage": _openai_usage(t)}


def _completion_stream(body: dict[str, Any], now: int) -> Iterator[bytes]:
    t = _completion_turn(body)
    base = {"id": f"cmpl-{t.seed[:29]}", "object": "text_completion", "created": now,
            "model": t.model, "system_fingerprint": "fp_mock"}
    choices = [_completion_choice(p, None) for p in t.pieces()]
    return _openai_stream(body, t, base, choices + [_completion_choice("", t.finish)])


# ---- /v1/embeddings --------------------------------------------------------------

def _vector(model: str, item: str, dims: int) -> list[float]:
    """A unit vector that depends only on the model and the input."""
    raw = array("H", hashlib.shake_256(f"{model}\0{item}".encode()).digest(2 * dims))
    vec = [v / 32767.5 - 1.0 for v in raw]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


def _embeddings(body: dict[str, Any], now: int) -> dict[str, Any]:
    model, inp = _model(body), body.get("input")
    if isinstance(inp, str) or (isinstance(inp, list) and inp
                                and all(isinstance(x, int) for x in inp)):
        inp = [inp]  # one string, or one array of token ids
    if not isinstance(inp, list) or not inp or not all(
            (isinstance(x, str) and x) or (isinstance(x, list) and x) for x in inp):
        raise WireError(400, "'input' must be a non-empty string or array", "input")
    dims = _limit(body, ("dimensions",)) or (3072 if "large" in model else 1536)
    as_b64 = body.get("encoding_format") == "base64"  # what the openai SDK asks for by default
    data, tokens = [], 0
    for i, item in enumerate(inp):
        tokens += estimate_tokens(item) if isinstance(item, str) else len(item)
        vec = _vector(model, item if isinstance(item, str) else repr(item), dims)
        emb: Any = base64.b64encode(array("f", vec).tobytes()).decode() if as_b64 else vec
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


# ---- /v1/responses ---------------------------------------------------------------

def _responses_turn(body: dict[str, Any]) -> _Turn:
    inp = body.get("input")
    if isinstance(inp, str):
        messages = [("user", inp)]
    elif isinstance(inp, list) and inp and all(isinstance(m, dict) for m in inp):
        messages = [(str(m.get("role", "user")), _text(m.get("content"))) for m in inp
                    if m.get("type", "message") == "message"]
    else:
        raise WireError(400, "'input' must be a string or a non-empty array of items", "input")
    instructions = body.get("instructions")
    extra = MESSAGE_OVERHEAD + estimate_tokens(instructions) if isinstance(instructions, str) else 0
    return _turn(body, messages, _limit(body, ("max_output_tokens",), minimum=16), extra)


def _response_obj(body: dict[str, Any], t: _Turn, now: int, *, done: bool) -> dict[str, Any]:
    status = ("incomplete" if t.truncated else "completed") if done else "in_progress"
    output = [_response_message(t, done)] if done else []
    usage = {"input_tokens": t.input_tokens,
             "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
             "output_tokens": t.output_tokens,
             "output_tokens_details": {"reasoning_tokens": 0},
             "total_tokens": t.input_tokens + t.output_tokens} if done else None
    return {"id": f"resp_{t.seed[:48]}", "object": "response", "created_at": now,
            "status": status, "background": False, "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if done and t.truncated
            else None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"), "model": t.model,
            "output": output, "parallel_tool_calls": True,
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None}, "service_tier": "default",
            "store": body.get("store", True), "temperature": body.get("temperature", 1.0),
            "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [],
            "top_p": body.get("top_p", 1.0), "truncation": "disabled", "usage": usage,
            "user": None, "metadata": body.get("metadata") or {}}


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _response_message(t: _Turn, done: bool) -> dict[str, Any]:
    return {"id": f"msg_{t.seed[16:64]}", "type": "message",
            "status": ("incomplete" if t.truncated else "completed") if done else "in_progress",
            "role": "assistant", "content": [_output_text(t.answer)] if done else []}


def _responses(body: dict[str, Any], now: int) -> dict[str, Any]:
    return _response_obj(body, _responses_turn(body), now, done=True)


def _responses_stream(body: dict[str, Any], now: int) -> Iterator[bytes]:
    t = _responses_turn(body)
    where = {"item_id": f"msg_{t.seed[16:64]}", "output_index": 0, "content_index": 0}

    def events() -> Iterator[bytes]:
        final = _response_obj(body, t, now, done=True)
        steps: list[dict[str, Any]] = [
            {"type": "response.created", "response": _response_obj(body, t, now, done=False)},
            {"type": "response.in_progress", "response": _response_obj(body, t, now, done=False)},
            {"type": "response.output_item.added", "output_index": 0,
             "item": _response_message(t, done=False)},
            {"type": "response.content_part.added", **where, "part": _output_text("")}]
        steps += [{"type": "response.output_text.delta", **where, "delta": p, "logprobs": []}
                  for p in t.pieces()]
        steps += [
            {"type": "response.output_text.done", **where, "text": t.answer, "logprobs": []},
            {"type": "response.content_part.done", **where, "part": _output_text(t.answer)},
            {"type": "response.output_item.done", "output_index": 0,
             "item": final["output"][0]},
            # Like the real API: a max_output_tokens cut ends with response.incomplete.
            {"type": "response.incomplete" if t.truncated else "response.completed",
             "response": final}]
        for seq, step in enumerate(steps):
            yield _event({**step, "sequence_number": seq})
    return events()


# ---- /v1/messages (Anthropic) ----------------------------------------------------

def _anthropic_turn(body: dict[str, Any]) -> _Turn:
    if body.get("max_tokens") is None:
        raise WireError(400, "max_tokens: Field required")
    limit = _limit(body, ("max_tokens",))
    system = _text(body.get("system"))
    extra = MESSAGE_OVERHEAD + estimate_tokens(system) if system else 0
    return _turn(body, _messages(body), limit, extra)


def _anthropic_message(t: _Turn, *, done: bool) -> dict[str, Any]:
    """The whole message, or (not done) the skeleton message_start carries."""
    msg_id = "msg_01" + base64.b32encode(bytes.fromhex(t.seed[:28])).decode()[:22]
    return {"id": msg_id, "type": "message", "role": "assistant", "model": t.model,
            "content": [{"type": "text", "text": t.answer}] if done else [],
            "stop_reason": ("max_tokens" if t.truncated else "end_turn") if done else None,
            "stop_sequence": None,
            "usage": {"input_tokens": t.input_tokens, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0, "service_tier": "standard",
                      "output_tokens": t.output_tokens if done else 1}}


def _messages_api(body: dict[str, Any], now: int) -> dict[str, Any]:
    return _anthropic_message(_anthropic_turn(body), done=True)


def _messages_stream(body: dict[str, Any], now: int) -> Iterator[bytes]:
    t = _anthropic_turn(body)
    stop = {"stop_reason": "max_tokens" if t.truncated else "end_turn", "stop_sequence": None}

    def events() -> Iterator[bytes]:
        yield _event({"type": "message_start", "message": _anthropic_message(t, done=False)})
        yield _event({"type": "content_block_start", "index": 0,
                      "content_block": {"type": "text", "text": ""}})
        yield _event({"type": "ping"})
        for piece in t.pieces():
            yield _event({"type": "content_block_delta", "index": 0,
                          "delta": {"type": "text_delta", "text": piece}})
        yield _event({"type": "content_block_stop", "index": 0})
        yield _event({"type": "message_delta", "delta": stop,
                      "usage": {"output_tokens": t.output_tokens}})
        yield _event({"type": "message_stop"})
    return events()


# ---- /v1/models -------------------------------------------------------------------

def _models(body: dict[str, Any], now: int) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": m, "object": "model", "created": 1700000000,
                                        "owned_by": "portcullis-mock"} for m in MODELS]}


_RESPONDERS = {"/v1/chat/completions": _chat, "/v1/completions": _completion,
               "/v1/embeddings": _embeddings, "/v1/responses": _responses,
               "/v1/messages": _messages_api, "/v1/models": _models}
_STREAMERS = {"/v1/chat/completions": _chat_stream, "/v1/completions": _completion_stream,
              "/v1/responses": _responses_stream, "/v1/messages": _messages_stream}
