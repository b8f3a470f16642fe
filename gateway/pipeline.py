"""The governed request path for LLM surfaces, as one pure-ASGI endpoint.

identity -> parse -> route -> policy -> obligations -> limits -> forward, and
an audit row in every case. Streams are pumped chunk by chunk inside the
endpoint, so the row is written when the stream really ends.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any, Callable

from gateway.audit.writer import AuditWriter
from gateway.context import Exchange
from gateway.errors import (GatewayError, InvalidRequest, NotFound, PermissionDenied, RateLimited,
                            Unavailable, UpstreamError)
from gateway.http import ClientGone, header, headers_dict, read_body, send_bytes
from gateway.metrics import Metrics
from gateway.protocols import ToolTransport, Upstream, UpstreamResponse
from gateway.routing import ModelRouter
from gateway.settings import Settings
from gateway.stages.identity import IdentityResolver
from gateway.stages.limits import LimitStage, headers as limit_headers
from gateway.stages.policy import PolicyStage, policy_input
from gateway.surfaces.base import Parsed
from gateway.tools.govern import ToolGovernor

log = logging.getLogger("portcullis.pipeline")

_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no")]


@dataclass(frozen=True, slots=True)
class Services:
    """Everything a request needs, built once in the app lifespan."""
    settings: Settings
    identity: IdentityResolver
    policy: PolicyStage
    limits: LimitStage
    router: ModelRouter
    upstreams: dict[str, Upstream]
    audit: AuditWriter
    metrics: Metrics
    tools: ToolGovernor | None = None
    tool_transports: dict[str, ToolTransport] = field(default_factory=dict)  # MCP servers and HTTP tools
    request_ids: Callable[[], str] = field(default_factory=lambda: RequestIds())


def client_ip(scope: dict[str, Any], trust_forwarded: bool) -> str | None:
    if trust_forwarded:
        xff = header(scope, b"x-forwarded-for")
        if xff:
            return xff.split(",")[0].strip()
    c = scope.get("client")
    return c[0] if c else None


async def finish(s: Services, surface: str, ex: Exchange, reservation: Any) -> None:
    """Every request's last step, whatever happened: settle, one audit row, metrics."""
    try:
        await s.limits.settle(reservation, ex.usage)
    except Exception:
        log.exception("settling a reservation failed", extra={"request_id": ex.request_id})
    s.audit.submit(ex.audit_event())
    observe(s, surface, ex)


class RequestIds:
    """Unique request ids without a syscall per request: a random per-process prefix and a counter."""

    def __init__(self) -> None:
        self._prefix = "req_" + os.urandom(8).hex()
        self._next = itertools.count(1).__next__

    def __call__(self) -> str:
        return f"{self._prefix}{self._next():012x}"


def new_exchange(scope: dict[str, Any], api: str, services: Services) -> Exchange:
    return Exchange(request_id=services.request_ids(), api=api,
                    client_ip=client_ip(scope, services.settings.server.trust_forwarded_for))


async def send_error(send: Any, surface: ModuleType, ex: Exchange, err: GatewayError,
                     extra: list[tuple[bytes, bytes]] = ()) -> None:
    ex.status = err.status
    if ex.error is None and ex.outcome != "deny":
        ex.error = err.message
    hdrs = [(b"x-request-id", ex.request_id.encode()), *extra,
            *((k.encode(), v.encode()) for k, v in err.headers.items())]
    await send_bytes(send, err.status, surface.error_body(err, ex.request_id), hdrs)


async def admit(scope: dict[str, Any], send: Any, surface: ModuleType, services: Services) -> Exchange | None:
    """Take an audit queue slot before any work, or refuse: nothing is admitted unaudited.

    Returns the request's Exchange, or None when the request was refused (503).
    """
    ex = new_exchange(scope, surface.NAME, services)
    try:
        await services.audit.admit()
    except Unavailable as err:
        log.error("refused: %s", err.message, extra={"request_id": ex.request_id})
        services.metrics.count_request(surface.NAME, "refused", 503)
        await send_bytes(send, 503, surface.error_body(err, ex.request_id), [(b"x-request-id", ex.request_id.encode())])
        return None
    return ex


