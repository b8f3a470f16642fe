"""Surface parsing and stream taps on real wire-format bytes."""
import orjson
import pytest

from gateway.errors import InvalidRequest, PermissionDenied
from gateway.surfaces import anthropic, openai
from gateway.sse import SSESplitter


def chat(**kw):
    return orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **kw})


def test_openai_parse_reads_model_stream_and_output_cap():
    p = openai.parse("/v1/chat/completions", chat(max_tokens=50), 128)
    assert (p.action, p.model, p.stream, p.max_output, p.max_field) == ("llm.chat", "gpt-4o-mini", False, 50, "max_tokens")
    assert p.upstream_body() == p.raw  # nothing rewritten: the client's bytes go upstream


@pytest.mark.parametrize("raw,code", [(b"{not json", "invalid_json"), (b"[1]", "invalid_json"),
                                      (b'{"messages": []}', "missing_model")])
def test_openai_parse_rejects_bad_bodies(raw, code):
    with pytest.raises(InvalidRequest) as e:
        openai.parse("/v1/chat/completions", raw, 128)
    assert e.value.code == code


def test_stream_without_include_usage_asks_upstream_and_hides_usage_chunk():
    p = openai.parse("/v1/chat/completions", chat(stream=True), 128)
    assert orjson.loads(p.upstream_body())["stream_options"] == {"include_usage": True}
    tap = openai.Tap(p)
    chunk1 = b'data: {"choices":[{"delta":{"content":"hi"}}],"usage":null}\n\n'
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3}}\n\n'
    out = tap.feed(chunk1[:20]) + tap.feed(chunk1[20:] + usage + b"data: [DONE]\n\n") + tap.finish()
    assert out == chunk1 + b"data: [DONE]\n\n"
    assert (tap.usage.input_tokens, tap.usage.output_tokens) == (7, 3)


def test_stream_with_include_usage_passes_usage_chunk_on():
    p = openai.parse("/v1/chat/completions", chat(stream=True, stream_options={"include_usage": True}), 128)
    assert not p.rewrite
    tap = openai.Tap(p)
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3}}\n\n'
    assert tap.feed(usage) == usage
    assert tap.usage.total == 10


def test_responses_api_usage_from_completed_event():
    p = openai.parse("/v1/responses", orjson.dumps({"model": "gpt-4o", "input": "hi", "stream": True}), 128)
    tap = openai.Tap(p)
    ev = (b'event: response.completed\ndata: {"type":"response.completed","response":'
          b'{"usage":{"input_tokens":5,"output_tokens":9,"total_tokens":14}}}\n\n')
    assert tap.feed(ev) == ev
    assert (tap.usage.input_tokens, tap.usage.output_tokens) == (5, 9)


def test_anthropic_requires_max_tokens_and_reads_stream_usage():
    with pytest.raises(InvalidRequest):
        anthropic.parse("/v1/messages", orjson.dumps({"model": "claude-sonnet-4-5", "messages": []}), 128)
    p = anthropic.parse("/v1/messages", orjson.dumps({"model": "claude-sonnet-4-5", "max_tokens": 9,
                                                      "messages": [], "stream": True}), 128)
    tap = anthropic.Tap(p)
    start = b'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":12,"output_tokens":1}}}\n\n'
    delta = b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":8}}\n\n'
    assert tap.feed(start + delta) == start + delta
    assert (tap.usage.input_tokens, tap.usage.output_tokens) == (12, 8)


def test_error_bodies_carry_request_id_in_each_format():
    err = PermissionDenied("tier 1 may not use model gpt-4o")
    o = orjson.loads(openai.error_body(err, "req_1"))
    assert o["error"]["type"] == "permission_error" and o["error"]["request_id"] == "req_1"
    a = orjson.loads(anthropic.error_body(err, "req_2"))
    assert a == {"type": "error", "error": {"type": "permission_error", "message": err.message},
                 "request_id": "req_2"}


def test_sse_splitter_handles_crlf_and_partial_events():
    s = SSESplitter()
    assert s.events(b"data: 1\r\n\r\ndata: 2") == [b"data: 1\n\n"]
    assert s.events(b"\n\n") == [b"data: 2\n\n"]
    assert s.rest() == b""
