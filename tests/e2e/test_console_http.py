"""The governance console (issue 13) over HTTP, on the admin listener of a real gateway: login
and its cookie, CSRF and scope refusals (audited like admin API calls), the pages and their
data-testids, and the live stream seeing a denial made with the real openai SDK."""
from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.support import audit_backends
from tests.support.admin_api import (
    READ_TOKEN,
    READER,
    WRITE_TOKEN,
    WRITER,
    admin_overrides,
)
from tests.support.audit_backends import BACKENDS
from tests.support.harness import KEYS, Gateway, gateway_config
from tests.support.waiting import eventually

MSG = [{"role": "user", "content": "hello"}]
CSRF = re.compile(r'name="csrf" value="([0-9a-f]{64})"')
PAGES = {
    "/console": ["nav", "operator", "decisions-chart", "window-1h", "window-1d", "window-1w", "total-allow",
                 "total-deny", "total-rate_limited", "total-error", "total-bypass", "overhead-p50", "overhead-p99",
                 "cache-hit-rate", "replicas", "recent-denials"],
    "/console/live": ["nav", "live-pause", "live-rows"],
    "/console/agents": ["nav", "agents-table", "agent-row"],
    "/console/agents/builder": ["nav", "agent-rows", "events-table"],
    "/console/approvals": ["nav", "approvals-table", "proposals-table"],
    "/console/events?severity=HIGH": ["nav", "events-table"],
    "/console/reports": ["nav", "reports-table"],
    "/console/policy": ["nav", "policy-revision", "shadow"],
}
WRITE_FORMS = ["revoke-form", "promote-form", "demote-form"]


@pytest.fixture(scope="module", params=BACKENDS)
def gw(request, loop_thread, upstream, tmp_path_factory):
    """A gateway with the admin listener, its audit in SQLite or PostgreSQL (the console's
    queries are the store's)."""
    tmp = tmp_path_factory.mktemp("console")
    store = audit_backends.backend(request.param, tmp)
    g = Gateway(loop_thread, gateway_config(tmp, upstream.url, **admin_overrides(), **store.overrides)).start()
    yield g
    g.stop()
    loop_thread.run(store.cleanup())


def _json(v: Any) -> Any:
    return json.loads(v) if isinstance(v, str) else v


def browser(gw: Gateway) -> httpx.Client:
    return httpx.Client(base_url=gw.admin_url, timeout=30, follow_redirects=False)


@contextlib.contextmanager
def login(gw: Gateway, token: str = WRITE_TOKEN) -> Iterator[httpx.Client]:
    with browser(gw) as c:
        r = c.post("/console/login", data={"token": token})
        assert r.status_code == 303, r.text
        yield c


def csrf_of(c: httpx.Client, page: str) -> str:
    m = CSRF.search(c.get(page).text)
    assert m, f"no CSRF token on {page}"
    return m.group(1)


def chat(gw: Gateway, agent: str) -> Any:
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS[agent], max_retries=0)
    return c.chat.completions.create(model="gpt-4o-mini", messages=MSG)


def ids_in(html: str) -> set[str]:
    return set(re.findall(r'data-testid="([^"]+)"', html))


# ---- login and the session cookie -----------------------------------------------------------

def test_login_sets_a_strict_httponly_console_cookie_and_is_audited(gw) -> None:
    with browser(gw) as c:
        form = c.get("/console/login")
        assert form.status_code == 200 and '<html lang="en">' in form.text
        assert 'name="token"' in form.text and 'data-testid="login-submit"' in form.text
        assert '<label for="token">' in form.text
        r = c.post("/console/login", data={"token": WRITE_TOKEN})
        assert (r.status_code, r.headers["location"]) == (303, "/console")
        cookie = r.headers["set-cookie"]
        attrs = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
        assert cookie.startswith("portcullis_console=")
        assert {"httponly", "path", "samesite"} <= attrs and "secure" not in attrs  # plain http here
        assert "SameSite=strict" in cookie or "samesite=strict" in cookie.lower()
        assert "Path=/console" in cookie
        assert WRITE_TOKEN not in cookie
        page = c.get("/console")
        assert page.status_code == 200
        assert f'data-testid="operator">{WRITER}<' in page.text
        assert WRITE_TOKEN not in page.text
    rows = eventually(lambda: gw.audit_rows("action = 'admin.console.login' AND decision = 'allow'"),
                      "the login's audit row")
    assert _json(rows[-1]["policy_input"])["actor"] == WRITER
    assert not any(WRITE_TOKEN in json.dumps(r, default=str) for r in gw.audit_rows())


