"""Forwarding helpers shared by the LLM and MCP paths: one upstream timer, one stream pump guard."""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Mapping

from gateway.context import Exchange
from gateway.tracing import Span


class timed:  # noqa: N801 - used as `async with timed(ex)`, like a function
    """Everything spent with the upstream (headers, body, stream) goes to ex.upstream_ms,
    and, when the request is traced, to a client span named `span` ("upstream", "tool").

    A slotted class rather than @asynccontextmanager: no generator per request on the hot path.
    Untraced, the span costs one `is None` check here and one in `outbound`.
    """
    __slots__ = ("_ex", "_t", "span")

    def __init__(self, ex: Exchange, span: str = "upstream") -> None:
        self._ex = ex
        self._t = 0.0
        self.span: Span | None = None
        if ex.trace is not None:
            self.span = ex.trace.child(span, True)
            self.span.set("portcullis.upstream", ex.upstream or "")
            self.span.set("portcullis.resource", ex.resource_name or "")  # the model, tool or MCP server

    async def __aenter__(self) -> "timed":
        self._t = asyncio.get_running_loop().time()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._ex.upstream_ms = (asyncio.get_running_loop().time() - self._t) * 1000.0
        if self.span is not None:
            self.span.__exit__(*exc)

    def outbound(self, headers: Mapping[str, str]) -> Mapping[str, str]:
        """The headers to send: with this span as the remote parent when traced (a copy),
        else as they are, a client's traceparent included (gateway/tracing.py)."""
        if self.span is None:
            return headers
        out = dict(headers)
        self._ex.trace.propagate(self.span, out)  # type: ignore[union-attr]
        return out


async def until_client_gone(receive: Any, pump: Awaitable[None]) -> bool:
    """Run a stream pump until it ends or the client disconnects.

    Returns True when the client left first (the pump is then cancelled, so the
    upstream is released at once); an exception from the pump propagates.
    """
    task = asyncio.ensure_future(pump)
    gone = asyncio.ensure_future(receive())  # after the body, only http.disconnect can come
    try:
        done, _ = await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return True
        task.result()
        return False
    finally:
        gone.cancel()
        if not task.done():  # cancelled from outside (the drain deadline): the pump stops too
            task.cancel()
