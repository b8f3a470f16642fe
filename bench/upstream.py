"""A fast local upstream speaking the OpenAI wire format (raw asyncio + httptools on uvloop).

It answers every POST with a canned chat completion, or, when the body asks for
`"stream": true`, with an SSE stream of N content chunks (default 20), a usage
chunk and `data: [DONE]`, each chunk written in its own event-loop turn. It does
no JSON parsing at all, so it is never the bottleneck of a proxy benchmark.

    python -m bench.upstream --port 9000 [--chunks 20]
"""
from __future__ import annotations

import argparse
import asyncio
import socket
from typing import Any

_COMPLETION = (
    b'{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the bench upstream."},'
    b'"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":12,"completion_tokens":8,"total_tokens":20}}'
)
_CHUNK = (b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
          b'"model":"bench","choices":[{"index":0,"delta":{"content":"tok "},"finish_reason":null}]}\n\n')
_USAGE = (b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
          b'"model":"bench","choices":[],'
          b'"usage":{"prompt_tokens":12,"completion_tokens":20,"total_tokens":32}}\n\n')
_DONE = b"data: [DONE]\n\n"


def _response(status: bytes, body: bytes, ctype: bytes = b"application/json") -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: " + ctype + b"\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


_OK = _response(b"200 OK", _COMPLETION)
_MODELS = _response(b"200 OK", b'{"object":"list","data":[{"id":"bench","object":"model"}]}')
_STREAM_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n")


def _frame(data: bytes) -> bytes:
    """One HTTP/1.1 chunked-encoding frame."""
    return b"%x\r\n%s\r\n" % (len(data), data)


class _Protocol(asyncio.Protocol):
    """One keep-alive connection; requests are answered strictly in order."""

    def __init__(self, chunks: int) -> None:
        import httptools  # noqa: PLC0415 - loaded only when serving

        self._parser = httptools.HttpRequestParser(self)
        self._chunks = chunks
        self._transport: Any = None
        self._body: list[bytes] = []
        self._url = b""
        self._busy: asyncio.Task[None] | None = None  # a stream being written
        self._pending: list[tuple[bytes, bytes]] = []

    # asyncio.Protocol
    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except Exception:  # malformed request: drop the connection
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._busy is not None:
            self._busy.cancel()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._body = []
        self._url = b""

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        req = (self._url, b"".join(self._body))
        if self._busy is not None:
            self._pending.append(req)  # pipelined behind a stream
        else:
            self._answer(*req)

    def _answer(self, url: bytes, body: bytes) -> None:
        if b'"stream":true' in body or b'"stream": true' in body:
            usage = b"include_usage" in body
            self._busy = asyncio.get_running_loop().create_task(self._stream(usage))
        elif url.startswith(b"/v1/models") or url.startswith(b"/models"):
            self._transport.write(_MODELS)
        else:
            self._transport.write(_OK)

    async def _stream(self, usage: bool) -> None:
        t = self._transport
        t.write(_STREAM_HEAD)
        for _ in range(self._chunks):
            t.write(_frame(_CHUNK))
            await asyncio.sleep(0)  # one chunk per loop turn, like a token stream
        if usage:
            t.write(_frame(_USAGE))
        t.write(_frame(_DONE) + b"0\r\n\r\n")
        self._busy = None
        while self._pending and self._busy is None:
            self._answer(*self._pending.pop(0))


async def serve(host: str, port: int, chunks: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Protocol(chunks), host, port, backlog=4096,
                                      reuse_address=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--chunks", type=int, default=20)
    args = p.parse_args()
    import uvloop  # noqa: PLC0415

    uvloop.run(serve(args.host, args.port, args.chunks))


if __name__ == "__main__":
    main()