def test_a_wrong_token_gets_401_and_an_audited_refusal(gw) -> None:
    wrong = "pat-not-a-console-token-77"
    with browser(gw) as c:
        r = c.post("/console/login", data={"token": wrong})
        assert r.status_code == 401
        assert "not a console token" in r.text and wrong not in r.text
        assert "set-cookie" not in r.headers
    rows = eventually(lambda: gw.audit_rows("action = 'admin.console.login' AND decision = 'deny'"),
                      "the refused login's row")
    assert rows[-1]["status"] == 401 and "unknown admin token" in rows[-1]["error"]
    gw.lifecycle_flush()
    events = gw.loop.run(gw.lifecycle.manager.events(since=time.time() - 60))
    assert any(e.event_type == "admin.auth_failed" and e.details.get("operation") == "console.login"
               for e in events)
    assert not any(wrong in json.dumps(r, default=str) for r in gw.audit_rows())


def test_without_a_session_pages_redirect_to_login_and_writes_and_apis_get_401(gw) -> None:
    with browser(gw) as c:
        for page in PAGES:
            r = c.get(page)
            assert r.status_code == 303 and r.headers["location"].startswith("/console/login?next="), page
        assert c.get("/console/api/series?window=1h").status_code == 401
        assert c.get("/console/live/stream").status_code == 401
        r = c.post("/console/agents/observer/revoke", data={"reason": "no session"})
        assert r.status_code == 401
        c.cookies.set("portcullis_console", "e30.forged", domain="127.0.0.1", path="/console")
        assert c.get("/console").status_code == 303  # a forged cookie is no session
    row = gw.audit_row(r.json()["error"]["request_id"])
    assert (row["action"], row["decision"], row["status"]) == ("admin.agents.revoke", "deny", 401)


def test_a_tampered_cookie_is_refused(gw) -> None:
    with login(gw, READ_TOKEN) as c:
        value = c.cookies.get("portcullis_console")
        body, sig = value.rsplit(".", 1)
        c.cookies.clear()
        c.cookies.set("portcullis_console", body + "." + ("0" * len(sig)), domain="127.0.0.1", path="/console")
        assert c.get("/console").status_code == 303


def test_logout_needs_csrf_and_clears_the_cookie(gw) -> None:
    with login(gw) as c:
        token = csrf_of(c, "/console")
        assert c.post("/console/logout", data={}).status_code == 403
        r = c.post("/console/logout", data={"csrf": token})
        assert r.status_code == 303 and r.headers["location"] == "/console/login"
        assert 'portcullis_console=""' in r.headers["set-cookie"] or "Max-Age=0" in r.headers["set-cookie"]
        assert c.get("/console").status_code == 303


def test_secure_cookie_behind_a_trusted_tls_proxy(make_gateway) -> None:
    g = make_gateway(**admin_overrides(), server__trust_forwarded_for=True)
    with browser(g) as c:
        r = c.post("/console/login", data={"token": READ_TOKEN}, headers={"x-forwarded-proto": "https"})
        assert r.status_code == 303 and "secure" in r.headers["set-cookie"].lower()
        plain = c.post("/console/login", data={"token": READ_TOKEN})
        assert "secure" not in plain.headers["set-cookie"].lower()


# ---- pages ---------------------------------------------------------------------------------

