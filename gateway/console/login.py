"""Logging in to the console with an admin token, and out.

The token is checked by the admin API's TokenBook (one implementation of the rule); a failed
login is refused like a failed admin call: an `admin.auth_failed` event and a `deny` row of
action `admin.console.login`. A successful one is an `allow` row naming the operator.
"""
from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.admin.auth import Operator, Refusal
from gateway.admin.ops import Call, Op
from gateway.console.web import Console, form, safe_next
from gateway.keys import hash_key

MAX_TOKEN = 512  # an admin token is ~40 characters; anything far longer is not one


async def _not_an_api_call(call: Call) -> Any:  # the Ops below only name audit rows
    raise NotImplementedError


LOGIN = Op("console.login", "POST", "/console/login", "read", _not_an_api_call)
LOGOUT = Op("console.logout", "POST", "/console/logout", "read", _not_an_api_call)


def login_routes(c: Console) -> list[Route]:
    async def login_form(request: Request) -> Response:
        if c.sessions.session(request) is not None:
            return c.redirect(request, safe_next(request.query_params.get("next")))
        return c.render(request, "login.html", None, next=safe_next(request.query_params.get("next")),
                        error=None)

    async def login(request: Request) -> Response:
        st = c.audit.stamp()
        fields = await form(request) or {}
        token = fields.get("token", "").strip()
        nxt = safe_next(fields.get("next"))
        who: Operator | Refusal
        if not token or len(token) > MAX_TOKEN:
            who = Refusal(401, "unauthorized", "missing admin token")
        else:
            who = c.book.operator("Bearer " + token)
            if isinstance(who, Operator):
                who = c.book.allows(who, "read") or who
        if isinstance(who, Refusal):
            await c.audit.refused(request, LOGIN, who, st)
            message = "That token is not a console token." if who.status == 401 else who.message
            return c.render(request, "login.html", None, status=who.status, next=nxt, error=message)
        await c.audit.record(request, LOGIN, Call(request, c.services, who.name), st, 303, "allow")
        response = c.redirect(request, nxt)
        c.set_session(request, response, c.sessions.issue(who, hash_key(token)))
        return response

    async def logout(request: Request) -> Response:
        session = c.sessions.session(request)
        if session is not None:
            fields = await form(request) or {}
            if not c.sessions.csrf_ok(request, session, fields.get("csrf")):
                st = c.audit.stamp()
                why = Refusal(403, "forbidden", "CSRF check failed", actor=session.operator.name)
                await c.audit.refused(request, LOGOUT, why, st)
                return c.render(request, "error.html", session, status=403, title="Forbidden",
                                message="CSRF check failed")
        response = c.redirect(request, "/console/login")
        c.clear_session(request, response)
        return response

    return [Route("/console/login", login_form, methods=["GET"]),
            Route("/console/login", login, methods=["POST"]),
            Route("/console/logout", logout, methods=["POST"])]
