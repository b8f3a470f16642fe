"""A TCP port in front of a real server (the shared PostgreSQL, say) that a test can shut and reopen.

Shut, the port is bound but not listening, so connecting is refused, and every connection
through it is cut: to a client that is the server gone. Reopened on the same port, the
real server behind it answers again. Runs on the event loop it is used from.

    proxy = TcpProxy("127.0.0.1", 5432)          # shut
    await proxy.open(); ...; await proxy.shut()
"""
from __future__ import annotations

import asyncio
import socket


def _bound(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


class TcpProxy:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self._sock = _bound(0)  # held, never listening: the port is ours and refuses
        self.port: int = self._sock.getsockname()[1]
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        assert self._server is None, "already open"
        self._server = await asyncio.start_server(self._handle, sock=self._sock)

    async def shut(self) -> None:
        """Stop listening and cut every connection; the port stays bound (refusing)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            self._sock = _bound(self.port)
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    def close(self) -> None:
        """Release the port (at the end of a test)."""
        if self._server is not None:
            self._server.close()
        self._sock.close()
        for w in list(self._writers):
            w.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:  # either side gone: both go
                writer.transport.abort()
                up_writer.transport.abort()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self._writers -= {writer, up_writer}
