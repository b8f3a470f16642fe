"""One governed exchange: the pure-ASGI shell around every audited endpoint.

The shell owns what every surface shares: the header limits (431), the method
check (405 with Allow), the body (413, 408 after server.body_timeout_s), an audit
queue slot before any governed work, the caller's identity, errors rendered in
the surface's own format, and `finish()` (settle, one audit row, metrics, a log
line for failures). An endpoint supplies only a handler that answers through
`call.send` or raises a GatewayError, whose `outcome` becomes the audit row's
decision.

The queue slot is taken after the body, so clients stalling their bodies hold no
slot and cannot starve other agents. A request refused before that point still
gets its row: it takes a slot then (`admit(early=True)`), from a small reserve
when agents fill the queue. Either way no request does governed work, or gets
an answer other than 503 "audit queue full", without a slot for its row.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.context import Exchange
from gateway.errors import (
    AgentRevoked,
    GatewayError,
    HeadersTooLarge,
    MethodNotAllowed,
    RateLimited,
    Unavailable,
)
from gateway.http import ClientGone, header, headers_dict, send_bytes
from gateway.services import Services
from gateway.surfaces.base import Surface
from gateway.tracing import client_trace_id, end_request, start_request

log = logging.getLogger("portcullis.exchange")

Headers = list[tuple[bytes, bytes]]


@dataclass(slots=True)
class Call:
    """One request as a handler sees it."""
    scope: dict[str, Any]
    receive: Any
    send: Any
    ex: Exchange
    surface: Surface
    headers: dict[str, str]
    body: bytes
    rpc: Any = None  # MCP: the JSON-RPC message being answered (its id shapes errors)
    extra: Headers = field(default_factory=list)  # rate-limit headers, sent with any answer

    def response_headers(self) -> Headers:
        return [*self.surface.id_headers(self.ex.request_id), *self.extra]


Handler = Callable[[Call], Awaitable[None]]


def client_ip(scope: dict[str, Any], trust_forwarded: bool) -> str | None:
    if trust_forwarded:
        xff = header(scope, b"x-forwarded-for")
        if xff:
            return xff.split(",")[0].strip()
    c = scope.get("client")
    return c[0] if c else None


class Governed:
    """Runs `handler` for one route under the shared lifecycle.

    `choose` picks the surface per request instead of a fixed `surface` (model
    listings and unknown routes answer in the caller's SDK format). With `identity`
    "optional", a bad or missing credential is recorded but not refused.
    """

    def __init__(self, services: Services, handler: Handler, *, surface: Surface | None = None,
                 choose: Callable[[dict[str, Any]], Surface] | None = None,
                 methods: tuple[str, ...] | None = ("POST",), identity: str = "required",
                 challenge: Callable[[dict[str, Any]], bytes] | None = None) -> None:
        assert (surface is None) != (choose is None), "give a surface or a way to choose one"
        self.s = services
        self._surface = surface
        self._choose = choose
        self.handler = handler
        self.methods = methods
        self.identity_required = identity == "required"
        # A 401 must say how to authenticate (RFC 9110 11.6.1); MCP names its OAuth metadata.
        self.challenge = challenge or (lambda scope: b"Bearer")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        s = self.s
        server = s.settings.server
        surface = self._surface or self._choose(scope)  # type: ignore[misc]
        ex = Exchange(request_id=s.request_ids(), api=surface.NAME,
                      client_ip=client_ip(scope, server.trust_forwarded_for))
        if s.tracer is not None:  # off: this one check is all tracing costs
            start_request(s.tracer, scope, ex)
        call = Call(scope, receive, send, ex, surface, {}, b"")
        try:  # nothing governed yet: what fails here needs a slot only for its row
            check_headers(scope["headers"], server.max_header_bytes, server.max_headers)
            if self.methods is not None and scope["method"] not in self.methods:
                raise MethodNotAllowed(scope["method"], scope["path"][:200], self.methods)
            call.body = await s.bodies.read(receive, header(scope, b"content-length"))
        except Exception as e:  # noqa: BLE001 - whatever failed, the request still gets its row
            if ex.trace_id is None:
                ex.trace_id = client_trace_id(header(scope, b"traceparent"))
            try:  # its row's slot, from the reserve if agents fill the queue
                await s.audit.admit(early=True)
            except Unavailable as err:
                await self._refuse(call, err)
                return
            call.send = journaled(s, ex, send)
            try:
                await self._fail(call, e)
            finally:
                await finish(s, surface.NAME, ex)
            return
        except asyncio.CancelledError as e:  # cut (the drain deadline) while its body arrived: still a row
            ex.status, ex.error = 499, str(e) or "request cancelled before its body arrived"
            with contextlib.suppress(Unavailable):  # no slot left: no row, as for any refusal
                await s.audit.admit(early=True)
                await finish(s, surface.NAME, ex)
            raise
        try:  # a queue slot before any governed work: nothing is admitted unaudited
            await s.audit.admit()
        except Unavailable as err:
            await self._refuse(call, err)
            return
        s.audit.journal.begun(ex.request_id, ex.ts, ex.api, ex.client_ip, ex.trace_id)
        call.send = journaled(s, ex, send)
        try:
            call.headers = headers_dict(scope)
            if ex.trace_id is None and "traceparent" in call.headers:  # tracing off: the client's trace
                ex.trace_id = client_trace_id(call.headers["traceparent"])
            try:
                if ex.trace is None:  # untraced: one check, no span (gateway/tracing.py)
                    ex.agent, ex.principal = await s.identity.resolve(call.headers)
                else:
                    with ex.trace.child("identity"):
                        ex.agent, ex.principal = await s.identity.resolve(call.headers)
            except GatewayError as e:
                if isinstance(e, AgentRevoked) and e.who is not None:
                    ex.agent, ex.principal = e.who  # a revoked agent's refusal is its row
                if self.identity_required:
                    raise  # else: who asked is worth recording, but e.g. a 404 must not become a 401
            await self.handler(call)
        except Exception as e:  # noqa: BLE001 - whatever failed, the request still gets its row
            await self._fail(call, e)
        except asyncio.CancelledError as e:  # cut (the SIGTERM drain deadline): still one row, saying so
            ex.error = ex.error or (str(e) or "request cancelled before it finished")
            raise
        finally:
            await finish(s, surface.NAME, ex)

    async def _refuse(self, call: Call, err: Unavailable) -> None:
        """No audit queue slot for this request's row: a 503, counted, without a row."""
        rid, surface = call.ex.request_id, call.surface
        log.error("refused: %s", err.message, extra={"request_id": rid, "trace_id": call.ex.trace_id})
        self.s.metrics.count_request(surface.NAME, "refused", 503)
        if call.ex.trace is not None:
            call.ex.status, call.ex.outcome = 503, "refused"
            end_request(call.ex)
        await send_bytes(call.send, 503, surface.error_body(err, rid), surface.id_headers(rid))

    async def _fail(self, call: Call, e: Exception) -> None:
        ex = call.ex
        if isinstance(e, GatewayError):
            if e.outcome is not None:
                ex.outcome = e.outcome
            if e.status == 401:
                call.extra.append((b"www-authenticate", self.challenge(call.scope)))
            await send_error(call, e)
        elif isinstance(e, ClientGone):
            ex.status, ex.error = 499, "client disconnected before sending the whole body"
        else:  # a bug: still answer, still audit
            log.error("internal error", exc_info=e, extra={"request_id": ex.request_id, "trace_id": ex.trace_id})
            ex.outcome = "error"
            await send_error(call, GatewayError(f"internal gateway error ({type(e).__name__})"))


async def refuse_websocket(s: Services, scope: dict[str, Any], receive: Any, send: Any) -> None:
    """No route serves WebSockets: close the handshake (the server answers 403), audited."""
    ex = Exchange(request_id=s.request_ids(), api="websocket",
                  client_ip=client_ip(scope, s.settings.server.trust_forwarded_for))
    ex.resource_name, ex.status, ex.error = scope["path"][:200], 403, "websocket not served"
    await receive()  # websocket.connect
    await send({"type": "websocket.close", "code": 1008})
    try:
        await s.audit.admit(early=True)
    except Unavailable as err:
        log.error("refused: %s", err.message, extra={"request_id": ex.request_id})
        s.metrics.count_request(ex.api, "refused", 403)
        return
    await finish(s, ex.api, ex)


def journaled(s: Services, ex: Exchange, send: Any) -> Any:
    """`send`, but the row goes to the audit journal before the response's last body chunk:
    a replica killed once a client has its whole answer still has the row (gateway/audit/journal.py).

    A plain function returning `send`'s awaitable, not a coroutine around it: no extra frame
    per chunk. The row is sealed on the exchange, so finish() need not build it again.
    """
    journal = s.audit.journal
    if not journal.enabled:
        return send

    def send_journaled(message: dict[str, Any]) -> Any:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            journal.finished(ex.seal())
        return send(message)
    return send_journaled


def check_headers(headers: Headers, max_bytes: int, max_count: int) -> None:
    """431 for too many or too large request headers: uvicorn's httptools parser has no limit."""
    if len(headers) > max_count:
        raise HeadersTooLarge(f"{len(headers)} request headers exceed the limit of {max_count}")
    size = sum([len(k) + len(v) for k, v in headers])
    if size > max_bytes:
        raise HeadersTooLarge(f"request headers of {size} bytes exceed the {max_bytes} byte limit")


async def send_error(call: Call, err: GatewayError) -> None:
    ex = call.ex
    if ex.error is None and (ex.outcome != "deny" or ex.decision is None):
        ex.error = err.message  # a denial the policy made is explained by its reasons
    status, body = call.surface.error_response(err, call)
    ex.status = status  # what the client got; the decision column says why
    hdrs = call.response_headers()
    if isinstance(err, RateLimited) and err.limit is not None:
        hdrs += call.surface.limit_headers(err.limit)
    hdrs += [(k.encode(), v.encode()) for k, v in err.headers.items()]
    await send_bytes(call.send, status, body, hdrs)


async def finish(s: Services, surface: str, ex: Exchange) -> None:
    """Every request's last step, whatever happened: settle, one audit row, metrics."""
    if ex.reservation is not None:
        try:
            await s.limits.settle(ex.reservation, ex.usage)
        except Exception:
            log.exception("settling a reservation failed", extra={"request_id": ex.request_id})
    # Shadow mode takes a sampled row and submits it once its shadow decision is made.
    shadow = s.shadow
    if ex.trace is None:
        event = ex.final_event()
        if shadow is None or not shadow.offer(event, ex.decision):
            s.audit.submit(event)
    else:
        with ex.trace.child("audit.enqueue"):
            event = ex.final_event()
            if shadow is None or not shadow.offer(event, ex.decision):
                s.audit.submit(event)
        end_request(ex)
    observe(s, surface, ex)
    if s.lifecycle is not None:  # the error budget: classified here, counted off the request path
        s.lifecycle.observe(ex)


def observe(s: Services, surface: str, ex: Exchange) -> None:
    """Metrics for every request; a log line for failures (refusals at DEBUG).

    Every request is in the audit log. Logging each policy or limit refusal too
    would put a log write on the hot path exactly when an agent misbehaves at rate.
    """
    failed = ex.status >= 500 or (ex.status < 400 and ex.error is not None)  # 4xx: the client's
    level = logging.WARNING if failed else logging.DEBUG
    if (ex.status >= 400 or ex.error) and log.isEnabledFor(level):
        log.log(level, "request failed" if failed else "request refused", extra={
            "request_id": ex.request_id, "trace_id": ex.trace_id, "agent_id": ex.agent.id if ex.agent else None,
            "action": ex.action, "resource": ex.resource_name, "decision": ex.outcome,
            "status": ex.status, "error": ex.error})
    m = s.metrics
    m.count_request(surface, ex.outcome, ex.status)
    if ex.agent is not None:
        m.count_agent(ex.agent.id, ex.outcome)
    if ex.upstream_ms is not None:
        m.observe_upstream(ex.upstream or "", ex.upstream_ms / 1000.0)
        m.overhead.observe(max(0.0, ex.elapsed_ms() - ex.upstream_ms) / 1000.0)
