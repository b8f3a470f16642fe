"""The circuit breaker's state machine (gateway/breaker.py), on a clock moved by hand."""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from adapters.tools.http import HTTPToolClient
from gateway.breaker import (CLOSED, HALF_OPEN, OPEN, Breaker, Breakers, BreakerSettings, GuardedTransport,
                             breakers_for, effective, through)
from gateway.errors import CircuitOpen, UpstreamError, UpstreamTimeout
from gateway.metrics import Metrics
from gateway.settings import ConfigError, MCPServerSettings, load_settings
from tests.support.clock import Clock
from tests.support.harness import free_socket


def breaker(clock: Clock, **kw) -> Breaker:
    return Breaker("upstream", "openai", BreakerSettings(**kw), clock=clock)


def fail(b: Breaker, n: int = 1, reason: str = "upstream openai unreachable: connection refused") -> None:
    for _ in range(n):
        b.enter().failure(reason)


def succeed(b: Breaker, n: int = 1) -> None:
    for _ in range(n):
        b.enter().answered(200)


def test_consecutive_failures_open_it_and_a_success_resets_the_count():
    b = breaker(Clock(), failures=3)
    fail(b, 2)
    succeed(b)
    fail(b, 2)
    assert b.state == CLOSED
    fail(b)
    assert b.state == OPEN
    assert "3 consecutive failures" in b.reason and "connection refused" in b.reason


def test_open_refuses_at_once_naming_the_breaker_and_when_it_probes():
    clock = Clock()
    b = breaker(clock, failures=1, open_s=30)
    fail(b)
    clock.t += 10
    with pytest.raises(CircuitOpen) as e:
        b.enter()
    err = e.value
    assert err.status == 503 and err.code == "circuit_open"
    assert "circuit breaker for upstream openai is open" in err.message and "connection refused" in err.message
    assert err.headers["retry-after"] == "20"


def test_error_rate_over_the_window_opens_it_once_min_requests_are_in():
    b = breaker(Clock(), failures=100, error_rate=0.5, min_requests=10)
    for _ in range(4):
        fail(b)
        succeed(b)
    fail(b)  # 5 of 9: over the rate, but fewer than min_requests
    assert b.state == CLOSED
    succeed(b)  # 5 of 10: a success never opens it...
    assert b.state == CLOSED
    fail(b)  # ...the next failure does: 6 of 11
    assert b.state == OPEN
    assert "6 of the last 11 calls failed within 30s" in b.reason


def test_failures_older_than_the_window_are_forgotten():
    clock = Clock()
    b = breaker(clock, failures=100, error_rate=0.5, min_requests=4, window_s=10)
    fail(b, 3)
    clock.t += 11  # those three are out of the window now
    succeed(b, 3)
    fail(b)  # 1 of 4 in the window
    assert b.state == CLOSED


def test_below_the_rate_it_stays_closed():
    b = breaker(Clock(), failures=100, error_rate=0.5, min_requests=4)
    for _ in range(20):
        succeed(b, 2)
        fail(b)  # a third fail
    assert b.state == CLOSED


def test_after_open_s_one_probe_goes_through_and_its_success_closes_it():
    clock = Clock()
    b = breaker(clock, failures=1, open_s=5)
    fail(b)
    clock.t += 5
    probe = b.enter()
    assert b.state == HALF_OPEN and probe.probe
    with pytest.raises(CircuitOpen, match="half-open"):
        b.enter()  # one probe at a time
    probe.answered(200)
    assert b.state == CLOSED
    succeed(b, 3)
    assert b.state == CLOSED


def test_a_failed_probe_opens_it_again_for_a_full_open_s():
    clock = Clock()
    b = breaker(clock, failures=1, open_s=5)
    fail(b)
    clock.t += 6
    b.enter().answered(502)
    assert b.state == OPEN and "half-open probe failed: answered 502" in b.reason
    clock.t += 4.9
    with pytest.raises(CircuitOpen):
        b.enter()
    clock.t += 0.1
    assert b.enter().probe


def test_half_open_probes_must_all_succeed_to_close_it():
    clock = Clock()
    b = breaker(clock, failures=1, open_s=1, half_open_probes=2)
    fail(b)
    clock.t += 1
    p1, p2 = b.enter(), b.enter()
    with pytest.raises(CircuitOpen):
        b.enter()
    p1.answered(200)
    assert b.state == HALF_OPEN
    p2.answered(200)
    assert b.state == CLOSED


