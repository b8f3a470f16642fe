"""Circuit breakers end to end: real SDK clients, a real failing upstream and MCP server.

Each gateway here runs its breakers on a clock the test moves by hand (create_app's
`clock`), so "open_s later" is one assignment, not a sleep. That the upstream saw no
request while a breaker was open is read from the upstream's own request log.
"""
from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any, Callable, Iterator

import anthropic
import httpx
import openai
import pytest
import uvicorn

from gateway.app import create_app
from tests.support import mcp2
from tests.support.clock import Clock
from tests.support.harness import KEYS, Gateway, LoopThread, Served, free_socket, gateway_config, serve
from tests.support.mcp_orders_server import OrdersServer, build_server
from tests.support.upstream_server import UpstreamServer, request_id
from tests.support.waiting import eventually, eventually_async

MSG = [{"role": "user", "content": "hello"}]
OPEN_S = 30.0
BREAKER = {"failures": 3, "open_s": OPEN_S, "min_requests": 1000}


class ClockedGateway(Gateway):
    """A gateway whose breakers run on `clock`."""

    def __init__(self, loop: LoopThread, config_path: Path, clock: Clock) -> None:
        super().__init__(loop, config_path)
        self.clock = clock

    async def _start(self) -> None:
        self.app = create_app(self.settings, clock=self.clock)
        self._served = await serve(self.app, lifespan="on", proxy_headers=False, timeout_graceful_shutdown=5)

    def ready(self) -> tuple[int, dict[str, Any]]:
        r = httpx.get(self.url + "/readyz")
        return r.status_code, r.json()

    def breaker(self, target: str) -> dict[str, Any]:
        [b] = [b for b in self.ready()[1]["breakers"] if b["target"] == target]
        return b

    def metric(self, line_start: str) -> float:
        text = httpx.get(self.url + "/metrics").text
        [line] = [ln for ln in text.splitlines() if ln.startswith(line_start + " ")]
        return float(line.rsplit(" ", 1)[1])


@pytest.fixture
def make(loop_thread: LoopThread, upstream: UpstreamServer, tmp_path: Path) -> Iterator[Callable[..., ClockedGateway]]:
    made: list[ClockedGateway] = []

    def build(**overrides: Any) -> ClockedGateway:
        sub = tmp_path / f"gw{len(made)}"
        sub.mkdir()
        overrides.setdefault("breaker", BREAKER)
        gw = ClockedGateway(loop_thread, gateway_config(sub, upstream.url, **overrides), Clock())
        gw.start()
        made.append(gw)
        return gw

    yield build
    for gw in made:
        gw.stop()


def oai(gw: Gateway, agent: str = "architect") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS[agent], max_retries=0)


def claude(gw: Gateway, agent: str = "architect") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=KEYS[agent], max_retries=0)


def trip_openai(gw: ClockedGateway, upstream: UpstreamServer) -> None:
    """Three 500s from the upstream, each really sent: the openai breaker opens."""
    for _ in range(3):
        tag = request_id()
        with pytest.raises(openai.InternalServerError) as e:
            oai(gw).chat.completions.create(model="fault-500", messages=MSG, extra_headers={"x-request-id": tag})
        assert e.value.status_code == 500
        assert len(upstream.received(tag)) == 1


def test_openai_breaker_opens_refuses_fast_without_the_upstream_and_heals(make, upstream):
    gw = make()
    trip_openai(gw, upstream)
    status, ready = gw.ready()
    # An open breaker is a detail, not unreadiness: the other upstreams still work.
    assert status == 200 and ready["status"] == "ready"
    b = gw.breaker("openai")
    assert (b["kind"], b["state"]) == ("upstream", "open") and "3 consecutive failures" in b["reason"]
    assert gw.metric('portcullis_breaker_state{kind="upstream",target="openai"}') == 2

    for stream in (False, True):
        tag = request_id()
        with pytest.raises(openai.InternalServerError) as e:
            oai(gw).chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=stream,
                                            extra_headers={"x-request-id": tag})
        err = e.value
        assert err.status_code == 503
        body = err.response.json()["error"]
        assert (body["code"], body["type"]) == ("circuit_open", "api_error")
        assert body["message"].startswith("circuit breaker for upstream openai is open")
        assert int(err.response.headers["retry-after"]) == OPEN_S
        assert upstream.received(tag) == []  # never forwarded
        rid = err.response.headers["x-request-id"]
        assert body["request_id"] == rid
        row = gw.audit_row(rid)
        assert (row["decision"], row["status"], row["upstream"], row["resource_name"]) == \
            ("error", 503, "openai", "gpt-4o-mini")
        assert "circuit breaker for upstream openai is open" in row["error"]
        assert "circuit breaker for upstream openai" in row["reasons"]
        assert row["upstream_ms"] is None  # no time spent with an upstream

    # The anthropic upstream has a breaker of its own, closed.
    ok = claude(gw).messages.create(model="claude-haiku-4-5", max_tokens=50, messages=MSG)
    assert ok.content[0].text == "You said: hello"

    gw.clock.t += OPEN_S  # half-open: the next request is the probe, and the upstream is fine
    tag = request_id()
    done = oai(gw).chat.completions.create(model="gpt-4o-mini", messages=MSG, extra_headers={"x-request-id": tag})
    assert done.choices[0].message.content == "You said: hello"
    assert len(upstream.received(tag)) == 1
    assert gw.breaker("openai")["state"] == "closed"
    assert gw.metric('portcullis_breaker_state{kind="upstream",target="openai"}') == 0
    for to in ("open", "half_open", "closed"):
        assert gw.metric(f'portcullis_breaker_transitions_total{{kind="upstream",target="openai",to="{to}"}}') == 1


