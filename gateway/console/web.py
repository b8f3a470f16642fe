"""The console's shared machinery: templates, the session check every page makes, the
security headers every response carries, and redirects with a flash message."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from gateway.admin.app import AdminAudit
from gateway.admin.auth import TokenBook
from gateway.console import data
from gateway.console.session import (
    COOKIE,
    FLASH_COOKIE,
    LIFETIME_S,
    PATH,
    Session,
    Sessions,
)
from gateway.errors import BackendError
from gateway.services import Services

HERE = Path(__file__).parent
NAV = (("overview", "Overview", "/console"), ("live", "Live", "/console/live"),
       ("agents", "Agents", "/console/agents"), ("approvals", "Approvals", "/console/approvals"),
       ("events", "Events", "/console/events"), ("reports", "Reports", "/console/reports"),
       ("policy", "Policy", "/console/policy"))
# No inline script or style anywhere: everything comes from /console/static, so the policy
# can forbid the rest (uPlot sets styles through the CSSOM, which style-src does not govern).
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {"content-security-policy": CSP, "x-frame-options": "DENY", "x-content-type-options": "nosniff",
                    "referrer-policy": "same-origin", "cache-control": "no-store"}

MAX_FORM = 16 * 1024  # a reason, a tier, a maturity, a token and the CSRF token

Page = Callable[[Request, Session], Awaitable[Response]]


def templates() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                             autoescape=jinja2.select_autoescape(["html"], default=True),
                             trim_blocks=True, lstrip_blocks=True)  # a missing key renders empty, not a 500
    env.filters.update(ts=data.fmt_ts, ms=data.fmt_ms, pct=data.fmt_pct)
    return env


class Console:
    """Everything a console handler needs, built once per admin app (no module state)."""

    def __init__(self, services: Services, book: TokenBook) -> None:
        self.services = services
        self.book = book
        admin = services.settings.admin
        self.sessions = Sessions(admin.tokens, secret=admin.console_secret,
                                 trust_forwarded=services.settings.server.trust_forwarded_for)
        self.audit = AdminAudit(services)
        self.env = templates()

    @property
    def lifecycle(self) -> Any:
        return self.services.lifecycle

    # -- responses -----------------------------------------------------------------------

    def render(self, request: Request, name: str, session: Session | None, status: int = 200,
               **ctx: Any) -> Response:
        flash = self.sessions.flash(request) if session is not None else None
        ctx.setdefault("page", None)  # the nav entry to mark current
        ctx.setdefault("title", "Log in" if session is None else "Console")
        html = self.env.get_template(name).render(
            nav=NAV, session=session, operator=session.operator.name if session else None,
            can_write=bool(session and "write" in session.operator.scopes),
            csrf=session.csrf if session else "", flash=flash, here=request.url.path, **ctx)
        response = HTMLResponse(html, status, headers=SECURITY_HEADERS)
        if flash is not None:  # shown once
            response.delete_cookie(FLASH_COOKIE, path=PATH, httponly=True, samesite="strict")
        return response

    def json(self, payload: Any, status: int = 200) -> JSONResponse:
        return JSONResponse(payload, status, headers=SECURITY_HEADERS)

    def redirect(self, request: Request, url: str, flash: tuple[str, str] | None = None) -> Response:
        response = RedirectResponse(url, 303, headers={"cache-control": "no-store"})
        if flash is not None:
            response.set_cookie(FLASH_COOKIE, self.sessions.flash_value(*flash), max_age=60, path=PATH,
                                httponly=True, samesite="strict", secure=self.sessions.secure(request))
        return response

    def set_session(self, request: Request, response: Response, value: str) -> None:
        response.set_cookie(COOKIE, value, max_age=LIFETIME_S, path=PATH, httponly=True, samesite="strict",
                            secure=self.sessions.secure(request))

    def clear_session(self, request: Request, response: Response) -> None:
        response.delete_cookie(COOKIE, path=PATH, httponly=True, samesite="strict",
                               secure=self.sessions.secure(request))

    # -- the session check ---------------------------------------------------------------

    def page(self, handler: Page) -> Callable[[Request], Awaitable[Response]]:
        """A GET page: without a session, 303 to the login page (back here after it)."""
        async def endpoint(request: Request) -> Response:
            session = self.sessions.session(request)
            if session is None:
                return RedirectResponse("/console/login?" + urlencode({"next": _here(request)}), 303)
            try:
                return await handler(request, session)
            except BackendError as e:  # a store is down: say so, the operator retries
                return self.render(request, "error.html", session, status=503, title="Store unavailable",
                                   message=f"A store did not answer: {e}")
        return endpoint

    def api(self, handler: Page) -> Callable[[Request], Awaitable[Response]]:
        """A JSON or event-stream read: without a session, 401 (a script cannot follow a login)."""
        async def endpoint(request: Request) -> Response:
            session = self.sessions.session(request)
            if session is None:
                return self.json({"error": {"code": "unauthorized", "message": "log in to the console"}}, 401)
            try:
                return await handler(request, session)
            except BackendError as e:
                return self.json({"error": {"code": "store_unavailable", "message": str(e)}}, 503)
        return endpoint


async def form(request: Request) -> dict[str, str] | None:
    """A urlencoded form body (the console's forms send nothing else), or None when it is not
    one or is larger than any console form; parsed here, without python-multipart."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        return None
    raw = await request.body()
    if len(raw) > MAX_FORM:
        return None
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=50)
    except (UnicodeDecodeError, ValueError):
        return None
    return {k: v for k, v in pairs}


def _here(request: Request) -> str:
    q = request.url.query
    return request.url.path + (f"?{q}" if q else "")


def safe_next(value: str | None, default: str = "/console") -> str:
    """A redirect target from a form: only a path inside the console (no open redirect)."""
    if not value or not (value == "/console" or value.startswith(("/console/", "/console?"))):
        return default
    if "\\" in value or "//" in value:
        return default
    if any(c in value for c in "\r\n"):
        return default
    return value
