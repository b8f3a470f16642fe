"""Bearer JWTs verified with pyjwt against a JWKS URL, a PEM public key or an HS secret.

The header's `alg` is checked against the allowlist before anything else, so
`none` and key-confusion tokens (HS256 signed with an RSA public key) never
reach a verifier. JWKS documents are fetched with httpx (pyjwt's PyJWKClient is
blocking urllib and would stall the event loop).

Time comes from an injected clock (`time.time` by default): pyjwt verifies the
signature, issuer, audience and required claims, and exp/nbf/iat are checked against
the clock with pyjwt's own rules, since pyjwt reads the wall clock itself
(jpadilla/pyjwt#921). JWKS cache ages are measured on the same clock.
"""
from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import httpx
import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gateway.errors import AuthenticationFailed
from gateway.settings import ConfigError, JWTSettings
from gateway.types import Agent, Principal, Vocabulary

log = logging.getLogger("portcullis.identity.jwt")

# Three base64url segments; the signature may be empty (alg=none), which is then
# refused by the allowlist with a clear message rather than "unknown key".
_JWT_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
_REQUIRED = ["exp", "iat", "iss", "aud"]
_CLOCK_CHECKED = {"verify_exp": False, "verify_nbf": False, "verify_iat": False}


def _show(value: Any, limit: int = 40) -> str:
    """A header/claim value fit for an error message: attacker-controlled, so bounded."""
    text = str(value)
    return text if len(text) <= limit and text.isprintable() else text[:limit].encode(
        "unicode_escape").decode("ascii") + "…"


def _check_times(claims: Mapping[str, Any], now: float, leeway: float) -> None:
    """pyjwt's exp/nbf/iat rules and exceptions, against `now` instead of pyjwt's own clock.

    A time claim is a JSON number (RFC 7519 NumericDate), never a string or a boolean:
    int("9999999999") would otherwise accept a string `exp` the issuer never meant."""
    def seconds(claim: str, error: type[jwt.PyJWTError], what: str) -> float:
        value = claims[claim]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise error(f"{what} claim ({claim}) must be a number.")
        return value

    if "iat" in claims and seconds("iat", jwt.InvalidIssuedAtError, "Issued At") > now + leeway:
        raise jwt.ImmatureSignatureError("The token is not yet valid (iat)")
    if "nbf" in claims and seconds("nbf", jwt.DecodeError, "Not Before") > now + leeway:
        raise jwt.ImmatureSignatureError("The token is not yet valid (nbf)")
    if "exp" in claims and seconds("exp", jwt.DecodeError, "Expiration Time") <= now - leeway:
        raise jwt.ExpiredSignatureError("Signature has expired")


def _check_strings(claims: Mapping[str, Any]) -> None:
    """iss a string; aud a string or a non-empty list of strings (RFC 7519 4.1.3). pyjwt
    compares them to the configured values already; this refuses other types outright."""
    aud = claims.get("aud")
    if not isinstance(claims.get("iss"), str):
        raise jwt.InvalidIssuerError("Issuer claim (iss) must be a string.")
    if not (isinstance(aud, str) or (isinstance(aud, list) and aud and all(isinstance(a, str) for a in aud))):
        raise jwt.InvalidAudienceError("Audience claim (aud) must be a string or a list of strings.")


