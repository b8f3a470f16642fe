"""A small round-robin TCP load balancer on 127.0.0.1, for tests and `bench run` (fleet3).

Round robin is per client CONNECTION, at the TCP level: each accepted connection is
piped, byte for byte, to the next backend in turn, and stays on it until either side
closes. This is what a Kubernetes Service (kube-proxy) does, and it is correct for
HTTP/1.1 keep-alive without parsing HTTP: a connection's pipelined or kept-alive requests
all reach the backend that read the ones before. A client wanting its requests spread over
the replicas opens a connection per request (or several connections). Streams (SSE) pass
through unbuffered. A backend that refuses the connection is skipped for the next one (a
killed replica, as a Service drops an endpoint that stopped being ready); when every backend
refuses, the client connection is closed.

    python -m bench.lb --port 9100 --backend 127.0.0.1:9001 --backend 127.0.0.1:9002
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import socket
from typing import Sequence

CHUNK = 64 * 1024


def _address(backend: str) -> tuple[str, int]:
    """"127.0.0.1:9001" or "http://127.0.0.1:9001" -> ("127.0.0.1", 9001)."""
    hostport = backend.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    return host or "127.0.0.1", int(port)


class RoundRobinLB:
    """Start with `await lb.start()`; `lb.url` is its address; `await lb.aclose()` stops it."""

    def __init__(self, backends: Sequence[str], host: str = "127.0.0.1", port: int = 0) -> None:
        if not backends:
            raise ValueError("at least one backend is needed")
        self.backends = [_address(b) for b in backends]
        self.host, self.port = host, port
        self.connections = [0] * len(self.backends)  # accepted connections sent to each backend
        self._next = itertools.cycle(range(len(self.backends)))
        self._server: asyncio.base_events.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self, sock: socket.socket | None = None) -> "RoundRobinLB":
        if sock is not None:
            self._server = await asyncio.start_server(self._accept, sock=sock, backlog=1024)
        else:
            self._server = await asyncio.start_server(self._accept, self.host, self.port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for _ in range(len(self.backends)):
            i = next(self._next)
            try:
                conn = await asyncio.open_connection(*self.backends[i])
            except OSError:
                continue  # refused: that replica is gone, try the next
            self.connections[i] += 1
            return conn
        return None

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        try:
            backend = await self._connect()
            if backend is None:
                return
            backend_r, backend_w = backend
            for w in (client_w, backend_w):
                w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            up = asyncio.ensure_future(_pipe(client_r, backend_w))
            down = asyncio.ensure_future(_pipe(backend_r, client_w))
            try:
                # Each direction half-closes the other side when its source ends; the
                # connection is over when both are done (a reset ends both at once).
                await asyncio.gather(up, down)
            finally:
                up.cancel()
                down.cancel()
                backend_w.close()
        except (OSError, asyncio.CancelledError):
            _abort(client_w)
        finally:
            client_w.close()  # after an orderly end: flushes what is buffered, then closes
            self._pipes.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        _abort(writer)  # a reset on one side resets the other, as a real LB does


def _abort(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.transport.abort()


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--backend", action="append", required=True, help="host:port or http://host:port")
    args = p.parse_args(argv)

    async def serve() -> None:
        lb = await RoundRobinLB(args.backend, args.host, args.port).start()
        try:
            await asyncio.Event().wait()
        finally:
            await lb.aclose()

    try:
        import uvloop  # the servers it fronts run on uvloop too

        uvloop.run(serve())
    except ImportError:
        asyncio.run(serve())


if __name__ == "__main__":
    main()
