"""The in-process lifecycle bus (one gateway process): publish hands the message to every
subscriber on a task of its own, so a publisher never waits on (or fails with) a subscriber.

Messages go through a JSON round trip, as on Redis, so code that works here cannot rely on
passing something Redis could not carry. There is no connection, hence no gap: on_reconnect
is never called.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

from gateway.errors import BackendError

log = logging.getLogger("portcullis.lifecycle.bus")

OnMessage = Callable[[dict[str, Any]], Awaitable[None]]
OnReconnect = Callable[[], Awaitable[None]]


class MemoryLifecycleBus:
    def __init__(self, settings: Any = None) -> None:
        self._subscribers: list[tuple[OnMessage, OnReconnect]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        return None

    def subscribe(self, on_message: OnMessage, on_reconnect: OnReconnect) -> None:
        self._subscribers.append((on_message, on_reconnect))

    async def publish(self, message: Mapping[str, Any]) -> None:
        try:
            data = orjson.dumps(dict(message))
        except TypeError as e:
            raise BackendError(f"lifecycle bus message is not JSON: {e}") from e
        for on_message, _ in self._subscribers:
            task = asyncio.create_task(_deliver(on_message, orjson.loads(data)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Let deliveries already published finish (they are short store reads)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._subscribers.clear()


async def _deliver(on_message: OnMessage, message: dict[str, Any]) -> None:
    try:
        await on_message(message)
    except Exception:  # one subscriber's failure must not reach the publisher or the others
        log.exception("lifecycle bus subscriber failed on %s", message)
