"""Console sessions: a signed cookie naming an admin token by fingerprint, and CSRF tokens.

The cookie holds no secret and no scope: it is `payload.signature`, the payload being the
operator's name (for the log only), a fingerprint of the token's configured sha256, a random
nonce and an expiry. Every request re-resolves the operator from the configured tokens by that
fingerprint, so removing a token from the config logs its sessions out and scopes always come
from the config. The signing key is an HMAC of every configured token hash under
`admin.console_secret` (random per process when unset), so replicas sharing the secret accept
each other's cookies and a changed token set invalidates them all.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from starlette.requests import Request

from gateway.admin.auth import Operator
from gateway.settings_lifecycle import AdminToken

COOKIE = "portcullis_console"
FLASH_COOKIE = "portcullis_console_flash"
PATH = "/console"
LIFETIME_S = 8 * 3600


@dataclass(frozen=True, slots=True)
class Session:
    operator: Operator
    nonce: str
    expires: float
    csrf: str  # the token every form of this session carries


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    """Makes and checks session cookies, CSRF tokens and flash messages for one token config."""

    def __init__(self, tokens: Iterable[AdminToken], *, secret: str | None = None, trust_forwarded: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        self._tokens = tuple(tokens)
        self._trust_forwarded = trust_forwarded  # X-Forwarded-Proto decides Secure and the origin
        # The token hashes are configuration, not secrets: alone they would let anyone who reads
        # the config forge a session. They still go into the key, so a changed token set ends
        # every session; the secret (admin.console_secret) or a random per-process key signs.
        hashes = sorted(t.sha256 for t in self._tokens)
        secret_bytes = secret.encode() if secret else secrets.token_bytes(32)
        self._key = hmac.new(secret_bytes, ("portcullis-console" + "".join(hashes)).encode(),
                             hashlib.sha256).digest()
        # fingerprint -> operator; the fingerprint is keyed so a cookie does not reveal the hash
        self._by_fp = {self._fingerprint(t.sha256): Operator(t.name, frozenset(t.scopes)) for t in self._tokens}
        self._clock = clock

    def _mac(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def _fingerprint(self, sha256_hex: str) -> str:
        return self._mac("fp" + sha256_hex)[:32]

    def csrf_for(self, nonce: str) -> str:
        return self._mac("csrf" + nonce)

    def issue(self, operator: Operator, token_sha256: str) -> str:
        """The cookie value for a freshly logged-in operator (token checked by the caller)."""
        payload = {"op": operator.name, "fp": self._fingerprint(token_sha256), "n": secrets.token_hex(16),
                   "exp": int(self._clock() + LIFETIME_S)}
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        return body + "." + self._mac("session" + body)

    def session(self, request: Request) -> Session | None:
        """The request's session, or None (no cookie, bad signature, expired, token removed)."""
        raw = request.cookies.get(COOKIE)
        if not raw or "." not in raw or len(raw) > 4096:
            return None
        body, _, sig = raw.rpartition(".")
        if not hmac.compare_digest(sig.encode(), self._mac("session" + body).encode()):
            return None
        try:
            payload = json.loads(_unb64(body))
            fp, nonce, exp = str(payload["fp"]), str(payload["n"]), float(payload["exp"])
        except (ValueError, KeyError, TypeError):
            return None
        if exp <= self._clock():
            return None
        operator = self._by_fp.get(fp)
        if operator is None:
            return None
        return Session(operator, nonce, exp, self.csrf_for(nonce))

    def csrf_ok(self, request: Request, session: Session, form_token: str | None) -> bool:
        """The session's CSRF token in the form or the X-CSRF-Token header, and a same-origin
        Origin when the browser sent one (SameSite=Strict already keeps the cookie off
        cross-site requests; this is the second lock)."""
        given = form_token or request.headers.get("x-csrf-token") or ""
        if not hmac.compare_digest(given.encode(), session.csrf.encode()):
            return False
        origin = request.headers.get("origin")
        if origin is None:
            return True
        return origin == own_origin(request, self._trust_forwarded)

    def secure(self, request: Request) -> bool:
        return scheme(request, self._trust_forwarded) == "https"

    # -- flash messages: one signed, short-lived cookie read by the next page ----------------

    def flash_value(self, kind: str, text: str) -> str:
        body = _b64(json.dumps({"k": kind, "t": text[:500]}).encode())
        return body + "." + self._mac("flash" + body)

    def flash(self, request: Request) -> tuple[str, str] | None:
        raw = request.cookies.get(FLASH_COOKIE)
        if not raw or "." not in raw:
            return None
        body, _, sig = raw.rpartition(".")
        if not hmac.compare_digest(sig.encode(), self._mac("flash" + body).encode()):
            return None
        try:
            data = json.loads(_unb64(body))
            return str(data["k"]), str(data["t"])
        except (ValueError, KeyError, TypeError):
            return None


def scheme(request: Request, trust_forwarded: bool) -> str:
    if trust_forwarded:
        proto = request.headers.get("x-forwarded-proto")
        if proto:
            return proto.split(",")[0].strip().lower()
    return request.url.scheme


def own_origin(request: Request, trust_forwarded: bool) -> str:
    host = request.headers.get("host") or request.url.netloc
    return f"{scheme(request, trust_forwarded)}://{host}"
