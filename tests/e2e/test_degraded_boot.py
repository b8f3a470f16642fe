"""A fleet replica boots while Redis or PostgreSQL is unreachable, and recovers without a restart.

Real services throughout: a private redis-server that is started only later, and the shared
PostgreSQL behind a TCP proxy the test shuts and reopens (tests/support/tcp_proxy.py).
While a dependency is missing, /readyz is 503 and names it, and every governed request on
every surface gets a 503 in its client's own format, audited. The URLs hold passwords,
given through `*_env` variables, and the passwords appear nowhere.
"""
from __future__ import annotations

import json
import logging
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.e2e.test_audit_ops import ENV, MSG, cli
from tests.support import pg
from tests.support.harness import KEYS, Gateway
from tests.support.redis_process import RedisProcess
from tests.support.services import pg_dsn, unique
from tests.support.tcp_proxy import TcpProxy
from tests.support.tool_configs import tools_config
from tests.support.waiting import eventually

SECRET = "s3cret-Pw-7f1c"
FAST = {"readiness__probe_cache_s": 0, "readiness__reconnect_initial_s": 0.05, "readiness__reconnect_max_s": 0.2}
TOOL_CALL = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
             "params": {"name": "read_orders", "arguments": {"customer": "acme"}}}
MCP_HEADERS = {"accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-06-18",
               "authorization": f"Bearer {KEYS['intern-bot']}"}


def every_surface(gw: Gateway) -> dict[str, httpx.Response]:
    """One governed request per surface (openai, anthropic, MCP JSON-RPC, HTTP tools), as the SDKs send them."""
    out: dict[str, httpx.Response] = {}
    oai = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS["intern-bot"], max_retries=0)
    try:
        out["openai"] = oai.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG).http_response
    except openai.APIStatusError as e:
        out["openai"] = e.response
    ant = anthropic.Anthropic(base_url=gw.url, api_key=KEYS["builder"], max_retries=0)
    try:
        out["anthropic"] = ant.messages.with_raw_response.create(
            model="claude-haiku-4-5", max_tokens=16, messages=MSG).http_response
    except anthropic.APIStatusError as e:
        out["anthropic"] = e.response
    out["mcp"] = httpx.post(gw.url + "/mcp/orders", json=TOOL_CALL, headers=MCP_HEADERS)
    try:  # the openai SDK's raw POST: agents built on it call HTTP tools with the same client
        out["tools"] = oai.post(f"{gw.url}/tools/weather", body={"city": "Oslo"}, cast_to=httpx.Response)
    except openai.APIStatusError as e:
        out["tools"] = e.response
    return out


def assert_refused_503(answers: dict[str, httpx.Response], code: str) -> None:
    """Each a 503 in its own client's format (MCP: a JSON-RPC error, HTTP 200, for the request's id)."""
    oai, ant, mcp, tool = (answers[k] for k in ("openai", "anthropic", "mcp", "tools"))
    assert oai.status_code == 503 and oai.json()["error"]["code"] == code, oai.text
    assert ant.status_code == 503 and ant.json()["type"] == "error", ant.text
    assert ant.json()["error"]["type"] == "overloaded_error", ant.text
    assert tool.status_code == 503 and tool.json()["error"]["code"] == code, tool.text
    assert mcp.status_code == 200 and mcp.json()["id"] == 7, mcp.text
    assert mcp.json()["error"]["data"]["code"] == code, mcp.text


def readyz(gw: Gateway) -> httpx.Response:
    return httpx.get(gw.url + "/readyz")


def gauge(gw: Gateway, dependency: str) -> float | None:
    prefix = f'portcullis_dependency_up{{dependency="{dependency}"}} '
    for line in httpx.get(gw.url + "/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return None


def shown(*texts: Any) -> str:
    return "\n".join(str(t) for t in texts)


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() + (logging.Formatter().formatException(r.exc_info) if r.exc_info else "")
                     for r in caplog.records)


