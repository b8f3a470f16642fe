"""Forwarding helpers shared by the LLM and MCP paths: one upstream timer, one stream pump guard."""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable

from gateway.context import Exchange


class timed:  # noqa: N801 - used as `async with timed(ex)`, like a function
    """Everything spent with the upstream (headers, body, stream) goes to ex.upstream_ms.

    A slotted class rather than @asynccontextmanager: no generator per request on the hot path.
    """
    __slots__ = ("_ex", "_t")

    def __init__(self, ex: Exchange) -> None:
        self._ex = ex
        self._t = 0.0

    async def __aenter__(self) -> None:
        self._t = asyncio.get_running_loop().time()

    async def __aexit__(self, *exc: Any) -> None:
        self._ex.upstream_ms = (asyncio.get_running_loop().time() - self._t) * 1000.0


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
