"""A session's GET stream through the gateway: it stays open while idle, and it is
open at the server before the session's next POSTs arrive there.

The server is tests/support/mcp_conformance_server.py; the client is raw HTTP
(tests/support/mcp_raw.py), so each test sees exactly when a stream opens and ends.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import httpx
import pytest

from tests.support.harness import KEYS, Gateway, LoopThread
from tests.support.mcp_conformance_server import WATCHED, ConformanceServer
from tests.support.mcp_raw import RawSession
from tests.support.waiting import eventually_async

ARCHITECT = {"authorization": f"Bearer {KEYS['architect']}"}
SAMPLED = {"role": "assistant", "content": {"type": "text", "text": "pong"}, "model": "test-model",
           "stopReason": "endTurn"}


@pytest.fixture
def server(loop_thread: LoopThread, request: pytest.FixtureRequest) -> Iterator[ConformanceServer]:
    with ConformanceServer(**getattr(request, "param", {})).running(loop_thread) as srv:
        yield srv


@pytest.fixture
async def session_for(make_gateway: Callable[..., Gateway],
                      server: ConformanceServer) -> AsyncIterator[Callable[..., Awaitable[RawSession]]]:
    """A started session through a gateway whose `conformance` server has these settings."""
    async with httpx.AsyncClient(timeout=30) as http:
        async def make(**settings: Any) -> RawSession:
            gw = make_gateway(tools={"servers": {"conformance": {"kind": "mcp", "url": server.url, **settings}}})
            session = RawSession(http, gw.url + "/mcp/conformance", ARCHITECT)
            await session.start()
            return session
        yield make


async def hold_stream(session: RawSession) -> dict[str, Any] | None:
    """Open the session's GET stream and return its first message (None: it ended first)."""
    async with session.stream() as events:
        return await events.next(timeout=10)


async def get_arrived(server: ConformanceServer) -> None:
    await eventually_async(lambda: any(what == "GET" for _, what, _ in server.events), "the GET at the server")


async def test_an_idle_get_stream_outlives_the_read_timeout(session_for: Callable[..., Any]) -> None:
    session = await session_for(read_timeout_s=0.5)
    assert (await session.request("resources/subscribe", {"uri": WATCHED}))["result"] == {}
    async with session.stream() as events:
        await asyncio.sleep(1.5)  # three read timeouts without a byte
        answer = await session.request("tools/call", {"name": "update_watched_resource", "arguments": {}})
        assert answer["result"]["content"][0]["text"] == "notified 1 subscription(s)"
        note = await events.next(timeout=5)
    assert note == {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": WATCHED}}


async def test_a_get_stream_has_its_own_read_timeout(session_for: Callable[..., Any]) -> None:
    session = await session_for(read_timeout_s=30, stream_read_timeout_s=0.5)
    started = time.monotonic()
    async with session.stream() as events:
        assert await events.next(timeout=10) is None  # the stream ended: the gateway cut it
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("server", [{"back_channel": "session", "get_delay_s": 1.0}], indirect=True)
async def test_a_session_posts_after_its_get_stream_is_open(session_for: Callable[..., Any],
                                                            server: ConformanceServer) -> None:
    """The server sends its sampling request on the GET stream, which opens slowly; the
    tool call that makes it was sent after the GET, and must not overtake it."""
    session = await session_for()
    await session.request("tools/list")  # the gateway learns the tools' annotations: the call goes straight on
    server.events.clear()
    stream = asyncio.create_task(hold_stream(session))
    try:
        await get_arrived(server)
        call = asyncio.create_task(session.request("tools/call", {"name": "test_sampling",
                                                                  "arguments": {"prompt": "ping"}}))
        sampling = await asyncio.wait_for(stream, 15)
        assert sampling is not None and sampling["method"] == "sampling/createMessage", server.events
        await session.respond(sampling["id"], SAMPLED)
        answer = await asyncio.wait_for(call, 10)
    finally:
        stream.cancel()
    assert answer["result"]["content"][0]["text"] == "LLM response: pong"
    order = [what for _, what, sid in server.events if sid == session.session_id]
    assert order == ["GET", "GET answered", "POST", "POST"], order  # the call, then its sampling answer


@pytest.mark.parametrize("server", [{"get_delay_s": 8.0}], indirect=True)
async def test_a_get_slow_to_open_holds_the_session_back_only_so_long(session_for: Callable[..., Any],
                                                                      server: ConformanceServer) -> None:
    session = await session_for(connect_timeout_s=0.3)
    stream = asyncio.create_task(hold_stream(session))
    try:
        await get_arrived(server)
        assert (await session.request("ping"))["result"] == {}
        # Held for connect_timeout_s, not until the GET opened: the ping reached the server and was
        # answered while the server still held the GET (an order of events, not a timing).
        answered_before = [what for _, what, _ in server.events]
        assert "POST" in answered_before and "GET answered" not in answered_before, answered_before
        await eventually_async(lambda: any(what == "GET answered" for _, what, _ in server.events), "the GET open")
    finally:
        stream.cancel()
