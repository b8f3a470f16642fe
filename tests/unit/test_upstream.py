"""Upstream adapters: HTTPUpstream against a real local server, MockUpstream in-process,
and the wire formats checked with the providers' own SDK types."""
from __future__ import annotations

import socket
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import anthropic
import openai
import orjson
import pytest
import pytest_asyncio
from anthropic.types import Message, RawMessageStreamEvent
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from adapters.upstream import wire
from adapters.upstream.http import HTTPUpstream
from adapters.upstream.mock import MockUpstream
from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.protocols import Upstream
from gateway.settings import UpstreamSettings
from tests.support.upstream_server import FAULT_EVENTS, UpstreamServer, request_id

PROMPT = "please tell me a short story about a lighthouse keeper and a very curious seagull"
ANSWER = wire.ANSWER_PREFIX + PROMPT
UPSTREAM_KEY = "sk-upstream-secret"


def body_for(path: str, model: str = "", stream: bool = False, **extra: Any) -> dict[str, Any]:
    if path == "/v1/chat/completions":
        b = {"model": model or "gpt-4o-mini", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": PROMPT}]}]}
    elif path == "/v1/completions":
        b = {"model": model or "gpt-3.5-turbo-instruct", "prompt": PROMPT, "max_tokens": 100}
    elif path == "/v1/embeddings":
        b = {"model": model or "text-embedding-3-small", "input": PROMPT}
    elif path == "/v1/responses":
        b = {"model": model or "gpt-4o", "input": [{"role": "user", "content": PROMPT}]}
    else:
        b = {"model": model or "claude-sonnet-4-6", "max_tokens": 1024,
             "messages": [{"role": "user", "content": PROMPT}]}
    if stream:
        b["stream"] = True
    return {**b, **extra}


def sse_events(raw: bytes) -> list[tuple[str | None, Any]]:
    """(event name, parsed data) for each SSE event; data "[DONE]" stays a string."""
    out = []
    for block in raw.split(b"\n\n"):
        if not block.strip():
            continue
        name, data = None, None
        for line in block.split(b"\n"):
            if line.startswith(b"event: "):
                name = line[7:].decode()
            elif line.startswith(b"data: "):
                data = "[DONE]" if line[6:] == b"[DONE]" else orjson.loads(line[6:])
        out.append((name, data))
    return out


def streamed_text(path: str, events: list[tuple[str | None, Any]]) -> str:
    if path == "/v1/chat/completions":
        return "".join(d["choices"][0]["delta"].get("content", "") for _, d in events
                       if d != "[DONE]" and d["choices"])
    if path == "/v1/completions":
        return "".join(d["choices"][0]["text"] for _, d in events if d != "[DONE]" and d["choices"])
    if path == "/v1/responses":
        return "".join(d["delta"] for n, d in events if n == "response.output_text.delta")
    return "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")


STREAM_PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages"]
ALL_PATHS = STREAM_PATHS + ["/v1/embeddings"]


def api_of(path: str) -> str:
    return "anthropic" if path == "/v1/messages" else "openai"


# ---- fixtures -----------------------------------------------------------------------

@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def server() -> AsyncIterator[UpstreamServer]:
    srv = UpstreamServer(slow_s=3.0)
    await srv.start()
    yield srv
    await srv.stop()


@asynccontextmanager
async def http_upstream(base_url: str, provider: str = "openai",
                        **kw: Any) -> AsyncIterator[HTTPUpstream]:
    settings = UpstreamSettings(provider=provider, base_url=base_url, **kw)
    settings = settings.model_copy(update={"api_key": UPSTREAM_KEY})
    up = HTTPUpstream(provider, settings)
    await up.start()
    try:
        yield up
    finally:
        await up.aclose()


def mock_upstream() -> MockUpstream:
    return MockUpstream("mock", UpstreamSettings(provider="mock"))


async def send_json(up: Upstream, path: str, body: dict[str, Any], **headers: str) -> Any:
    return await up.send("POST", path, orjson.dumps(body), api_of(path),
                         {"content-type": "application/json", **headers})


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- HTTPUpstream -------------------------------------------------------------------

def test_both_implement_the_seam() -> None:
    assert isinstance(mock_upstream(), Upstream)
    assert isinstance(HTTPUpstream("x", UpstreamSettings(provider="openai",
                                                          base_url="http://127.0.0.1:1")), Upstream)


