"""`POST /tools/{name}`: a plain HTTP tool behind the same identity, policy, limits and audit.

The body is forwarded as it came (a JSON object of arguments); for a tool
configured with GET the arguments become the query string. Errors use the
OpenAI error format, so agents built on the `openai` SDK read them as usual.
"""
from __future__ import annotations

from typing import Any

import orjson

from gateway.breaker import through
from gateway.errors import InvalidRequest, NotFound
from gateway.exchange import Call
from gateway.http import send_bytes
from gateway.services import Services
from gateway.stages.admission import refuse_denied, reserve
from gateway.stages.forward import timed
from gateway.surfaces import tools as surface
from gateway.surfaces.base import canonical, check_name, load_json_object
from gateway.tools.govern import HTTP_SERVER

# Request headers a tool may see; the agent's credential never travels. The trace
# context is the gateway's span when tracing is on, else the client's unchanged.
_FORWARD = ("content-type", "accept", "x-request-id", "traceparent", "tracestate")


def query_params(args: dict[str, Any]) -> dict[str, str]:
    return {k: v if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)
            for k, v in args.items() if v is not None}


def _is_error(data: bytes) -> bool:
    """An MCP-style tool result saying it failed: {"isError": true, ...}."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return isinstance(obj, dict) and obj.get("isError") is True


class HTTPToolHandler:
    def __init__(self, services: Services) -> None:
        self.s = services

    async def __call__(self, call: Call) -> None:
        s, ex = self.s, call.ex
        assert ex.agent is not None and ex.principal is not None
        name = call.scope.get("path_params", {}).get("name", "")
        ex.action, ex.resource_type, ex.resource_name, ex.upstream = "tool.call", "tool", name[:200], HTTP_SERVER
        check_name(name, "tool")
        tool = s.settings.tools.http.get(name)
        if tool is None or s.tools is None:
            raise NotFound(f"the tool {name} does not exist or is not served by this gateway", code="tool_not_found")
        args = load_json_object(call.body, s.settings.server.max_json_depth) if call.body else {}
        policy_args, problem = s.tools.policy_arguments(HTTP_SERVER, name, args)
        if problem is not None:  # the tool's policy reads its arguments: they must be readable
            raise InvalidRequest(problem, code="invalid_arguments")
        [(ex.decision, ex.input_digest, ex.policy_input)] = await s.tools.decide(
            ex.agent, ex.principal.auth, surface.NAME, [(HTTP_SERVER, name, s.tools.http_annotations(name))],
            ex.trace, arguments=[policy_args])
        if not ex.decision.allow:  # raises, unless an approval it presents lets it through
            await refuse_denied(s, call, code="tool_not_allowed", arguments=args)
        permit = await reserve(s, call, 0, s.breakers.tool(name))
        out = {k: call.headers[k] for k in _FORWARD if k in call.headers}
        out.setdefault("content-type", "application/json")
        out["x-request-id"] = ex.request_id
        get = tool.method == "GET"
        # What was parsed, re-serialized: duplicate keys go on as the gateway read them.
        payload = b"" if get or not call.body else canonical(args)
        async with timed(ex, "tool") as t:
            resp = await through(permit, s.tool_transports[name].send(
                tool.method, payload, t.outbound(out), params=query_params(args) if get else None))
            try:
                data = await resp.read()
            finally:
                await resp.aclose()
        ex.status = resp.status
        if resp.status >= 400:
            ex.error = f"tool {name} answered {resp.status}"
        elif b'"isError"' in data and _is_error(data):  # counts against the agent's error budget
            ex.error, ex.tool_error = f"tool {name} result isError", True
        ctype = resp.headers.get("content-type", "application/json").encode()
        await send_bytes(call.send, resp.status, data, call.response_headers(), content_type=ctype)