def test_every_page_answers_200_with_its_testids_and_no_secret(gw) -> None:
    chat(gw, "builder")
    with login(gw) as c:
        for page, ids in PAGES.items():
            r = c.get(page)
            assert r.status_code == 200, (page, r.text[:500])
            assert '<html lang="en">' in r.text and "<main" in r.text and "<title>" in r.text
            assert set(ids) <= ids_in(r.text), (page, set(ids) - ids_in(r.text))
            assert "content-security-policy" in r.headers and r.headers["x-frame-options"] == "DENY"
            for secret in (WRITE_TOKEN, READ_TOKEN, KEYS["builder"], "sk-provider-openai-secret", "hello"):
                assert secret not in r.text, (page, secret)
        agent = c.get("/console/agents/builder").text
        assert set(WRITE_FORMS) <= ids_in(agent)
        assert len(re.findall(r'data-testid="agent-row"', c.get("/console/agents").text)) >= 5
        assert c.get("/console/agents/nobody-here").status_code == 404
        assert c.get("/console/reports/rep_unknown").status_code == 404
        for sub in ("vendor/uPlot.iife.min.js", "vendor/uPlot.min.css", "console.js", "console.css"):
            assert c.get(f"/console/static/{sub}").status_code == 200, sub
        assert "v1.6.32" in c.get("/console/static/vendor/uPlot.iife.min.js").text[:200]


def test_a_stored_report_is_rendered_with_charts(gw) -> None:
    report = gw.loop.run(gw.lifecycle.manager.make_report(3600, WRITER))
    with login(gw, READ_TOKEN) as c:
        assert f'data-report="{report.id}"' in c.get("/console/reports").text
        r = c.get(f"/console/reports/{report.id}")
        assert r.status_code == 200
        assert "Portcullis governance report" in r.text and 'data-testid="report-charts"' in r.text
        assert "<svg" in r.text and "Requests by decision" in r.text


def test_a_read_only_token_sees_no_write_form_and_its_forged_writes_are_refused(gw) -> None:
    with login(gw, READ_TOKEN) as c:
        agent = c.get("/console/agents/observer").text
        assert f'data-testid="operator">{READER}<' in agent and "read only" in agent
        assert not {"revoke-form", "reinstate-form", "promote-form", "demote-form"} & ids_in(agent)
        assert "/revoke" not in agent
        token = csrf_of(c, "/console")  # the logout form carries it
        r = c.post("/console/agents/observer/revoke", data={"reason": "forged", "csrf": token})
        assert r.status_code == 403 and "lacks the &#39;write&#39; scope" in r.text
        j = c.post("/console/agents/observer/revoke", data={"reason": "forged", "csrf": token},
                   headers={"accept": "application/json"})
        assert j.status_code == 403 and "lacks the 'write' scope" in j.json()["error"]["message"]
    row = gw.audit_row(j.json()["error"]["request_id"])
    assert (row["action"], row["decision"], row["status"]) == ("admin.agents.revoke", "deny", 403)
    assert _json(row["policy_input"])["actor"] == READER
    assert gw.loop.run(gw.lifecycle.manager.agent("observer"))["state"] == "active"


def test_writes_without_csrf_or_from_another_origin_are_refused_and_audited(gw) -> None:
    with login(gw) as c:
        token = csrf_of(c, "/console/agents/builder")
        no_csrf = c.post("/console/agents/builder/revoke", data={"reason": "csrf-less"},
                         headers={"accept": "application/json"})
        wrong = c.post("/console/agents/builder/revoke", data={"reason": "x", "csrf": "0" * 64},
                       headers={"accept": "application/json"})
        cross = c.post("/console/agents/builder/revoke", data={"reason": "x", "csrf": token},
                       headers={"origin": "https://evil.example", "accept": "application/json"})
        for r in (no_csrf, wrong, cross):
            assert r.status_code == 403 and r.json()["error"]["message"] == "CSRF check failed"
    assert chat(gw, "builder").choices[0].message.content  # still active
    for r in (no_csrf, wrong, cross):
        row = gw.audit_row(r.json()["error"]["request_id"])
        assert (row["action"], row["decision"], row["status"]) == ("admin.agents.revoke", "deny", 403)
        assert _json(row["policy_input"])["actor"] == WRITER


