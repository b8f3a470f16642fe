"""Console sessions (gateway/console/session.py): the signed cookie, its re-resolution against
the configured tokens, CSRF tokens and origins, flash messages and redirect targets."""
from __future__ import annotations

import base64
import json

import pytest
from starlette.requests import Request

from gateway.console.session import COOKIE, FLASH_COOKIE, LIFETIME_S, Sessions
from gateway.console.web import safe_next
from gateway.keys import hash_key
from gateway.settings_lifecycle import AdminToken

WRITER = AdminToken(name="ops-writer", sha256=hash_key("tok-writer"), scopes=["read", "write"])
READER = AdminToken(name="ops-reader", sha256=hash_key("tok-reader"), scopes=["read"])


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def request(cookies: dict[str, str] | None = None, headers: dict[str, str] | None = None,
            scheme: str = "http") -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    raw.append((b"host", b"127.0.0.1:8081"))
    if cookies:
        raw.append((b"cookie", "; ".join(f"{k}={v}" for k, v in cookies.items()).encode()))
    return Request({"type": "http", "method": "POST", "path": "/console/x", "headers": raw, "scheme": scheme,
                    "server": ("127.0.0.1", 8081), "query_string": b""})


def issued(s: Sessions, token: AdminToken, raw_token: str) -> str:
    from gateway.admin.auth import Operator

    return s.issue(Operator(token.name, frozenset(token.scopes)), hash_key(raw_token))


def test_a_cookie_resolves_to_the_configured_operator_and_scopes() -> None:
    s = Sessions([WRITER, READER])
    value = issued(s, READER, "tok-reader")
    session = s.session(request({COOKIE: value}))
    assert session is not None
    assert (session.operator.name, session.operator.scopes) == ("ops-reader", frozenset({"read"}))
    assert "tok-reader" not in value and READER.sha256 not in value
    # The payload names no scope: granting one in the config is what counts.
    payload = json.loads(base64.urlsafe_b64decode(value.split(".")[0] + "=="))
    assert set(payload) == {"op", "fp", "n", "exp"}


SECRET = "console-secret-shared-by-the-fleet-0123456789"


def test_replicas_sharing_the_console_secret_accept_each_others_cookies() -> None:
    value = issued(Sessions([WRITER, READER], secret=SECRET), WRITER, "tok-writer")
    assert Sessions([READER, WRITER], secret=SECRET).session(request({COOKIE: value})) is not None
    assert Sessions([READER, WRITER], secret=SECRET[::-1]).session(request({COOKIE: value})) is None


def test_without_a_secret_the_key_is_per_process_and_the_config_cannot_forge_one() -> None:
    """The token hashes are in the config; knowing them (and this code) must not make a session."""
    value = issued(Sessions([WRITER, READER]), WRITER, "tok-writer")
    assert Sessions([WRITER, READER]).session(request({COOKIE: value})) is None  # another process


def test_a_removed_or_changed_token_logs_its_sessions_out() -> None:
    value = issued(Sessions([WRITER, READER], secret=SECRET), WRITER, "tok-writer")
    assert Sessions([READER], secret=SECRET).session(request({COOKIE: value})) is None
    rotated = AdminToken(name="ops-writer", sha256=hash_key("tok-writer-2"), scopes=["read", "write"])
    assert Sessions([rotated, READER], secret=SECRET).session(request({COOKIE: value})) is None


def test_tampered_and_expired_cookies_are_no_session() -> None:
    clock = Clock()
    s = Sessions([WRITER], clock=clock)
    value = issued(s, WRITER, "tok-writer")
    body, sig = value.rsplit(".", 1)
    forged = base64.urlsafe_b64encode(json.dumps(
        {"op": "x", "fp": "0" * 32, "n": "n", "exp": 9e12}).encode()).decode().rstrip("=")
    for bad in (body + "." + "0" * len(sig), forged + "." + sig, "garbage", "", "a.b.c"):
        assert s.session(request({COOKIE: bad})) is None, bad
    assert s.session(request({COOKIE: value})) is not None
    clock.t += LIFETIME_S + 1
    assert s.session(request({COOKIE: value})) is None


def test_csrf_needs_the_sessions_token_and_a_same_origin() -> None:
    s = Sessions([WRITER])
    value = issued(s, WRITER, "tok-writer")
    session = s.session(request({COOKIE: value}))
    assert session is not None
    other = s.session(request({COOKIE: issued(s, WRITER, "tok-writer")}))
    assert other is not None and other.csrf != session.csrf  # per session (nonce)
    assert s.csrf_ok(request(), session, session.csrf)
    assert s.csrf_ok(request(headers={"x-csrf-token": session.csrf}), session, None)
    assert s.csrf_ok(request(headers={"origin": "http://127.0.0.1:8081"}), session, session.csrf)
    assert not s.csrf_ok(request(), session, None)
    assert not s.csrf_ok(request(), session, other.csrf)
    assert not s.csrf_ok(request(headers={"origin": "http://evil.example"}), session, session.csrf)
    assert not s.csrf_ok(request(headers={"origin": "https://127.0.0.1:8081"}), session, session.csrf)
    assert not s.csrf_ok(request(headers={"origin": "null"}), session, session.csrf)


@pytest.mark.parametrize("trust,headers,scheme,secure", [
    (False, {}, "http", False),
    (False, {}, "https", True),
    (False, {"x-forwarded-proto": "https"}, "http", False),  # not trusted: a client could send it
    (True, {"x-forwarded-proto": "https"}, "http", True),
])
def test_secure_follows_the_scheme_or_a_trusted_proxy(trust, headers, scheme, secure) -> None:
    assert Sessions([WRITER], trust_forwarded=trust).secure(request(headers=headers, scheme=scheme)) is secure


def test_flash_messages_are_signed() -> None:
    s = Sessions([WRITER])
    value = s.flash_value("ok", "Agent x revoked.")
    assert s.flash(request({FLASH_COOKIE: value})) == ("ok", "Agent x revoked.")
    body = base64.urlsafe_b64encode(json.dumps({"k": "ok", "t": "Your account is closed"}).encode()).decode()
    assert s.flash(request({FLASH_COOKIE: body.rstrip("=") + "." + value.rsplit(".", 1)[1]})) is None


@pytest.mark.parametrize("target,expected", [
    ("/console/agents/x", "/console/agents/x"), ("/console", "/console"), ("/console?window=1d", "/console?window=1d"),
    ("https://evil.example/", "/console"), ("//evil.example/console", "/console"), ("/consolex", "/console"),
    ("/console/..//evil", "/console"), ("/console/\\evil", "/console"), (None, "/console"), ("", "/console"),
])
def test_redirect_targets_stay_in_the_console(target, expected) -> None:
    assert safe_next(target) == expected


def test_the_console_secret_comes_from_its_variable_and_must_be_long(tmp_path) -> None:
    import yaml

    from gateway.settings import ConfigError, load_settings

    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"admin": {"console_secret_env": "CONSOLE_SECRET"},
                                    "upstreams": {"mock": {"provider": "mock"}},
                                    "routes": [{"match": "*", "upstream": "mock"}]}))
    assert load_settings(path, {"CONSOLE_SECRET": SECRET}).admin.console_secret == SECRET
    for environ, why in (({}, "is not set"), ({"CONSOLE_SECRET": "short"}, "at least 32 characters")):
        with pytest.raises(ConfigError) as e:
            load_settings(path, environ)
        assert [(k, why in r) for k, r in e.value.problems] == [("admin.console_secret_env", True)]
