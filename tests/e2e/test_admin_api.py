"""The admin API (contract 7) on its own listener of a real gateway, driven with httpx; what
it changes is seen through the real openai SDK."""
from __future__ import annotations

import json

import openai
import pytest

from gateway.admin.app import OPS, create_admin_app
from gateway.admin.openapi import document
from tests.support.admin_api import (
    READ_TOKEN,
    READER,
    WRITE_TOKEN,
    WRITER,
    admin,
    admin_overrides,
    admin_url,
)
from tests.support.harness import KEYS, Gateway, gateway_config
from tests.support.waiting import eventually

MSG = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def gw(loop_thread, upstream, tmp_path_factory):
    g = Gateway(loop_thread, gateway_config(tmp_path_factory.mktemp("admin"), upstream.url,
                                            **admin_overrides())).start()
    yield g
    g.stop()


def flush(gw: Gateway) -> None:
    gw.loop.run(gw.app.state.services.lifecycle.flush())


def chat(gw: Gateway, agent: str = "intern-bot"):
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS[agent], max_retries=0)
    return c.chat.completions.create(model="gpt-4o-mini", messages=MSG)


# ---- the OpenAPI document -----------------------------------------------------------------------

def _operations(doc: dict) -> set[tuple[str, str, str]]:
    return {(m.upper(), p, o["operationId"]) for p, item in doc["paths"].items() for m, o in item.items()}