def test_redis_down_at_boot_gives_audited_503s_then_recovers(make_gateway, tmp_path, orders, upstream, caplog):
    caplog.set_level(logging.INFO)
    server = RedisProcess(tmp_path, password=SECRET)  # not started yet: its port refuses
    try:
        gw = make_gateway(limits__backend="redis", limits__redis_url_env="PORTCULLIS_REDIS_URL",
                          limits__key_prefix=unique("pc_boot_") + ":", tools=tools_config(orders.url, upstream.url),
                          environ={"PORTCULLIS_REDIS_URL": server.url}, **FAST)
        down = readyz(gw)
        assert down.status_code == 503, down.text
        redis_state = down.json()["dependencies"]["redis"]
        assert not redis_state["ok"] and f"127.0.0.1:{server.port}" in redis_state["error"], down.text
        assert gauge(gw, "redis") == 0

        answers = every_surface(gw)
        assert_refused_503(answers, "rate_limiter_unavailable")
        for surface, r in answers.items():  # audited: a row each, saying what happened
            row = gw.audit_row(r.headers["x-request-id"])
            # `status` is what the client got: MCP's JSON-RPC error travels in an HTTP 200.
            assert (row["decision"], row["status"]) == ("error", r.status_code), (surface, row)
            assert "rate limiter unavailable" in row["error"], (surface, row)

        server.start()  # Redis comes up; the gateway is not restarted
        eventually(lambda: readyz(gw).status_code == 200, "/readyz to turn 200 once Redis answers")
        assert gauge(gw, "redis") == 1
        answers = every_surface(gw)
        assert answers["openai"].status_code == 200 and answers["tools"].status_code == 200
        assert answers["anthropic"].status_code == 200
        assert gw.audit_row(answers["openai"].headers["x-request-id"])["decision"] == "allow"
        leaks = shown(log_text(caplog), down.text, readyz(gw).text, repr(gw.settings),
                      *(r.text for r in answers.values()), *(str(r) for r in gw.audit_rows()))
        assert SECRET not in leaks
        assert any("redis unreachable at start" in r.getMessage() for r in caplog.records)
    finally:
        server.kill()


@pytest.fixture
def pg_database(loop_thread):
    admin, name = pg_dsn(), unique("portcullis_boot_")
    loop_thread.run(pg.create_database(admin, name))
    yield admin, name
    loop_thread.run(pg.drop_database(admin, name))


@pytest.fixture
def pg_proxy(loop_thread):
    proxy = TcpProxy("127.0.0.1", 5432)  # shut: PostgreSQL "down" until the test opens it
    yield proxy
    loop_thread.loop.call_soon_threadsafe(proxy.close)


def held_rows(gw: Gateway) -> list[dict[str, Any]]:
    path = gw.settings.path(gw.settings.audit.spool_path + ".unchained")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def pg_gateway(make_gateway, pg_database, pg_proxy, orders, upstream) -> Gateway:
    _, name = pg_database
    # Trust auth: the server never asks for the password, but the gateway holds it all the same.
    dsn = f"postgresql://postgres:{SECRET}@127.0.0.1:{pg_proxy.port}/{name}"
    return make_gateway(audit__backend="postgres", audit__dsn_env="PORTCULLIS_PG_DSN", audit__table="audit_log",
                        audit__retry_interval_s=0.1, audit__timeout_s=2, tools=tools_config(orders.url, upstream.url),
                        environ={"PORTCULLIS_PG_DSN": dsn}, **FAST)


