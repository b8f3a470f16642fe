"""Shared fixtures: one server thread, one test upstream, gateways on demand."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.support.harness import Gateway, LoopThread, gateway_config
from tests.support.mcp_orders_server import OrdersServer
from tests.support.upstream_server import UpstreamServer


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="session")
def upstream(loop_thread: LoopThread) -> Iterator[UpstreamServer]:
    server = UpstreamServer(slow_s=4.0)
    loop_thread.run(server.start())
    yield server
    loop_thread.run(server.stop())


@pytest.fixture(scope="session")
def orders(loop_thread: LoopThread) -> Iterator[OrdersServer]:
    """The MCP test server (tests/support/mcp_orders_server.py); tests call clear() for their own view."""
    server = OrdersServer()
    loop_thread.run(server.start())
    yield server
    loop_thread.run(server.stop())


@pytest.fixture(scope="session")
def gateway(loop_thread: LoopThread, upstream: UpstreamServer,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The shared gateway. Tests that spend rate limits use `make_gateway` instead."""
    tmp = tmp_path_factory.mktemp("gw")
    gw = Gateway(loop_thread, gateway_config(tmp, upstream.url)).start()
    yield gw
    gw.stop()


@pytest.fixture
def make_gateway(loop_thread: LoopThread, upstream: UpstreamServer,
                 tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    made: list[Gateway] = []

    def make(policy_dir: Path | None = None, environ: dict[str, str] | None = None, **overrides: Any) -> Gateway:
        sub = tmp_path / f"gw{len(made)}"
        sub.mkdir()
        gw = Gateway(loop_thread, gateway_config(sub, upstream.url, policy_dir, **overrides), environ).start()
        made.append(gw)
        return gw

    yield make
    for gw in made:
        gw.stop()
