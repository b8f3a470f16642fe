"""The governance console (issue 13) in a real browser: Debian's Chromium, driven by Playwright,
against a real gateway (its admin listener serves /console) with real `openai` SDK traffic.

One gateway for the module (SQLite stores; tests/browser/test_console_postgres.py runs the
chart and live checks on PostgreSQL); the tests run in file order and leave every agent active.
Each test has its own browser context: the first drives the login form, the others get their
session cookie from the same form's POST. Live rows are found by their request id
(`data-request`). The page tests at the end take the screenshots (test-output/console/*.png)
and run axe-core on every page.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import axe_check, screenshot
from tests.browser.console_support import (
    COOKIE,
    PROMPT,
    ROW,
    agent_state,
    allowed,
    check_chart_reflects_a_burst,
    check_denial_in_live_stream,
    csrf_of,
    denied,
    live_row,
    open_as,
    open_live,
    post_from_page,
    reasons_of,
    request_approval,
    rid_of,
    session_cookie,
    wipe_cache,
)
from tests.support.admin_api import (
    READ_TOKEN,
    READER,
    WRITE_TOKEN,
    WRITER,
    admin,
    admin_overrides,
)
from tests.support.harness import Gateway, LoopThread, gateway_config
from tests.support.mcp_orders_server import OrdersServer
from tests.support.tool_configs import tools_config
from tests.support.upstream_server import UpstreamServer
from tests.support.waiting import eventually


@pytest.fixture(scope="module")
def gw(loop_thread: LoopThread, upstream: UpstreamServer, orders: OrdersServer,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """SQLite audit and lifecycle stores, both admin tokens, the HTTP tools (wipe_cache needs an
    approval for executor)."""
    cfg = gateway_config(tmp_path_factory.mktemp("console"), upstream.url,
                         tools=tools_config(orders.url, upstream.url), **admin_overrides())
    g = Gateway(loop_thread, cfg).start()
    yield g
    g.stop()


@pytest.fixture(scope="module")
def base(gw: Gateway) -> str:
    """The admin listener's origin; the console lives under /console there."""
    return gw.admin_url


@pytest.fixture(scope="module")
def writer_cookie(base: str) -> dict[str, Any]:
    return session_cookie(base, WRITE_TOKEN)


@pytest.fixture(scope="module")
def reader_cookie(base: str) -> dict[str, Any]:
    return session_cookie(base, READ_TOKEN)


# ---- login ---------------------------------------------------------------------------------------

def test_login_sets_a_strict_httponly_cookie_and_a_wrong_token_is_refused(gw: Gateway, base: str, page: Any) -> None:
    page.goto(base + "/console/agents")
    expect(page).to_have_url(re.compile(r"/console/login\?next=%2Fconsole%2Fagents$"))  # no session: log in first
    wrong = "pat-not-a-console-token-0000000000"
    page.locator("input[name='token']").fill(wrong)
    with page.expect_response(lambda r: r.url.endswith("/console/login") and r.request.method == "POST") as resp:
        page.get_by_test_id("login-submit").click()
    assert resp.value.status == 401
    assert wrong not in page.content()
    assert page.context.cookies() == [] or all(c["name"] != COOKIE for c in page.context.cookies())
    refused = eventually(lambda: gw.audit_rows("action = 'admin.console.login' AND decision = 'deny'"),
                         "the failed login's audit row")
    assert refused[-1]["status"] == 401 and wrong not in json.dumps(refused, default=str)

    page.locator("input[name='token']").fill(WRITE_TOKEN)
    page.get_by_test_id("login-submit").click()
    expect(page).to_have_url(base + "/console/agents")  # back where it was going
    expect(page.get_by_test_id("operator")).to_contain_text(WRITER)
    [cookie] = [c for c in page.context.cookies() if c["name"] == COOKIE]
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/console")
    assert cookie["secure"] is False  # plain http here; Secure behind TLS
    assert COOKIE not in page.evaluate("document.cookie")  # HttpOnly: scripts cannot read it
    assert WRITE_TOKEN not in page.content()
    nav = page.get_by_test_id("nav")
    for name in ("Overview", "Live", "Agents", "Approvals", "Events", "Reports", "Policy"):
        expect(nav.get_by_role("link", name=name, exact=True)).to_be_visible()

    page.locator("form[action$='/console/logout'] [type=submit]").click()
    expect(page).to_have_url(re.compile(r"/console/login$"))
    assert [c for c in page.context.cookies() if c["name"] == COOKIE] == []
    page.goto(base + "/console")
    expect(page).to_have_url(re.compile(r"/console/login\?next="))


