"""Identity: API keys, JWTs (HS/RS/ES, JWKS over a real uvicorn server) and the resolution chain.

JWT time (exp/nbf/iat, JWKS cache ages) runs on a clock the tests move: no sleeping.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import socket
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from adapters.identity.apikeys import APIKeySource
from adapters.identity.jwt import JWTSource
from gateway.directory import AgentDirectory
from gateway.errors import AuthenticationFailed, GatewayError, Forbidden
from gateway.keys import hash_key, new_key
from gateway.agents_file import AgentsFile, load_agents
from gateway.settings import ConfigError, JWTSettings
from gateway.stages.identity import MISSING, IdentityResolver
from tests.support.clock import Clock
from tests.support.harness import Served, serve

ISS, AUD = "https://idp.test", "portcullis"
HS_SECRET = "test-hs-secret-0123456789abcdef-0123456789abcdef"

# Keys are generated once per module; RSA generation is the slow part.
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_KEY_2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())

KEY_FIN_PINNED, KEY_FIN_WS, KEY_ENG_WS, KEY_REVOKED = (
    "pk-fin-pinned-secret-1", "pk-fin-ws-secret-2", "pk-eng-ws-secret-3", "pk-revoked-secret-4")
ALL_SECRETS = (KEY_FIN_PINNED, KEY_FIN_WS, KEY_ENG_WS, KEY_REVOKED, HS_SECRET)


def pem(private_key: Any) -> str:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def agents_file() -> AgentsFile:
    return AgentsFile.model_validate({
        "workspaces": {"finance": {"default_agent": "ledger"}, "eng": {}},
        "agents": [
            {"id": "billing-bot", "tier": 2, "maturity": "intern", "workspace": "finance",
             "labels": {"team": "payments"}},
            {"id": "ledger", "tier": 1, "maturity": "student", "workspace": "finance"},
            {"id": "old-bot", "tier": 1, "maturity": "student", "workspace": "finance", "revoked": True},
            {"id": "ci-bot", "tier": 3, "maturity": "supervised", "workspace": "eng"},
        ],
        "keys": [
            {"id": "fin-pinned", "sha256": hash_key(KEY_FIN_PINNED), "workspace": "finance",
             "agent": "billing-bot"},
            {"id": "fin-ws", "sha256": hash_key(KEY_FIN_WS), "workspace": "finance"},
            {"id": "eng-ws", "sha256": hash_key(KEY_ENG_WS), "workspace": "eng"},
            {"id": "revoked", "sha256": hash_key(KEY_REVOKED), "workspace": "finance",
             "agent": "old-bot"},
        ],
    })


@pytest.fixture
def directory() -> AgentDirectory:
    return AgentDirectory.from_file(agents_file())


def jwt_settings(**kw: Any) -> JWTSettings:
    base: dict[str, Any] = {"issuer": ISS, "audience": AUD}
    if "hs_secret" in kw:
        base.update(algorithms=["HS256"], hs_secret_env="PORTCULLIS_JWT_SECRET")
    base.update(kw)
    return JWTSettings.model_validate(base)


def claims(**kw: Any) -> dict[str, Any]:
    now = int(time.time())
    c = {"sub": "jwt-agent", "iss": ISS, "aud": AUD, "iat": now, "exp": now + 600,
         "tier": 2, "maturity": "supervised", "workspace": "finance"}
    c.update(kw)
    return {k: v for k, v in c.items() if v is not None}


async def started(source: Any) -> Any:
    await source.start()
    return source


async def fails(coro: Any, exc_type: type[GatewayError], fragment: str,
                *secrets: str) -> GatewayError:
    """Await `coro`, expecting `exc_type` whose message has `fragment` and no secret."""
    with pytest.raises(exc_type) as info:
        await coro
    err = info.value
    assert fragment in err.message, err.message
    text = f"{err} {err.message} {err.headers} {err.param} {err!r}"
    for secret in (*ALL_SECRETS, *secrets):
        assert secret not in text
    return err


# ---- keys and directory ----------------------------------------------------------

def test_new_key_is_random_and_hashed() -> None:
    key, digest = new_key()
    other, _ = new_key(prefix="ag-")
    assert key.startswith("pk-") and other.startswith("ag-") and key != other
    assert len(key) > 40
    assert digest == hashlib.sha256(key.encode()).hexdigest() == hash_key(key)


def test_directory_lookups(directory: AgentDirectory) -> None:
    assert directory.agent("billing-bot").labels == {"team": "payments"}
    assert directory.agent("nobody") is None
    assert directory.default_agent("finance").id == "ledger"
    assert directory.default_agent("eng") is None
    assert directory.key_by_hash(hash_key(KEY_ENG_WS)).id == "eng-ws"
    assert directory.key_by_hash(hash_key("nope")) is None


def test_directory_from_yaml(tmp_path: Any) -> None:
    key, digest = new_key()
    path = tmp_path / "agents.yaml"
    path.write_text(
        "workspaces: {ops: {default_agent: pager}}\n"
        "agents:\n  - {id: pager, tier: 0, maturity: autonomous, workspace: ops}\n"
        f"keys:\n  - {{id: ops-key, sha256: {digest}, workspace: ops}}\n")
    d = AgentDirectory.from_file(load_agents(path))
    assert d.key_by_hash(hash_key(key)).workspace == "ops"
    assert d.default_agent("ops").maturity == "autonomous"


def test_duplicate_key_hash_is_refused() -> None:
    doc = agents_file().model_dump()
    doc["keys"].append({**doc["keys"][0], "id": "dup"})
    with pytest.raises(ValueError, match="share one key hash"):
        AgentDirectory.from_file(AgentsFile.model_validate(doc))


# ---- API keys through the resolver --------------------------------------------------

@pytest.fixture
def resolver(directory: AgentDirectory) -> IdentityResolver:
    return IdentityResolver([APIKeySource(directory)], directory, anonymous_agent=None)


async def test_pinned_key(resolver: IdentityResolver) -> None:
    agent, principal = await resolver.resolve({"authorization": f"Bearer {KEY_FIN_PINNED}"})
    assert agent.id == "billing-bot" and agent.tier == 2 and agent.workspace == "finance"
    assert principal.auth == "api_key" and principal.credential_id == "fin-pinned"
    assert principal.agent == agent
    assert KEY_FIN_PINNED not in repr((agent, principal))


async def test_pinned_key_with_its_own_agent_id(resolver: IdentityResolver) -> None:
    agent, _ = await resolver.resolve({"authorization": f"Bearer {KEY_FIN_PINNED}",
                                       "x-agent-id": "billing-bot"})
    assert agent.id == "billing-bot"


async def test_workspace_key_picks_agent(resolver: IdentityResolver) -> None:
    agent, principal = await resolver.resolve({"authorization": f"Bearer {KEY_FIN_WS}",
                                               "x-agent-id": "billing-bot"})
    assert agent.id == "billing-bot"
    assert principal.agent is None and principal.workspace == "finance"
    assert principal.credential_id == "fin-ws"


async def test_agent_of_other_workspace_is_403(resolver: IdentityResolver) -> None:
    await fails(resolver.resolve({"authorization": f"Bearer {KEY_FIN_WS}", "x-agent-id": "ci-bot"}),
                Forbidden, "agent ci-bot is not in workspace finance")
    await fails(resolver.resolve({"x-api-key": KEY_ENG_WS, "x-agent-id": "billing-bot"}),
                Forbidden, "agent billing-bot is not in workspace eng")


async def test_unknown_agent_id_is_403(resolver: IdentityResolver) -> None:
    await fails(resolver.resolve({"authorization": f"Bearer {KEY_FIN_WS}", "x-agent-id": "ghost"}),
                Forbidden, "agent ghost is not in workspace finance")


async def test_pinned_key_cannot_switch_to_sibling(resolver: IdentityResolver) -> None:
    err = await fails(resolver.resolve({"authorization": f"Bearer {KEY_FIN_PINNED}",
                                        "x-agent-id": "ledger"}),
                      Forbidden, "pinned to agent billing-bot")
    assert err.status == 403


async def test_default_agent(resolver: IdentityResolver) -> None:
    agent, principal = await resolver.resolve({"authorization": f"Bearer {KEY_FIN_WS}"})
    assert agent.id == "ledger" and principal.agent is None


async def test_workspace_without_default_is_403(resolver: IdentityResolver) -> None:
    await fails(resolver.resolve({"x-api-key": KEY_ENG_WS}), Forbidden,
                "workspace eng has no default agent; send X-Agent-Id")


async def test_no_credential_is_401(resolver: IdentityResolver) -> None:
    err = await fails(resolver.resolve({}), AuthenticationFailed, MISSING)
    assert err.status == 401
    await fails(resolver.resolve({"x-agent-id": "ledger"}), AuthenticationFailed, MISSING)


async def test_anonymous_agent(directory: AgentDirectory) -> None:
    r = IdentityResolver([APIKeySource(directory)], directory, anonymous_agent="ledger")
    agent, principal = await r.resolve({})
    assert agent.id == "ledger"
    assert principal.auth == "anonymous" and principal.workspace == "finance"
    # A credential still takes precedence, and a bad one is still refused.
    agent, _ = await r.resolve({"x-api-key": KEY_FIN_PINNED})
    assert agent.id == "billing-bot"
    await fails(r.resolve({"x-api-key": "pk-wrong"}), AuthenticationFailed, "invalid API key")
    # Naming another agent without a credential does not borrow the anonymous one.
    await fails(r.resolve({"x-agent-id": "billing-bot"}), AuthenticationFailed, MISSING)


def test_unknown_anonymous_agent_is_config_error(directory: AgentDirectory) -> None:
    with pytest.raises(ConfigError, match="identity.anonymous_agent"):
        IdentityResolver([], directory, anonymous_agent="ghost")


async def test_revoked_agent(resolver: IdentityResolver) -> None:
    await fails(resolver.resolve({"x-api-key": KEY_REVOKED}), Forbidden,
                "agent old-bot is revoked")
    await fails(resolver.resolve({"x-api-key": KEY_FIN_WS, "x-agent-id": "old-bot"}),
                Forbidden, "agent old-bot is revoked")


async def test_unknown_key_is_401(resolver: IdentityResolver) -> None:
    await fails(resolver.resolve({"authorization": "Bearer pk-not-a-real-key"}),
                AuthenticationFailed, "invalid API key or token", "pk-not-a-real-key")


async def test_x_api_key_and_precedence(resolver: IdentityResolver) -> None:
    agent, _ = await resolver.resolve({"x-api-key": KEY_FIN_PINNED})
    assert agent.id == "billing-bot"
    # Authorization wins over x-api-key, whichever is valid.
    agent, _ = await resolver.resolve({"authorization": f"Bearer {KEY_FIN_WS}",
                                       "x-api-key": KEY_FIN_PINNED})
    assert agent.id == "ledger"
    await fails(resolver.resolve({"authorization": "Bearer pk-bogus", "x-api-key": KEY_FIN_PINNED}),
                AuthenticationFailed, "invalid API key or token", "pk-bogus")


async def test_unsupported_scheme_does_not_echo_the_value(resolver: IdentityResolver) -> None:
    await fails(resolver.resolve({"authorization": f"Basic {KEY_FIN_WS}"}),
                AuthenticationFailed, "unsupported authorization scheme")
    # A bare key with no scheme must not leak through the "scheme" in the message.
    await fails(resolver.resolve({"authorization": KEY_FIN_WS}),
                AuthenticationFailed, "unsupported authorization scheme")
    await fails(resolver.resolve({"authorization": "Bearer   "}), AuthenticationFailed,
                "empty bearer credential")


async def test_api_key_source_returns_none_for_unknown(directory: AgentDirectory) -> None:
    assert await APIKeySource(directory).resolve("pk-unknown") is None


# ---- JWT with static keys ---------------------------------------------------------

@pytest.fixture
def hs_source() -> JWTSource:
    return JWTSource(jwt_settings(hs_secret=HS_SECRET))


async def test_jwt_hs256_through_chain(directory: AgentDirectory, hs_source: JWTSource) -> None:
    r = IdentityResolver([APIKeySource(directory), hs_source], directory, None)
    await hs_source.start()
    token = jwt.encode(claims(), HS_SECRET, algorithm="HS256")
    agent, principal = await r.resolve({"authorization": f"Bearer {token}"})
    assert (agent.id, agent.tier, agent.maturity, agent.workspace) == (
        "jwt-agent", 2, "supervised", "finance")
    assert principal.auth == "jwt" and principal.credential_id == "jwt-agent"
    assert principal.agent == agent and token not in repr((agent, principal))
    # A JWT names its agent, so it is pinned like a pinned key.
    await fails(r.resolve({"authorization": f"Bearer {token}", "x-agent-id": "ledger"}),
                Forbidden, "pinned to agent jwt-agent", token)
    await hs_source.aclose()


async def test_jwt_agent_revoked_or_foreign_in_directory(directory: AgentDirectory,
                                                         hs_source: JWTSource) -> None:
    r = IdentityResolver([hs_source], directory, None)
    revoked = jwt.encode(claims(sub="old-bot", tier=1), HS_SECRET, algorithm="HS256")
    await fails(r.resolve({"authorization": f"Bearer {revoked}"}), Forbidden,
                "agent old-bot is revoked", revoked)
    foreign = jwt.encode(claims(sub="ci-bot"), HS_SECRET, algorithm="HS256")
    await fails(r.resolve({"authorization": f"Bearer {foreign}"}), Forbidden,
                "agent ci-bot is not in workspace finance", foreign)


async def test_jwt_rs256_public_key() -> None:
    src = await started(JWTSource(jwt_settings(public_key=pem(RSA_KEY))))
    token = jwt.encode(claims(sub="rs-agent", tier=0), RSA_KEY, algorithm="RS256")
    p = await src.resolve(token)
    assert p is not None and p.agent.id == "rs-agent" and p.agent.tier == 0


async def test_jwt_es256_public_key_file(tmp_path: Any) -> None:
    (tmp_path / "ec.pem").write_text(pem(EC_KEY))
    src = await started(JWTSource(jwt_settings(public_key_file="ec.pem", algorithms=["ES256"]),
                                  base_dir=tmp_path))
    token = jwt.encode(claims(sub="es-agent", workspace="eng"), EC_KEY, algorithm="ES256")
    p = await src.resolve(token)
    assert p is not None and p.workspace == "eng" and p.agent.id == "es-agent"


async def test_jwt_missing_public_key_file_is_config_error(tmp_path: Any) -> None:
    src = JWTSource(jwt_settings(public_key_file="absent.pem"), base_dir=tmp_path)
    with pytest.raises(ConfigError, match="public_key_file"):
        await src.start()


async def test_jwt_expired(hs_source: JWTSource) -> None:
    now = int(time.time())
    token = jwt.encode(claims(iat=now - 1000, exp=now - 100), HS_SECRET, algorithm="HS256")
    await fails(hs_source.resolve(token), AuthenticationFailed, "JWT has expired", token)


async def test_jwt_times_are_checked_on_the_injected_clock() -> None:
    clock = Clock(1_900_000_000.0)  # years from now: only the injected clock can decide
    src = JWTSource(jwt_settings(hs_secret=HS_SECRET), clock=clock)  # leeway_s: 30
    t = int(clock.t)
    token = jwt.encode(claims(iat=t, nbf=t + 100, exp=t + 600), HS_SECRET, algorithm="HS256")
    await fails(src.resolve(token), AuthenticationFailed, "not yet valid (iat or nbf in the future)", token)
    clock.t = t + 70  # nbf is 30 s ahead: within the leeway
    assert (await src.resolve(token)).agent.id == "jwt-agent"
    clock.t = t + 629  # exp passed 29 s ago: within the leeway
    assert (await src.resolve(token)).agent.id == "jwt-agent"
    clock.t = t + 630
    await fails(src.resolve(token), AuthenticationFailed, "JWT has expired", token)
    clock.t = t - 31  # issued 31 s in the future
    fresh = jwt.encode(claims(iat=t, exp=t + 600), HS_SECRET, algorithm="HS256")
    await fails(src.resolve(fresh), AuthenticationFailed, "not yet valid", fresh)
    clock.t = t - 30
    assert (await src.resolve(fresh)).agent.id == "jwt-agent"


@pytest.mark.parametrize("claim, says", [("exp", "Expiration Time claim (exp) must be a number"),
                                         ("nbf", "Not Before claim (nbf) must be a number"),
                                         ("iat", "Issued At claim (iat) must be a number")])
async def test_jwt_time_claims_must_be_integers(hs_source: JWTSource, claim: str, says: str) -> None:
    token = jwt.encode(claims(**{claim: "soon"}), HS_SECRET, algorithm="HS256")
    await fails(hs_source.resolve(token), AuthenticationFailed, f"JWT is invalid: {says}", token)


async def test_jwt_wrong_signature() -> None:
    src = await started(JWTSource(jwt_settings(public_key=pem(RSA_KEY))))
    token = jwt.encode(claims(), RSA_KEY_2, algorithm="RS256")
    await fails(src.resolve(token), AuthenticationFailed, "JWT signature is invalid", token)
    hs = JWTSource(jwt_settings(hs_secret=HS_SECRET))
    forged = jwt.encode(claims(), "another-secret-of-sufficient-length-000000", algorithm="HS256")
    await fails(hs.resolve(forged), AuthenticationFailed, "JWT signature is invalid", forged)


async def test_jwt_wrong_audience_and_issuer(hs_source: JWTSource) -> None:
    token = jwt.encode(claims(aud="someone-else"), HS_SECRET, algorithm="HS256")
    await fails(hs_source.resolve(token), AuthenticationFailed, "audience", token)
    token = jwt.encode(claims(iss="https://evil.test"), HS_SECRET, algorithm="HS256")
    await fails(hs_source.resolve(token), AuthenticationFailed, "issuer", token)


@pytest.mark.parametrize("claim", ["exp", "iat", "iss", "aud"])
async def test_jwt_missing_registered_claim(hs_source: JWTSource, claim: str) -> None:
    token = jwt.encode(claims(**{claim: None}), HS_SECRET, algorithm="HS256")
    await fails(hs_source.resolve(token), AuthenticationFailed, f"JWT is missing claim {claim}", token)


@pytest.mark.parametrize("override, fragment", [
    ({"sub": None}, "missing claim sub"),
    ({"workspace": None}, "missing claim workspace"),
    ({"tier": None}, "missing claim tier"),
    ({"tier": "2"}, "tier must be an integer"),
    ({"tier": True}, "tier must be an integer"),
    # Tiers and maturities outside the policy's vocabulary: tests/unit/test_policy_vocabulary.py
])
async def test_jwt_bad_agent_claims(hs_source: JWTSource, override: dict, fragment: str) -> None:
    token = jwt.encode(claims(**override), HS_SECRET, algorithm="HS256")
    await fails(hs_source.resolve(token), AuthenticationFailed, fragment, token)


async def test_jwt_custom_claim_names() -> None:
    src = JWTSource(jwt_settings(hs_secret=HS_SECRET, claim_agent_id="agent", claim_tier="t",
                                 claim_maturity="m", claim_workspace="ws"))
    token = jwt.encode(claims(agent="mapped", t=4, m="autonomous", ws="eng", tier=None,
                              maturity=None, workspace=None, iat=int(time.time()),
                              exp=int(time.time()) + 900),
                       HS_SECRET, algorithm="HS256")
    p = await src.resolve(token)
    assert (p.agent.id, p.agent.tier, p.agent.maturity, p.workspace) == ("mapped", 4, "autonomous", "eng")
    assert p.credential_id == "jwt-agent"  # sub, distinct from the mapped agent id


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_jwt_alg_none_is_refused(hs_source: JWTSource) -> None:
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims()).encode())
    for token in (f"{header}.{body}.", f"{header}.{body}.c2ln"):
        await fails(hs_source.resolve(token), AuthenticationFailed,
                    "JWT algorithm none is not allowed", token)


async def test_jwt_key_confusion_is_refused() -> None:
    """HS256 signed with the RSA public key as HMAC secret, against an RS256-only config."""
    public_pem = pem(RSA_KEY)
    src = await started(JWTSource(jwt_settings(public_key=public_pem)))
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims()).encode())
    signing_input = f"{header}.{body}".encode()
    sig = b64url(hmac.new(public_pem.encode(), signing_input, hashlib.sha256).digest())
    token = f"{header}.{body}.{sig}"
    await fails(src.resolve(token), AuthenticationFailed, "JWT algorithm HS256 is not allowed", token)


async def test_jwt_allowed_alg_with_wrong_key_type() -> None:
    # Both RS256 and ES256 allowed, RSA key configured: an ES256 token cannot verify.
    src = await started(JWTSource(jwt_settings(public_key=pem(RSA_KEY),
                                               algorithms=["RS256", "ES256"])))
    token = jwt.encode(claims(), EC_KEY, algorithm="ES256")
    await fails(src.resolve(token), AuthenticationFailed, "ES256", token)


async def test_jwt_ttl_over_tier_max(hs_source: JWTSource) -> None:
    now = int(time.time())
    token = jwt.encode(claims(tier=3, iat=now, exp=now + 3600), HS_SECRET, algorithm="HS256")
    await fails(hs_source.resolve(token), AuthenticationFailed,
                "token lifetime 3600s exceeds 900s allowed for tier 3", token)
    ok = jwt.encode(claims(tier=3, iat=now, exp=now + 900), HS_SECRET, algorithm="HS256")
    assert (await hs_source.resolve(ok)).agent.tier == 3
    t0 = jwt.encode(claims(tier=0, iat=now, exp=now + 3600), HS_SECRET, algorithm="HS256")
    assert (await hs_source.resolve(t0)).agent.tier == 0


async def test_jwt_source_ignores_non_jwt(hs_source: JWTSource) -> None:
    for token in ("pk-plain-api-key", "a.b", "a.b.c.d", "a!.b.c", "bm90.anNvbg.x"):
        assert await hs_source.resolve(token) is None


# ---- JWKS over a real server ------------------------------------------------------

class JWKSServer:
    """A Starlette app serving a mutable JWKS, run by uvicorn on 127.0.0.1."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.hits = 0
        self.served: Served | None = None
        self.url = ""

    async def jwks(self, request: Request) -> JSONResponse:
        self.hits += 1
        return JSONResponse({"keys": self.keys})

    async def __aenter__(self) -> "JWKSServer":
        app = Starlette(routes=[Route("/.well-known/jwks.json", self.jwks)])
        self.served = await serve(app, lifespan="off")
        self.url = self.served.url + "/.well-known/jwks.json"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self.served is not None
        await self.served.stop()


