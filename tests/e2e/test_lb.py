"""The round-robin TCP load balancer (bench/lb.py) used by the fleet tests and `bench run` fleet3,
against real uvicorn servers: per-connection round robin, keep-alive pinning, streaming
pass-through, and skipping a backend that refuses connections."""
from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

from tests.support.harness import free_socket, serve
from tests.support.lb import RoundRobinLB, fresh_client


def _backend(name: str, gate: asyncio.Event) -> Starlette:
    async def who(request: Request) -> PlainTextResponse:
        return PlainTextResponse(name + ":" + (await request.body()).decode())

    async def stream(_: Request) -> StreamingResponse:
        async def events():  # noqa: ANN202
            yield b"data: first\n\n"
            await gate.wait()  # the second event only once the test has seen the first
            yield b"data: second\n\n"
        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/who", who, methods=["POST"]), Route("/stream", stream)])


@pytest.fixture
def backends(loop_thread):
    gate = asyncio.Event()
    served = [loop_thread.run(serve(_backend(f"b{i}", gate), lifespan="off")) for i in range(3)]
    yield served, gate
    loop_thread.loop.call_soon_threadsafe(gate.set)
    for s in served:
        loop_thread.run(s.stop())


@pytest.fixture
def lb(loop_thread, backends):
    served, _ = backends
    balancer = loop_thread.run(RoundRobinLB([s.url for s in served]).start())
    yield balancer
    loop_thread.run(balancer.aclose())


async def test_each_new_connection_goes_to_the_next_backend_in_turn(lb):
    async with fresh_client(lb.url) as c:
        names = [(await c.post("/who", content=b"x")).text for _ in range(6)]
    assert names == ["b0:x", "b1:x", "b2:x", "b0:x", "b1:x", "b2:x"]
    assert lb.connections == [2, 2, 2]


async def test_a_kept_alive_connection_stays_on_its_backend(lb):
    async with httpx.AsyncClient(base_url=lb.url) as c:  # one pooled connection
        names = {(await c.post("/who", content=str(i).encode())).text.split(":")[0] for i in range(5)}
    assert len(names) == 1 and sum(lb.connections) == 1


async def test_a_large_body_passes_through_intact(lb):
    body = bytes(range(256)) * 4096  # 1 MiB, many reads and writes each way
    async with fresh_client(lb.url) as c:
        r = await c.post("/who", content=body.hex().encode())
    assert r.text == "b0:" + body.hex()


def test_a_stream_is_passed_through_event_by_event(lb, backends, loop_thread):
    _, gate = backends

    async def go() -> list[bytes]:
        seen = []
        async with fresh_client(lb.url) as c, c.stream("GET", "/stream") as r:
            async for chunk in r.aiter_raw():
                seen.append(chunk)
                if not gate.is_set():
                    gate.set()  # the first event arrived before the second was even produced
        return seen

    seen = loop_thread.run(go())
    assert b"".join(seen) == b"data: first\n\ndata: second\n\n"
    assert seen[0] == b"data: first\n\n"


async def test_a_backend_that_refuses_connections_is_skipped(backends):
    served, _ = backends
    dead = free_socket()  # bound, never listening: connecting is refused
    try:
        lb = await RoundRobinLB([served[0].url, f"127.0.0.1:{dead.getsockname()[1]}", served[1].url]).start()
        try:
            async with fresh_client(lb.url) as c:
                names = [(await c.post("/who", content=b"")).text for _ in range(4)]
        finally:
            await lb.aclose()
    finally:
        dead.close()
    assert names == ["b0:", "b1:", "b0:", "b1:"]
    assert lb.connections == [2, 0, 2]


async def test_with_no_backend_left_the_client_connection_is_closed():
    dead = free_socket()
    try:
        lb = await RoundRobinLB([f"127.0.0.1:{dead.getsockname()[1]}"]).start()
        try:
            async with fresh_client(lb.url) as c:
                with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):  # closed or reset
                    await c.post("/who", content=b"")
        finally:
            await lb.aclose()
    finally:
        dead.close()
