"""What the console's browser tests share: traffic through the real `openai` SDK, a console
session for a browser context, reading the pages, and the checks both audit backends run
(the decisions chart after a burst, a denial in the live stream)."""
from __future__ import annotations

import json
import re
import time
from typing import Any

import httpx
import openai
import pytest
from playwright.sync_api import expect

from tests.support.admin_api import READ_TOKEN, WRITER, admin
from tests.support.harness import KEYS, Gateway
from tests.support.waiting import eventually

PROMPT = "console-test prompt text that must never reach the console"
MSG = [{"role": "user", "content": PROMPT}]
DECISIONS = ("allow", "deny", "rate_limited", "error", "bypass")
ROW = "tr[data-testid='live-row']"
COOKIE = "portcullis_console"


# ---- traffic, through the real openai SDK ------------------------------------------------------

def sdk(gw: Gateway, agent: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS[agent], max_retries=0)


def allowed(gw: Gateway, agent: str = "intern-bot", model: str = "gpt-4o-mini") -> str:
    """An allowed chat; its request id."""
    raw = sdk(gw, agent).chat.completions.with_raw_response.create(model=model, messages=MSG, max_tokens=16)
    assert raw.http_response.status_code == 200
    return str(raw.headers["x-request-id"])


def denied(gw: Gateway, agent: str = "observer", model: str = "gpt-4o-mini") -> openai.PermissionDeniedError:
    """A chat the policy refuses: observer is a student, and a student may not chat."""
    with pytest.raises(openai.PermissionDeniedError) as refused:
        sdk(gw, agent).chat.completions.create(model=model, messages=MSG, max_tokens=16)
    return refused.value


def rid_of(refused: openai.APIStatusError) -> str:
    return str(refused.response.headers["x-request-id"])


def wipe_cache(gw: Gateway, approval: str | None = None) -> httpx.Response:
    """executor (T3, supervised) calling the destructive HTTP tool: the policy wants an approval."""
    headers = {"X-Portcullis-Approval": approval} if approval else {}
    return sdk(gw, "executor").post(f"{gw.url}/tools/wipe_cache", body={"scope": "all"}, cast_to=httpx.Response,
                                    options={"headers": headers})


def request_approval(gw: Gateway) -> str:
    """A pending approval: executor's refused wipe_cache call; its id."""
    with pytest.raises(openai.PermissionDeniedError) as refused:
        wipe_cache(gw)
    body = refused.value.body
    assert isinstance(body, dict) and body["code"] == "approval_required", body
    return str(body["approval_id"])


def agent_state(gw: Gateway, agent: str) -> str:
    with admin(gw, READ_TOKEN) as c:
        return str(c.get(f"/admin/agents/{agent}").json()["state"])


def reasons_of(row: dict[str, Any]) -> str:
    return " ".join(json.loads(row["reasons"] or "[]"))


# ---- the browser side -----------------------------------------------------------------------------

def session_cookie(base: str, token: str) -> dict[str, Any]:
    """A console session made by the login form's POST (test_login_* drives the form itself),
    as a cookie for a browser context."""
    r = httpx.post(base + "/console/login", data={"token": token, "next": "/console"}, timeout=30)
    assert r.status_code == 303, r.text
    return {"name": COOKIE, "value": r.cookies[COOKIE], "domain": "127.0.0.1", "path": "/console",
            "httpOnly": True, "sameSite": "Strict"}


def open_as(page: Any, base: str, cookie: dict[str, Any], path: str, operator: str = WRITER) -> Any:
    """The page at `path` in the session of `cookie`; returns the navigation's response."""
    page.context.add_cookies([cookie])
    response = page.goto(base + path)
    expect(page.get_by_test_id("operator")).to_contain_text(operator)
    return response


def number(page: Any, testid: str) -> int:
    text = page.get_by_test_id(testid).inner_text()
    found = re.search(r"\d[\d,]*", text)
    assert found, f"no number in {testid}: {text!r}"
    return int(found.group().replace(",", ""))


def csrf_of(page: Any) -> str:
    """The session's CSRF token, as the page's own forms carry it (every page's logout form)."""
    value = page.locator("input[name='csrf']").first.get_attribute("value")
    assert value, "no csrf field in the page's forms"
    return str(value)


def post_from_page(page: Any, path: str, fields: dict[str, str], accept_json: bool = True) -> dict[str, Any]:
    """A form POST made by the page's own JavaScript (same origin, the session cookie attached)."""
    return page.evaluate("""async ([path, fields, json]) => {
        const r = await fetch(path, {method: 'POST', body: new URLSearchParams(fields), redirect: 'manual',
            headers: json ? {'Accept': 'application/json'} : {}});
        return {status: r.status, text: await r.text()};
    }""", [path, fields, accept_json])