def observe(s: Services, surface: str, ex: Exchange) -> None:
    """Metrics for every request; a log line for failures (refusals at DEBUG).

    Every request is in the audit log. Logging each policy or limit refusal too
    would put a log write on the hot path exactly when an agent misbehaves at rate.
    """
    failed = ex.status >= 500 or (ex.status < 400 and ex.error is not None)  # 4xx: the client's
    level = logging.WARNING if failed else logging.DEBUG
    if (ex.status >= 400 or ex.error) and log.isEnabledFor(level):
        log.log(level, "request failed" if failed else "request refused", extra={
            "request_id": ex.request_id, "agent_id": ex.agent.id if ex.agent else None,
            "action": ex.action, "resource": ex.resource_name, "decision": ex.outcome,
            "status": ex.status, "error": ex.error})
    m = s.metrics
    m.count_request(surface, ex.outcome, ex.status)
    if ex.upstream_ms is not None:
        m.observe_upstream(ex.upstream or "", ex.upstream_ms / 1000.0)
        m.overhead.observe(max(0.0, ex.elapsed_ms() - ex.upstream_ms) / 1000.0)


class LLMEndpoint:
    """POST endpoint for one path of one surface (openai or anthropic)."""

    def __init__(self, services: Services, surface: ModuleType, path: str) -> None:
        self.s = services
        self.surface = surface
        self.path = path

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        s, surface = self.s, self.surface
        ex = await admit(scope, send, surface, s)
        if ex is None:
            return
        reservation = None
        try:
            if scope["method"] != "POST":
                raise NotFound(f"{scope['method']} is not supported on {self.path}; use POST",
                               code="method_not_allowed")
            body = await read_body(receive, s.settings.server.max_body_bytes, header(scope, b"content-length"))
            hdrs = headers_dict(scope)
            ex.agent, ex.principal = await s.identity.resolve(hdrs)
            parsed = surface.parse(self.path, body)
            ex.action, ex.resource_type, ex.resource_name = parsed.action, "model", parsed.model
            ex.stream = parsed.stream
            ex.upstream = s.router.route(parsed.model)
            if ex.upstream is None:
                raise NotFound(f"the model {parsed.model} does not exist or is not routed by this gateway",
                               code="model_not_found", param="model")
            doc = policy_input(ex.agent, ex.principal.auth, parsed.action,
                               {"type": "model", "name": parsed.model, "upstream": ex.upstream},
                               {"api": surface.NAME, "stream": parsed.stream})
            ex.policy_input = doc
            ex.decision, ex.input_digest = await s.policy.decide(doc)
            if not ex.decision.allow:
                ex.outcome = "deny"
                raise PermissionDenied("; ".join(ex.decision.reasons) or "denied by policy")
            if s.tools is not None and s.settings.tools.check_chat_tools:
                await self._check_declared_tools(parsed, ex)
            self._cap_output(parsed, ex)
            try:
                lim = await s.limits.reserve(ex.agent.id, ex.decision,
                                             parsed.estimated_input_tokens() + (parsed.max_output or 0))
            except RateLimited:
                ex.outcome = "rate_limited"
                raise
            reservation = lim.reservation
            ex.outcome = "allow"
            await self._forward(send, receive, ex, parsed, hdrs, limit_headers(lim))
        except GatewayError as e:
            await send_error(send, surface, ex, e)
        except ClientGone:
            ex.status, ex.error = 499, "client disconnected before sending the whole body"
        except Exception as e:  # a bug: still answer, still audit
            log.exception("internal error", extra={"request_id": ex.request_id})
            if ex.status < 400 or ex.outcome == "allow":
                ex.outcome = "error"
            await send_error(send, surface, ex, GatewayError(f"internal gateway error ({type(e).__name__})"))
        finally:
            await finish(s, surface.NAME, ex, reservation)

    async def _check_declared_tools(self, parsed: Parsed, ex: Exchange) -> None:
        """Refuse to let an agent offer a model a governed tool it may not call itself."""
        assert self.s.tools is not None and ex.agent is not None and ex.principal is not None
        refused = await self.s.tools.refused_declared(ex.agent, ex.principal.auth, self.surface.NAME, parsed.body)
        if refused:
            ex.outcome = "deny"
            ex.decision = replace(ex.decision, allow=False, reasons=tuple(refused.values()))
            raise PermissionDenied(f"agent {ex.agent.id} may not call the declared tool(s) "
                                   f"{', '.join(refused)}: " + "; ".join(refused.values()),
                                   code="tool_not_allowed", param="tools")

    def _cap_output(self, parsed: Parsed, ex: Exchange) -> None:
        cap = ex.decision.max_output_tokens
        if cap is None or parsed.max_field is None:
            return
        if parsed.max_output is None:
            parsed.clamp(cap)  # make the obligation real for clients that set no cap
        elif parsed.max_output > cap:
            if not self.s.settings.policy.clamp_max_output_tokens:
                raise InvalidRequest(f"{parsed.max_field} {parsed.max_output} exceeds the {cap} allowed "
                                     f"for agent {ex.agent.id} (tier {ex.agent.tier})",
                                     code="max_output_tokens_exceeded", param=parsed.max_field)
            parsed.clamp(cap)

    async def _forward(self, send: Any, receive: Any, ex: Exchange, parsed: Parsed,
                       hdrs: dict[str, str], extra: list[tuple[bytes, bytes]]) -> None:
        up = self.s.upstreams[ex.upstream]
        t = asyncio.get_running_loop().time()
        resp = await up.send("POST", self.path, parsed.upstream_body(), self.surface.NAME, hdrs)
        try:
            rid = (b"x-request-id", ex.request_id.encode())
            if parsed.stream and resp.status == 200:
                ex.status = 200
                await send({"type": "http.response.start", "status": 200,
                            "headers": [*_SSE_HEADERS, rid, *extra]})
                await self._pump_until_done(send, receive, resp, ex, parsed)
            else:
                data = await resp.read()
                ex.status = resp.status
                if resp.status == 200:
                    ex.usage = self.surface.usage_from_body(data)
                else:
                    ex.error = f"upstream {ex.upstream} answered {resp.status}"
                ctype = resp.headers.get("content-type", "application/json").encode()
                await send_bytes(send, resp.status, data, [rid, *extra], content_type=ctype)
        finally:
            ex.upstream_ms = (asyncio.get_running_loop().time() - t) * 1000.0
            await resp.aclose()

    async def _pump_until_done(self, send: Any, receive: Any, resp: UpstreamResponse,
                               ex: Exchange, parsed: Parsed) -> None:
        tap = self.surface.Tap(parsed)
        pump = asyncio.ensure_future(self._pump(send, resp, ex, tap))
        # After the body, the only message left is http.disconnect: wait for it alongside.
        gone = asyncio.ensure_future(receive())
        try:
            done, _ = await asyncio.wait((pump, gone), return_when=asyncio.FIRST_COMPLETED)
            if pump not in done:
                pump.cancel()
                ex.error = "client disconnected mid-stream"
                await asyncio.gather(pump, return_exceptions=True)
            else:
                pump.result()
        finally:
            gone.cancel()
            ex.usage = tap.usage

    async def _pump(self, send: Any, resp: UpstreamResponse, ex: Exchange, tap: Any) -> None:
        try:
            async for chunk in resp.iter_chunks():
                out = tap.feed(chunk)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
            tail = tap.finish()
        except (UpstreamError, GatewayError) as e:
            # Headers are gone already: end the stream with an error event the SDK raises on.
            ex.error = e.message if "mid-stream" in e.message else f"upstream failed mid-stream: {e.message}"
            tail = self.surface.stream_error_event(e, ex.request_id)
        await send({"type": "http.response.body", "body": tail, "more_body": False})
