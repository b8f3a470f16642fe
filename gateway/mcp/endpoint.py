"""`/mcp/{server}`: MCP over Streamable HTTP, governed message by message.

POST carries one JSON-RPC message; its method becomes a policy action (see
actions.py), decided for the calling agent before the message is forwarded.
`tools/list` answers are filtered to the tools the agent may call, and
`tools/call` is decided per tool with the annotations the server declared.
GET (the server's SSE stream) and DELETE (end of session) pass through,
audited. Session and protocol-version headers travel both ways untouched, so
session-based (2025-06-18, 2025-11-25) and 2026-07-28 clients work alike.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from gateway import sse
from gateway.context import Exchange
from gateway.drain import Drain
from gateway.breaker import Permit, through
from gateway.errors import GatewayError
from gateway.exchange import Call
from gateway.mcp import actions, jsonrpc, relay
from gateway.mcp.jsonrpc import JSONRPCError, Message
from gateway.mcp.origin import HostAllowlist
from gateway.mcp.sessions import SessionGuard
from gateway.mcp.streams import Opening, StreamOrder
from gateway.services import Services
from gateway.stages.admission import allowed_outcome, refuse_denied, reserve
from gateway.stages.forward import timed, until_client_gone
from gateway.stages.policy import policy_input
from gateway.surfaces import mcp as surface
from gateway.surfaces.base import canonical, has_control

# The trace context is the gateway's span when tracing is on, else the client's unchanged.
_FORWARD = ("content-type", "accept", "last-event-id", "traceparent", "tracestate")


def forward_headers(hdrs: dict[str, str], request_id: str) -> dict[str, str]:
    """Content negotiation and every MCP header (session, protocol version, and any the
    protocol adds); never the agent's credential."""
    out = {k: v for k, v in hdrs.items() if k in _FORWARD or k.startswith("mcp-")}
    out["x-request-id"] = request_id
    return out


