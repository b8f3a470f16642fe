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
import time
from array import array
from typing import Any, Iterator

import orjson

from adapters.upstream.wire_base import (  # noqa: F401 - the public names are re-exported
    ANSWER_PREFIX, MESSAGE_OVERHEAD, MODELS, REPLY_PRIMING, WireError, _SSE_DONE, _Turn, _event,
    _limit, _messages, _model, _sse, _text, _turn, error_body, estimate_tokens,
)


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

def _anthropic_turn(body: dict[str, Any], *, generate: bool = True) -> _Turn:
    if generate and body.get("max_tokens") is None:
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


def _count_tokens(body: dict[str, Any], now: int) -> dict[str, Any]:
    """What /v1/messages would report as input_tokens for the same body."""
    return {"input_tokens": _anthropic_turn(body, generate=False).input_tokens}


# ---- /v1/models -------------------------------------------------------------------

def _models(body: dict[str, Any], now: int) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": m, "object": "model", "created": 1700000000,
                                        "owned_by": "portcullis-mock"} for m in MODELS]}


_RESPONDERS = {"/v1/chat/completions": _chat, "/v1/completions": _completion,
               "/v1/embeddings": _embeddings, "/v1/responses": _responses,
               "/v1/messages": _messages_api, "/v1/messages/count_tokens": _count_tokens,
               "/v1/models": _models}
_STREAMERS = {"/v1/chat/completions": _chat_stream, "/v1/completions": _completion_stream,
              "/v1/responses": _responses_stream, "/v1/messages": _messages_stream}
