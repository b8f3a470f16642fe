"""SIGTERM drain: stop accepting, let in-flight work finish, cut it at a deadline, flush, exit 0.

What uvicorn (0.54) does on SIGTERM by itself: it closes the listening sockets (new
connections are refused), closes idle keep-alive connections and marks busy ones to close
after their response, waits up to `timeout_graceful_shutdown`, then cancels the request
tasks still running WITHOUT waiting for them and runs the lifespan shutdown (which flushes
the audit queue), so a cut request could submit its audit row after the flush. And after
`run()` returns it raises the captured SIGTERM again: the process dies by the signal
(exit 143), even after a clean drain.

`DrainingServer` changes that:
- `/readyz` answers 503 from the moment the signal arrives (`Drain.draining`);
- at `server.drain_timeout_s` it cancels the request tasks still running itself, and
  uvicorn's wait goes on until they are gone: each cut request's exchange shell records
  the cut as the row's error and submits the row (`finish()`) before the lifespan
  shutdown flushes the queue. uvicorn's own timeout, a little later, is only a backstop;
- a SIGTERM is not raised again after the drain, so a drained replica exits 0;
- an MCP session's GET stream ends (cleanly) when the drain starts (`until_draining`).

In Kubernetes the pod's preStop sleep runs before the SIGTERM, while the endpoint is
removed from the Service; terminationGracePeriodSeconds must cover the preStop sleep,
drain_timeout_s and the audit flush.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from types import FrameType
from typing import Any, Awaitable, Iterator

import uvicorn

log = logging.getLogger("portcullis.drain")

# The cancellation message of a request cut at the deadline; the exchange shell puts it in
# the audit row's error.
CUT = "cut at shutdown: server.drain_timeout_s passed before it finished"
BACKSTOP_S = 5.0  # uvicorn's own timeout, after ours: tasks that ignore the cut are cancelled again


class Drain:
    """Whether this replica is draining (read by /readyz), and how long it may drain.

    Streams that are only a channel for what may come (an MCP session's GET stream) are not
    work in flight: `until_draining` ends them when the drain starts, and their clients
    reconnect, through the Service, to a replica that is not going away.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.draining = False
        self._closing = asyncio.Event()  # bound to the loop on first use

    def begin(self) -> None:
        self.draining = True  # a plain assignment: safe from a signal handler

    def close_streams(self) -> None:
        """Called on the event loop once the drain has started."""
        self.begin()
        self._closing.set()

    async def until_draining(self, work: Awaitable[Any]) -> bool:
        """Run `work` until it ends or the drain starts; True when the drain ended it (cancelled)."""
        task = asyncio.ensure_future(work)
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait((task, closing), return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                task.result()
                return False
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return True
        finally:
            closing.cancel()
            if not task.done():  # cancelled from outside
                task.cancel()


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.drain.begin()  # /readyz turns 503 now, not after the next main-loop tick
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.drain.close_streams()
        log.info("draining", extra={"in_flight": len(self.server_state.tasks),
                                    "drain_timeout_s": self.drain.timeout_s})
        cutter = asyncio.get_running_loop().call_later(self.drain.timeout_s, self._cut)
        try:
            await super().shutdown(sockets)  # waits for the cut requests to finish, then flushes
        finally:
            cutter.cancel()

    def _cut(self) -> None:
        running = [t for t in self.server_state.tasks if not t.done()]
        if running:
            log.warning("drain deadline passed: cutting %d request(s) still running", len(running))
        for task in running:
            task.cancel(CUT)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                # uvicorn raises the captured signals again once it has shut down; a drained
                # replica exits 0 instead of dying by SIGTERM (SIGINT still ends as Ctrl-C does).
                self._captured_signals[:] = [s for s in self._captured_signals if s != signal.SIGTERM]