def rsa_jwk(key: Any, kid: str) -> dict[str, Any]:
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "use": "sig", "alg": "RS256"}


def ec_jwk(key: Any, kid: str) -> dict[str, Any]:
    return {**jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid}


@pytest.fixture
async def jwks_server() -> Any:
    async with JWKSServer() as server:
        yield server


async def test_jwks_verify_cache_and_rotation(jwks_server: JWKSServer) -> None:
    jwks_server.keys = [rsa_jwk(RSA_KEY, "k1"), ec_jwk(EC_KEY, "e1")]
    # A long refetch interval makes the kid-flood limit deterministic in this test.
    src = JWTSource(jwt_settings(jwks_url=jwks_server.url, algorithms=["RS256", "ES256"]),
                    kid_refetch_interval_s=3600)
    await src.start()
    try:
        assert jwks_server.hits == 1
        t1 = jwt.encode(claims(sub="a1"), RSA_KEY, algorithm="RS256", headers={"kid": "k1"})
        e1 = jwt.encode(claims(sub="e1"), EC_KEY, algorithm="ES256", headers={"kid": "e1"})
        assert (await src.resolve(t1)).agent.id == "a1"
        assert (await src.resolve(e1)).agent.id == "e1"
        assert (await src.resolve(t1)).agent.id == "a1"
        assert jwks_server.hits == 1  # cached

        # A JWK that declares RS256 cannot verify an ES256 token claiming its kid.
        forged = jwt.encode(claims(), EC_KEY, algorithm="ES256", headers={"kid": "k1"})
        await fails(src.resolve(forged), AuthenticationFailed, "does not match the signing key", forged)

        # Rotation: the IdP now publishes only k2; the first unknown kid triggers one refetch.
        jwks_server.keys = [rsa_jwk(RSA_KEY_2, "k2")]
        t2 = jwt.encode(claims(sub="a2"), RSA_KEY_2, algorithm="RS256", headers={"kid": "k2"})
        assert (await src.resolve(t2)).agent.id == "a2"
        assert jwks_server.hits == 2
        await fails(src.resolve(t1), AuthenticationFailed, "kid k1 is not in the JWKS", t1)

        # Further unknown kids inside the refetch interval do not hit the IdP.
        t9 = jwt.encode(claims(), RSA_KEY_2, algorithm="RS256", headers={"kid": "k9"})
        await fails(src.resolve(t9), AuthenticationFailed, "kid k9 is not in the JWKS", t9)
        assert jwks_server.hits == 2
    finally:
        await src.aclose()


