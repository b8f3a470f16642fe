"""The admin API on its own listener (settings.admin.host/port): a second uvicorn.Server on
the gateway's loop, started and closed like any backend, so `portcullis serve` and the tests
get it alike."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn

from gateway.services import Services
from gateway.settings import Settings

log = logging.getLogger("portcullis.admin")


class _AdminServer(uvicorn.Server):
    # The gateway's own server owns SIGTERM/SIGINT (its drain); a second server capturing them
    # would swallow the signal and raise it again on its own exit.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    # Bound here, not by uvicorn: a port in use is an OSError at start, not uvicorn's sys.exit.
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                      proto=socket.IPPROTO_TCP)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    return sock


class AdminListener:
    """`start()` binds and serves the admin app; `port` is the bound port (admin.port 0: a free one)."""

    def __init__(self, settings: Settings, services: Services) -> None:
        self._settings = settings.admin
        self._services = services
        self._server: _AdminServer | None = None
        self._task: asyncio.Task[None] | None = None
        self.port: int | None = None

    async def start(self) -> None:
        from gateway.admin.app import create_admin_app

        s = self._settings
        sock = _bind(s.host, s.port)
        config = uvicorn.Config(create_admin_app(self._services), lifespan="off", log_config=None,
                                access_log=False, proxy_headers=False, timeout_graceful_shutdown=2,
                                server_header=False)
        server = _AdminServer(config)
        task = asyncio.create_task(server.serve(sockets=[sock]), name="admin-listener")
        while not server.started:
            if task.done():
                sock.close()
                task.result()  # the startup failure
                raise RuntimeError("admin listener exited during startup")
            await asyncio.sleep(0.01)
        self._server, self._task = server, task
        self.port = sock.getsockname()[1]
        log.info("admin API listening", extra={"admin_host": s.host, "admin_port": self.port})

    async def aclose(self) -> None:
        server, task = self._server, self._task
        self._server = self._task = None
        if server is None or task is None:
            return
        server.should_exit = True
        await task


def admin_listener(settings: Settings, services: Services) -> Any:
    """The listener to put among the app's backends, or None: admin disabled, no lifecycle, or
    no admin.tokens (every call would be refused; and N replicas of a tokenless config on one
    host would otherwise all claim port 8081)."""
    if not settings.admin.enabled or services.lifecycle is None:
        return None
    if not settings.admin.tokens:
        log.info("admin API off: no admin.tokens configured (`portcullis admin-token new` makes one)")
        return None
    return AdminListener(settings, services)
