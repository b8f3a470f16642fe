"""Gateways on the `opa` policy backend, against a local server speaking OPA's REST API.

Real gateways under uvicorn answer the openai SDK; decisions come over HTTP from the test
OPA server (tests/support/opa_server.py), which evaluates the same policy directory the
gateway watches. With `cache.l2`, gateways share decisions through real Redis.
"""
from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import Any, Iterator

import httpx
import openai
import pytest

from adapters.policy.bundle import collect
from tests.support.harness import KEYS, LoopThread, REPO
from tests.support.opa_server import OPAServer
from tests.support.redis_process import delete_prefix, refusing_url
from tests.support.services import redis_url, unique
from tests.support.waiting import eventually

MSG = [{"role": "user", "content": "decide over http"}]


def client(gw: Any, agent: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS[agent], max_retries=0)


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    return Path(shutil.copytree(REPO / "policies_rego", tmp_path / "policies"))


@pytest.fixture
def opa(loop_thread: LoopThread, policies: Path) -> Iterator[OPAServer]:
    server = loop_thread.run(OPAServer(policies).start())
    yield server
    loop_thread.run(server.stop())


def opa_gateway(make_gateway: Any, opa: OPAServer, policies: Path, **overrides: Any) -> Any:
    return make_gateway(policy__backend="opa", policy__dir=str(policies), policy__hot_reload=True,
                        policy__opa={"url": opa.url, "timeout_s": 5.0, "poll_s": 0.1}, **overrides)


def denied(gw: Any, agent: str, model: str) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as e:
        client(gw, agent).chat.completions.create(model=model, messages=MSG)
    return e.value


def test_allow_and_deny_come_from_opa_with_the_revision_in_audit_and_metrics(make_gateway, opa, policies):
    gw = opa_gateway(make_gateway, opa, policies)
    revision = collect(policies).revision
    opa.inputs.clear()
    ok = client(gw, "intern-bot").chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
    assert ok.status_code == 200 and ok.parse().choices
    err = denied(gw, "observer", "gpt-4o")  # tier 0 may not use gpt-4o
    assert err.status_code == 403 and isinstance(err, openai.PermissionDeniedError)
    assert opa.decided_for() == ["intern-bot", "observer"]  # each decision was OPA's
    allow = gw.audit_row(ok.headers["x-request-id"])
    deny = gw.audit_row(err.response.headers["x-request-id"])
    assert (allow["decision"], allow["policy_revision"]) == ("allow", revision)
    assert (deny["decision"], deny["status"], deny["policy_revision"]) == ("deny", 403, revision)
    assert f'portcullis_policy_info{{revision="{revision}"}} 1.0' in httpx.get(gw.url + "/metrics").text
    # A second identical request is the L1's: no second call to OPA.
    client(gw, "intern-bot").chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert opa.decided_for() == ["intern-bot", "observer"]


def test_model_listing_is_one_batch_query(make_gateway, opa, policies):
    gw = opa_gateway(make_gateway, opa, policies)
    opa.requests.clear()
    opa.inputs.clear()
    listed = {m.id for m in client(gw, "observer").models.list()}
    assert "gpt-4o-mini" in listed and "gpt-4o" not in listed  # filtered per agent by OPA's decisions
    assert [r for r in opa.requests if r[1] == "/v1/query"] == [("POST", "/v1/query")]
    assert opa.decided_for() == []  # no single decisions: the listing was the batch


def test_bundle_revision_reaches_audit_and_metrics(make_gateway, opa, policies):
    opa.bundle_revision = "git-3f2a9c1"
    gw = opa_gateway(make_gateway, opa, policies)
    r = client(gw, "intern-bot").chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
    assert gw.audit_row(r.headers["x-request-id"])["policy_revision"] == "git-3f2a9c1"
    opa.bundle_revision = "git-7b8d0e4"  # a new bundle activates: the poll moves the revision
    eventually(lambda: 'revision="git-7b8d0e4"' in httpx.get(gw.url + "/metrics").text, "the new bundle revision")
    r = client(gw, "intern-bot").chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
    row = gw.audit_row(r.headers["x-request-id"])
    assert (row["policy_revision"], row["cache_hit"]) == ("git-7b8d0e4", 0)  # a new revision: no old decision


