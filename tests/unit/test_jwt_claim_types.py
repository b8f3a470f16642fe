"""JWT claim types: a correctly signed token with a wrongly typed claim is refused (401).

exp, iat and nbf are JSON numbers (RFC 7519 NumericDate; a fraction is allowed), never
strings or booleans; iss is a string; aud a string or a non-empty list of strings.
"""
from __future__ import annotations

import time
from typing import Any

import jwt
import orjson
import pytest

from adapters.identity.jwt import JWTSource
from gateway.errors import AuthenticationFailed
from tests.unit.test_identity import AUD, HS_SECRET, claims, fails, jwt_settings, started

def far() -> int:
    return int(time.time()) + 600  # at run time: a long suite must not age the tokens out


async def source() -> JWTSource:
    return await started(JWTSource(jwt_settings(hs_secret=HS_SECRET)))


def signed(**kw: Any) -> str:
    # Signed over raw JSON: pyjwt's own encoder refuses to write some of these claims.
    return jwt.api_jws.encode(orjson.dumps(claims(**kw)), HS_SECRET, algorithm="HS256")


@pytest.mark.parametrize("kw, says", [
    ({"exp": str(far())}, "(exp) must be a number"),            # int("...") used to accept it
    ({"exp": True}, "(exp) must be a number"),
    ({"exp": [far()]}, "(exp) must be a number"),
    ({"iat": str(int(time.time()))}, "(iat) must be a number"),
    ({"nbf": str(int(time.time()))}, "(nbf) must be a number"),
    ({"nbf": False}, "(nbf) must be a number"),
    ({"iss": 5}, "issuer is not accepted"),
    ({"iss": [claims()["iss"]]}, "issuer is not accepted"),
    ({"aud": 5}, "audience is not accepted"),
    ({"aud": [AUD, 5]}, "audience is not accepted"),
    ({"aud": []}, "claim aud"),
    ({"aud": {"a": AUD}}, "audience is not accepted"),
])
async def test_wrongly_typed_claims_are_refused(kw: dict[str, Any], says: str) -> None:
    token = signed(**kw)
    err = await fails((await source()).resolve(token), AuthenticationFailed, says, token)
    assert err.status == 401


@pytest.mark.parametrize("kw", [{}, {"exp": "fraction"}, {"nbf": "past"}, {"aud": [AUD]},
                                {"aud": ["someone-else", AUD]}])
async def test_well_typed_claims_pass(kw: dict[str, Any]) -> None:
    times = {"fraction": far() + 0.5, "past": int(time.time()) - 5}
    principal = await (await source()).resolve(signed(**{k: times.get(v, v) if isinstance(v, str) else v
                                                         for k, v in kw.items()}))
    assert principal is not None and principal.agent.id == "jwt-agent"