def test_a_failed_probe_opens_it_again(make, upstream):
    gw = make()
    trip_openai(gw, upstream)
    gw.clock.t += OPEN_S
    tag = request_id()
    with pytest.raises(openai.InternalServerError) as e:  # the probe reaches the upstream, and fails
        oai(gw).chat.completions.create(model="fault-500", messages=MSG, extra_headers={"x-request-id": tag})
    assert e.value.status_code == 500 and len(upstream.received(tag)) == 1
    b = gw.breaker("openai")
    assert b["state"] == "open" and b["reason"].startswith("half-open probe failed: answered 500")
    tag = request_id()
    with pytest.raises(openai.InternalServerError) as e:
        oai(gw).chat.completions.create(model="gpt-4o-mini", messages=MSG, extra_headers={"x-request-id": tag})
    assert e.value.status_code == 503 and upstream.received(tag) == []


def test_an_open_breaker_spends_none_of_the_agents_request_budget(make, upstream):
    """observer may make 20 requests a minute: 25 refused by the breaker leave all 20."""
    gw = make()
    trip_openai(gw, upstream)  # as architect: observer's budget is untouched so far
    embed = oai(gw, "observer").embeddings
    for _ in range(25):
        with pytest.raises(openai.InternalServerError) as e:
            embed.create(model="text-embedding-3-small", input="hello")
        assert e.value.status_code == 503  # never a 429
        assert "x-ratelimit-remaining-requests" not in e.value.response.headers
    gw.clock.t += OPEN_S
    raw = embed.with_raw_response.create(model="text-embedding-3-small", input="hello")
    assert raw.http_response.status_code == 200
    assert raw.headers["x-ratelimit-limit-requests"] == "20"
    assert raw.headers["x-ratelimit-remaining-requests"] == "19"


def test_anthropic_sdk_gets_its_own_error_shape(make, upstream):
    routes = [{"match": "fault-*", "upstream": "anthropic"},
              {"match": "claude-*", "upstream": "anthropic", "models": ["claude-haiku-4-5"]},
              {"match": "gpt-*", "upstream": "openai", "models": ["gpt-4o-mini"]}]
    gw = make(routes=routes)
    for _ in range(3):
        with pytest.raises(anthropic.InternalServerError) as e:
            claude(gw).messages.create(model="fault-500", max_tokens=50, messages=MSG)
        assert e.value.status_code == 500
    for stream in (False, True):
        tag = request_id()
        with pytest.raises(anthropic.InternalServerError) as e:
            claude(gw).messages.create(model="claude-haiku-4-5", max_tokens=50, messages=MSG, stream=stream,
                                       extra_headers={"x-request-id": tag})
        err = e.value
        assert err.status_code == 503 and upstream.received(tag) == []
        body = err.response.json()
        assert body["type"] == "error" and body["error"]["type"] == "api_error"
        assert body["error"]["message"].startswith("circuit breaker for upstream anthropic is open")
        assert err.request_id == err.response.headers["x-request-id"]
        assert "circuit breaker for upstream anthropic" in gw.audit_row(err.request_id)["error"]
    # The openai upstream is the same server behind another breaker: untouched.
    assert oai(gw).chat.completions.create(model="gpt-4o-mini", messages=MSG).choices
    gw.clock.t += OPEN_S
    assert claude(gw).messages.create(model="claude-haiku-4-5", max_tokens=50, messages=MSG).content
    assert gw.breaker("anthropic")["state"] == "closed"


def closed_port() -> int:
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    return port


def test_connect_errors_open_it(make):
    port = closed_port()
    gw = make(upstreams__dead={"provider": "openai", "base_url": f"http://127.0.0.1:{port}",
                               "connect_timeout_s": 2},
              routes=[{"match": "dead-*", "upstream": "dead"}, {"match": "gpt-*", "upstream": "openai"}])
    for _ in range(3):
        with pytest.raises(openai.APIStatusError) as e:
            oai(gw).chat.completions.create(model="dead-model", messages=MSG)
        assert e.value.status_code == 502
    with pytest.raises(openai.APIStatusError) as e:
        oai(gw).chat.completions.create(model="dead-model", messages=MSG)
    assert e.value.status_code == 503
    assert "connection refused" in e.value.response.json()["error"]["message"]
    assert gw.breaker("dead")["state"] == "open" and gw.breaker("openai")["state"] == "closed"


