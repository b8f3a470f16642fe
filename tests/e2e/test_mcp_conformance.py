"""The official MCP conformance suite's server scenarios, directly and through the gateway.

The server (tests/support/mcp_conformance_server.py) implements every scenario; the
gateway in front of it must not lose one. The suite runs REPEATS times through the
gateway, so a race between the streams of a session (server requests on one, the
client's answers on another) shows up as an occasional failure.

The suite sends no credentials, so this gateway names an anonymous agent (the
tier-4 architect, which may call every tool): exactly the setup a DNS-rebinding
attack targets, which the suite's dns-rebinding-protection scenario checks.
"""
from __future__ import annotations

import asyncio
import time
from typing import Iterator

import pytest

from tests.support.harness import Gateway, LoopThread, gateway_config
from tests.support.mcp_conformance import Outcome, run_suites
from tests.support.mcp_conformance_server import ConformanceServer
from tests.support.upstream_server import UpstreamServer

BACK_CHANNEL = ("tools-call-sampling", "tools-call-elicitation", "elicitation-sep1034-defaults",
                "elicitation-sep1330-enums")
REPEATS = 10


@pytest.fixture(scope="module")
def conformance_server(loop_thread: LoopThread) -> Iterator[ConformanceServer]:
    with ConformanceServer().running(loop_thread) as server:
        yield server


@pytest.fixture(scope="module")
def conformance_gateway(loop_thread: LoopThread, upstream: UpstreamServer, conformance_server: ConformanceServer,
                        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = gateway_config(tmp_path_factory.mktemp("conformance"), upstream.url,
                            identity__anonymous_agent="architect",
                            tools={"servers": {"conformance": {"kind": "mcp", "url": conformance_server.url}}})
    gw = Gateway(loop_thread, config).start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def outcomes(conformance_server: ConformanceServer, conformance_gateway: Gateway) -> dict[str, list[Outcome]]:
    """Every scenario once directly and REPEATS times through the gateway."""
    direct, via = conformance_server.url, conformance_gateway.url + "/mcp/conformance"
    started = time.monotonic()
    first, *rest = asyncio.run(run_suites([direct] + [via] * REPEATS))
    print(f"\n1 + {REPEATS} conformance suite runs in {time.monotonic() - started:.1f}s")
    return {"direct": first, "gateway": [o for run in rest for o in run]}


def failed(results: list[Outcome]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for o in results:
        if not o.passed:
            out.setdefault(o.scenario, []).extend(o.failures)
    return out


def test_the_server_passes_every_scenario(outcomes: dict[str, list[Outcome]]) -> None:
    assert set(BACK_CHANNEL) <= {o.scenario for o in outcomes["direct"]}, "the suite renamed a scenario"
    assert failed(outcomes["direct"]) == {}


def test_every_scenario_passes_through_the_gateway_every_time(outcomes: dict[str, list[Outcome]]) -> None:
    direct = sorted(o.scenario for o in outcomes["direct"])
    assert sorted(o.scenario for o in outcomes["gateway"]) == sorted(direct * REPEATS)
    assert failed(outcomes["gateway"]) == {}