def test_openapi_document_and_router_list_the_same_operations(gw) -> None:
    with admin(gw, token=None) as c:
        r = c.get("/admin/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc == json.loads(json.dumps(document()))
    assert doc["openapi"].startswith("3.1")
    assert _operations(doc) == {(op.method, op.path, op.id) for op in OPS}
    routes = create_admin_app(gw.app.state.services).routes
    # The API's routes; the console's (/console, its pages and static files) are not API operations.
    served = {(m, route.path) for route in routes if route.path.startswith("/admin/") for m in route.methods
              if m != "HEAD" and route.path != "/admin/openapi.json"}
    assert served == {(op.method, op.path) for op in OPS}
    assert {route.path for route in routes} - {path for _, path in served} - {"/admin/openapi.json"} == {
        route.path for route in routes if route.path == "/console" or route.path.startswith("/console/")}


def test_openapi_document_is_well_formed() -> None:
    doc = document()
    ids = [o["operationId"] for item in doc["paths"].values() for o in item.values()]
    assert len(ids) == len(set(ids))
    refs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    for ref in refs:  # every $ref resolves inside the document
        node = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert method in ("get", "post", "put")
            assert op["security"] == [{"adminToken": [op["x-portcullis-scope"]]}]
            assert {"200", "201"} & set(op["responses"]) and "401" in op["responses"]
            declared = {p["name"] for p in op["parameters"] if p["in"] == "path"}
            assert declared == {seg[1:-1] for seg in path.split("/") if seg.startswith("{")}, path
            assert ("requestBody" in op) == (method != "get"), op["operationId"]


def test_every_documented_operation_wants_a_token(gw) -> None:
    with admin(gw, token=None) as c:
        for method, path, op_id in sorted(_operations(document())):
            r = c.request(method, path.replace("{id}", "x").replace("{surface}", "openai"))
            assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized"), op_id


# ---- authorization ------------------------------------------------------------------------------

def test_missing_and_wrong_tokens_get_401_and_are_audited(gw) -> None:
    wrong = "pat-not-a-configured-token-42"
    with admin(gw, token=None) as c:
        missing = c.get("/admin/agents")
        bad = c.get("/admin/agents", headers={"authorization": f"Bearer {wrong}"})
        basic = c.get("/admin/agents", headers={"authorization": "Basic b3BzOnB3"})
    for r in (missing, bad, basic):
        assert r.status_code == 401
        body = r.json()["error"]
        assert body["code"] == "unauthorized" and body["request_id"] == r.headers["x-request-id"]
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert wrong not in r.text
    mine = {r.headers["x-request-id"]: gw.audit_row(r.headers["x-request-id"]) for r in (missing, bad, basic)}
    for row in mine.values():
        assert (row["action"], row["decision"], row["status"], row["api"], row["auth"]) == \
            ("admin.agents.list", "deny", 401, "admin", None)
    assert "unknown admin token" in mine[bad.headers["x-request-id"]]["error"]
    assert not any(wrong in json.dumps(r, default=str) for r in gw.audit_rows())  # never stored
    flush(gw)
    with admin(gw, READ_TOKEN) as c:
        events = c.get("/admin/events", params={"since": "1h"}).json()["events"]
    failed = [e for e in events if e["event_type"] == "admin.auth_failed"]
    assert len(failed) >= 3 and {e["severity"] for e in failed} == {"MEDIUM"}
    assert not any(wrong in json.dumps(e) for e in events)


def test_read_token_on_a_write_route_is_403_and_audited(gw) -> None:
    with admin(gw, READ_TOKEN) as c:
        r = c.post("/admin/agents/observer/revoke", json={"reason": "should not happen"})
        assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
        assert c.get("/admin/agents/observer").json()["state"] == "active"
        r2 = c.put("/admin/bypass", json={"enabled": True, "reason": "no"})
        assert r2.status_code == 403
        assert c.get("/admin/bypass").json()["bypass"] is False
    row = gw.audit_row(r.headers["x-request-id"])
    assert (row["action"], row["decision"], row["status"]) == ("admin.agents.revoke", "deny", 403)
    assert (row["resource_type"], row["resource_name"]) == ("agent", "observer")
    assert json.loads(row["policy_input"])["actor"] == READER
    assert READER in json.loads(row["reasons"])[0]


# ---- operations ---------------------------------------------------------------------------------

def test_revoke_and_reinstate_change_what_the_openai_sdk_gets(gw) -> None:
    assert chat(gw).choices[0].message.content == "You said: hello"
    with admin(gw) as c:
        r = c.post("/admin/agents/intern-bot/revoke", json={"reason": "incident 42"})
        assert r.status_code == 200, r.text
        assert r.json()["revoked"] is True
        shown = c.get("/admin/agents/intern-bot").json()
        assert shown["state"] == "revoked" and "incident 42" in shown["revoked_reason"]
        listed = {a["id"]: a for a in c.get("/admin/agents").json()["agents"]}
        assert listed["intern-bot"]["state"] == "revoked" and listed["builder"]["state"] == "active"
    with pytest.raises(openai.PermissionDeniedError) as denied:
        chat(gw)
    assert denied.value.code == "agent_revoked"
    with admin(gw) as c:
        r2 = c.post("/admin/agents/intern-bot/reinstate", json={"reason": "fixed"})
        assert r2.status_code == 200 and r2.json()["revoked"] is False
    assert chat(gw).choices[0].message.content == "You said: hello"
    row = gw.audit_row(r.headers["x-request-id"])
    assert (row["action"], row["decision"], row["status"], row["auth"]) == \
        ("admin.agents.revoke", "allow", 200, "admin_token")
    assert json.loads(row["reasons"]) == [f"{WRITER}: agents.revoke (incident 42)"]
    assert WRITE_TOKEN not in json.dumps(row, default=str)
    eventually(lambda: any(WRITER in r["reasons"] and "incident 42" in r["reasons"] and r["agent_id"] == "intern-bot"
                           for r in gw.audit_rows("action = 'agent.lifecycle'")), "the revocation's agent.lifecycle row")


def test_bad_requests_answer_in_the_admin_error_shape(gw) -> None:
    with admin(gw) as c:
        cases = [
            (c.post("/admin/agents/observer/revoke", json={}), 400, "invalid_request"),
            (c.post("/admin/agents/observer/revoke", content=b"{not json"), 400, "invalid_request"),
            (c.post("/admin/agents/nobody-here/revoke", json={"reason": "x"}), 404, "not_found"),
            (c.get("/admin/agents/nobody-here"), 404, "not_found"),
            (c.get("/admin/events", params={"min_severity": "LOUD"}), 400, "invalid_request"),
            (c.get("/admin/events", params={"since": "yesterday"}), 400, "invalid_request"),
            (c.post("/admin/approvals/apr_unknown/approve", json={}), 404, "not_found"),
            (c.put("/admin/governance/smtp", json={"enabled": False, "reason": "x"}), 400, "invalid_request"),
            (c.get("/admin/reports/rpt_unknown"), 404, "not_found"),
            (c.get("/admin/nothing-here"), 404, "not_found"),
        ]
        assert c.get("/admin/agents/observer").json()["state"] == "active"
    for r, status, code in cases:
        assert r.status_code == status and r.json()["error"]["code"].endswith(code), r.text
    row = gw.audit_row(cases[2][0].headers["x-request-id"])
    assert (row["action"], row["decision"], row["status"]) == ("admin.agents.revoke", "error", 404)


def test_events_risk_and_reports(gw) -> None:
    with admin(gw) as c:
        assert c.post("/admin/agents/builder/revoke", json={"reason": "report me"}).status_code == 200
        assert c.post("/admin/agents/builder/reinstate", json={"reason": "done"}).status_code == 200
        flush(gw)
        events = c.get("/admin/events", params={"since": "1h", "agent": "builder"}).json()["events"]
        assert [e["event_type"] for e in events] == ["agent.revoked", "agent.reinstated"]
        high = c.get("/admin/events", params={"since": "1h", "agent": "builder", "min_severity": "HIGH"})
        assert [e["event_type"] for e in high.json()["events"]] == ["agent.revoked"]
        risk = c.get("/admin/risk", params={"agent": "builder"}).json()
        assert risk["score"] > 0 and risk["categories"]["compliance"] > 0
        made = c.post("/admin/reports", json={"period": "1d"})
        assert made.status_code == 201, made.text
        rid = made.json()["id"]
        assert rid in [r["id"] for r in c.get("/admin/reports").json()["reports"]]
        as_json = c.get(f"/admin/reports/{rid}").json()
        assert as_json["body"] == made.json()["body"]
        assert any(x["agent_id"] == "builder" for x in as_json["body"]["revocations"])
        md = c.get(f"/admin/reports/{rid}", params={"format": "md"})
        assert md.headers["content-type"].startswith("text/markdown") and "builder" in md.text
        html = c.get(f"/admin/reports/{rid}", params={"format": "html"})
        assert html.headers["content-type"].startswith("text/html") and "<" in html.text
    row = gw.audit_row(made.headers["x-request-id"])
    assert (row["action"], row["decision"], row["status"], row["resource_name"]) == \
        ("admin.reports.create", "allow", 201, rid)


def test_bypass_round_trip_is_a_critical_event(gw) -> None:
    with admin(gw) as c:
        assert c.put("/admin/bypass", json={"enabled": True}).status_code == 400  # reason required
        on = c.put("/admin/bypass", json={"enabled": True, "reason": "drill"})
        assert on.status_code == 200 and on.json()["bypass"] is True
        assert c.get("/admin/bypass").json()["bypass"] is True
        off = c.put("/admin/bypass", json={"enabled": False, "reason": "drill over"})
        assert off.json()["bypass"] is False
        flush(gw)
        toggles = [e for e in c.get("/admin/events", params={"since": "1h"}).json()["events"]
                   if e["event_type"] == "bypass.toggled"]
    assert [e["severity"] for e in toggles][-2:] == ["CRITICAL", "CRITICAL"]
    for r in (on, off):
        row = gw.audit_row(r.headers["x-request-id"])
        assert (row["action"], row["decision"], row["status"], row["resource_name"]) == \
            ("admin.bypass.set", "allow", 200, "on" if r is on else "off")


def test_admin_listener_is_not_the_gateway_port(gw) -> None:
    assert admin_url(gw) != gw.url
    with admin(gw) as c:
        assert c.get(gw.url + "/admin/agents").status_code == 404  # the admin API is only on its own port


def test_no_listener_without_tokens_or_when_disabled(make_gateway) -> None:
    assert make_gateway().app.state.admin is None  # no admin.tokens: nothing could call it
    disabled = make_gateway(admin__enabled=False, **admin_overrides())
    assert disabled.app.state.admin is None


def models(gw: Gateway, agent: str) -> set[str]:
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS[agent], max_retries=0)
    return {m.id for m in c.models.list()}


def test_demote_and_promote_change_the_models_listed(gw) -> None:
    before = models(gw, "builder")
    with admin(gw) as c:
        bad = c.post("/admin/agents/builder/promote", json={"reason": "x", "tier": 1})  # not higher
        assert (bad.status_code, bad.json()["error"]["code"]) == (400, "invalid_request")
        down = c.post("/admin/agents/builder/demote", json={"reason": "cost review", "tier": 0})
        assert down.status_code == 200, down.text
        assert down.json()["tier"] == 0
        fewer = models(gw, "builder")
        assert fewer < before
        up = c.post("/admin/agents/builder/promote", json={"reason": "review done", "tier": 2})
        assert up.status_code == 200, up.text
        assert c.get("/admin/agents/builder").json()["tier"] == 2
    assert models(gw, "builder") == before

