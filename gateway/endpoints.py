"""Endpoints besides the LLM calls: model listing, unknown routes, health, metrics."""
from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import NotFound
from gateway.exchange import Call
from gateway.http import send_bytes
from gateway.routing import Listed
from gateway.services import Services
from gateway.stages.admission import allowed_outcome
from gateway.stages.policy import policy_input
from gateway.surfaces import anthropic, openai
from gateway.surfaces.base import Surface
from gateway.types import Decision

log = logging.getLogger("portcullis.endpoints")


def surface_for(scope: dict[str, Any]) -> Surface:
    # The Anthropic SDK always sends anthropic-version; its errors must look like Anthropic's.
    if scope["path"].startswith("/v1/messages") or any(k == b"anthropic-version" for k, _ in scope["headers"]):
        return anthropic
    return openai


class ModelsHandler:
    """GET /v1/models[/{id}]: only the models the caller's policy allows.

    An Anthropic client (anthropic-version sent) sees only the models served in
    Anthropic's API, which it can call; an OpenAI client sees them all (Anthropic
    also serves an OpenAI-compatible chat API). `owned_by` is that API family, never
    the name of an internal upstream.
    """

    def __init__(self, services: Services) -> None:
        self.s = services

    async def __call__(self, call: Call) -> None:
        s, ex, surface = self.s, call.ex, call.surface
        assert ex.agent is not None and ex.principal is not None
        wanted = call.scope.get("path_params", {}).get("model")
        ex.action, ex.resource_type, ex.resource_name = "llm.models", "model", wanted or "*"
        catalog = [c for c in s.router.catalog if (wanted is None or c.model == wanted)
                   and (surface is not anthropic or c.family == "anthropic")]
        docs = [policy_input(ex.agent, ex.principal.auth, "llm.models",
                             {"type": "model", "name": c.model, "upstream": c.upstream},
                             {"api": surface.NAME, "stream": False})
                for c in catalog]
        decisions = [d for d, _ in await s.policy.decide_many(docs)]
        visible = [c for c, d in zip(catalog, decisions) if d.allow]
        if decisions:
            first = decisions[0]
            ex.decision = first if wanted else Decision(
                allow=True, reasons=(f"{len(visible)} of {len(catalog)} catalog models visible",),
                revision=first.revision, cache_hit=all(d.cache_hit for d in decisions))
        if wanted is not None and not visible:  # hidden by policy (deny), or not in the catalog
            raise NotFound(f"the model {wanted} does not exist or you do not have access to it",
                           code="model_not_found", param="model", outcome="deny" if catalog else "error")
        ex.outcome = allowed_outcome(ex.decision)  # `bypass` while policy is bypassed
        body = self._render(surface, visible, single=wanted is not None)
        ex.status = 200
        await send_bytes(call.send, 200, body, call.response_headers())

    @staticmethod
    def _render(surface: Surface, models: list[Listed], single: bool) -> bytes:
        if surface is anthropic:
            items = [{"type": "model", "id": c.model, "display_name": c.model, "created_at": "2024-01-01T00:00:00Z"}
                     for c in models]
            if single:
                return orjson.dumps(items[0])
            return orjson.dumps({"data": items, "has_more": False,
                                 "first_id": items[0]["id"] if items else None,
                                 "last_id": items[-1]["id"] if items else None})
        items = [{"id": c.model, "object": "model", "created": 0, "owned_by": c.family} for c in models]
        return orjson.dumps(items[0] if single else {"object": "list", "data": items})


async def not_found(call: Call) -> None:
    """Any route the gateway does not serve: a 404 in the caller's format, audited."""
    call.ex.resource_name = call.scope["path"][:200]
    raise NotFound(f"unknown route: {call.scope['method']} {call.scope['path'][:200]}", code="unknown_route")


class OpsEndpoints:
    """/healthz (liveness), /readyz (policies loaded, audit writable, dependencies reachable), /metrics."""

    def __init__(self, services: Services, ready_check: Any) -> None:
        self.s = services
        self.ready_check = ready_check

    async def healthz(self, request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    async def readyz(self, request: Request) -> Response:
        # {"status", "problems": [...], "dependencies": {"redis": {"ok", "error"}, ...}}: gateway/readiness.py
        report = await self.ready_check()
        problems = report["problems"]
        body = orjson.dumps({**report,
                             # Details only: an open breaker never makes the replica unready, since
                             # its other upstreams and tool servers still work (and every replica
                             # would see the same dead target, so none would stay in the Service).
                             "breakers": self.s.breakers.snapshot()})
        return Response(body, status_code=200 if not problems else 503, media_type="application/json")

    async def metrics(self, request: Request) -> Response:
        self.s.metrics.set_depth(self.s.audit.depth)
        return Response(self.s.metrics.render(), media_type=self.s.metrics.content_type)
