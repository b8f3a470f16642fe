"""Forwarding helpers shared by the LLM and MCP paths: one upstream timer, one stream pump guard."""
from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator, Awaitable

from gateway.context import Exchange


@contextlib.asynccontextmanager
async def timed(ex: Exchange) -> AsyncIterator[None]:
    """Everything spent with the upstream (headers, body, stream) goes to ex.upstream_ms."""
    loop = asyncio.get_running_loop()
    t = loop.time()
    try:
        yield
    finally:
        ex.upstream_ms = (loop.time() - t) * 1000.0


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