def test_a_policy_commit_changes_the_revision(make_gateway, opa, policies):
    gw = opa_gateway(make_gateway, opa, policies)
    before = collect(policies).revision
    data = policies / "portcullis" / "config" / "data.json"
    data.write_text(data.read_text().replace('"cache_ttl_s": 60', '"cache_ttl_s": 45'))
    after = collect(policies).revision
    assert after != before
    eventually(lambda: f'revision="{after}"' in httpx.get(gw.url + "/metrics").text, "the new directory revision")
    r = client(gw, "intern-bot").chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
    assert gw.audit_row(r.headers["x-request-id"])["policy_revision"] == after


def test_opa_down_is_an_audited_503_and_not_ready_until_it_is_back(make_gateway, loop_thread, opa, policies):
    gw = opa_gateway(make_gateway, opa, policies)
    assert httpx.get(gw.url + "/readyz").status_code == 200
    loop_thread.run(opa.stop())
    err = denied(gw, "builder", "gpt-4.1-mini")  # not cached: needs OPA
    assert err.status_code == 503
    row = gw.audit_row(err.response.headers["x-request-id"])
    assert (row["decision"], row["status"]) == ("error", 503)
    ready = eventually(lambda: (r := httpx.get(gw.url + "/readyz")).status_code == 503 and r, "/readyz to fail")
    assert "OPA at 127.0.0.1" in ready.text
    loop_thread.run(opa.restart())  # same port: the sidecar restarted
    eventually(lambda: httpx.get(gw.url + "/readyz").status_code == 200, "/readyz to recover")
    assert client(gw, "builder").chat.completions.create(model="gpt-4.1-mini", messages=MSG).choices


@pytest.fixture
def l2_prefix() -> Iterator[str]:
    url = redis_url()
    prefix = unique("portcullis:test:opa-l2:")
    yield prefix
    delete_prefix(url, prefix)


def test_second_gateways_first_request_is_an_l2_hit(make_gateway, opa, policies, l2_prefix):
    l2 = {"redis_url": redis_url(), "key_prefix": l2_prefix, "timeout_s": 5.0}
    first, second = (opa_gateway(make_gateway, opa, policies, cache__l2=l2) for _ in range(2))
    opa.inputs.clear()
    a = client(first, "intern-bot").chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
    b = client(second, "intern-bot").chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
    assert first.audit_row(a.headers["x-request-id"])["cache_hit"] == 0
    assert second.audit_row(b.headers["x-request-id"])["cache_hit"] == 1  # its L1 was empty: Redis had it
    assert opa.decided_for() == ["intern-bot"]  # one OPA call for the fleet


def test_redis_down_still_decides_a_deny_is_a_deny(make_gateway, opa, policies):
    sock, url = refusing_url(password="l2-secret-pw")
    try:
        gw = opa_gateway(make_gateway, opa, policies, cache__l2={"redis_url": url, "timeout_s": 0.5})
        err = denied(gw, "observer", "gpt-4o")
        assert err.status_code == 403
        row = gw.audit_row(err.response.headers["x-request-id"])
        assert (row["decision"], row["cache_hit"]) == ("deny", 0)
        assert client(gw, "intern-bot").chat.completions.create(model="gpt-4o-mini", messages=MSG).choices
        assert httpx.get(gw.url + "/readyz").status_code == 200  # the L2 is an optimisation, not a dependency
    finally:
        sock.close()


def test_starts_with_opa_down_and_recovers_without_a_restart(make_gateway, loop_thread, policies):
    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # bound, not listening: refused
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    held.bind(("127.0.0.1", 0))
    down = OPAServer(policies)
    gw = make_gateway(policy__backend="opa", policy__dir=str(policies), policy__hot_reload=False,
                      policy__opa={"url": f"http://127.0.0.1:{held.getsockname()[1]}", "timeout_s": 5.0,
                                   "poll_s": 0.1})
    ready = httpx.get(gw.url + "/readyz")
    assert ready.status_code == 503 and "OPA at 127.0.0.1" in ready.text
    err = denied(gw, "intern-bot", "gpt-4o-mini")
    assert err.status_code == 503
    assert gw.audit_row(err.response.headers["x-request-id"])["decision"] == "error"
    loop_thread.run(down.start(sock=held))  # the sidecar comes up
    try:
        eventually(lambda: httpx.get(gw.url + "/readyz").status_code == 200, "/readyz once OPA is up")
        assert client(gw, "intern-bot").chat.completions.create(model="gpt-4o-mini", messages=MSG).choices
    finally:
        loop_thread.run(down.stop())