# ---- overview and live decisions ----------------------------------------------------------------

def test_decisions_chart_and_totals_reflect_a_burst_of_allowed_and_denied_requests(
        gw: Gateway, base: str, page: Any, writer_cookie: dict[str, Any]) -> None:
    check_chart_reflects_a_burst(gw, base, page, writer_cookie)


def test_a_denial_appears_in_the_live_stream_within_two_seconds(gw: Gateway, base: str, page: Any,
                                                                writer_cookie: dict[str, Any]) -> None:
    check_denial_in_live_stream(gw, base, page, writer_cookie)
    screenshot(page, "live-with-denial")


def test_live_filter_and_pause_keep_the_filter(gw: Gateway, base: str, page: Any,
                                               writer_cookie: dict[str, Any]) -> None:
    open_live(page, base, writer_cookie)
    page.locator("#filter-agent").fill("intern-bot")
    page.locator("#filter-decision").select_option("allow")
    with page.expect_response(lambda r: "/console/live/stream" in r.url and "agent=intern-bot" in r.url
                              and "decision=allow" in r.url):
        page.locator("#filter-agent").press("Enter")
    expect(page.get_by_test_id("live-rows")).to_have_attribute("data-connected", "true")
    filtered_out = rid_of(denied(gw))
    shown = allowed(gw)
    expect(live_row(page, shown)).to_have_count(1, timeout=3000)
    expect(live_row(page, filtered_out)).to_have_count(0)  # it came first: it would be there by now
    for r in page.get_by_test_id("live-rows").locator(ROW).all():  # the backlog is filtered too
        assert (r.get_attribute("data-agent"), r.get_attribute("data-decision")) == ("intern-bot", "allow")

    page.get_by_test_id("live-pause").click()  # paused: nothing appended
    expect(page.get_by_test_id("live-pause")).to_have_attribute("aria-pressed", "true")
    while_paused = allowed(gw)
    page.wait_for_timeout(1200)  # a live page would have shown it by now (the denial test: < 2 s)
    expect(live_row(page, while_paused)).to_have_count(0)
    assert page.locator("#filter-agent").input_value() == "intern-bot"
    assert page.locator("#filter-decision").input_value() == "allow"

    with page.expect_response(lambda r: "/console/live/stream" in r.url and "agent=intern-bot" in r.url
                              and "decision=allow" in r.url):
        page.get_by_test_id("live-pause").click()  # resumed, with the same filter
    late_denial = rid_of(denied(gw))
    after = allowed(gw)
    expect(live_row(page, after)).to_have_count(1, timeout=3000)
    expect(live_row(page, late_denial)).to_have_count(0)  # still filtered after the pause


# ---- agents: revoke from the page ------------------------------------------------------------------

