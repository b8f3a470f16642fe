"""Which agent opened each MCP session this replica has seen.

A session id is a bearer token for the server's session state: another agent
that learns it must not ride on it. The binding is made when `initialize` is
answered with an `Mcp-Session-Id`, and checked on every later request. Ids
this replica did not see open are passed on (the server decides), so a fleet
without sticky sessions loses the check but not the service.
"""
from __future__ import annotations

from collections import OrderedDict


class SessionBindings:
    def __init__(self, max_sessions: int = 100_000) -> None:
        self._owners: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._max = max_sessions

    def bind(self, server: str, session_id: str, agent_id: str) -> None:
        self._owners[(server, session_id)] = agent_id
        self._owners.move_to_end((server, session_id))
        while len(self._owners) > self._max:
            self._owners.popitem(last=False)  # the oldest session forgets its owner first

    def owner(self, server: str, session_id: str) -> str | None:
        return self._owners.get((server, session_id))

    def end(self, server: str, session_id: str) -> None:
        self._owners.pop((server, session_id), None)