def test_postgres_down_at_boot_gives_audited_503s_whose_rows_reach_it_later(
        make_gateway, pg_database, pg_proxy, orders, upstream, loop_thread, caplog):
    caplog.set_level(logging.INFO)
    gw = pg_gateway(make_gateway, pg_database, pg_proxy, orders, upstream)
    down = readyz(gw)
    assert down.status_code == 503, down.text
    body = down.json()
    assert not body["dependencies"]["postgres"]["ok"], down.text
    assert f"127.0.0.1:{pg_proxy.port}" in body["dependencies"]["postgres"]["error"], down.text
    assert any("audit store not reached since start" in p for p in body["problems"]), down.text
    assert gauge(gw, "postgres") == 0

    answers = every_surface(gw)
    assert_refused_503(answers, "audit_unavailable")
    refused = [r.headers["x-request-id"] for r in answers.values()]
    # Recorded on local disk meanwhile, in order, waiting for their place in the chain.
    eventually(lambda: [r["request_id"] for r in held_rows(gw)] == refused, "the 4 rows held unchained")
    assert [r["status"] for r in held_rows(gw)] == [r.status_code for r in answers.values()]

    loop_thread.run(pg_proxy.open())  # PostgreSQL reachable again; the gateway is not restarted
    eventually(lambda: readyz(gw).status_code == 200, "/readyz to turn 200 once PostgreSQL answers")
    assert gauge(gw, "postgres") == 1
    rows = eventually(lambda: len(r := gw.audit_rows()) == 4 and r, "the held rows in PostgreSQL")
    assert [r["request_id"] for r in rows] == refused and [r["seq"] for r in rows] == [1, 2, 3, 4]
    assert [(r["decision"], r["status"]) for r in rows] == [("error", 503), ("error", 503), ("error", 200),
                                                            ("error", 503)]  # MCP: a JSON-RPC error in a 200
    assert not held_rows(gw)

    answers = every_surface(gw)
    assert answers["openai"].status_code == 200 and answers["tools"].status_code == 200
    rows = eventually(lambda: len(r := gw.audit_rows()) == 8 and r, "the rows after recovery")
    assert [r["seq"] for r in rows] == list(range(1, 9))
    assert all(r["prev_hash"] == p["hash"] for p, r in zip(rows, rows[1:]))
    gw.stop()
    env = {**ENV, "PORTCULLIS_PG_DSN": gw.settings.audit.dsn}
    verify = cli("audit", "verify", "--config", str(gw.config_path), env=env)
    assert verify.returncode == 0 and "chain test: 8 rows, ok" in verify.stdout, verify.stdout + verify.stderr
    leaks = shown(log_text(caplog), down.text, repr(gw.settings), *(r.text for r in answers.values()),
                  verify.stdout, verify.stderr, *(str(r) for r in rows))
    assert SECRET not in leaks


def test_rows_held_when_stopped_before_postgres_came_back_are_chained_by_the_next_start(
        make_gateway, pg_database, pg_proxy, orders, upstream, loop_thread):
    gw = pg_gateway(make_gateway, pg_database, pg_proxy, orders, upstream)
    answers = every_surface(gw)
    assert_refused_503(answers, "audit_unavailable")
    gw.stop()  # PostgreSQL never reached: the rows stay on disk, unchained
    refused = [r.headers["x-request-id"] for r in answers.values()]
    assert [r["request_id"] for r in held_rows(gw)] == refused

    loop_thread.run(pg_proxy.open())
    again = Gateway(loop_thread, gw.config_path, {"PORTCULLIS_PG_DSN": gw.settings.audit.dsn}).start()
    try:
        eventually(lambda: readyz(again).status_code == 200, "the restarted replica to be ready")
        rows = eventually(lambda: len(r := again.audit_rows()) == 4 and r, "the held rows in PostgreSQL")
        assert [r["request_id"] for r in rows] == refused and [r["seq"] for r in rows] == [1, 2, 3, 4]
        assert not held_rows(gw)
        rid = openai.OpenAI(base_url=again.url + "/v1", api_key=KEYS["intern-bot"], max_retries=0) \
            .chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG).headers["x-request-id"]
        assert again.audit_row(rid)["seq"] == 5
    finally:
        again.stop()
