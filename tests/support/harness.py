"""Real servers for integration tests: the gateway under uvicorn, on 127.0.0.1.

Servers run on an event loop in a background thread, so tests can use both the
sync and the async SDK clients against them. The gateway's regorus engine is
created on that thread, which is where it must be used.
"""
from __future__ import annotations

import asyncio
import shutil
import socket
import sqlite3
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
import yaml

from gateway.app import create_app
from gateway.settings import Settings, load_settings
from tests.support.waiting import eventually, eventually_async

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")

KEYS = {
    "observer": "pk-quickstart-observer",
    "intern-bot": "pk-quickstart-intern",
    "builder": "pk-quickstart-builder",
    "executor": "pk-quickstart-executor",
    "architect": "pk-quickstart-architect",
}
PROVIDER_KEYS = {"TEST_OPENAI_KEY": "sk-provider-openai-secret", "TEST_ANTHROPIC_KEY": "sk-ant-provider-secret"}


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="servers", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


def free_socket() -> socket.socket:
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # without it every response written in two parts waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@dataclass
class Served:
    """An app under uvicorn on 127.0.0.1:`port`, on the loop that started it."""
    server: uvicorn.Server
    task: asyncio.Task[None]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.task


async def serve(app: Any, **config: Any) -> Served:
    """Run `app` under uvicorn on a free 127.0.0.1 port on the running loop; returns once it listens."""
    sock = free_socket()
    options = {"log_level": "warning", "access_log": False, "timeout_graceful_shutdown": 1, **config}
    server = uvicorn.Server(uvicorn.Config(app, **options))
    task = asyncio.create_task(server.serve(sockets=[sock]))

    def listening() -> bool:
        if task.done():
            task.result()  # surface the startup failure
            raise RuntimeError("server exited during startup")
        return server.started

    await eventually_async(listening, "uvicorn to listen", timeout=60)  # startup may compile policies
    return Served(server, task, sock.getsockname()[1])


def gateway_config(tmp: Path, upstream_url: str, policy_dir: Path | None = None, **overrides: Any) -> Path:
    """Write a gateway config into `tmp` routing real model names to the test upstream."""
    cfg: dict[str, Any] = {
        "server": {"max_body_bytes": 65536},
        "identity": {"agents_file": str(REPO / "config" / "agents.yaml")},
        # The interpreter: the compiled program's background agreement check costs ~3 s of CPU at
        # every start, hundreds of times a suite. Its own tests (tests/unit/test_policy_compiled.py,
        # tests/e2e/test_compiled_gateway.py) turn it on.
        "policy": {"dir": str(policy_dir or REPO / "policies_rego"), "hot_reload": False,
                   "evaluator": "interpreter"},
        "audit": {"path": str(tmp / "audit.db"), "spool_path": str(tmp / "audit.spool"),
                  "chain_id": "test", "flush_interval_ms": 10},
        # Per test: the agent state beside the audit db; the admin API on any free port. Error
        # budgets are off unless a test turns them on (lifecycle__error_budgets=True): with the
        # default budgets a shared gateway would revoke agents that other tests' denials counted.
        "lifecycle": {"path": str(tmp / "lifecycle.db"), "error_budgets": False},
        "admin": {"port": 0},
        "upstreams": {
            "openai": {"provider": "openai", "base_url": upstream_url, "api_key_env": "TEST_OPENAI_KEY",
                       "read_timeout_s": 2, "connect_timeout_s": 2},
            "anthropic": {"provider": "anthropic", "base_url": upstream_url, "api_key_env": "TEST_ANTHROPIC_KEY",
                          "read_timeout_s": 2, "connect_timeout_s": 2},
            "mock": {"provider": "mock"},
        },
        "routes": [
            {"match": "gpt-*", "upstream": "openai", "models": ["gpt-4o-mini", "gpt-4.1-mini", "gpt-4o", "gpt-4.1"]},
            {"match": "o[134]*", "upstream": "openai", "models": ["o3-mini"]},
            {"match": "text-embedding-*", "upstream": "openai",
             "models": ["text-embedding-3-small", "text-embedding-3-large"]},
            {"match": "claude-*", "upstream": "anthropic", "models": ["claude-haiku-4-5", "claude-sonnet-4-6"]},
            {"match": "fault-*", "upstream": "openai"},
            {"match": "mock-*", "upstream": "mock"},
        ],
    }
    for dotted, value in overrides.items():
        node = cfg
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class Gateway:
    """One gateway under uvicorn on a free port, started and stopped on the loop thread."""

    def __init__(self, loop: LoopThread, config_path: Path, environ: dict[str, str] | None = None) -> None:
        self.loop = loop
        self.settings: Settings = load_settings(config_path, {**PROVIDER_KEYS, **(environ or {})})
        self.config_path = config_path
        self.app: Any = None
        self._served: Served | None = None

    @property
    def url(self) -> str:
        assert self._served is not None, "start() the gateway first"
        return self._served.url

    async def _start(self) -> None:
        self.app = create_app(self.settings)
        self._served = await serve(self.app, lifespan="on", proxy_headers=False, timeout_graceful_shutdown=5)

    def start(self) -> Gateway:
        self.loop.run(self._start())
        return self

    def stop(self) -> None:
        if self._served is not None:
            self.loop.run(self._served.stop())

    @property
    def lifecycle(self) -> Any:
        """The running gateway.lifecycle.runtime.Lifecycle (None with lifecycle.enabled false)."""
        return self.app.state.services.lifecycle

    @property
    def admin_url(self) -> str:
        """The admin API's base URL (admin.port 0: the port it found)."""
        admin = self.app.state.admin
        assert admin is not None and admin.port is not None, "admin API not running"
        return f"http://127.0.0.1:{admin.port}"

    def lifecycle_flush(self) -> None:
        """Wait until every finished request is counted and every event stored."""
        if self.lifecycle is not None:
            self.loop.run(self.lifecycle.flush())

    @property
    def audit_db(self) -> Path:
        return self.settings.path(self.settings.audit.path)

    def audit_rows(self, where: str = "1=1", args: tuple = ()) -> list[dict[str, Any]]:
        if self.settings.audit.backend == "postgres":
            from tests.support import pg
            return self.loop.run(pg.audit_rows(self.settings.audit, where, args))
        con = sqlite3.connect(self.audit_db)
        con.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in con.execute(f"SELECT * FROM audit_log WHERE {where} ORDER BY seq", args)]
        except sqlite3.OperationalError:
            return []  # table not created yet
        finally:
            con.close()

    def audit_row(self, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """The row for a request, once the batched writer has written it."""
        rows = eventually(lambda: self.audit_rows("request_id = ?", (request_id,)),
                          f"the audit row of {request_id}", timeout=timeout)
        assert len(rows) == 1, f"{len(rows)} audit rows for {request_id}"
        return rows[0]


def copy_policies(dst: Path) -> Path:
    shutil.copytree(REPO / "policies_rego", dst)
    return dst