def test_revoke_from_the_agent_page_refuses_the_next_sdk_call(gw: Gateway, base: str, page: Any,
                                                              writer_cookie: dict[str, Any]) -> None:
    allowed(gw, "architect", "gpt-4o")
    open_as(page, base, writer_cookie, "/console/agents")
    row = page.locator("tr[data-testid='agent-row'][data-agent='architect']")
    expect(row).to_contain_text("active")
    row.get_by_role("link", name="architect").first.click()
    expect(page).to_have_url(re.compile(r"/console/agents/architect$"))

    form = page.get_by_test_id("revoke-form")
    form.get_by_label("Reason").fill("browser test: incident 7")
    form.locator("button[type=submit], input[type=submit]").first.click()
    expect(page.get_by_test_id("flash")).to_contain_text("revoked")
    with pytest.raises(openai.PermissionDeniedError) as refused:
        allowed(gw, "architect", "gpt-4o")
    assert refused.value.code == "agent_revoked"
    assert agent_state(gw, "architect") == "revoked"
    screenshot(page, "agent-revoked")

    [audited] = eventually(lambda: gw.audit_rows("action = 'admin.agents.revoke' AND resource_name = 'architect' "
                                                 "AND decision = 'allow'"), "the revocation's audit row")
    assert WRITER in reasons_of(audited) and "incident 7" in reasons_of(audited)
    assert WRITE_TOKEN not in json.dumps(audited, default=str)

    form = page.get_by_test_id("reinstate-form")
    form.get_by_label("Reason").fill("browser test: resolved")
    form.locator("button[type=submit], input[type=submit]").first.click()
    expect(page.get_by_test_id("flash")).to_contain_text("reinstated")
    allowed(gw, "architect", "gpt-4o")
    page.goto(base + "/console/agents")
    expect(page.locator("tr[data-testid='agent-row'][data-agent='architect']")).to_contain_text("active")


# ---- approvals ---------------------------------------------------------------------------------------

def test_approving_a_pending_approval_lets_the_agents_retry_through(
        gw: Gateway, upstream: UpstreamServer, base: str, page: Any, writer_cookie: dict[str, Any]) -> None:
    approval_id = request_approval(gw)
    open_as(page, base, writer_cookie, "/console/approvals")
    row = page.locator(f"[data-testid='approval-row'][data-approval='{approval_id}']")
    expect(row).to_contain_text("executor")
    expect(row).to_contain_text("wipe_cache")
    button = page.get_by_test_id(f"approve-{approval_id}")
    reason = button.locator("xpath=ancestor::form[1]").get_by_label("Reason")
    if reason.count():
        reason.fill("checked by phone")
    button.click()
    expect(page.get_by_test_id("flash")).to_contain_text("approved")
    expect(page.locator(f"[data-testid='approval-row'][data-approval='{approval_id}']")).to_have_count(0)

    ok = wipe_cache(gw, approval_id)
    assert ok.status_code == 200
    assert len(upstream.received(ok.headers["x-request-id"])) == 1
    [approved] = eventually(lambda: gw.audit_rows("action = 'admin.approvals.approve' AND resource_name = ?",
                                                  (approval_id,)), "the approval's admin row")
    assert approved["decision"] == "allow" and WRITER in reasons_of(approved)


# ---- a read-only operator --------------------------------------------------------------------------

def test_a_read_only_token_sees_no_write_buttons_and_its_writes_are_refused(
        gw: Gateway, base: str, page: Any, reader_cookie: dict[str, Any]) -> None:
    approval_id = request_approval(gw)  # a pending item it could approve, were it allowed to

    def write_forms() -> list[str]:
        return [str(f.get_attribute("action")) for f in page.locator("form").all()
                if (f.get_attribute("method") or "get").lower() == "post"
                and not str(f.get_attribute("action")).endswith("/logout")]

    open_as(page, base, reader_cookie, "/console/agents/builder", READER)
    expect(page.get_by_test_id("agent-rows")).to_be_attached()
    for testid in ("revoke-form", "reinstate-form", "promote-form", "demote-form"):
        expect(page.get_by_test_id(testid)).to_have_count(0)
    assert write_forms() == []
    screenshot(page, "agent-read-only")
    page.goto(base + "/console/approvals")
    expect(page.locator(f"[data-testid='approval-row'][data-approval='{approval_id}']")).to_be_visible()
    expect(page.locator("[data-testid^='approve-']")).to_have_count(0)
    assert write_forms() == []

    forged = post_from_page(page, "/console/agents/builder/revoke", {"reason": "not mine to do", "csrf": csrf_of(page)})
    assert forged["status"] == 403 and "write" in forged["text"], forged
    forged_approval = post_from_page(page, f"/console/approvals/{approval_id}/approve",
                                     {"reason": "no", "csrf": csrf_of(page)})
    assert forged_approval["status"] == 403, forged_approval
    with admin(gw, READ_TOKEN) as c:  # the admin API refuses the same token's writes
        r = c.post("/admin/agents/builder/revoke", json={"reason": "not mine to do"})
        assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
    assert agent_state(gw, "builder") == "active"
    with admin(gw) as c:
        pending = {a["id"] for a in c.get("/admin/approvals", params={"status": "pending"}).json()["approvals"]}
        assert approval_id in pending
        assert c.post(f"/admin/approvals/{approval_id}/reject", json={"reason": "test over"}).status_code == 200
    rows = eventually(lambda: [r for r in gw.audit_rows("action = 'admin.agents.revoke' AND decision = 'deny'")
                               if READER in reasons_of(r) and "write" in reasons_of(r)], "the refused writes' rows")
    assert len(rows) == 2 and {r["status"] for r in rows} == {403}  # the console's and the admin API's


