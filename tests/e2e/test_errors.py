"""Bad input and failing upstreams: precise statuses in the client's format, always audited."""
from __future__ import annotations

import time

import httpx
import jwt as pyjwt
import openai
import pytest

from tests.support.harness import KEYS
from tests.support.waiting import eventually_async

MSG = [{"role": "user", "content": "hi"}]
SECRET = "test-hs256-secret-that-is-long-enough-0123456789"


def client(gw, agent="intern-bot", **kw):
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS.get(agent, agent), max_retries=0, **kw)


def post(gw, path, content, key=KEYS["intern-bot"], **headers):
    return httpx.post(gw.url + path, content=content,
                      headers={"authorization": f"Bearer {key}", "content-type": "application/json", **headers})


def assert_openai_error(resp, status, rows_by_rid):
    assert resp.status_code == status, resp.text
    body = resp.json()["error"]
    assert body["message"] and body["type"] and body["request_id"] == resp.headers["x-request-id"]
    row = rows_by_rid(resp.headers["x-request-id"])
    assert row["status"] == status
    return body, row


def test_no_credentials_is_401(gateway):
    r = httpx.post(gateway.url + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MSG})
    body, row = assert_openai_error(r, 401, gateway.audit_row)
    assert body["type"] == "authentication_error" and row["decision"] == "error"


def test_unknown_key_raises_authentication_error_and_is_not_echoed(gateway):
    with pytest.raises(openai.AuthenticationError) as e:
        client(gateway, "pk-wrong-key-123").chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert "pk-wrong-key-123" not in e.value.response.text
    row = gateway.audit_row(e.value.response.headers["x-request-id"])
    assert "pk-wrong-key-123" not in repr(row)


def test_malformed_json_and_missing_model_are_400(gateway):
    body, row = assert_openai_error(post(gateway, "/v1/chat/completions", b"{nope"), 400, gateway.audit_row)
    assert body["code"] == "invalid_json" and row["agent_id"] == "intern-bot"
    body, _ = assert_openai_error(post(gateway, "/v1/chat/completions", b'{"messages": []}'), 400, gateway.audit_row)
    assert body["code"] == "missing_model" and body["param"] == "model"
    with pytest.raises(openai.BadRequestError):
        client(gateway).chat.completions.create(model="", messages=MSG)


def test_unknown_model_is_404(gateway):
    with pytest.raises(openai.NotFoundError) as e:
        client(gateway).chat.completions.create(model="llama-unknown", messages=MSG)
    assert e.value.code == "model_not_found"
    assert gateway.audit_row(e.value.response.headers["x-request-id"])["resource_name"] == "llama-unknown"


def test_oversize_body_is_413(gateway):
    big = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"' + b"x" * 70_000 + b'"}]}'
    body, row = assert_openai_error(post(gateway, "/v1/chat/completions", big), 413, gateway.audit_row)
    assert "65536" in body["message"]


def test_unknown_route_is_404_and_audited(gateway):
    r = httpx.get(gateway.url + "/v1/nothing-here", headers={"authorization": "Bearer " + KEYS["builder"]})
    body, row = assert_openai_error(r, 404, gateway.audit_row)
    assert body["code"] == "unknown_route" and row["agent_id"] == "builder"
    r = httpx.get(gateway.url + "/v1/messages/nope", headers={"anthropic-version": "2023-06-01"})
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


def test_x_agent_id_outside_workspace_or_pinned_key_is_403(gateway):
    ws = openai.OpenAI(base_url=gateway.url + "/v1", api_key="pk-quickstart-workspace", max_retries=0,
                       default_headers={"X-Agent-Id": "builder"})
    assert ws.chat.completions.create(model="gpt-4o", messages=MSG).choices  # workspace key picks builder
    pinned = client(gateway, "intern-bot", default_headers={"X-Agent-Id": "architect"})
    with pytest.raises(openai.PermissionDeniedError):
        pinned.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    stranger = client(gateway, "intern-bot", default_headers={"X-Agent-Id": "someone-else"})
    with pytest.raises(openai.PermissionDeniedError):
        stranger.chat.completions.create(model="gpt-4o-mini", messages=MSG)


@pytest.fixture
def jwt_gateway(make_gateway):
    return make_gateway(environ={"JWT_SECRET": SECRET}, identity__jwt={
        "issuer": "https://idp.test/", "audience": "portcullis", "algorithms": ["HS256"],
        "hs_secret_env": "JWT_SECRET"})


