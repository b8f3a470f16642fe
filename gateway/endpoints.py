"""Endpoints besides the LLM calls: model listing, unknown routes, health, metrics."""
from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.context import Exchange
from gateway.errors import GatewayError, NotFound
from gateway.http import headers_dict, send_bytes
from gateway.pipeline import Services, admit, send_error
from gateway.stages.policy import policy_input
from gateway.surfaces import anthropic, openai
from gateway.types import Decision

log = logging.getLogger("portcullis.endpoints")


def _surface_for(scope: dict[str, Any]) -> Any:
    # The Anthropic SDK always sends anthropic-version; its errors must look like Anthropic's.
    if scope["path"].startswith("/v1/messages") or any(k == b"anthropic-version" for k, _ in scope["headers"]):
        return anthropic
    return openai


class _AuditedEndpoint:
    """Admission, one audit row and the request metric around `handle`, whatever it does."""

    def __init__(self, services: Services) -> None:
        self.s = services

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        surface = _surface_for(scope)
        ex = await admit(scope, send, surface, self.s)
        if ex is None:
            return
        try:
            await self.handle(scope, send, surface, ex)
        finally:
            self.s.audit.submit(ex.audit_event())
            self.s.metrics.count_request(surface.NAME, ex.outcome, ex.status)

    async def handle(self, scope: dict[str, Any], send: Any, surface: Any, ex: Exchange) -> None:
        raise NotImplementedError


class ModelsEndpoint(_AuditedEndpoint):
    """GET /v1/models[/{id}]: only the models the caller's policy allows."""

    async def handle(self, scope: dict[str, Any], send: Any, surface: Any, ex: Exchange) -> None:
        s = self.s
        wanted = scope.get("path_params", {}).get("model")
        ex.action, ex.resource_type, ex.resource_name = "llm.models", "model", wanted or "*"
        try:
            if scope["method"] != "GET":
                raise NotFound(f"{scope['method']} is not supported on {scope['path']}; use GET",
                               code="method_not_allowed")
            ex.agent, ex.principal = await s.identity.resolve(headers_dict(scope))
            catalog = [(m, up) for m, up in s.router.catalog if wanted is None or m == wanted]
            docs = [policy_input(ex.agent, ex.principal.auth, "llm.models",
                                 {"type": "model", "name": m, "upstream": up}, {"api": surface.NAME, "stream": False})
                    for m, up in catalog]
            decisions = [d for d, _ in await s.policy.decide_many(docs)]
            visible = [(m, up) for (m, up), d in zip(catalog, decisions) if d.allow]
            if decisions:
                first = decisions[0]
                ex.decision = first if wanted else Decision(
                    allow=True, reasons=(f"{len(visible)} of {len(catalog)} catalog models visible",),
                    revision=first.revision, cache_hit=all(d.cache_hit for d in decisions))
            ex.outcome = "allow"
            if wanted is not None and not visible:
                ex.outcome = "deny" if catalog else "error"
                raise NotFound(f"the model {wanted} does not exist or you do not have access to it",
                               code="model_not_found", param="model")
            body = self._render(surface, visible, single=wanted is not None)
            ex.status = 200
            await send_bytes(send, 200, body, [(b"x-request-id", ex.request_id.encode())])
        except GatewayError as e:
            await send_error(send, surface, ex, e)

    @staticmethod
    def _render(surface: Any, models: list[tuple[str, str]], single: bool) -> bytes:
        if surface is anthropic:
            items = [{"type": "model", "id": m, "display_name": m, "created_at": "2024-01-01T00:00:00Z"}
                     for m, _ in models]
            if single:
                return orjson.dumps(items[0])
            return orjson.dumps({"data": items, "has_more": False,
                                 "first_id": items[0]["id"] if items else None,
                                 "last_id": items[-1]["id"] if items else None})
        items = [{"id": m, "object": "model", "created": 0, "owned_by": up} for m, up in models]
        return orjson.dumps(items[0] if single else {"object": "list", "data": items})


class NotFoundEndpoint(_AuditedEndpoint):
    """Any route the gateway does not serve: a 404 in the caller's format, audited."""

    async def handle(self, scope: dict[str, Any], send: Any, surface: Any, ex: Exchange) -> None:
        try:  # who asked is worth recording, but a 404 must not turn into a 401
            ex.agent, ex.principal = await self.s.identity.resolve(headers_dict(scope))
        except GatewayError:
            pass
        ex.resource_name = scope["path"][:200]
        await send_error(send, surface, ex, NotFound(f"unknown route: {scope['method']} {scope['path'][:200]}",
                                                     code="unknown_route"))


class OpsEndpoints:
    """/healthz (liveness), /readyz (policies loaded, audit writable), /metrics."""

    def __init__(self, services: Services, ready_check: Any) -> None:
        self.s = services
        self.ready_check = ready_check

    async def healthz(self, request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    async def readyz(self, request: Request) -> Response:
        problems = await self.ready_check()
        body = orjson.dumps({"status": "ready" if not problems else "not ready", "problems": problems})
        return Response(body, status_code=200 if not problems else 503, media_type="application/json")

    async def metrics(self, request: Request) -> Response:
        self.s.metrics.set_depth(self.s.audit.depth)
        return Response(self.s.metrics.render(), media_type=self.s.metrics.content_type)
