"""Admin tokens (contract 7): only their SHA-256 is configured; a presented token is hashed
and compared with every configured hash in constant time, so neither the match nor its
position leaks through timing."""
from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from gateway.settings_lifecycle import AdminToken


@dataclass(frozen=True, slots=True)
class Operator:
    name: str  # the token's name: the actor in audit rows and lifecycle changes
    scopes: frozenset[str]


@dataclass(frozen=True, slots=True)
class Refusal:
    status: Literal[401, 403]
    code: Literal["unauthorized", "forbidden"]
    message: str  # safe to show and audit: never contains the token
    actor: str | None = None  # the token's name when it was valid but lacked the scope


class TokenBook:
    def __init__(self, tokens: Iterable[AdminToken]) -> None:
        self._tokens = tuple((t.sha256.encode(), Operator(t.name, frozenset(t.scopes))) for t in tokens)

    def operator(self, authorization: str | None) -> Operator | Refusal:
        """The operator an `Authorization: Bearer <token>` header names, or why not."""
        if not authorization:
            return Refusal(401, "unauthorized", "missing admin token (Authorization: Bearer <token>)")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return Refusal(401, "unauthorized", "admin token must be sent as Authorization: Bearer <token>")
        digest = hashlib.sha256(token.encode("utf-8")).hexdigest().encode()
        found: Operator | None = None
        for stored, op in self._tokens:  # no early exit: every hash is compared
            if hmac.compare_digest(stored, digest):
                found = op
        if found is None:
            return Refusal(401, "unauthorized", "unknown admin token")
        return found

    @staticmethod
    def allows(op: Operator, scope: str) -> Refusal | None:
        if scope in op.scopes:
            return None
        return Refusal(403, "forbidden", f"admin token {op.name!r} lacks the {scope!r} scope", actor=op.name)
