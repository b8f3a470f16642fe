"""Session bindings in this process: the embedded default.

A session id is a bearer token for the server's session state: another agent that
learns it must not ride on it. This store knows only the sessions opened through
this replica, so it is not authoritative: an id it never saw is passed on (the
server decides), and a fleet without sticky sessions needs the Redis store.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any


class MemorySessionStore:
    authoritative = False

    def __init__(self, settings: Any = None, max_sessions: int = 100_000) -> None:
        self._owners: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._max = max_sessions

    async def start(self) -> None:
        pass

    async def bind(self, server: str, session_id: str, agent_id: str) -> None:
        self._owners[(server, session_id)] = agent_id
        self._owners.move_to_end((server, session_id))
        while len(self._owners) > self._max:
            self._owners.popitem(last=False)  # the oldest session forgets its owner first

    async def owner(self, server: str, session_id: str) -> str | None:
        return self._owners.get((server, session_id))

    async def end(self, server: str, session_id: str) -> None:
        self._owners.pop((server, session_id), None)

    async def aclose(self) -> None:
        self._owners.clear()