def test_revoke_from_the_console_refuses_the_next_sdk_call_then_reinstate(gw) -> None:
    with login(gw) as c:
        token = csrf_of(c, "/console/agents/intern-bot")
        r = c.post("/console/agents/intern-bot/revoke",
                   data={"reason": "console incident 7", "csrf": token, "next": "/console/agents/intern-bot"},
                   headers={"origin": gw.admin_url})
        assert (r.status_code, r.headers["location"]) == (303, "/console/agents/intern-bot")
        page = c.get("/console/agents/intern-bot")
        assert 'data-testid="flash"' in page.text and "revoked" in page.text
        assert 'data-testid="reinstate-form"' in page.text and 'data-testid="revoke-form"' not in page.text
        assert 'data-testid="flash"' not in c.get("/console/agents/intern-bot").text  # shown once
        with pytest.raises(openai.PermissionDeniedError) as denied:
            chat(gw, "intern-bot")
        assert denied.value.code == "agent_revoked"
        rows = eventually(lambda: gw.audit_rows("action = 'admin.agents.revoke' AND decision = 'allow' "
                                                "AND resource_name = 'intern-bot'"), "the revoke row")
        assert _json(rows[-1]["reasons"]) == [f"{WRITER}: agents.revoke (console incident 7)"]
        assert rows[-1]["auth"] == "admin_token" and rows[-1]["agent_id"] == "intern-bot"
        empty = c.post("/console/agents/intern-bot/reinstate", data={"reason": "", "csrf": token},
                       headers={"accept": "application/json"})
        assert empty.status_code == 400 and empty.json()["error"]["code"] == "invalid_request"
        ok = c.post("/console/agents/intern-bot/reinstate", data={"reason": "fixed", "csrf": token},
                    headers={"accept": "application/json"})
        assert ok.status_code == 200 and ok.json()["result"]["revoked"] is False
    assert chat(gw, "intern-bot").choices[0].message.content


def test_series_api_counts_a_burst_by_decision(gw) -> None:
    with login(gw, READ_TOKEN) as c:
        before = c.get("/console/api/series?window=1h").json()
        for _ in range(3):
            chat(gw, "builder")
        for _ in range(2):
            with pytest.raises(openai.PermissionDeniedError):
                chat(gw, "observer")

        def grown() -> dict | None:
            now = c.get("/console/api/series?window=1h").json()
            ok = (now["totals"]["allow"] - before["totals"]["allow"] >= 3
                  and now["totals"]["deny"] - before["totals"]["deny"] >= 2)
            return now if ok else None

        now = eventually(grown, "the burst in the series", timeout=10)
        assert now["bucket_s"] == 60 and len(now["t"]) == 60 and now["window"] == "1h"
        assert set(now["series"]) == {"allow", "deny", "rate_limited", "error", "bypass"}
        assert sum(now["series"]["deny"]) == now["totals"]["deny"]
        assert c.get("/console/api/series?window=1d").json()["bucket_s"] > 60
        assert c.get("/console/api/series?window=2y").status_code == 400
        page = c.get("/console").text
        m = re.search(r'data-testid="total-deny"[^>]*>(\d+)<', page)
        assert m and int(m.group(1)) >= now["totals"]["deny"]


def _read_stream(url: str, cookies: httpx.Cookies, query: dict[str, str], out: list[dict[str, Any]],
                 stop: threading.Event) -> None:
    with httpx.Client(base_url=url, cookies=cookies, timeout=httpx.Timeout(30, read=10)) as c:
        try:
            with c.stream("GET", "/console/live/stream", params=query) as r:
                out.append({"status": r.status_code, "content-type": r.headers["content-type"]})
                event = None
                for line in r.iter_lines():
                    if stop.is_set():
                        return
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event == "row":
                        out.append(json.loads(line[6:]))
        except httpx.TransportError:
            if not stop.is_set():  # the test's own end closes the gateway under a blocked read
                raise


