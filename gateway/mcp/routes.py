"""The MCP routes: `/mcp/{server}` in the governed shell, and OAuth discovery when it applies."""
from __future__ import annotations

from urllib.parse import urlsplit

from starlette.routing import Route

from gateway.drain import Drain
from gateway.exchange import Governed
from gateway.mcp.endpoint import MCPHandler
from gateway.mcp.oauth import WELL_KNOWN, ProtectedResource
from gateway.mcp.origin import HostAllowlist
from gateway.services import Services
from gateway.settings import ServerSettings
from gateway.surfaces import mcp as surface


def host_allowlist(server: ServerSettings) -> HostAllowlist:
    hosts = list(server.allowed_hosts)
    if server.public_url:
        hosts.append(urlsplit(server.public_url).netloc)
    return HostAllowlist(hosts, server.allowed_origins)


def mcp_routes(services: Services, drain: Drain | None = None) -> list[Route]:
    hosts = host_allowlist(services.settings.server)
    resource = ProtectedResource(services.settings, hosts)
    endpoint = Governed(services, MCPHandler(services, hosts, drain), surface=surface,
                        methods=("POST", "GET", "DELETE"),
                        challenge=lambda scope: resource.challenge(scope, scope.get("path_params", {}).get("server", "")))
    routes = [Route("/mcp/{server}", endpoint)]
    if resource.enabled:  # no JWT issuer, no OAuth flow to discover: these stay 404
        routes += [Route(WELL_KNOWN, resource), Route(WELL_KNOWN + "/mcp/{server}", resource)]
    return routes