def test_http_tool_breaker(make, upstream):
    gw = make(tools={"http": {"broken": {"url": upstream.url + "/tools/broken"}}})
    auth = {"authorization": f"Bearer {KEYS['architect']}"}
    for _ in range(3):
        r = httpx.post(gw.url + "/tools/broken", json={}, headers=auth)
        assert r.status_code == 500 and len(upstream.received(r.headers["x-request-id"])) == 1
    r = httpx.post(gw.url + "/tools/broken", json={}, headers=auth)
    assert r.status_code == 503 and upstream.received(r.headers["x-request-id"]) == []
    err = r.json()["error"]
    assert err["code"] == "circuit_open" and err["message"].startswith("circuit breaker for http_tool broken is open")
    assert gw.breaker("broken")["kind"] == "http_tool"


# ---- MCP ------------------------------------------------------------------------------

async def serve_on(app: Any, port: int) -> Served:
    """serve(), but on a given port: the MCP server comes back where the gateway looks for it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                           timeout_graceful_shutdown=1))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await eventually_async(lambda: server.started or task.done(), "the MCP server to listen")
    if task.done():
        task.result()
    return Served(server, task, port)


class PinnedOrders(OrdersServer):
    """The orders server, restarted on the same port."""
    port: int = 0

    async def start(self) -> None:
        mcp = build_server(self.executed, self.progress_delay)
        app = self._recording(mcp.streamable_http_app(json_response=self.json_response,
                                                      stateless_http=self.stateless))
        self._served = await (serve_on(app, self.port) if self.port else serve(app, lifespan="on"))
        self.port = self._served.port


@pytest.fixture
def pinned(loop_thread: LoopThread) -> Iterator[PinnedOrders]:
    server = PinnedOrders()
    loop_thread.run(server.start())
    yield server
    loop_thread.run(server.stop())


READ = {"op": "call_tool", "name": "read_orders", "arguments": {"customer": "acme"}}


def run_ops(loop_thread: LoopThread, gw: Gateway, ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`ops` with the mcp SDK client on the 2026-07-28 wire (one POST an op)."""
    out = loop_thread.run(mcp2.run_ops(gw.url + "/mcp/orders", ops, {"Authorization": f"Bearer {KEYS['architect']}"},
                                       mode="2026-07-28"), timeout=120)
    assert out["fatal"] is None, out["fatal"]
    return out["results"]


def test_mcp_server_breaker_with_the_mcp_sdk(make, pinned, loop_thread):
    # annotations_ttl_s 0: every tools/call makes the gateway list the tools itself first,
    # unless the breaker stops that too.
    gw = make(tools={"servers": {"orders": {"kind": "mcp", "url": pinned.url, "connect_timeout_s": 2,
                                            "annotations_ttl_s": 0}}})
    [ok] = run_ops(loop_thread, gw, [READ])
    assert "error" not in ok and not ok["isError"]

    loop_thread.run(pinned.stop())  # down: connections refused
    results = run_ops(loop_thread, gw, [{"op": "list_tools"}] * 5)
    codes = [r["error"]["data"]["code"] for r in results]
    assert all(r["error"]["code"] == -31502 for r in results)  # "server unavailable", either way
    assert codes[-1] == "circuit_open" and codes.count("circuit_open") >= 2, codes
    assert gw.breaker("orders")["state"] == "open" and gw.breaker("orders")["kind"] == "mcp_server"

    loop_thread.run(pinned.start())  # healed, but this replica does not know it yet
    pinned.clear()
    [refused] = run_ops(loop_thread, gw, [READ])
    err = refused["error"]
    assert err["data"]["code"] == "circuit_open" and err["data"]["retry_after_s"] >= 1
    assert err["message"].startswith("circuit breaker for mcp_server orders is open")
    assert pinned.requests == []  # neither the call nor the gateway's own tools/list reached it
    row = gw.audit_row(err["data"]["request_id"])
    assert (row["action"], row["resource_name"], row["decision"]) == ("tool.call", "read_orders", "error")
    assert "circuit breaker for mcp_server orders" in row["error"]

    gw.clock.t += OPEN_S
    [healed] = run_ops(loop_thread, gw, [READ])
    assert "error" not in healed and not healed["isError"]
    assert pinned.requests and ("read_orders", {"customer": "acme"}) in pinned.executed
    eventually(lambda: gw.breaker("orders")["state"] == "closed", "the orders breaker to close")
