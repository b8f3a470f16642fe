"""Which agent opened each MCP session, checked on every request that presents one.

A session id is a bearer token for the server's session state: another agent that
learns it must not ride on it. The binding is made when `initialize` is answered with
an `Mcp-Session-Id`, before the client sees the id, and checked on every later request.

Where bindings live is a seam (`tools.session_store`, gateway.protocols.SessionStore):
- memory: this replica's sessions only. An id it never saw is passed on (the server
  decides), so a fleet without sticky sessions would lose the check there;
- redis: the whole fleet's. It is authoritative, so an id it does not know (not opened
  through the gateway, or idle past its TTL) is refused like another agent's.
A store that cannot answer fails closed: a JSON-RPC error (-32603), audited.
"""
from __future__ import annotations

import logging
from typing import Awaitable, TypeVar

from gateway.context import Exchange
from gateway.errors import BackendError, Unavailable
from gateway.mcp import jsonrpc
from gateway.mcp.jsonrpc import JSONRPCError
from gateway.protocols import SessionStore

log = logging.getLogger("portcullis.mcp")
T = TypeVar("T")


class SessionGuard:
    def __init__(self, store: SessionStore) -> None:
        self.store = store

    async def check(self, ex: Exchange, server: str, sid: str) -> None:
        """Refuse `sid` unless the calling agent opened it (or, per replica, it is unknown here)."""
        assert ex.agent is not None
        owner = await self._call(ex, "lookup", self.store.owner(server, sid))
        if owner == ex.agent.id or (owner is None and not self.store.authoritative):
            return
        ex.error = (f"MCP session opened by agent {owner} used by agent {ex.agent.id}" if owner is not None
                    else f"MCP session unknown to the session store, presented by agent {ex.agent.id}")
        # Answered like an unknown session (404: the client starts a new one), so a guessed
        # or stolen id reveals nothing.
        raise JSONRPCError("session not found", jsonrpc.INVALID_REQUEST, status=404, code="session_not_found")

    async def bind(self, ex: Exchange, server: str, sid: str) -> None:
        assert ex.agent is not None
        await self._call(ex, "bind", self.store.bind(server, sid, ex.agent.id))

    async def end(self, server: str, sid: str) -> None:
        try:
            await self.store.end(server, sid)
        except BackendError as e:  # the server has ended the session; its binding just expires
            log.warning("forgetting an ended MCP session failed: %s", e)

    @staticmethod
    async def _call(ex: Exchange, doing: str, op: Awaitable[T]) -> T:
        try:
            return await op
        except BackendError as e:  # fail closed: no session is used or handed out unchecked
            ex.error = str(e)
            raise Unavailable(f"MCP session store unavailable ({doing}); try again later",
                              code="session_store_unavailable") from e
