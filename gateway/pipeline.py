"""The governed LLM call (OpenAI and Anthropic surfaces), as a handler for gateway.exchange.

parse -> route -> policy -> obligations -> limits -> forward. Streams are
pumped chunk by chunk inside the handler, so the audit row (written by the
exchange shell) is written when the stream really ends.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from gateway import sse
from gateway.breaker import Permit
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    UpstreamError,
    UpstreamTimeout,
)
from gateway.exchange import Call
from gateway.http import send_bytes
from gateway.protocols import UpstreamResponse
from gateway.services import Services
from gateway.stages.admission import refuse_denied, reserve
from gateway.stages.forward import timed, until_client_gone
from gateway.stages.policy import policy_input
from gateway.surfaces.base import LLMSurface, Parsed

log = logging.getLogger("portcullis.pipeline")

CLAMPED_HEADER = b"x-portcullis-max-tokens-clamped"  # "asked->allowed" when max tokens were clamped


class LLMHandler:
    """POST handler for one path of one LLM surface."""

    def __init__(self, services: Services, surface: LLMSurface, path: str) -> None:
        self.s = services
        self.surface = surface
        self.path = path
        self.clamp = services.settings.policy.clamps(surface.NAME)  # else refuse over-asking requests

    async def __call__(self, call: Call) -> None:
        s, ex = self.s, call.ex
        assert ex.agent is not None and ex.principal is not None
        parsed = self.surface.parse(self.path, call.body, s.settings.server.max_json_depth)
        ex.action, ex.resource_type, ex.resource_name = parsed.action, "model", parsed.model
        ex.stream = parsed.stream
        ex.upstream = s.router.route(parsed.model)
        if ex.upstream is None:
            raise NotFound(f"the model {parsed.model} does not exist or is not routed by this gateway",
                           code="model_not_found", param="model")
        ex.policy_input = policy_input(ex.agent, ex.principal.auth, parsed.action,
                                       {"type": "model", "name": parsed.model, "upstream": ex.upstream},
                                       {"api": self.surface.NAME, "stream": parsed.stream})
        ex.decision, ex.input_digest = await s.policy.decide(ex.policy_input, ex.trace)
        if not ex.decision.allow:
            await refuse_denied(s, call)  # raises, unless an approval it presents lets it through
        tokens = 0  # token counting generates nothing: a request against the limits, no tokens
        if parsed.generates:
            if s.tools is not None and s.settings.tools.check_chat_tools:
                await self._check_declared_tools(parsed, call)
            self._cap_output(parsed, call)
            tokens = parsed.estimated_input_tokens() + (parsed.max_output or 0)
        permit = await reserve(s, call, tokens, s.breakers.upstream(ex.upstream))
        try:
            await self._forward(call, parsed, permit)
        finally:
            permit.release()  # no verdict if it never reached the upstream

    async def _check_declared_tools(self, parsed: Parsed, call: Call) -> None:
        """Refuse to let an agent offer a model a governed tool it may not call itself."""
        ex = call.ex
        assert self.s.tools is not None and ex.agent is not None and ex.principal is not None
        refused = await self.s.tools.refused_declared(ex.agent, ex.principal.auth, self.surface.NAME, parsed.body)
        if refused:
            assert ex.decision is not None
            ex.decision = replace(ex.decision, allow=False, reasons=tuple(refused.values()))
            raise PermissionDenied(f"agent {ex.agent.id} may not call the declared tool(s) "
                                   f"{', '.join(refused)}: " + "; ".join(refused.values()),
                                   code="tool_not_allowed", param="tools")

    def _cap_output(self, parsed: Parsed, call: Call) -> None:
        ex = call.ex
        assert ex.decision is not None and ex.agent is not None
        cap = ex.decision.max_output_tokens
        if cap is None or parsed.max_field is None:
            return
        asked = parsed.max_output
        if asked is None:
            parsed.clamp(cap)  # make the obligation real for clients that set no cap
        elif asked > cap:
            if not self.clamp:
                raise InvalidRequest(f"{parsed.max_field} {asked} exceeds the {cap} allowed "
                                     f"for agent {ex.agent.id} (tier {ex.agent.tier})",
                                     code="max_output_tokens_exceeded", param=parsed.max_field)
            parsed.clamp(cap)
            # Tell the client, and the audit row, that it will get less than it asked for.
            call.extra.append((CLAMPED_HEADER, f"{asked}->{cap}".encode()))
            ex.decision = replace(ex.decision, reasons=(
                *ex.decision.reasons, f"{parsed.max_field} {asked} clamped to the {cap} allowed"))

    async def _forward(self, call: Call, parsed: Parsed, permit: Permit) -> None:
        ex, send = call.ex, call.send
        assert ex.upstream is not None
        up = self.s.upstreams[ex.upstream]
        async with timed(ex, "upstream") as t:
            # gateway.breaker.through() inlined: one coroutine layer less on every request.
            try:
                resp = await up.send("POST", self.path, parsed.upstream_body(), self.surface.NAME,
                                     t.outbound(call.headers))
            except (UpstreamError, UpstreamTimeout) as e:
                permit.failure(e.message)
                raise
            permit.answered(resp.status)  # anything else: no verdict (released by the caller)
            try:
                # Stream when the upstream streams: a JSON answer to a `stream: true` the API
                # does not support (e.g. embeddings) passes through as JSON.
                if parsed.stream and resp.status == 200 and \
                        resp.headers.get("content-type", "").startswith("text/event-stream"):
                    ex.status = 200
                    await send({"type": "http.response.start", "status": 200,
                                "headers": [*sse.HEADERS, *call.response_headers()]})
                    tap = self.surface.Tap(parsed)
                    try:
                        if await until_client_gone(call.receive, self._pump(call, resp, tap)):
                            ex.error = "client disconnected mid-stream"
                    finally:
                        ex.usage = tap.usage
                    return
                data = await resp.read()
                ex.status = resp.status
                if resp.status == 200:
                    ex.usage = self.surface.usage_from_body(data)
                else:
                    ex.error = f"upstream {ex.upstream} answered {resp.status}"
                ctype = resp.headers.get("content-type", "application/json").encode()
                await send_bytes(send, resp.status, data, call.response_headers(), content_type=ctype)
            finally:
                await resp.aclose()

    async def _pump(self, call: Call, resp: UpstreamResponse, tap: Any) -> None:
        send = call.send
        held = b""  # from the stream's last event on: sent with the final message, after the row is journaled
        try:
            async for chunk in resp.iter_chunks():
                out = tap.feed(chunk)
                if tap.done:
                    # SDKs stop reading at the last event ([DONE], message_stop), so the client has
                    # its whole answer then: that event must not go out before the journal has the row.
                    held += out
                elif out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
            if not tap.done:
                # A close-delimited body cut by FIN ends "cleanly" in aiohttp: only the
                # protocol's last event ([DONE], response.completed, message_stop) proves the
                # answer whole. The partial event held in the tap is dropped (SSE clients
                # drop an event that never ended anyway).
                raise UpstreamError(f"upstream {call.ex.upstream} failed mid-stream: "
                                    "the stream ended before its final event")
            tail = held + tap.finish()
        except GatewayError as e:
            # Headers are gone already: end the stream with an error event the SDK raises on.
            ex = call.ex
            ex.error = e.message if "mid-stream" in e.message else f"upstream failed mid-stream: {e.message}"
            tail = held + self.surface.stream_error_event(e, ex.request_id)
        call.ex.usage = tap.usage  # before the last chunk: the audit journal takes the row then
        await send({"type": "http.response.body", "body": tail, "more_body": False})