def token(secret=SECRET, alg="HS256", ttl=600, **claims):
    now = int(time.time())
    payload = {"sub": "jwt-agent", "tier": 1, "maturity": "intern", "workspace": "quickstart",
               "iss": "https://idp.test/", "aud": "portcullis", "iat": now, "exp": now + ttl, **claims}
    return pyjwt.encode(payload, secret, algorithm=alg)


def test_jwt_agent_chats(jwt_gateway):
    raw = client(jwt_gateway, token()).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
    row = jwt_gateway.audit_row(raw.headers["x-request-id"])
    assert (row["agent_id"], row["auth"], row["tier"]) == ("jwt-agent", "jwt", 1)


@pytest.mark.parametrize("bad,needle", [
    (lambda: token(ttl=-120), "expired"),
    (lambda: token(secret="another-secret-another-secret-another-secret"), "signature"),
    (lambda: token(aud="someone-else"), "audience"),
    (lambda: token(ttl=7200, tier=3), "lifetime"),
    (lambda: "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0." + token().split(".")[1] + ".", "none"),
])
def test_bad_jwts_are_401(jwt_gateway, bad, needle):
    tok = bad()
    with pytest.raises(openai.AuthenticationError) as e:
        client(jwt_gateway, tok).chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert needle in e.value.message.lower()
    assert tok not in e.value.response.text
    row = jwt_gateway.audit_row(e.value.response.headers["x-request-id"])
    assert row["status"] == 401 and tok not in repr(row)


def test_upstream_500_passes_through_as_upstream_error(gateway):
    c = client(gateway, "architect")
    with pytest.raises(openai.InternalServerError) as e:
        c.chat.completions.create(model="fault-500", messages=MSG)
    row = gateway.audit_row(e.value.response.headers["x-request-id"])
    assert row["status"] == 500 and row["decision"] == "allow" and "answered 500" in row["error"]


def test_upstream_down_is_502_and_slow_is_504(make_gateway):
    gw = make_gateway(upstreams__openai={"provider": "openai", "base_url": "http://127.0.0.1:9",
                                         "api_key_env": "TEST_OPENAI_KEY"})
    with pytest.raises(openai.APIStatusError) as e:
        client(gw, "architect").chat.completions.create(model="gpt-4o", messages=MSG)
    assert e.value.status_code == 502
    assert gw.audit_row(e.value.response.headers["x-request-id"])["error"].startswith("upstream")


def test_slow_upstream_is_504(gateway):
    with pytest.raises(openai.APIStatusError) as e:
        client(gateway, "architect").chat.completions.create(model="fault-slow", messages=MSG)
    assert e.value.status_code == 504
    assert gateway.audit_row(e.value.response.headers["x-request-id"])["status"] == 504


def test_upstream_dying_mid_stream_ends_stream_with_error_and_is_recorded(gateway):
    c = client(gateway, "architect")
    raw = c.chat.completions.with_raw_response.create(model="fault-die-midstream", messages=MSG, stream=True)
    rid = raw.headers["x-request-id"]
    got = []
    with pytest.raises(openai.APIError) as e:
        for chunk in raw.parse():
            got.append(chunk)
    assert got, "some chunks arrived before the upstream died"
    assert "mid-stream" in str(e.value.message)
    row = gateway.audit_row(rid)
    assert row["status"] == 200 and "mid-stream" in row["error"]


async def test_client_disconnect_mid_stream_is_recorded(gateway):
    before = {r["request_id"] for r in gateway.audit_rows()}
    async with httpx.AsyncClient() as h:
        async with h.stream("POST", gateway.url + "/v1/chat/completions",
                            headers={"authorization": "Bearer " + KEYS["architect"]},
                            json={"model": "fault-stall-midstream", "messages": MSG, "stream": True}) as r:
            rid = r.headers["x-request-id"]
            async for _ in r.aiter_bytes():
                break  # read one chunk, then hang up while the upstream stalls
    [row] = await eventually_async(lambda: gateway.audit_rows("request_id = ?", (rid,)), f"the audit row of {rid}")
    assert rid not in before and row["error"] == "client disconnected mid-stream"


@pytest.mark.parametrize("path,headers", [
    ("/v1/chat/completions", {}),
    ("/v1/messages", {"anthropic-version": "2023-06-01"}),
    ("/tools/weather", {}),
])
def test_401_says_how_to_authenticate(gateway, path, headers):
    """RFC 9110: a 401 carries WWW-Authenticate, on every surface (not only MCP)."""
    r = httpx.post(gateway.url + path, json={}, headers={**headers, "authorization": "Bearer pk-nope"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "pk-nope" not in r.text
