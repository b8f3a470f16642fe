"""A session's standalone GET stream opens upstream before its later POSTs go out.

A server sends requests that belong to no client request (sampling, elicitation,
notifications) on the session's GET stream, and drops them when that stream is
not open. A client opens the stream, then posts; the gateway forwards both
concurrently, and a POST that finds a pooled connection can overtake the GET that
needs a new one. So while a session's GET is on its way to the server, that
session's POSTs wait (bounded) until the server has answered the GET's headers.
"""
from __future__ import annotations

import asyncio


class Opening:
    """One GET on its way upstream; `done()` once its headers came back, or it failed."""
    __slots__ = ("_key", "_streams", "event")

    def __init__(self, streams: "StreamOrder", key: tuple[str, str]) -> None:
        self._streams, self._key = streams, key
        self.event = asyncio.Event()

    def done(self) -> None:
        self.event.set()
        self._streams.forget(self._key, self)


class StreamOrder:
    def __init__(self) -> None:
        self._opening: dict[tuple[str, str], Opening] = {}

    def opening(self, server: str, session_id: str) -> Opening:
        key = (server, session_id)
        self._opening[key] = opening = Opening(self, key)  # a newer GET of the session is the one to wait for
        return opening

    def forget(self, key: tuple[str, str], opening: Opening) -> None:
        if self._opening.get(key) is opening:
            del self._opening[key]

    async def wait_opened(self, server: str, session_id: str, timeout_s: float) -> None:
        """Return once no GET of this session is on its way upstream, or after `timeout_s`."""
        key = (server, session_id)
        opening = self._opening.get(key)
        if opening is None:
            return
        try:
            await asyncio.wait_for(opening.event.wait(), timeout_s)
        except TimeoutError:
            self.forget(key, opening)  # a server slow to answer a GET holds up no more POSTs
