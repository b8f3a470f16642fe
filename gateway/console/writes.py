"""The console's writes: each form posts to a route that runs the admin API's own `Op` handler
with the session's operator as the actor, audited by the same AdminAudit (action
`admin.<op id>`, allow/deny/error). Checks, in order: a session (401), the CSRF token and
origin (403), the write scope (403); each refusal is audited like an admin auth failure.
"""
from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.admin.app import OPS, Failed
from gateway.admin.auth import Refusal
from gateway.admin.ops import Call, Op
from gateway.console.web import Console, form, safe_next

# console path -> (admin op id, the page to go back to when the form names none)
WRITES = {
    "/console/agents/{id}/revoke": ("agents.revoke", "/console/agents/{id}"),
    "/console/agents/{id}/reinstate": ("agents.reinstate", "/console/agents/{id}"),
    "/console/agents/{id}/promote": ("agents.promote", "/console/agents/{id}"),
    "/console/agents/{id}/demote": ("agents.demote", "/console/agents/{id}"),
    "/console/approvals/{id}/approve": ("approvals.approve", "/console/approvals"),
    "/console/approvals/{id}/reject": ("approvals.reject", "/console/approvals"),
    "/console/proposals/{id}/approve": ("proposals.approve", "/console/approvals"),
    "/console/proposals/{id}/reject": ("proposals.reject", "/console/approvals"),
}
DONE = {"agents.revoke": "revoked", "agents.reinstate": "reinstated", "agents.promote": "promoted",
        "agents.demote": "demoted", "approvals.approve": "approved", "approvals.reject": "rejected",
        "proposals.approve": "approved", "proposals.reject": "rejected"}
KINDS = {"agents": "Agent", "approvals": "Approval", "proposals": "Proposal"}


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


async def _fields(request: Request) -> dict[str, Any] | None:
    """The posted fields: a urlencoded form, or (fetch) a JSON object."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json":
        raw = await request.body()
        if len(raw) > 16 * 1024:
            return None
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return None
        return body if isinstance(body, dict) else None
    return await form(request)


def _handler_body(fields: dict[str, Any]) -> dict[str, Any]:
    """The form's fields as the admin handler's JSON body: a form's tier is text, an empty
    optional field means absent."""
    body = {k: v for k, v in fields.items() if k not in ("csrf", "next") and v != ""}
    tier = body.get("tier")
    if isinstance(tier, str):
        try:
            body["tier"] = int(tier)
        except ValueError:
            pass  # the handler refuses it with its own message
    return body


class Write:
    def __init__(self, c: Console, op: Op, back: str) -> None:
        self._c, self.op, self._back = c, op, back

    async def handle(self, request: Request) -> Response:
        c, op = self._c, self.op
        st = c.audit.stamp()
        session = c.sessions.session(request)
        fields = await _fields(request) if session is not None else {}
        why: Refusal | None
        if session is None:
            why = Refusal(401, "unauthorized", "no console session (log in at /console/login)")
        elif fields is None or not c.sessions.csrf_ok(request, session, fields.get("csrf")):
            why = Refusal(403, "forbidden", "CSRF check failed", actor=session.operator.name)
        else:
            why = c.book.allows(session.operator, op.scope)
        if why is not None:
            await c.audit.refused(request, op, why, st)
            if _wants_json(request) or session is None:
                return c.json({"error": {"code": why.code, "message": why.message, "request_id": st.rid}},
                              why.status)
            return c.render(request, "error.html", session, status=why.status,
                            title="Refused", message=why.message)
        assert session is not None and fields is not None
        call = Call(request, c.services, session.operator.name, body=_handler_body(fields))
        reply = await c.audit.run(request, op, call, st)
        target = request.path_params["id"]
        if _wants_json(request):
            if isinstance(reply, Failed):
                return c.json({"error": {"code": reply.code, "message": reply.message, "request_id": st.rid}},
                              reply.status)
            return c.json({"ok": True, "request_id": st.rid, "result": reply.payload}, reply.status)
        back = safe_next(fields.get("next"), self._back.replace("{id}", target))
        kind = KINDS[request.url.path.split("/")[2]]
        if isinstance(reply, Failed):
            return c.redirect(request, back, ("error", f"{kind} {target}: {reply.message}"))
        return c.redirect(request, back, ("ok", f"{kind} {target} {DONE[op.id]}."))


def write_routes(c: Console) -> list[Route]:
    ops = {op.id: op for op in OPS}
    return [Route(path, Write(c, ops[op_id], back).handle, methods=["POST"]) for path, (op_id, back) in WRITES.items()]