class JWTSource:
    name = "jwt"

    def __init__(self, settings: JWTSettings, *, base_dir: str | Path | None = None,
                 kid_refetch_interval_s: float = 30.0, http_timeout_s: float = 5.0,
                 clock: Callable[[], float] = time.time,
                 vocabulary: Callable[[], Vocabulary] = Vocabulary) -> None:
        self._s = settings
        self._clock = clock  # seconds since the epoch
        self._vocabulary = vocabulary  # the loaded policy's tiers and maturities
        self._base_dir = Path(base_dir) if base_dir is not None else None
        self._kid_refetch_interval_s = kid_refetch_interval_s
        self._http_timeout_s = http_timeout_s
        self._static_key: Any = None  # PEM-loaded public key or HS secret
        self._http: httpx.AsyncClient | None = None
        self._jwks: dict[str | None, dict[str, Any]] = {}  # kid -> JWK dict
        self._jwk_cache: dict[tuple[str | None, str], jwt.PyJWK] = {}
        self._jwks_fetched_at = -math.inf  # clock time of the last good fetch
        self._jwks_failed_at = -math.inf  # of the last failed one: no fetch for a while after it
        self._last_kid_refetch = -math.inf
        self._jwks_generation = 0
        self._lock = asyncio.Lock()

    # ---- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        self._load_static_key()
        if self._s.jwks_url:
            try:
                await self._refresh(force=False)
            except AuthenticationFailed:
                # The IdP may come up after us; resolve() retries on demand.
                log.warning("JWKS not available at startup; will retry on first token")

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # ---- resolution ----------------------------------------------------------

    async def resolve(self, token: str) -> Principal | None:
        if not _JWT_SHAPE.match(token):
            return None
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None  # dotted but not a JWT; let the chain call it unknown
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._s.algorithms:
            raise AuthenticationFailed(f"JWT algorithm {_show(alg)} is not allowed")
        key = await self._key_for(header, alg)
        claims = self._verify(token, key, alg)
        agent = self._agent(claims)
        self._check_ttl(claims, agent.tier)
        sub = claims.get("sub")
        return Principal(workspace=agent.workspace, auth="jwt", agent=agent,
                         credential_id=str(sub) if sub else agent.id)

    def _verify(self, token: str, key: Any, alg: str) -> dict[str, Any]:
        s = self._s
        try:
            claims = jwt.decode(token, key, algorithms=[alg], audience=s.audience, issuer=s.issuer,
                                options={"require": _REQUIRED, **_CLOCK_CHECKED})
            _check_times(claims, self._clock(), s.leeway_s)
            _check_strings(claims)
            return claims
        except jwt.ExpiredSignatureError:
            raise AuthenticationFailed("JWT has expired") from None
        except jwt.InvalidSignatureError:
            raise AuthenticationFailed("JWT signature is invalid") from None
        except jwt.InvalidAudienceError:
            raise AuthenticationFailed("JWT audience is not accepted") from None
        except jwt.InvalidIssuerError:
            raise AuthenticationFailed("JWT issuer is not accepted") from None
        except jwt.MissingRequiredClaimError as e:
            raise AuthenticationFailed(f"JWT is missing claim {e.claim}") from None
        except jwt.ImmatureSignatureError:
            raise AuthenticationFailed("JWT is not yet valid (iat or nbf in the future)") from None
        except jwt.InvalidAlgorithmError:
            raise AuthenticationFailed(f"JWT algorithm {alg} does not match the signing key") from None
        except (jwt.InvalidKeyError, jwt.PyJWKError):
            raise AuthenticationFailed(f"JWT signing key cannot be used with {alg}") from None
        except jwt.PyJWTError as e:
            # DecodeError, InvalidIssuedAtError, …: pyjwt's text names the problem,
            # never the token itself.
            raise AuthenticationFailed(f"JWT is invalid: {e}") from None

    def _agent(self, claims: Mapping[str, Any]) -> Agent:
        s = self._s
        values = {}
        for field, claim in (("id", s.claim_agent_id), ("tier", s.claim_tier),
                             ("maturity", s.claim_maturity), ("workspace", s.claim_workspace)):
            if claims.get(claim) in (None, ""):
                raise AuthenticationFailed(f"JWT is missing claim {claim}")
            values[field] = claims[claim]
        if not isinstance(values["id"], str) or not isinstance(values["workspace"], str):
            raise AuthenticationFailed(
                f"JWT claims {s.claim_agent_id} and {s.claim_workspace} must be strings")
        tier, maturity, vocab = values["tier"], values["maturity"], self._vocabulary()
        # bool is an int subclass; `true` is not a tier.
        if isinstance(tier, bool) or not isinstance(tier, int):
            raise AuthenticationFailed(f"JWT claim {s.claim_tier} must be an integer")
        if not vocab.knows_tier(tier):
            raise AuthenticationFailed(
                f"JWT claim {s.claim_tier} must be one of the policy's tiers {vocab.tier_names()}")
        if not vocab.knows_maturity(maturity):
            raise AuthenticationFailed(
                f"JWT claim {s.claim_maturity} must be one of the policy's maturities {vocab.maturity_names()}")
        return Agent(id=values["id"], tier=tier, maturity=values["maturity"],
                     workspace=values["workspace"], labels={})

    def _check_ttl(self, claims: Mapping[str, Any], tier: int) -> None:
        allowed = self._s.max_ttl_s.get(tier)
        if allowed is None:
            raise AuthenticationFailed(f"no maximum token lifetime is configured for tier {tier}")
        lifetime = claims["exp"] - claims["iat"]  # numbers, checked in _check_times
        if lifetime > allowed:
            raise AuthenticationFailed(
                f"token lifetime {lifetime}s exceeds {allowed}s allowed for tier {tier}")

    # ---- keys ----------------------------------------------------------------

    async def _key_for(self, header: Mapping[str, Any], alg: str) -> Any:
        if not self._s.jwks_url:
            self._load_static_key()
            key = self._static_key
            # With e.g. RS256 and ES256 both allowed, the header picks the
            # family; pyjwt would raise TypeError on a mismatch, so check here.
            family = {"RS": RSAPublicKey, "PS": RSAPublicKey, "ES": EllipticCurvePublicKey}
            wanted = family.get(alg[:2])
            if wanted is not None and not isinstance(key, wanted):
                raise AuthenticationFailed(f"JWT signing key cannot be used with {alg}")
            return key
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthenticationFailed("JWT kid must be a string")
        if self._age(self._jwks_fetched_at) >= self._s.jwks_cache_s:
            await self._refresh(force=False)
        jwk = self._pick(kid)
        if jwk is None and self._may_refetch_for_kid():
            # Possibly a rotated key: refetch, but rate-limited so a stream of
            # made-up kids cannot turn us into a JWKS flooder.
            await self._refresh(force=True)
            jwk = self._pick(kid)
        if jwk is None:
            shown = _show(kid) if kid is not None else "(none)"
            raise AuthenticationFailed(f"JWT signing key kid {shown} is not in the JWKS")
        declared = jwk.get("alg")
        if declared is not None and declared != alg:
            raise AuthenticationFailed(f"JWT algorithm {alg} does not match the signing key")
        cache_key = (kid, alg)
        if cache_key not in self._jwk_cache:
            try:
                # Binding the algorithm here makes pyjwt verify with exactly `alg`.
                self._jwk_cache[cache_key] = jwt.PyJWK(jwk, algorithm=alg)
            except (jwt.PyJWKError, jwt.InvalidKeyError):
                raise AuthenticationFailed(f"JWT signing key cannot be used with {alg}") from None
        return self._jwk_cache[cache_key]

    def _pick(self, kid: str | None) -> dict[str, Any] | None:
        if kid is not None:
            return self._jwks.get(kid)
        # No kid: only unambiguous when the set holds exactly one key.
        return next(iter(self._jwks.values())) if len(self._jwks) == 1 else None

    def _may_refetch_for_kid(self) -> bool:
        return self._age(self._last_kid_refetch) >= self._kid_refetch_interval_s

    def _age(self, since: float) -> float:
        """Seconds since `since`; a clock stepped back (wall time) makes it stale, never fresher."""
        age = self._clock() - since
        return age if age >= 0 else math.inf

    async def _refresh(self, *, force: bool) -> None:
        generation = self._jwks_generation
        async with self._lock:
            if self._jwks_generation != generation:
                return  # another request refreshed while we waited
            now = self._clock()
            if force:
                self._last_kid_refetch = now
            elif self._age(self._jwks_failed_at) < min(self._kid_refetch_interval_s, self._s.jwks_cache_s):
                self._fail_if_no_keys()
                return
            try:
                keys = await self._fetch_jwks()
            except Exception as e:  # noqa: BLE001 - any fetch/parse failure is one outcome
                log.warning("JWKS fetch from %s failed: %s: %s", self._s.jwks_url,
                            type(e).__name__, e)
                # Back off; keep serving the previous keys if we have any.
                self._jwks_failed_at = now
                self._fail_if_no_keys()
                return
            self._jwks = keys
            self._jwk_cache.clear()
            self._jwks_fetched_at = now
            self._jwks_failed_at = -math.inf
            self._jwks_generation += 1

    def _fail_if_no_keys(self) -> None:
        if not self._jwks:
            raise AuthenticationFailed("could not fetch JWKS to verify the JWT")

    async def _fetch_jwks(self) -> dict[str | None, dict[str, Any]]:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self._http_timeout_s)
        assert self._s.jwks_url is not None
        resp = await self._http.get(self._s.jwks_url, headers={"accept": "application/json"})
        resp.raise_for_status()
        doc = resp.json()
        raw = doc.get("keys") if isinstance(doc, dict) else None
        if not isinstance(raw, list):
            raise ValueError("JWKS document has no 'keys' list")
        keys: dict[str | None, dict[str, Any]] = {}
        for jwk in raw:
            if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
                continue  # encryption keys and junk never verify signatures
            keys[jwk.get("kid")] = jwk
        return keys

    def _load_static_key(self) -> None:
        if self._static_key is not None or self._s.jwks_url:
            return
        s = self._s
        if s.hs_secret_env:
            if not s.hs_secret:
                raise ConfigError([("identity.jwt.hs_secret_env",
                                    f"environment variable {s.hs_secret_env} is not set")])
            self._static_key = s.hs_secret
            return
        if s.public_key:
            where, pem = "identity.jwt.public_key", s.public_key.encode()
        else:
            assert s.public_key_file is not None
            path = Path(s.public_key_file)
            if not path.is_absolute() and self._base_dir is not None:
                path = self._base_dir / path
            where = "identity.jwt.public_key_file"
            try:
                pem = path.read_bytes()
            except OSError as e:
                raise ConfigError([(where, f"cannot read {path}: {e.strerror}")]) from None
        try:
            if b"BEGIN CERTIFICATE" in pem:
                self._static_key = x509.load_pem_x509_certificate(pem).public_key()
            else:
                self._static_key = load_pem_public_key(pem)
        except ValueError:
            raise ConfigError([(where, "not a PEM public key or certificate")]) from None