async def test_jwks_refetch_when_interval_allows(jwks_server: JWKSServer) -> None:
    jwks_server.keys = [rsa_jwk(RSA_KEY, "k1")]
    src = JWTSource(jwt_settings(jwks_url=jwks_server.url), kid_refetch_interval_s=0)
    await src.start()
    try:
        for kid in ("x1", "x2"):
            token = jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": kid})
            await fails(src.resolve(token), AuthenticationFailed, f"kid {kid} is not in the JWKS")
        assert jwks_server.hits == 3  # start + one refetch per unknown kid
    finally:
        await src.aclose()


async def test_jwks_expiry_refetches(jwks_server: JWKSServer) -> None:
    jwks_server.keys = [rsa_jwk(RSA_KEY, "k1")]
    clock = Clock(time.time())
    src = JWTSource(jwt_settings(jwks_url=jwks_server.url, jwks_cache_s=60), kid_refetch_interval_s=3600,
                    clock=clock)
    await src.start()
    try:
        t0 = int(clock.t)  # the token stays valid on every clock reading below
        token = jwt.encode(claims(iat=t0 - 700, exp=t0 + 1000), RSA_KEY, algorithm="RS256", headers={"kid": "k1"})
        await src.resolve(token)
        clock.t += 59.9
        await src.resolve(token)
        assert jwks_server.hits == 1  # still cached
        clock.t += 0.1
        await src.resolve(token)
        assert jwks_server.hits == 2  # jwks_cache_s is up: fetched again
        clock.t -= 600  # the wall clock stepped back: the cached keys are stale, never fresher
        await src.resolve(token)
        assert jwks_server.hits == 3
    finally:
        await src.aclose()


async def test_jwks_unreachable(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:  # a port that was free a moment ago and has no listener
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = JWTSource(jwt_settings(jwks_url=f"http://127.0.0.1:{port}/jwks.json"))
    with caplog.at_level(logging.WARNING, logger="portcullis.identity.jwt"):
        await src.start()  # logs, does not raise: the IdP may come up later
        token = jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "k1"})
        await fails(src.resolve(token), AuthenticationFailed, "could not fetch JWKS", token)
    assert "JWKS fetch" in caplog.text and token not in caplog.text
    await src.aclose()
