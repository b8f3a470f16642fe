"""create_admin_app(services) -> the admin API (contract 7), a Starlette app of its own.

Every call is authorized by an admin token (scopes read/write) and audited as an
`admin.<operation>` row: refused ones with decision `deny` (and an `admin.auth_failed`
governance event), failed ones with `error`, the rest with `allow`, naming the token's
name as the actor. Tokens never reach a row, a log or a response.
"""
from __future__ import annotations

import json
import logging
import time
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


class AdminEndpoint:
    """One operation: authorize, run the handler, answer in the admin JSON shape, audit."""

    def __init__(self, services: Services, book: TokenBook, op: Op) -> None:
        self._s = services
        self._book = book
        self.op = op

    async def handle(self, request: Request) -> Response:
        s, op = self._s, self.op
        rid, ts, t0 = s.request_ids(), time.time(), time.perf_counter()
        who: Operator | Refusal = self._book.operator(request.headers.get("authorization"))
        if isinstance(who, Operator):
            who = self._book.allows(who, op.scope) or who
        if isinstance(who, Refusal):
            await self._refused(request, who, rid, ts, t0)
            headers = {"www-authenticate": 'Bearer realm="portcullis-admin"'} if who.status == 401 else None
            return error_response(who.status, who.code, who.message, rid, headers)
        call = Call(request, s, who.name)
        try:
            if op.method != "GET":
                call.body = await _json_body(request)
            result = await op.handler(call)
        except GatewayError as e:
            await self._audit(request, call, rid, ts, t0, e.status, "error", error=f"{e.code}: {e.message}")
            return error_response(e.status, e.code or "error", e.message, rid)
        except BackendError as e:  # the lifecycle store is down: the operator should retry
            await self._audit(request, call, rid, ts, t0, 503, "error", error=f"store_unavailable: {e}")
            return error_response(503, "store_unavailable", f"the lifecycle store did not answer: {e}", rid)
        except Exception:
            log.exception("admin operation %s failed", op.id, extra={"request_id": rid})
            await self._audit(request, call, rid, ts, t0, 500, "error", error="internal error")
            return error_response(500, "internal", "internal error (see the gateway log)", rid)
        reply = result if isinstance(result, Reply) else Reply(result)
        await self._audit(request, call, rid, ts, t0, reply.status, "allow")
        headers = {"x-request-id": rid}
        if reply.media_type is None:
            return JSONResponse(reply.payload, reply.status, headers=headers)
        return Response(reply.payload, reply.status, headers=headers, media_type=reply.media_type)

    def _resource(self, request: Request, call: Call | None) -> str | None:
        if call is not None and call.resource_name is not None:
            return call.resource_name
        return request.path_params.get("id") or request.path_params.get("surface")

    async def _refused(self, request: Request, why: Refusal, rid: str, ts: float, t0: float) -> None:
        lc = self._s.lifecycle
        if lc is not None:  # emit() is sync and never raises (contract)
            lc.events.emit("admin.auth_failed", "MEDIUM", details={
                "operation": self.op.id, "status": why.status, "reason": why.message,
                "actor": why.actor, "client_ip": self._ip(request)})
        await self._audit(request, None, rid, ts, t0, why.status, "deny", error=why.message, actor=why.actor)

    def _ip(self, request: Request) -> str | None:
        return client_ip(request.scope, self._s.settings.server.trust_forwarded_for)

    async def _audit(self, request: Request, call: Call | None, rid: str, ts: float, t0: float, status: int,
                     decision: str, *, error: str | None = None, actor: str | None = None) -> None:
        op = self.op
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
            request_id=rid, ts=ts, agent_id=agent_id, tier=None, maturity=None, workspace=None,
            auth="admin_token" if call is not None else None, action=f"admin.{op.id}",
            resource_type=op.resource_type, resource_name=resource, upstream=None, api="admin", stream=False,
            decision=decision, reasons=(text,), policy_revision=None, cache_hit=False, status=status,
            latency_ms=(time.perf_counter() - t0) * 1000.0, upstream_ms=None, input_tokens=None,
            output_tokens=None, client_ip=self._ip(request), error=error, input_digest=None,
            policy_input={"actor": actor, "operation": op.id, "method": op.method, "path": request.url.path,
                          "query": params, "reason": reason})
        try:
            await self._s.audit.record(event)
        except GatewayError:  # the audit queue refused (full, configured to refuse): the call already ran
            log.error("admin call %s not audited: audit queue refused it", op.id, extra={"request_id": rid})


def create_admin_app(services: Services) -> Starlette:
    book = TokenBook(services.settings.admin.tokens)
    routes = [Route(op.path, AdminEndpoint(services, book, op).handle, methods=[op.method]) for op in OPS]
    spec = document()

    async def openapi(request: Request) -> Response:
        return JSONResponse(spec)

    routes.append(Route("/admin/openapi.json", openapi, methods=["GET"]))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        rid = services.request_ids()
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
        return error_response(exc.status_code, code, str(exc.detail), rid, dict(exc.headers or {}))

    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})
