"""`POST /tools/{name}`: a plain HTTP tool behind the same identity, policy, limits and audit.

The body is forwarded as it came (a JSON object of arguments); for a tool
configured with GET the arguments become the query string. Errors use the
OpenAI error format, so agents built on the `openai` SDK read them as usual.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from gateway.errors import GatewayError, NotFound, PermissionDenied, RateLimited
from gateway.http import ClientGone, header, headers_dict, read_body, send_bytes
from gateway.pipeline import Services, admit, finish, send_error
from gateway.stages.limits import headers as limit_headers
from gateway.surfaces import tools as surface
from gateway.surfaces.base import load_json_object
from gateway.tools.govern import HTTP_SERVER

log = logging.getLogger("portcullis.tools")

# Request headers a tool may see; the agent's credential never travels.
_FORWARD = ("content-type", "accept", "x-request-id")


def query_params(args: dict[str, Any]) -> dict[str, str]:
    return {k: v if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)
            for k, v in args.items() if v is not None}


class HTTPToolEndpoint:
    def __init__(self, services: Services) -> None:
        self.s = services

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        s = self.s
        ex = await admit(scope, send, surface, s)
        if ex is None:
            return
        name = scope.get("path_params", {}).get("name", "")
        ex.action, ex.resource_type, ex.resource_name, ex.upstream = "tool.call", "tool", name[:200], HTTP_SERVER
        reservation = None
        try:
            if scope["method"] != "POST":
                raise NotFound(f"{scope['method']} is not supported on /tools/{name}; use POST",
                               code="method_not_allowed")
            body = await read_body(receive, s.settings.server.max_body_bytes, header(scope, b"content-length"))
            hdrs = headers_dict(scope)
            ex.agent, ex.principal = await s.identity.resolve(hdrs)
            tool = s.settings.tools.http.get(name)
            if tool is None or s.tools is None:
                raise NotFound(f"the tool {name} does not exist or is not served by this gateway",
                               code="tool_not_found")
            args = load_json_object(body) if body else {}
            [(ex.decision, ex.input_digest, ex.policy_input)] = await s.tools.decide(
                ex.agent, ex.principal.auth, surface.NAME, [(HTTP_SERVER, name, s.tools.http_annotations(name))])
            if not ex.decision.allow:
                ex.outcome = "deny"
                raise PermissionDenied("; ".join(ex.decision.reasons) or "denied by policy",
                                       code="tool_not_allowed")
            try:
                lim = await s.limits.reserve(ex.agent.id, ex.decision, 0)
            except RateLimited:
                ex.outcome = "rate_limited"
                raise
            reservation = lim.reservation
            ex.outcome = "allow"
            out = {k: hdrs[k] for k in _FORWARD if k in hdrs}
            out.setdefault("content-type", "application/json")
            out["x-request-id"] = ex.request_id
            t = asyncio.get_running_loop().time()
            try:
                resp = await s.tool_transports[name].send(
                    tool.method, b"" if tool.method == "GET" else body, out,
                    params=query_params(args) if tool.method == "GET" else None)
                try:
                    data = await resp.read()
                finally:
                    await resp.aclose()
            finally:
                ex.upstream_ms = (asyncio.get_running_loop().time() - t) * 1000.0
            ex.status = resp.status
            if resp.status >= 400:
                ex.error = f"tool {name} answered {resp.status}"
            ctype = resp.headers.get("content-type", "application/json").encode()
            await send_bytes(send, resp.status, data,
                             [(b"x-request-id", ex.request_id.encode()), *limit_headers(lim)], content_type=ctype)
        except GatewayError as e:
            await send_error(send, surface, ex, e)
        except ClientGone:
            ex.status, ex.error = 499, "client disconnected before sending the whole body"
        except Exception as e:  # a bug: still answer, still audit
            log.exception("internal error", extra={"request_id": ex.request_id})
            ex.outcome = "error"
            await send_error(send, surface, ex, GatewayError(f"internal gateway error ({type(e).__name__})"))
        finally:
            await finish(s, surface.NAME, ex, reservation)