@pytest.mark.parametrize("path", ALL_PATHS)
async def test_http_non_streamed(server: UpstreamServer, path: str) -> None:
    async with http_upstream(server.url, api_of(path)) as up:
        resp = await send_json(up, path, body_for(path))
        data = orjson.loads(await resp.read())
    assert resp.status == 200
    assert resp.headers["content-type"] == "application/json"
    assert "content-length" not in resp.headers and "transfer-encoding" not in resp.headers
    usage = data["usage"]
    assert usage.get("total_tokens", usage.get("output_tokens", 0)) > 0
    if path == "/v1/embeddings":
        assert len(data["data"][0]["embedding"]) == 1536
    else:
        assert ANSWER in orjson.dumps(data).decode()


@pytest.mark.parametrize("path", STREAM_PATHS)
async def test_http_streamed(server: UpstreamServer, path: str) -> None:
    async with http_upstream(server.url, api_of(path)) as up:
        resp = await send_json(up, path, body_for(path, stream=True))
        raw = b"".join([c async for c in resp.iter_chunks()])
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert "transfer-encoding" not in resp.headers
    events = sse_events(raw)
    assert streamed_text(path, events) == ANSWER
    assert raw.endswith(b"data: [DONE]\n\n") == path.startswith(("/v1/chat", "/v1/completions"))


async def test_openai_key_injected_and_client_credentials_dropped(server: UpstreamServer) -> None:
    tag = request_id()
    async with http_upstream(server.url, "openai") as up:
        resp = await send_json(up, "/v1/chat/completions", body_for("/v1/chat/completions"),
                               authorization="Bearer client-key", **{
                                   "x-api-key": "client-key", "cookie": "session=abc",
                                   "x-request-id": tag, "openai-beta": "assistants=v2",
                                   "x-forwarded-for": "10.0.0.1", "te": "trailers"})
        await resp.read()
    [sent] = server.received(tag)
    seen = sent.headers
    assert seen["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert "x-api-key" not in seen and "cookie" not in seen and "x-forwarded-for" not in seen
    assert "te" not in seen
    assert seen["x-request-id"] == tag and seen["openai-beta"] == "assistants=v2"
    assert seen["accept-encoding"] == "identity"
    assert "client-key" not in orjson.dumps(seen).decode()


@pytest.mark.parametrize("client_version,expected", [(None, "2023-06-01"),
                                                      ("2024-10-22", "2024-10-22")])
async def test_anthropic_key_and_version(server: UpstreamServer, client_version: str | None,
                                         expected: str) -> None:
    tag = request_id()
    headers = {"authorization": "Bearer client-key", "x-api-key": "client-key", "x-request-id": tag}
    if client_version:
        headers["anthropic-version"] = client_version
    async with http_upstream(server.url, "anthropic") as up:
        resp = await send_json(up, "/v1/messages", body_for("/v1/messages"), **headers)
        assert resp.status == 200
        await resp.read()
    [sent] = server.received(tag)
    seen = sent.headers
    assert seen["x-api-key"] == UPSTREAM_KEY
    assert "authorization" not in seen
    assert seen["anthropic-version"] == expected


async def test_connection_refused_is_upstream_error() -> None:
    async with http_upstream(f"http://127.0.0.1:{closed_port()}") as up:
        with pytest.raises(UpstreamError) as info:
            await send_json(up, "/v1/chat/completions", body_for("/v1/chat/completions"))
    assert str(info.value) == "upstream openai unreachable: connection refused"
    assert UPSTREAM_KEY not in str(info.value)


async def test_slow_upstream_times_out(server: UpstreamServer) -> None:
    async with http_upstream(server.url, read_timeout_s=0.2) as up:
        with pytest.raises(UpstreamTimeout):
            await send_json(up, "/v1/chat/completions",
                            body_for("/v1/chat/completions", model="fault-slow"))


async def test_stall_mid_stream_times_out_from_iterator(server: UpstreamServer) -> None:
    async with http_upstream(server.url, read_timeout_s=0.2) as up:
        resp = await send_json(up, "/v1/chat/completions", body_for(
            "/v1/chat/completions", model="fault-stall-midstream", stream=True))
        assert resp.status == 200
        received = b""
        with pytest.raises(UpstreamTimeout):
            async for chunk in resp.iter_chunks():
                received += chunk
    assert len(sse_events(received)) == FAULT_EVENTS


async def test_die_mid_stream_is_upstream_error_from_iterator(server: UpstreamServer) -> None:
    async with http_upstream(server.url) as up:
        resp = await send_json(up, "/v1/chat/completions", body_for(
            "/v1/chat/completions", model="fault-die-midstream", stream=True))
        assert resp.status == 200
        received = b""
        with pytest.raises(UpstreamError) as info:
            async for chunk in resp.iter_chunks():
                received += chunk
    assert len(sse_events(received)) == FAULT_EVENTS
    assert "mid-stream" in str(info.value)


async def test_die_mid_stream_is_upstream_error_from_read(server: UpstreamServer) -> None:
    async with http_upstream(server.url) as up:
        resp = await send_json(up, "/v1/chat/completions", body_for(
            "/v1/chat/completions", model="fault-die-midstream", stream=True))
        with pytest.raises(UpstreamError):
            await resp.read()


async def test_upstream_500_is_passed_through(server: UpstreamServer) -> None:
    async with http_upstream(server.url) as up:
        resp = await send_json(up, "/v1/chat/completions",
                               body_for("/v1/chat/completions", model="fault-500"))
        data = orjson.loads(await resp.read())
    assert resp.status == 500
    assert data["error"]["type"] == "server_error"


async def test_connection_reused_after_aclose_of_unread_stream(server: UpstreamServer) -> None:
    async with http_upstream(server.url) as up:
        resp = await send_json(up, "/v1/chat/completions",
                               body_for("/v1/chat/completions", stream=True))
        await resp.aclose()  # client went away before reading
        resp = await send_json(up, "/v1/chat/completions", body_for("/v1/chat/completions"))
        assert resp.status == 200
        assert ANSWER in (await resp.read()).decode()


# ---- the real SDKs against the local server ---------------------------------------

async def test_openai_sdk_reads_our_formats(server: UpstreamServer) -> None:
    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0)
    async with client:
        chat = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}])
        assert chat.choices[0].message.content == ANSWER
        chunks = [c async for c in await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}], stream=True,
            stream_options={"include_usage": True})]
        assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == chat.usage.total_tokens
        async with client.responses.stream(model="gpt-4o", input=PROMPT) as stream:
            final = await stream.get_final_response()
        assert final.output_text == ANSWER and final.usage.output_tokens > 0
        emb = await client.embeddings.create(model="text-embedding-3-small", input=["a", "b"],
                                             dimensions=64)  # the SDK asks for base64
        assert [len(d.embedding) for d in emb.data] == [64, 64]
        assert abs(sum(v * v for v in emb.data[0].embedding) - 1.0) < 1e-3