def test_a_released_probe_gives_its_slot_to_the_next_request():
    clock = Clock()
    b = breaker(clock, failures=1, open_s=1)
    fail(b)
    clock.t += 1
    b.enter().release()  # e.g. the limiter refused it, or its client left: no verdict
    assert b.state == HALF_OPEN
    b.enter().answered(200)
    assert b.state == CLOSED


def test_calls_admitted_before_it_opened_decide_nothing_after():
    clock = Clock()
    b = breaker(clock, failures=2, open_s=1)
    slow_ok, slow_bad = b.enter(), b.enter()
    fail(b, 2)
    clock.t += 1
    probe = b.enter()
    slow_ok.answered(200)  # a call from before: not the probe, does not close it
    assert b.state == HALF_OPEN
    slow_bad.failure("late")  # nor re-opens it
    assert b.state == HALF_OPEN
    probe.answered(200)
    assert b.state == CLOSED


@pytest.mark.parametrize("status", [400, 401, 404, 429])
def test_a_4xx_is_an_answer_not_a_failure(status):
    b = breaker(Clock(), failures=1)
    b.enter().answered(status)
    assert b.state == CLOSED


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_5xx_is_a_failure(status):
    b = breaker(Clock(), failures=1)
    b.enter().answered(status)
    assert b.state == OPEN and f"answered {status}" in b.reason


def test_a_permit_settles_once():
    b = breaker(Clock(), failures=2)
    p = b.enter()
    p.failure("x")
    p.failure("x")
    p.release()
    assert b.state == CLOSED


def test_a_disabled_breaker_never_opens():
    b = breaker(Clock(), failures=1, enabled=False)
    fail(b, 10)
    assert b.state == CLOSED
    b.enter()


def test_every_transition_is_logged_and_reported(caplog):
    clock = Clock()
    seen = []
    b = Breaker("mcp_server", "orders", BreakerSettings(failures=1, open_s=1), clock=clock,
                on_transition=lambda br, old, new, why: seen.append((br.target, old, new)))
    with caplog.at_level(logging.INFO, logger="portcullis.breaker"):
        fail(b, reason="MCP server orders unreachable")
        clock.t += 1
        b.enter().answered(200)
    assert seen == [("orders", CLOSED, OPEN), ("orders", OPEN, HALF_OPEN), ("orders", HALF_OPEN, CLOSED)]
    recs = [r for r in caplog.records if r.name == "portcullis.breaker"]
    assert [(r.breaker_target, r.breaker_kind, r.from_state, r.to_state) for r in recs] == [
        ("orders", "mcp_server", CLOSED, OPEN), ("orders", "mcp_server", OPEN, HALF_OPEN),
        ("orders", "mcp_server", HALF_OPEN, CLOSED)]
    assert recs[0].levelno == logging.WARNING and "unreachable" in recs[0].reason


def _samples(metrics: Metrics, name: str) -> dict[tuple, float]:
    out = {}
    for fam in text_string_to_metric_families(metrics.render().decode()):
        for s in fam.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_state_and_transitions_go_to_metrics(tmp_path):
    clock = Clock()
    settings = load_settings(_config(tmp_path, {"breaker": {"failures": 1, "open_s": 2}}), {})
    metrics = Metrics()
    breakers = breakers_for(settings, metrics, clock)
    state = lambda: _samples(metrics, "portcullis_breaker_state")  # noqa: E731
    assert state() == {(("kind", "upstream"), ("target", "main")): 0,
                       (("kind", "mcp_server"), ("target", "orders")): 0,
                       (("kind", "http_tool"), ("target", "weather")): 0}
    fail(breakers.tool("orders"))
    assert state()[(("kind", "mcp_server"), ("target", "orders"))] == 2
    clock.t += 2
    breakers.tool("orders").enter()
    assert state()[(("kind", "mcp_server"), ("target", "orders"))] == 1
    moves = _samples(metrics, "portcullis_breaker_transitions_total")
    assert moves == {(("kind", "mcp_server"), ("target", "orders"), ("to", "open")): 1,
                     (("kind", "mcp_server"), ("target", "orders"), ("to", "half_open")): 1}
    assert [s["state"] for s in breakers.snapshot()] == [CLOSED, HALF_OPEN, CLOSED]


