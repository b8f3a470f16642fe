"""How MCP clients learn to authenticate: the 401 challenge and RFC 9728 metadata.

An MCP client refused with 401 reads `WWW-Authenticate` (MCP authorization spec):
`Bearer`, with `resource_metadata` naming a protected-resource metadata document
that lists the authorization servers issuing tokens for the endpoint. The
gateway's only token issuer is its configured JWT issuer. Without one there is
no OAuth flow to start: the challenge is a bare `Bearer` (RFC 6750) and there are
no metadata documents (404), so a client asks its user for a key instead of
opening a login page. A request that sent a credential is told it was invalid
(`error="invalid_token"`); one that sent none gets no error code (RFC 6750 3.1).
"""
from __future__ import annotations

from typing import Any

import orjson

from gateway.http import header, send_bytes
from gateway.mcp.origin import HostAllowlist
from gateway.settings import Settings

WELL_KNOWN = "/.well-known/oauth-protected-resource"
METADATA_MAX_AGE_S = 3600


def _sent_credential(scope: dict[str, Any]) -> bool:
    return any(k in (b"authorization", b"x-api-key") for k, _ in scope["headers"])


class ProtectedResource:
    """The gateway's MCP endpoints as OAuth protected resources (RFC 9728)."""

    def __init__(self, settings: Settings, hosts: HostAllowlist) -> None:
        jwt = settings.identity.jwt
        self.issuers = [jwt.issuer] if jwt is not None else []
        public = settings.server.public_url
        self._public = public.rstrip("/") if public else None
        self._servers = frozenset(settings.tools.servers)
        self._hosts = hosts

    @property
    def enabled(self) -> bool:
        return bool(self.issuers)

    def base_url(self, scope: dict[str, Any]) -> str | None:
        """The gateway's URL: the configured public one, else as this request dialed it
        (None when its Host is one the endpoint refuses: never echo one into a challenge)."""
        if self._public:
            return self._public
        host = header(scope, b"host")
        if host is None or not self._hosts.host_allowed(host):
            return None
        return f"{scope.get('scheme', 'http')}://{host}"

    def challenge(self, scope: dict[str, Any], server: str) -> bytes:
        params = ['error="invalid_token"'] if _sent_credential(scope) else []
        base = self.base_url(scope) if self.enabled and server in self._servers else None
        if base is not None:
            params.append(f'resource_metadata="{base}{WELL_KNOWN}/mcp/{server}"')
        return ("Bearer " + ", ".join(params)).strip().encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """GET /.well-known/oauth-protected-resource[/mcp/{server}]: routed only when enabled."""
        server = scope.get("path_params", {}).get("server")
        base = self.base_url(scope)
        if scope["method"] not in ("GET", "HEAD"):
            await _error(send, 405, "method_not_allowed", ((b"allow", b"GET, HEAD"),))
        elif server is not None and server not in self._servers:
            await _error(send, 404, "not_found")
        elif base is None:
            await _error(send, 403, "host_not_allowed")
        else:
            doc = {"resource": base + (f"/mcp/{server}" if server else ""), "authorization_servers": self.issuers,
                   "bearer_methods_supported": ["header"]}
            await send_bytes(send, 200, orjson.dumps(doc),
                             [(b"cache-control", f"public, max-age={METADATA_MAX_AGE_S}".encode())])


async def _error(send: Any, status: int, code: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    await send_bytes(send, status, orjson.dumps({"error": code}), headers)