async def test_anthropic_sdk_reads_our_formats(server: UpstreamServer) -> None:
    client = anthropic.AsyncAnthropic(base_url=server.url, api_key="k", max_retries=0)
    async with client:
        msg = await client.messages.create(model="claude-sonnet-4-6", max_tokens=1024,
                                           messages=[{"role": "user", "content": PROMPT}])
        assert msg.content[0].text == ANSWER and msg.stop_reason == "end_turn"
        async with client.messages.stream(model="claude-sonnet-4-6", max_tokens=5, messages=[
                {"role": "user", "content": PROMPT}]) as stream:
            final = await stream.get_final_message()
        assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 5
        assert final.usage.input_tokens == msg.usage.input_tokens


# ---- MockUpstream -------------------------------------------------------------------

def expected_chat_input_tokens(*texts: str) -> int:
    return wire.REPLY_PRIMING + sum(wire.MESSAGE_OVERHEAD + wire.estimate_tokens(t) for t in texts)


async def mock_call(path: str, body: dict[str, Any]) -> tuple[int, Any, list[bytes]]:
    resp = await send_json(mock_upstream(), path, body)
    chunks = [c async for c in resp.iter_chunks()]
    raw = b"".join(chunks)
    if resp.headers["content-type"].startswith("text/event-stream"):
        return resp.status, sse_events(raw), chunks
    return resp.status, orjson.loads(raw), chunks


