"""SIGTERM drains `portcullis serve`: streams in flight finish (or are cut at
server.drain_timeout_s), new connections are refused, every request has its audit row,
and the process exits 0.

The gateway runs as a real subprocess (`python -m gateway.cli serve`), as in a pod. Its
upstream streams the first events of each answer and then holds the rest until the test
opens a gate, so "in the middle of a stream" is a state, not a race against a timer.
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import httpx
import openai
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from adapters.upstream import wire
from tests.support.harness import KEYS, PROVIDER_KEYS, REPO, Gateway, LoopThread, Served, gateway_config, serve
from tests.support.mcp_orders_server import OrdersServer
from tests.support.mcp_raw import RawSession
from tests.support.waiting import eventually

HELD_AFTER = 2  # events sent before the upstream holds a stream at its gate
PROMPT = "one two three four five six seven eight nine ten eleven twelve"


class GatedUpstream:
    """OpenAI-style streams (adapters/upstream/wire.py) that pause after HELD_AFTER events
    until `release()`; `held` counts the streams waiting at the gate."""

    def __init__(self, loop: LoopThread) -> None:
        self.loop = loop
        self.gate = asyncio.Event()
        self.held = 0
        self._served: Served | None = None

    @property
    def url(self) -> str:
        assert self._served is not None
        return self._served.url

    def start(self) -> "GatedUpstream":
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["POST"])])
        self._served = self.loop.run(serve(app, lifespan="off"))
        return self

    def release(self) -> None:
        self.loop.loop.call_soon_threadsafe(self.gate.set)

    def stop(self) -> None:
        self.release()
        if self._served is not None:
            self.loop.run(self._served.stop())

    async def _handle(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        if not wire.wants_stream(request.url.path, body):
            status, data = wire.respond(request.url.path, body, api="openai")
            return Response(data, status, media_type="application/json")
        events = list(wire.respond_stream(request.url.path, body))
        assert len(events) > HELD_AFTER + 1

        async def stream() -> AsyncIterator[bytes]:
            for i, event in enumerate(events):
                if i == HELD_AFTER:
                    self.held += 1
                    await self.gate.wait()
                yield event
                await asyncio.sleep(0)
        return StreamingResponse(stream(), media_type="text/event-stream")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """`python -m gateway.cli serve --config ...` in its own process, as the container runs it."""

    def __init__(self, tmp: Path, upstream_url: str, drain_timeout_s: float, **overrides: Any) -> None:
        self.port = free_port()
        self.config = gateway_config(tmp, upstream_url, server__port=self.port,
                                     server__drain_timeout_s=drain_timeout_s,
                                     upstreams__openai__read_timeout_s=300,  # held streams are not stalls
                                     **overrides)
        self.audit_db = tmp / "audit.db"
        self.log = tmp / "serve.log"
        self._log = self.log.open("wb")
        env = {**os.environ, **PROVIDER_KEYS, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(self.config)],
                                     cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        eventually(self._ready, "the gateway subprocess to be ready", timeout=120)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"serve exited with {self.proc.returncode}:\n{self.output()}")
        try:
            return httpx.get(self.url + "/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def output(self) -> str:
        self._log.flush()
        return self.log.read_text(errors="replace")

    def refuses_connections(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=2).close()
        except ConnectionRefusedError:
            return True
        return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()

    def rows(self) -> dict[str, dict[str, Any]]:
        con = sqlite3.connect(self.audit_db)
        con.row_factory = sqlite3.Row
        try:
            return {r["request_id"]: dict(r) for r in con.execute("SELECT * FROM audit_log ORDER BY seq")}
        finally:
            con.close()


@pytest.fixture
def gated(loop_thread: LoopThread) -> Iterator[GatedUpstream]:
    up = GatedUpstream(loop_thread).start()
    yield up
    up.stop()


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(8) as ex:
        yield ex


def open_stream(url: str, started: threading.Barrier) -> dict[str, Any]:
    """One streamed chat completion with the real openai SDK; what it saw, or what it raised."""
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEYS["intern-bot"], max_retries=0, timeout=120)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": PROMPT}])
    out: dict[str, Any] = {"rid": raw.headers["x-request-id"], "text": "", "finish": None, "raised": None}
    chunks = iter(raw.parse())
    try:
        first = next(chunks)  # the stream is open and flowing through the gateway
        started.wait(60)
        for chunk in [first, *chunks]:
            for choice in chunk.choices:
                out["text"] += choice.delta.content or ""
                out["finish"] = choice.finish_reason or out["finish"]
    except Exception as e:  # noqa: BLE001 - a cut stream raises; the test looks at what
        out["raised"] = type(e).__name__
    return out


def start_streams(pool: ThreadPoolExecutor, gw: ServeProcess, up: GatedUpstream, n: int) -> list[Future]:
    started = threading.Barrier(n + 1)
    futures = [pool.submit(open_stream, gw.url, started) for _ in range(n)]
    started.wait(60)  # every stream has its first chunk: all n are in flight
    eventually(lambda: up.held == n, f"{n} streams held at the upstream's gate")
    return futures


def test_sigterm_lets_streams_finish_refuses_new_connections_and_exits_0(
        tmp_path: Path, gated: GatedUpstream, pool: ThreadPoolExecutor) -> None:
    gw = ServeProcess(tmp_path, gated.url, drain_timeout_s=120)
    try:
        before = httpx.post(gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {KEYS['intern-bot']}"},
                            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
        assert before.status_code == 200
        streams = start_streams(pool, gw, gated, 4)
        gw.proc.send_signal(signal.SIGTERM)
        eventually(gw.refuses_connections, "the listener to close on SIGTERM")
        with pytest.raises(openai.APIConnectionError):  # a new request cannot even connect
            openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS["intern-bot"], max_retries=0).models.list()
        assert gw.proc.poll() is None, "the streams in flight keep the process up"
        assert not any(f.done() for f in streams)
        gated.release()
        results = [f.result(120) for f in streams]
        assert gw.proc.wait(120) == 0, gw.output()
        for r in results:
            assert r["raised"] is None and r["finish"] == "stop" and r["text"], r
        rows = gw.rows()  # read after exit: the queue was flushed before the process ended
        for rid in [before.headers["x-request-id"], *(r["rid"] for r in results)]:
            row = rows[rid]
            assert (row["status"], row["decision"], row["error"]) == (200, "allow", None), row
        for r in results:
            assert rows[r["rid"]]["stream"] and rows[r["rid"]]["output_tokens"] > 0
        assert len(rows) == 5, "the refused connection never became a request"
    finally:
        gw.stop()


def test_a_stream_longer_than_the_drain_deadline_is_cut_and_still_audited(
        tmp_path: Path, gated: GatedUpstream, pool: ThreadPoolExecutor) -> None:
    gw = ServeProcess(tmp_path, gated.url, drain_timeout_s=0.5)
    slow = socket.create_connection(("127.0.0.1", gw.port))
    try:
        # A request still sending its body (server.body_timeout_s is 30 s); it reaches the
        # gateway before the streams below are even opened.
        slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
                     b"content-type: application/json\r\ncontent-length: 100\r\n\r\n{\"model\": ")
        streams = start_streams(pool, gw, gated, 2)  # the gate stays shut: they outlast the deadline
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(120) == 0, gw.output()
        results = [f.result(60) for f in streams]
        for r in results:
            assert r["raised"] is not None and r["finish"] is None, r  # the client sees the cut
        rows = gw.rows()
        for r in results:
            row = rows[r["rid"]]
            assert row["status"] == 200 and row["stream"], row
            assert row["error"].startswith("cut at shutdown: server.drain_timeout_s passed"), row
        [body_row] = [r for rid, r in rows.items() if rid not in {x["rid"] for x in results}]
        assert body_row["status"] == 499 and body_row["error"].startswith("cut at shutdown"), body_row
        assert "cutting 3 request(s)" in gw.output()
    finally:
        slow.close()
        gw.stop()


def test_an_mcp_get_stream_ends_cleanly_when_the_drain_starts(
        tmp_path: Path, gated: GatedUpstream, orders: OrdersServer, loop_thread: LoopThread) -> None:
    """A session's GET stream only waits for what the server may send: it is not held until
    the deadline and cut, but ended at once, and the client reconnects elsewhere."""
    gw = ServeProcess(tmp_path, gated.url, drain_timeout_s=30,
                      tools={"servers": {"orders": {"kind": "mcp", "url": orders.url}}})
    try:
        async def stream_through_sigterm() -> str:
            async with httpx.AsyncClient(timeout=60) as http:
                session = RawSession(http, gw.url + "/mcp/orders", {"authorization": f"Bearer {KEYS['intern-bot']}"})
                await session.start()
                async with http.stream("GET", session.url, headers={**session.headers(),
                                                                    "accept": "text/event-stream"}) as resp:
                    assert resp.status_code == 200
                    gw.proc.send_signal(signal.SIGTERM)
                    async for _ in resp.aiter_bytes():  # ends without an error: a clean end of stream
                        pass
                    return resp.headers["x-request-id"]
        rid = loop_thread.run(stream_through_sigterm(), timeout=120)
        assert gw.proc.wait(120) == 0, gw.output()
        row = gw.rows()[rid]
        assert (row["action"], row["status"], row["error"]) == ("mcp.stream", 200, None), row
        assert "cutting" not in gw.output()  # nothing was left for the deadline
    finally:
        gw.stop()


def test_readyz_turns_503_when_draining_starts(make_gateway: Any) -> None:
    gw: Gateway = make_gateway()
    # Ready once the start's background policy compilation no longer delays the probes.
    eventually(lambda: httpx.get(gw.url + "/readyz").status_code == 200, "the gateway ready")
    gw.app.state.drain.begin()  # what `portcullis serve` does on SIGTERM
    r = httpx.get(gw.url + "/readyz")
    assert r.status_code == 503 and "draining: shutting down" in r.json()["problems"]