def response_headers(hdrs: dict[str, str], request_id: str, extra: list[tuple[bytes, bytes]]) -> list:
    out = [(k.encode(), v.encode()) for k, v in hdrs.items() if k == "content-type" or k.startswith("mcp-")]
    out.append((b"x-request-id", request_id.encode()))
    if hdrs.get("content-type", "").startswith("text/event-stream"):
        out += [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
    return out + extra


class MCPHandler:
    def __init__(self, services: Services, hosts: HostAllowlist, drain: Drain | None = None) -> None:
        self.s = services
        self.hosts = hosts
        self.drain = drain  # a session's GET stream ends when the replica starts draining
        assert services.sessions is not None, "build_services() makes the session store"
        self.sessions = SessionGuard(services.sessions)  # tools.session_store
        self.streams = StreamOrder()

    async def __call__(self, call: Call) -> None:
        s, ex, hdrs = self.s, call.ex, call.headers
        server = call.scope.get("path_params", {}).get("server", "")
        ex.upstream, ex.resource_type, ex.resource_name = server[:200], "mcp_server", server[:200]
        refused = self.hosts.refusal(hdrs)
        if refused is not None:  # DNS rebinding: a web page posing as a local client
            raise JSONRPCError(refused, jsonrpc.INVALID_REQUEST, status=403, code="host_not_allowed")
        if server not in s.settings.tools.servers:
            raise JSONRPCError(f"unknown MCP server {server!r}: this gateway serves "
                               f"{', '.join(sorted(s.settings.tools.servers)) or 'none'}",
                               jsonrpc.INVALID_REQUEST, status=404, code="unknown_server")
        msg: Message | None = None
        if call.scope["method"] == "POST":
            msg = call.rpc = jsonrpc.parse(call.body, s.settings.server.max_json_depth)
            ex.action = actions.action_for(msg)
            if actions.is_request_without_id(msg):
                # Forwarded, the server would run it (a tool call included) with no answer to
                # filter or decide on: a request method is a request, whatever its shape.
                raise JSONRPCError(f"invalid request: {msg.method} is a request and needs an id; "
                                   f"only notifications/* methods may be sent as notifications",
                                   jsonrpc.INVALID_REQUEST, code="request_without_id")
            routed = hdrs.get("mcp-method")
            if routed is not None and msg.method is not None and routed != msg.method:
                # 2026-07-28 mirrors the method in a header that intermediaries may route on:
                # a mismatch could make them and the policy see different requests.
                raise JSONRPCError(f"Mcp-Method header {routed!r} does not match the body's method "
                                   f"{msg.method!r}", jsonrpc.HEADER_MISMATCH)
        else:
            ex.action = "mcp.stream" if call.scope["method"] == "GET" else "mcp.session.close"
        sid = hdrs.get("mcp-session-id")
        if sid and ex.agent is not None:
            await self.sessions.check(ex, server, sid)  # 404 for another agent's session (sessions.py)
        # From here on, this session's POSTs wait for its GET stream (streams.py).
        opening = self.streams.opening(server, sid) if sid and call.scope["method"] == "GET" else None
        try:
            permit = await self._decide(call, server, msg)
            try:
                await self._forward(call, server, msg, opening, permit)
            finally:
                permit.release()  # no verdict if it never reached the server
        finally:
            if opening is not None:
                opening.done()

    async def _decide(self, call: Call, server: str, msg: Message | None) -> Permit:
        """Decide the message (tools/list is decided per tool later); pass the server's
        breaker and reserve its request."""
        s, ex = self.s, call.ex
        action = ex.action
        assert ex.agent is not None and ex.principal is not None and action is not None and s.tools is not None
        params = msg.params if msg is not None else {}
        if action == "tool.call":
            name = params.get("name")
            if not isinstance(name, str) or not name:
                raise JSONRPCError("invalid params: tools/call needs a tool name", jsonrpc.INVALID_PARAMS)
            if has_control(name):
                raise JSONRPCError("invalid params: a tool name must not contain control characters",
                                   jsonrpc.INVALID_PARAMS)
            ex.resource_type, ex.resource_name = "tool", name[:200]
            args, problem = s.tools.policy_arguments(server, name, params.get("arguments"))
            if problem is not None:  # the tool's policy reads its arguments: they must be readable
                raise JSONRPCError(f"invalid params: {problem}", jsonrpc.INVALID_PARAMS, code="invalid_arguments")
            ann = await s.tools.annotations(server, name)
            [(ex.decision, ex.input_digest, ex.policy_input)] = await s.tools.decide(
                ex.agent, ex.principal.auth, surface.NAME, [(server, name, ann)], ex.trace, arguments=[args])
        else:
            res = actions.resource_for(action, server, params)
            ex.resource_type = res["type"]
            ex.resource_name = res.get("name") or server
            ex.policy_input = policy_input(ex.agent, ex.principal.auth, action, res,
                                           {"api": surface.NAME, "stream": False})
            ex.decision, ex.input_digest = await s.policy.decide(ex.policy_input, ex.trace)
        # A refused listing is still forwarded, and its answer emptied: the result keeps the
        # shape the client's protocol version expects (2026-07-28 adds cache fields).
        if action != "tool.list" and not ex.decision.allow:  # raises, unless an approval lets it through
            await refuse_denied(s, call, code="tool_not_allowed" if action == "tool.call" else "policy_denied",
                                arguments=(params.get("arguments") or {}) if action == "tool.call" else None)
        breaker = s.breakers.tool(server)
        if action in actions.HOUSEKEEPING or not ex.decision.allow:
            permit = breaker.enter()  # forwarded all the same: refused at once while it is open
            ex.outcome = allowed_outcome(ex.decision) if ex.decision.allow else "deny"
            return permit
        return await reserve(s, call, 0, breaker)

    async def _forward(self, call: Call, server: str, msg: Message | None, opening: Opening | None,
                       permit: Permit) -> None:
        ex, send, hdrs = call.ex, call.send, call.headers
        on_response = self._on_response(ex, server, msg)
        session = hdrs.get("mcp-session-id")
        if session and msg is not None:
            await self.streams.wait_opened(server, session, self.s.settings.tools.servers[server].connect_timeout_s)
        async with timed(ex, "tool") as t:
            # A POST goes on as the message decided on, re-serialized (duplicate keys as parsed).
            body = canonical(msg.body) if msg is not None else call.body
            resp = await through(permit, self.s.tool_transports[server].send(
                call.scope["method"], body, t.outbound(forward_headers(hdrs, ex.request_id))))
            if opening is not None:
                opening.done()  # the server has the stream now: the session's POSTs may go
            try:
                ex.status = resp.status
                sid = resp.headers.get("mcp-session-id")
                if sid and msg is not None and msg.method == "initialize" and resp.status < 400:
                    await self.sessions.bind(ex, server, sid)  # before the client learns the id
                elif ex.action == "mcp.session.close" and resp.status < 400 and "mcp-session-id" in hdrs:
                    await self.sessions.end(server, hdrs["mcp-session-id"])
                if resp.status >= 400:
                    ex.error = f"MCP server {server} answered {resp.status}"
                rh = response_headers(resp.headers, ex.request_id, call.extra)
                if resp.headers.get("content-type", "").encode().startswith(sse.CONTENT_TYPE):
                    ex.stream = True
                    await send({"type": "http.response.start", "status": resp.status, "headers": rh})
                    await self._pump(call, resp, msg, on_response)
                else:
                    data = await resp.read()
                    wrapped = (relay.wrap_error(resp.status, data, msg.id if msg and msg.kind == "request" else None,
                                                server, ex.request_id) if resp.status >= 400 else None)
                    if wrapped is not None:  # the server's status kept; its text in `data`
                        data, rh = wrapped, [h for h in rh if h[0] != b"content-type"]
                        rh.append((b"content-type", b"application/json"))
                    elif on_response is not None and data:
                        data = await relay.edit_json(data, msg.id, on_response)
                    await send({"type": "http.response.start", "status": resp.status,
                                "headers": [*rh, (b"content-length", str(len(data)).encode())]})
                    await send({"type": "http.response.body", "body": data})
            finally:
                await resp.aclose()

    async def _pump(self, call: Call, resp: Any, msg: Message | None, on_response: relay.OnResponse | None) -> None:
        ex = call.ex
        pump = relay.pump_sse(call.send, resp, msg.id if msg else None, on_response)
        if ex.action == "mcp.stream" and self.drain is not None:
            pump = self._end_when_draining(call, pump)
        try:
            left = await until_client_gone(call.receive, pump)
        except GatewayError as e:
            ex.error = f"MCP server failed mid-stream: {e.message}"
            await call.send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if left and ex.action != "mcp.stream":  # a GET stream ends when its client leaves
            ex.error = "client disconnected mid-stream"

    async def _end_when_draining(self, call: Call, pump: Any) -> None:
        """A GET stream carries what the server may send later, not work in flight: it ends
        (cleanly) when the drain starts, and the client reconnects to another replica."""
        assert self.drain is not None
        if await self.drain.until_draining(pump):
            await call.send({"type": "http.response.body", "body": b"", "more_body": False})

    def _on_response(self, ex: Exchange, server: str, msg: Message | None) -> relay.OnResponse | None:
        if msg is None or msg.kind != "request":
            return None
        if ex.action == "tool.list":
            return lambda obj: self._filter_tools(ex, server, obj)

        async def note(obj: dict[str, Any]) -> None:
            err = obj.get("error")
            if isinstance(err, dict):
                ex.error = f"MCP error {err.get('code')}: {str(err.get('message'))[:200]}"
            elif ex.action == "tool.call" and isinstance(obj.get("result"), dict) and obj["result"].get("isError"):
                ex.error = "tool result isError"
                ex.tool_error = True  # counts against the agent's error budget
            return None
        return note

    async def _filter_tools(self, ex: Exchange, server: str, obj: dict[str, Any]) -> dict[str, Any] | None:
        result = obj.get("result")
        if not isinstance(result, dict) or not isinstance(result.get("tools"), list):
            return None
        s, tools = self.s, result["tools"]
        assert s.tools is not None and ex.agent is not None and ex.principal is not None
        s.tools.catalog.learn(server, tools, complete=not result.get("nextCursor"))
        named = [t for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)]
        decisions = await s.tools.decide(ex.agent, ex.principal.auth, surface.NAME,
                                         [(server, t["name"], s.tools.catalog.annotations(server, t["name"]))
                                          for t in named])
        listing_allowed = ex.decision.allow
        reachable = s.tools.reachable
        visible = [t for t, (d, _, _) in zip(named, decisions) if listing_allowed and reachable(d)]
        hidden = [f"{t['name']}: {'; '.join(d.reasons)}" for t, (d, _, _) in zip(named, decisions) if not reachable(d)]
        if listing_allowed:
            ex.decision = replace(ex.decision, reasons=tuple(hidden))
        filtered = {**result, "tools": visible}
        if "cacheScope" in result:  # 2026-07-28: this answer is per agent, never shared
            filtered["cacheScope"] = "private"
        return {**obj, "result": filtered}