async def test_mock_chat_non_streamed_matches_sdk_type() -> None:
    status, data, _ = await mock_call("/v1/chat/completions", body_for("/v1/chat/completions"))
    assert status == 200
    chat = ChatCompletion.model_validate(data)
    assert chat.choices[0].message.content == ANSWER and chat.choices[0].finish_reason == "stop"
    assert chat.id.startswith("chatcmpl-")
    assert chat.usage.prompt_tokens == expected_chat_input_tokens("be brief", PROMPT)
    assert chat.usage.completion_tokens == wire.estimate_tokens(ANSWER)
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens


@pytest.mark.parametrize("include_usage", [False, True])
async def test_mock_chat_stream_usage_chunk_only_when_asked(include_usage: bool) -> None:
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    _, events, chunks = await mock_call("/v1/chat/completions",
                                        body_for("/v1/chat/completions", stream=True, **extra))
    assert len(chunks) == len(events)  # one SSE event per chunk, produced lazily
    assert events[-1] == (None, "[DONE]")
    data = [d for _, d in events[:-1]]
    for d in data:
        ChatCompletionChunk.model_validate(d)
    usage_chunks = [d for d in data if d.get("usage")]
    if include_usage:
        assert len(usage_chunks) == 1 and usage_chunks[0] is data[-1] and data[-1]["choices"] == []
        assert data[-1]["usage"]["completion_tokens"] == wire.estimate_tokens(ANSWER)
    else:
        assert usage_chunks == [] and all("usage" not in d for d in data)
    assert [d["choices"][0]["finish_reason"] for d in data if d["choices"]][-1] == "stop"
    assert data[0]["choices"][0]["delta"]["role"] == "assistant"
    assert len(data) >= len(ANSWER.split())  # word-sized pieces


async def test_mock_chat_max_tokens_truncates() -> None:
    _, data, _ = await mock_call("/v1/chat/completions",
                                 body_for("/v1/chat/completions", max_completion_tokens=5))
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 5
    assert ANSWER.startswith(data["choices"][0]["message"]["content"])
    _, events, _ = await mock_call("/v1/chat/completions", body_for(
        "/v1/chat/completions", stream=True, max_tokens=5, stream_options={"include_usage": True}))
    assert streamed_text("/v1/chat/completions", events) == data["choices"][0]["message"]["content"]
    assert events[-2][1]["usage"]["completion_tokens"] == 5


async def test_mock_completions() -> None:
    _, data, _ = await mock_call("/v1/completions", body_for("/v1/completions"))
    comp = Completion.model_validate(data)
    assert comp.object == "text_completion" and comp.choices[0].text == ANSWER
    assert comp.usage.prompt_tokens == wire.estimate_tokens(PROMPT)
    _, events, _ = await mock_call("/v1/completions", body_for(
        "/v1/completions", stream=True, max_tokens=3, stream_options={"include_usage": True}))
    assert streamed_text("/v1/completions", events) == ANSWER[:12]
    assert events[-3][1]["choices"][0]["finish_reason"] == "length"
    assert events[-2][1]["usage"]["completion_tokens"] == 3 and events[-1][1] == "[DONE]"


async def test_mock_embeddings() -> None:
    path = "/v1/embeddings"
    _, one, _ = await mock_call(path, body_for(path, dimensions=8))
    _, two, _ = await mock_call(path, body_for(path, input=[PROMPT, "other"], dimensions=8))
    emb = CreateEmbeddingResponse.model_validate(two)
    assert [d.index for d in emb.data] == [0, 1]
    assert one["data"][0]["embedding"] == two["data"][0]["embedding"]  # deterministic
    assert two["data"][0]["embedding"] != two["data"][1]["embedding"]
    assert emb.usage.prompt_tokens == emb.usage.total_tokens == (
        wire.estimate_tokens(PROMPT) + wire.estimate_tokens("other"))
    _, large, _ = await mock_call(path, body_for(path, model="text-embedding-3-large"))
    assert len(large["data"][0]["embedding"]) == 3072


async def test_mock_responses() -> None:
    path = "/v1/responses"
    _, data, _ = await mock_call(path, body_for(path, instructions="be brief"))
    resp = Response.model_validate(data)
    assert resp.output_text == ANSWER and resp.status == "completed"
    assert resp.usage.input_tokens == expected_chat_input_tokens("be brief", PROMPT)
    assert resp.usage.output_tokens == wire.estimate_tokens(ANSWER)

    _, events, _ = await mock_call(path, body_for(path, stream=True, instructions="be brief"))
    adapter = TypeAdapter(ResponseStreamEvent)
    parsed = [adapter.validate_python(d) for _, d in events]
    assert [n for n, _ in events] == [p.type for p in parsed]
    assert [p.sequence_number for p in parsed] == list(range(len(parsed)))
    assert parsed[0].type == "response.created" and parsed[0].response.usage is None
    assert parsed[-1].type == "response.completed"
    assert parsed[-1].response.usage == resp.usage
    assert streamed_text(path, events) == ANSWER