def test_live_stream_shows_a_denial_within_two_seconds_with_only_its_fields(gw) -> None:
    with login(gw, READ_TOKEN) as c:
        got: list[dict[str, Any]] = []
        stop = threading.Event()
        reader = threading.Thread(target=_read_stream, daemon=True,
                                  args=(gw.admin_url, c.cookies, {"decision": "deny", "agent": "observer"}, got, stop))
        reader.start()
        head = eventually(lambda: got[:1], "the stream to open", timeout=5)[0]
        assert head["status"] == 200 and head["content-type"].startswith("text/event-stream")
        time.sleep(1.0)  # the stream's backlog is sent first
        seen = len(got)
        t0 = time.monotonic()
        with pytest.raises(openai.PermissionDeniedError) as denied:
            chat(gw, "observer")
        rid = denied.value.response.headers["x-request-id"]
        row = eventually(lambda: next((r for r in got[seen:] if r["request_id"] == rid), None),
                         "the denial in the live stream", timeout=2.0)
        assert time.monotonic() - t0 < 2.0
        stop.set()
    assert set(row) == {"request_id", "ts", "agent_id", "action", "resource_type", "resource_name", "api",
                        "decision", "reasons", "status", "latency_ms"}
    assert (row["agent_id"], row["decision"], row["status"], row["api"]) == ("observer", "deny", 403, "openai")
    assert row["reasons"] and all(isinstance(x, str) for x in row["reasons"])
    assert all(r["decision"] == "deny" and r["agent_id"] == "observer" for r in got[1:])  # the filter holds
    assert "hello" not in json.dumps(got)


def test_policy_page_shows_the_shadow_sets_disagreements(make_gateway, tmp_path) -> None:
    from tests.e2e.test_shadow_mode import contrary, send

    g = make_gateway(**admin_overrides(), policy__shadow={"dir": str(contrary(tmp_path / "shadow"))})
    with login(g, READ_TOKEN) as c:
        page = c.get("/console/policy").text
        assert 'data-testid="shadow-off"' not in page
        assert 'data-testid="shadow-disagreed">0<' in page
        send(g)
        shadow_rev = g.app.state.services.shadow.revision

        def disagreed() -> str | None:
            text = c.get("/console/policy").text
            m = re.search(r'data-testid="shadow-disagreed">(\d+)<', text)
            return text if m and int(m.group(1)) == 8 else None

        page = eventually(disagreed, "8 disagreements on the policy page", timeout=15)
    assert f'data-testid="shadow-revision">{shadow_rev}<' in page
    assert re.search(r'data-kind="allow_to_deny"><th scope="row">[^<]+</th><td class="num">5<', page)


def test_policy_page_says_when_shadow_mode_is_off(gw) -> None:
    with login(gw, READ_TOKEN) as c:
        page = c.get("/console/policy").text
    assert 'data-testid="shadow-off"' in page
    assert f'data-testid="policy-revision">{gw.app.state.services.policy._engine.revision}<' in page


# ---- recorded replays on the policy page ------------------------------------------------------

def test_a_recorded_replay_is_listed_on_the_policy_page(gw, tmp_path) -> None:
    import subprocess
    import sys

    from tests.e2e.test_policy_replay import ENV, candidate
    from tests.support.harness import REPO

    for _ in range(2):
        chat(gw, "intern-bot")  # gpt-4o-mini stays allowed by the candidate
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS["intern-bot"], max_retries=0)
    c.chat.completions.create(model="gpt-4.1-mini", messages=MSG)  # allowed now, denied by the candidate
    eventually(lambda: gw.audit_rows("resource_name = ?", ("gpt-4.1-mini",)), "the gpt-4.1-mini row")
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "policy", "replay", str(candidate(tmp_path / "cand")),
                        "--config", str(gw.config_path), "--since", "all", "--format", "json", "--record",
                        "--fail-on", "allow-to-deny"], capture_output=True, text=True, cwd=REPO, env=ENV,
                       timeout=120, check=False)
    assert r.returncode == 1, r.stderr  # the candidate denies what was allowed
    a2d = json.loads(r.stdout)["changes"]["allow_to_deny"]["requests"]
    assert a2d >= 1
    with login(gw, READ_TOKEN) as b:
        html = b.get("/console/policy").text
    row = html[html.index('data-testid="replay-row"'):]
    assert re.search(rf'data-testid="replay-a2d">{a2d}<', row)
    assert "failed (--fail-on allow-to-deny)" in row[:row.index("</tr>")]