def series(page: Any, base: str, window: str = "1h") -> dict[str, Any]:
    """The chart's data, fetched in the page's session."""
    r = page.request.get(f"{base}/console/api/series?window={window}")
    assert r.status == 200, r.text()
    return r.json()


def live_row(page: Any, request_id: str) -> Any:
    return page.get_by_test_id("live-rows").locator(f"{ROW}[data-request='{request_id}']")


def open_live(page: Any, base: str, cookie: dict[str, Any]) -> None:
    with page.expect_response(lambda r: "/console/live/stream" in r.url):
        open_as(page, base, cookie, "/console/live")
    expect(page.get_by_test_id("live-rows")).to_have_attribute("data-connected", "true")


# ---- checks both audit backends run --------------------------------------------------------------

def check_chart_reflects_a_burst(gw: Gateway, base: str, page: Any, cookie: dict[str, Any],
                                 n_allow: int = 7, n_deny: int = 4) -> None:
    """A burst of allowed and denied SDK calls moves the overview's chart data and totals by
    exactly the burst, in every window."""
    open_as(page, base, cookie, "/console")
    chart = page.get_by_test_id("decisions-chart")
    expect(chart.locator("canvas").first).to_be_attached()  # uPlot drew it
    expect(chart).to_contain_text("deny")  # its legend names the series
    before = series(page, base)["totals"]
    assert {d: number(page, f"total-{d}") for d in DECISIONS} == before

    last = ""
    for _ in range(n_allow):
        last = allowed(gw)
    for _ in range(n_deny):
        denied(gw)
    want = {**before, "allow": before["allow"] + n_allow, "deny": before["deny"] + n_deny}
    eventually(lambda: series(page, base)["totals"] == want, f"the series totals to reach {want}", timeout=10)
    page.wait_for_timeout(200)
    assert series(page, base)["totals"] == want  # exactly the burst: nothing else counted, nothing lost

    with page.expect_response(lambda r: "/console/api/series" in r.url and "window=1h" in r.url) as hour:
        page.reload()  # the chart asks for its data when the page loads
    h = hour.value.json()
    assert h["totals"] == want and h["bucket_s"] == 60 and len(h["t"]) == len(h["series"]["allow"])
    assert {d: sum(h["series"][d]) for d in DECISIONS} == want
    # The burst is in the last few minutes' buckets (a few seconds ago; a minute may have turned since).
    assert sum(h["series"]["allow"][-3:]) >= n_allow and sum(h["series"]["deny"][-3:]) >= n_deny
    assert {d: number(page, f"total-{d}") for d in DECISIONS} == want
    expect(chart.locator("canvas").first).to_be_attached()

    with page.expect_response(lambda r: "/console/api/series" in r.url and "window=1d" in r.url) as day:
        page.get_by_test_id("window-1d").click()
    d1 = day.value.json()
    assert d1["window"] == "1d" and d1["bucket_s"] > 60 and d1["totals"] == want
    expect(page.get_by_test_id("window-1d")).to_have_attribute("aria-pressed", "true")
    with page.expect_response(lambda r: "/console/api/series" in r.url and "window=1w" in r.url) as week:
        page.get_by_test_id("window-1w").click()
    assert week.value.json()["totals"] == want

    for testid in ("overhead-p50", "overhead-p99", "cache-hit-rate", "replicas"):
        expect(page.get_by_test_id(testid)).to_be_visible()
    assert re.search(r"\d", page.get_by_test_id("overhead-p50").inner_text())  # measured on the allowed calls
    revision = gw.audit_row(last)["policy_revision"]
    assert revision
    expect(page.get_by_test_id("replicas")).to_contain_text(revision[:8])  # this replica's revision
    assert PROMPT not in page.content()


def check_denial_in_live_stream(gw: Gateway, base: str, page: Any, cookie: dict[str, Any]) -> None:
    """A denial shows in the live stream within 2 s of the SDK call, with why, and no prompt."""
    open_live(page, base, cookie)
    start = time.monotonic()
    rid = rid_of(denied(gw, model="gpt-4.1"))
    row = live_row(page, rid)
    expect(row).to_have_count(1, timeout=2000)
    elapsed = time.monotonic() - start
    assert elapsed < 2.0, f"the denial took {elapsed:.2f}s to appear"
    assert (row.get_attribute("data-decision"), row.get_attribute("data-agent")) == ("deny", "observer")
    text = row.inner_text()
    assert "gpt-4.1" in text and "403" in text and "deny" in text
    first_reason = json.loads(gw.audit_row(rid)["reasons"])[0]
    expect(row.locator("td.reasons")).to_contain_text(first_reason)  # why it was denied
    assert PROMPT not in page.content() and KEYS["observer"] not in page.content()