# ---- settings ---------------------------------------------------------------------

def _config(tmp: Path, extra: dict) -> Path:
    doc = {"upstreams": {"main": {"provider": "mock"}}, "routes": [{"match": "*", "upstream": "main"}],
           "tools": {"servers": {"orders": {"url": "http://127.0.0.1:9/mcp"}},
                     "http": {"weather": {"url": "http://127.0.0.1:9/tools/weather"}}}}
    for key, value in extra.items():
        node, *path = key.split(".")
        target = doc
        for p in [node, *path][:-1]:
            target = target.setdefault(p, {})
        target[[node, *path][-1]] = value
    p = tmp / "gateway.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def test_defaults_follow_the_config_contract(tmp_path):
    s = load_settings(_config(tmp_path, {}), {}).breaker
    assert (s.failures, s.error_rate, s.window_s, s.min_requests, s.open_s, s.half_open_probes) == \
        (5, 0.5, 30, 20, 30, 1)


def test_per_target_overrides_take_only_the_fields_they_set(tmp_path):
    cfg = _config(tmp_path, {"breaker": {"failures": 3, "open_s": 10},
                             "upstreams.main.breaker": {"open_s": 2},
                             "tools.servers.orders.breaker": {"enabled": False}})
    settings = load_settings(cfg, {})
    breakers = breakers_for(settings, Metrics())
    up = breakers.upstream("main").settings
    assert (up.failures, up.open_s) == (3, 2)
    assert not breakers.tool("orders").settings.enabled and breakers.tool("orders").settings.failures == 3
    assert breakers.tool("weather").settings == settings.breaker
    assert effective(settings.breaker, None) is settings.breaker


@pytest.mark.parametrize("key,value", [("breaker.failures", 0), ("breaker.error_rate", 1.5),
                                       ("upstreams.main.breaker.open_s", 0), ("breaker.colour", "red"),
                                       ("tools.http.weather.breaker.half_open_probes", "many")])
def test_bad_values_are_refused_naming_the_key(tmp_path, key, value):
    with pytest.raises(ConfigError) as e:
        load_settings(_config(tmp_path, {key: value}), {})
    assert any(path.startswith(key.rsplit(".", 1)[0]) for path, _ in e.value.problems), e.value.problems


def test_an_unknown_target_has_no_breaker():
    b = Breakers([]).upstream("nowhere")
    fail(b, 100)
    assert b.state == CLOSED


# ---- settling a real call -----------------------------------------------------------

class _Answer:
    def __init__(self, status: int) -> None:
        self.status = status


async def _answer(status: int) -> _Answer:
    return _Answer(status)


async def _raise(e: BaseException) -> None:
    raise e


def test_through_settles_by_the_outcome():
    async def run() -> None:
        b = breaker(Clock(), failures=1)
        assert (await through(b.enter(), _answer(404))).status == 404
        assert b.state == CLOSED
        with pytest.raises(RuntimeError):  # a bug is no verdict on the upstream
            await through(b.enter(), _raise(RuntimeError("bug")))
        assert b.state == CLOSED
        with pytest.raises(UpstreamTimeout):
            await through(b.enter(), _raise(UpstreamTimeout("upstream openai timed out (read)")))
        assert b.state == OPEN and "timed out" in b.reason
    asyncio.run(run())


def test_the_gateways_own_tool_listing_is_refused_while_open_and_counts_when_not():
    """The real HTTP transport to a closed port: its connect error opens the breaker, then
    the guarded transport refuses without connecting."""
    async def run() -> None:
        sock = free_socket()
        port = sock.getsockname()[1]
        sock.close()  # nothing listens there now
        settings = MCPServerSettings(url=f"http://127.0.0.1:{port}/mcp", connect_timeout_s=2)
        inner = HTTPToolClient("orders", settings)
        await inner.start()
        try:
            b = Breaker("mcp_server", "orders", BreakerSettings(failures=1), clock=Clock())
            guarded = GuardedTransport(inner, b)
            with pytest.raises(UpstreamError, match="unreachable"):
                await guarded.send("POST", b"{}", {})
            assert b.state == OPEN
            with pytest.raises(CircuitOpen):
                await guarded.send("POST", b"{}", {})
        finally:
            await inner.aclose()
    asyncio.run(run())