# ---- CSRF --------------------------------------------------------------------------------------------

def test_writes_without_the_csrf_token_or_from_another_origin_are_refused(
        gw: Gateway, base: str, page: Any, writer_cookie: dict[str, Any]) -> None:
    open_as(page, base, writer_cookie, "/console/agents/builder")
    token = csrf_of(page)
    path = "/console/agents/builder/revoke"
    missing = post_from_page(page, path, {"reason": "csrf probe"})
    wrong = post_from_page(page, path, {"reason": "csrf probe", "csrf": "0" * len(token)})
    html = post_from_page(page, path, {"reason": "csrf probe"}, accept_json=False)
    for r in (missing, wrong, html):
        assert r["status"] == 403 and "CSRF" in r["text"], r
    # The right token from a foreign origin (what a cross-site form would send) is refused too.
    foreign = page.request.post(base + path, form={"reason": "csrf probe", "csrf": token},
                                headers={"Origin": "http://evil.example", "Accept": "application/json"},
                                max_redirects=0)
    assert foreign.status == 403, foreign.text()
    assert agent_state(gw, "builder") == "active"
    refused = eventually(lambda: [r for r in gw.audit_rows("action = 'admin.agents.revoke' AND decision = 'deny'")
                                  if "CSRF" in reasons_of(r)], "the CSRF refusals' rows")
    assert len(refused) == 4 and all(r["status"] == 403 and WRITER in reasons_of(r) for r in refused)

    # The control: the same write with the session's token goes through (so the 403s were CSRF's).
    done = post_from_page(page, path, {"reason": "csrf control", "csrf": token})
    assert done["status"] == 200, done
    assert agent_state(gw, "builder") == "revoked"
    back = post_from_page(page, "/console/agents/builder/reinstate", {"reason": "csrf control over", "csrf": token})
    assert back["status"] == 200, back
    assert agent_state(gw, "builder") == "active"


# ---- every page: screenshot and axe-core ---------------------------------------------------------------

@pytest.fixture(scope="module")
def report_id(gw: Gateway) -> str:
    with admin(gw) as c:
        made = c.post("/admin/reports", json={"period": "1d"})
    assert made.status_code == 201, made.text
    return str(made.json()["id"])


PAGES: list[tuple[str, str, str]] = [
    ("overview", "/console", "decisions-chart"),
    ("live", "/console/live", "live-rows"),
    ("agents", "/console/agents", "agents-table"),
    ("agent", "/console/agents/intern-bot", "agent-rows"),
    ("approvals", "/console/approvals", "nav"),
    ("events", "/console/events?severity=LOW", "events-table"),
    ("events-high", "/console/events?severity=HIGH", "events-table"),
    ("reports", "/console/reports", "nav"),
    ("report", "/console/reports/{report}", "nav"),
    ("policy", "/console/policy", "policy-revision"),
]