async def test_mock_responses_max_output_tokens() -> None:
    path = "/v1/responses"
    _, data, _ = await mock_call(path, body_for(path, max_output_tokens=16))
    assert data["status"] == "incomplete" and data["usage"]["output_tokens"] == 16
    assert data["incomplete_details"] == {"reason": "max_output_tokens"}
    _, events, _ = await mock_call(path, body_for(path, stream=True, max_output_tokens=16))
    assert events[-1][0] == "response.incomplete"
    assert events[-1][1]["response"]["usage"]["output_tokens"] == 16
    status, err, _ = await mock_call(path, body_for(path, max_output_tokens=4))
    assert status == 400 and err["error"]["param"] == "max_output_tokens"


async def test_mock_anthropic_messages() -> None:
    path = "/v1/messages"
    _, data, _ = await mock_call(path, body_for(path, system="be brief"))
    msg = Message.model_validate(data)
    assert msg.content[0].text == ANSWER and msg.stop_reason == "end_turn"
    assert msg.id.startswith("msg_01")
    assert msg.usage.input_tokens == (expected_chat_input_tokens(PROMPT) + wire.MESSAGE_OVERHEAD
                                      + wire.estimate_tokens("be brief"))
    _, events, _ = await mock_call(path, body_for(path, stream=True, system="be brief"))
    adapter = TypeAdapter(RawMessageStreamEvent)
    kinds = [n for n, d in events if n == "ping" or adapter.validate_python(d).type == n]
    assert kinds == [n for n, _ in events]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    start, delta = events[0][1], events[-2][1]
    assert start["message"]["usage"]["input_tokens"] == msg.usage.input_tokens
    assert start["message"]["usage"]["output_tokens"] == 1
    assert delta["delta"]["stop_reason"] == "end_turn"
    assert delta["usage"]["output_tokens"] == msg.usage.output_tokens
    assert streamed_text(path, events) == ANSWER


async def test_mock_anthropic_max_tokens() -> None:
    path = "/v1/messages"
    _, data, _ = await mock_call(path, body_for(path, max_tokens=4))
    assert data["stop_reason"] == "max_tokens" and data["usage"]["output_tokens"] == 4
    assert data["content"][0]["text"] == ANSWER[:16]
    status, err, _ = await mock_call(path, {"model": "claude-sonnet-4-6", "messages": []})
    assert status == 400 and err["type"] == "error"
    assert err["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_mock_malformed_body_is_400_in_provider_format(api: str) -> None:
    path = "/v1/messages" if api == "anthropic" else "/v1/chat/completions"
    resp = await mock_upstream().send("POST", path, b"{not json", api, {})
    data = orjson.loads(await resp.read())
    assert resp.status == 400
    if api == "anthropic":
        assert data["type"] == "error" and data["error"]["type"] == "invalid_request_error"
    else:
        assert data["error"]["type"] == "invalid_request_error" and "message" in data["error"]


async def test_mock_unknown_path_is_404() -> None:
    resp = await mock_upstream().send("POST", "/v1/nope", b"{}", "openai", {})
    assert resp.status == 404
    assert orjson.loads(await resp.read())["error"]["message"] == "Invalid URL (POST /v1/nope)"


async def test_mock_models_listing() -> None:
    resp = await mock_upstream().send("GET", "/v1/models", b"", "openai", {})
    data = orjson.loads(await resp.read())
    assert resp.status == 200 and data["object"] == "list"
    assert "gpt-4o-mini" in [m["id"] for m in data["data"]]


def test_wire_is_deterministic() -> None:
    body = body_for("/v1/chat/completions", stream=True)
    first = list(wire.respond_stream("/v1/chat/completions", body, now=1))
    assert first == list(wire.respond_stream("/v1/chat/completions", body, now=1))
    assert wire.respond("/v1/messages", body_for("/v1/messages"), api="anthropic", now=1) == \
        wire.respond("/v1/messages", body_for("/v1/messages"), api="anthropic", now=1)
