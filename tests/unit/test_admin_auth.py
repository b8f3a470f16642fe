"""Admin tokens: hashed, scoped, refused in words that never contain the token."""
from __future__ import annotations

import pytest

from gateway.admin.auth import Operator, Refusal, TokenBook
from gateway.admin.ops import duration_s, instant
from gateway.errors import InvalidRequest
from gateway.keys import hash_key
from gateway.settings_lifecycle import AdminToken

BOOK = TokenBook([AdminToken(name="w", sha256=hash_key("tok-w"), scopes=["read", "write"]),
                  AdminToken(name="r", sha256=hash_key("tok-r"), scopes=["read"])])


def test_a_configured_token_names_its_operator() -> None:
    assert BOOK.operator("Bearer tok-w") == Operator("w", frozenset({"read", "write"}))
    assert BOOK.operator("bearer   tok-r") == Operator("r", frozenset({"read"}))


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic dG9rLXc=", "tok-w", "Bearer tok-x",
                                    "Bearer " + hash_key("tok-w")])  # the stored hash is not a token
def test_anything_else_is_401_without_echoing_it(header: str | None) -> None:
    refusal = BOOK.operator(header)
    assert isinstance(refusal, Refusal) and (refusal.status, refusal.code) == (401, "unauthorized")
    secret = (header or "").partition(" ")[2].strip()
    assert not secret or secret not in refusal.message


def test_scopes() -> None:
    reader = BOOK.operator("Bearer tok-r")
    assert isinstance(reader, Operator)
    assert BOOK.allows(reader, "read") is None
    refusal = BOOK.allows(reader, "write")
    assert refusal is not None and (refusal.status, refusal.code, refusal.actor) == (403, "forbidden", "r")


def test_durations_and_instants() -> None:
    assert [duration_s(t) for t in ("90s", "30m", "24h", "7d", "2w", "1.5h")] == \
        [90, 1800, 86400, 604800, 1209600, 5400]
    assert instant("1700000000.5") == 1700000000.5
    assert instant("1h", clock=lambda: 10000.0) == 6400.0
    for bad in ("", "7", "d", "-1h", "1y", "yesterday"):
        with pytest.raises(InvalidRequest):
            duration_s(bad)