@pytest.mark.parametrize("name,path,testid", PAGES, ids=[p[0] for p in PAGES])
def test_every_page_renders_accessibly(gw: Gateway, base: str, page: Any, writer_cookie: dict[str, Any],
                                       report_id: str, name: str, path: str, testid: str) -> None:
    pending = request_approval(gw) if name == "approvals" else None  # something to decide, on the screenshot
    response = open_as(page, base, writer_cookie, path.format(report=report_id))
    assert response is not None and response.status == 200, f"{name}: {response and response.status}"
    assert page.locator("html").get_attribute("lang") == "en"
    assert page.title().strip()
    expect(page.locator("main")).to_have_count(1)
    nav = page.get_by_test_id("nav")
    for link in ("Overview", "Live", "Agents", "Approvals", "Events", "Reports", "Policy"):
        expect(nav.get_by_role("link", name=link, exact=True)).to_be_visible()
    expect(page.get_by_test_id(testid)).to_be_attached()
    if name == "overview":
        expect(page.get_by_test_id("decisions-chart").locator("canvas").first).to_be_attached()
    elif name == "live":
        expect(page.get_by_test_id("live-rows").locator(ROW).first).to_be_attached()  # the backlog
    elif name == "agents":
        expect(page.locator("tr[data-testid='agent-row']")).to_have_count(5)  # config/agents.yaml's agents
        intern = page.locator("tr[data-testid='agent-row'][data-agent='intern-bot']")
        assert int(intern.get_by_test_id("agent-requests").inner_text()) >= 10  # the tests' calls today
        expect(intern).to_contain_text("allow")  # its last decision
        architect = page.locator("tr[data-testid='agent-row'][data-agent='architect']")
        assert int(architect.get_by_test_id("agent-risk").inner_text()) > 0  # revoked once: a risk
        expect(architect).to_have_attribute("data-state", "active")
    elif name == "agent":
        expect(page.get_by_test_id("agent-rows")).to_contain_text("gpt-4o-mini")  # intern-bot's requests
        expect(page.get_by_test_id("revoke-form")).to_be_visible()
    elif name == "events":  # every severity from LOW up: the admin.auth_failed (MEDIUM), agent.revoked (HIGH)
        expect(page.locator("[data-testid='event-row'][data-type='admin.auth_failed']").first).to_be_attached()
        expect(page.locator("[data-testid='event-row'][data-type='agent.revoked']").first).to_be_attached()
    elif name == "events-high":
        rows = page.locator("[data-testid='event-row']")
        expect(rows.and_(page.locator("[data-type='agent.revoked']")).first).to_be_attached()
        assert {r.get_attribute("data-severity") for r in rows.all()} <= {"HIGH", "CRITICAL"}
    elif name == "approvals":
        expect(page.get_by_test_id(f"approve-{pending}")).to_be_visible()
    elif name == "policy":
        revision = gw.audit_rows("action = 'llm.chat' AND policy_revision IS NOT NULL")[-1]["policy_revision"]
        expect(page.get_by_test_id("policy-revision")).to_have_text(revision)
        expect(page.get_by_test_id("shadow")).to_contain_text("off")  # no policy.shadow configured
    elif name == "reports":
        expect(page.locator(f"[data-report='{report_id}']")).to_be_visible()
    elif name == "report":
        expect(page.locator("main")).to_contain_text("governance report")
        expect(page.locator("main svg").first).to_be_attached()  # the report's charts
    content = page.content()
    assert PROMPT not in content and WRITE_TOKEN not in content and READ_TOKEN not in content
    screenshot(page, name)
    axe_check(page)


def test_login_page_renders_accessibly(base: str, page: Any) -> None:
    page.goto(base + "/console/login")
    assert page.locator("html").get_attribute("lang") == "en"
    expect(page.locator("input[name='token']")).to_be_visible()
    screenshot(page, "login")
    axe_check(page)
