"""create_admin_app(services) -> the admin API (contract 7), a Starlette app of its own.

Every call is authorized by an admin token (scopes read/write) and audited as an
`admin.<operation>` row: refused ones with decision `deny` (and an `admin.auth_failed`
governance event), failed ones with `error`, the rest with `allow`, naming the token's
name as the actor. Tokens never reach a row, a log or a response.

The governance console (gateway/console) is served by the same app under /console; its
writes run the same `Op` handlers through the same `AdminAudit`, so a revocation from the
console and one from the API leave the same row.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.admin import routes_agents, routes_ops
from gateway.admin.auth import Operator, Refusal, TokenBook
from gateway.admin.openapi import document
from gateway.admin.ops import Call, Op, Reply
from gateway.errors import BackendError, GatewayError, InvalidRequest
from gateway.exchange import client_ip
from gateway.services import Services
from gateway.types import AuditEvent

log = logging.getLogger("portcullis.admin")

OPS: list[Op] = [*routes_agents.OPS, *routes_ops.OPS]
MAX_BODY = 64 * 1024  # operator bodies are a reason and a flag or two


def error_response(status: int, code: str, message: str, request_id: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "request_id": request_id}}
    return JSONResponse(body, status, headers={"x-request-id": request_id, **(headers or {})})


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    if len(raw) > MAX_BODY:
        raise InvalidRequest(f"body larger than {MAX_BODY} bytes")
    try:
        body = json.loads(raw)
    except ValueError:
        raise InvalidRequest("body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("body must be a JSON object")
    return body


@dataclass(frozen=True, slots=True)
class Stamp:
    """When an admin call started: its request id, wall clock (the row's ts) and perf counter."""
    rid: str
    ts: float
    t0: float


@dataclass(frozen=True, slots=True)
class Failed:
    """A handler's failure, already audited: what to tell the operator."""
    status: int
    code: str
    message: str


class AdminAudit:
    """Runs and audits admin operations, for the API's endpoints and the console's forms alike."""

    def __init__(self, services: Services) -> None:
        self._s = services

    def stamp(self) -> Stamp:
        return Stamp(self._s.request_ids(), time.time(), time.perf_counter())

    async def run(self, request: Request, op: Op, call: Call, st: Stamp) -> Reply | Failed:
        """The handler's reply, or why it failed; audited either way (allow or error)."""
        try:
            result = await op.handler(call)
        except GatewayError as e:
            await self.record(request, op, call, st, e.status, "error", error=f"{e.code}: {e.message}")
            return Failed(e.status, e.code or "error", e.message)
        except BackendError as e:  # the lifecycle store is down: the operator should retry
            await self.record(request, op, call, st, 503, "error", error=f"store_unavailable: {e}")
            return Failed(503, "store_unavailable", f"the lifecycle store did not answer: {e}")
        except Exception:
            log.exception("admin operation %s failed", op.id, extra={"request_id": st.rid})
            await self.record(request, op, call, st, 500, "error", error="internal error")
            return Failed(500, "internal", "internal error (see the gateway log)")
        reply = result if isinstance(result, Reply) else Reply(result)
        await self.record(request, op, call, st, reply.status, "allow")
        return reply

    async def refused(self, request: Request, op: Op, why: Refusal, st: Stamp) -> None:
        """An unauthorized call: an `admin.auth_failed` event and a `deny` row."""
        lc = self._s.lifecycle
        if lc is not None:  # emit() is sync and never raises (contract)
            lc.events.emit("admin.auth_failed", "MEDIUM", details={
                "operation": op.id, "status": why.status, "reason": why.message,
                "actor": why.actor, "client_ip": self.ip(request)})
        await self.record(request, op, None, st, why.status, "deny", error=why.message, actor=why.actor)

    def ip(self, request: Request) -> str | None:
        return client_ip(request.scope, self._s.settings.server.trust_forwarded_for)

    @staticmethod
    def _resource(request: Request, call: Call | None) -> str | None:
        if call is not None and call.resource_name is not None:
            return call.resource_name
        return request.path_params.get("id") or request.path_params.get("surface")

    async def record(self, request: Request, op: Op, call: Call | None, st: Stamp, status: int,
                     decision: str, *, error: str | None = None, actor: str | None = None) -> None:
        actor = call.actor if call is not None else actor
        reason = call.reason if call is not None else None
        resource = self._resource(request, call)
        agent_id = resource if op.resource_type == "agent" else None
        if decision == "deny":
            text = f"{actor or 'anonymous'}: refused {op.id} ({error})"
        else:
            text = f"{actor}: {op.id}" + (f" ({reason})" if reason else "")
        params = {k: v for k, v in request.query_params.items()}
        event = AuditEvent(
            request_id=st.rid, ts=st.ts, agent_id=agent_id, tier=None, maturity=None, workspace=None,
            auth="admin_token" if call is not None else None, action=f"admin.{op.id}",
            resource_type=op.resource_type, resource_name=resource, upstream=None, api="admin", stream=False,
            decision=decision, reasons=(text,), policy_revision=None, cache_hit=False, status=status,
            latency_ms=(time.perf_counter() - st.t0) * 1000.0, upstream_ms=None, input_tokens=None,
            output_tokens=None, client_ip=self.ip(request), error=error, input_digest=None,
            policy_input={"actor": actor, "operation": op.id, "method": op.method, "path": request.url.path,
                          "query": params, "reason": reason})
        try:
            await self._s.audit.record(event)
        except GatewayError:  # the audit queue refused (full, configured to refuse): the call already ran
            log.error("admin call %s not audited: audit queue refused it", op.id, extra={"request_id": st.rid})


class AdminEndpoint:
    """One operation: authorize, run the handler, answer in the admin JSON shape, audit."""

    def __init__(self, services: Services, book: TokenBook, op: Op, audit: AdminAudit | None = None) -> None:
        self._s = services
        self._book = book
        self._audit = audit or AdminAudit(services)
        self.op = op

    async def handle(self, request: Request) -> Response:
        op, st = self.op, self._audit.stamp()
        who: Operator | Refusal = self._book.operator(request.headers.get("authorization"))
        if isinstance(who, Operator):
            who = self._book.allows(who, op.scope) or who
        if isinstance(who, Refusal):
            await self._audit.refused(request, op, who, st)
            headers = {"www-authenticate": 'Bearer realm="portcullis-admin"'} if who.status == 401 else None
            return error_response(who.status, who.code, who.message, st.rid, headers)
        call = Call(request, self._s, who.name)
        if op.method != "GET":
            try:
                call.body = await _json_body(request)
            except GatewayError as e:
                await self._audit.record(request, op, call, st, e.status, "error", error=f"{e.code}: {e.message}")
                return error_response(e.status, e.code or "error", e.message, st.rid)
        reply = await self._audit.run(request, op, call, st)
        if isinstance(reply, Failed):
            return error_response(reply.status, reply.code, reply.message, st.rid)
        headers = {"x-request-id": st.rid}
        if reply.media_type is None:
            return JSONResponse(reply.payload, reply.status, headers=headers)
        return Response(reply.payload, reply.status, headers=headers, media_type=reply.media_type)


def create_admin_app(services: Services) -> Starlette:
    # Imported here: the console imports this module, so importing it at the top would be a cycle.
    from gateway.console.app import console_routes

    book = TokenBook(services.settings.admin.tokens)
    audit = AdminAudit(services)
    routes: list[Any] = [Route(op.path, AdminEndpoint(services, book, op, audit).handle, methods=[op.method])
                         for op in OPS]
    spec = document()

    async def openapi(request: Request) -> Response:
        return JSONResponse(spec)

    routes.append(Route("/admin/openapi.json", openapi, methods=["GET"]))
    routes += console_routes(services, book)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        rid = services.request_ids()
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
        return error_response(exc.status_code, code, str(exc.detail), rid, dict(exc.headers or {}))

    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})
