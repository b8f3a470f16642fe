"""Governance events (contract 6): emitted on any path without waiting, stored in batches.

`emit()` only builds the event and appends it to a bounded deque; one background task writes
batches with `store.add_events`. A failing store keeps the batch and retries with backoff, so
an event is lost only when the queue overflows (logged, counted) or the process dies. HIGH and
CRITICAL events also go to the webhooks (gateway/lifecycle/webhooks.py); a delivery that finally
fails comes back as a `webhook.failed` MEDIUM event, which is never itself sent to a webhook.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from gateway.errors import BackendError
from gateway.lifecycle.model import SEVERITIES, GovernanceEvent
from gateway.lifecycle.webhooks import Webhooks
from gateway.protocols import LifecycleStore
from gateway.settings_lifecycle import LifecycleSettings

log = logging.getLogger("portcullis.lifecycle.events")

WEBHOOK_FAILED = "webhook.failed"
_NOTIFY = ("HIGH", "CRITICAL")


def new_event_id() -> str:
    return "evt_" + secrets.token_hex(8)


class GovernanceEvents:
    def __init__(self, store: LifecycleStore, settings: LifecycleSettings, *,
                 clock: Callable[[], float] = time.time, queue_max: int = 10000, batch_size: int = 200,
                 retry_s: float = 0.5, webhooks: Webhooks | None = None) -> None:
        self._store = store
        self._clock = clock
        self._queue_max = queue_max
        self._batch_size = batch_size
        self._retry_s = retry_s
        # Events taken from the queue and not yet stored: kept until add_events succeeds.
        self._batch: list[GovernanceEvent] = []
        self._queue: collections.deque[GovernanceEvent] = collections.deque()
        self._emitted = 0  # events accepted or dropped so far (flush waits for all of them)
        self._done = 0  # stored or dropped
        self.dropped = 0
        self.failed_writes = 0  # store writes that failed and were retried
        self._logged_drops = 0
        self._wake: asyncio.Event | None = None
        self._progress: asyncio.Condition | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._task: asyncio.Task[None] | None = None
        if webhooks is None and settings.webhooks:
            webhooks = Webhooks(settings, self._webhook_failed)
        self._webhooks = webhooks

    @property
    def webhooks(self) -> Webhooks | None:
        return self._webhooks

    @property
    def depth(self) -> int:
        """Events emitted and not yet stored."""
        return len(self._queue) + len(self._batch)

    # ---- any path ------------------------------------------------------------------

    def emit(self, event_type: str, severity: str, *, agent_id: str | None = None,
             workspace: str | None = None, details: Mapping[str, Any] | None = None) -> GovernanceEvent:
        """Queue one event; never blocks, never raises (a bad severity is stored as MEDIUM)."""
        if severity not in SEVERITIES:
            log.error("governance event %s with unknown severity %r, stored as MEDIUM", event_type, severity)
            severity = "MEDIUM"
        try:  # plain JSON now: a value the store cannot encode would block every later batch
            plain = orjson.loads(orjson.dumps(dict(details or {}), default=str, option=orjson.OPT_NON_STR_KEYS))
        except (TypeError, ValueError, orjson.JSONEncodeError):
            plain = {"details": repr(details)}
        event = GovernanceEvent(id=new_event_id(), ts=float(self._clock()), event_type=event_type,
                                severity=severity, agent_id=agent_id, workspace=workspace,  # type: ignore[arg-type]
                                details=plain)
        try:
            self._enqueue(event)
            if (self._webhooks is not None and severity in _NOTIFY and event_type != WEBHOOK_FAILED):
                self._webhooks.submit(event)
        except Exception:  # an event must never break its caller (a request, a reload)
            log.exception("governance event %s not queued", event_type)
        return event

    def _enqueue(self, event: GovernanceEvent) -> None:
        self._emitted += 1
        if len(self._queue) >= self._queue_max:
            # Keep the newest: the latest state is what an operator needs to see.
            self._queue.popleft()
            self.dropped += 1
            self._done += 1
        self._queue.append(event)
        self._signal()

    def _signal(self) -> None:
        if self._wake is None or self._loop is None:
            return  # not started: start() drains what was queued
        if threading.get_ident() == self._loop_thread:
            self._wake.set()
        else:  # emitted from a worker thread (a reload off the loop)
            self._loop.call_soon_threadsafe(self._wake.set)

    def _webhook_failed(self, info: dict[str, Any]) -> None:
        self.emit(WEBHOOK_FAILED, "MEDIUM", agent_id=info.get("agent_id"), workspace=info.get("workspace"),
                  details={k: v for k, v in info.items() if k not in ("agent_id", "workspace")})

    # ---- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        if self._queue:
            self._wake.set()
        if self._webhooks is not None:
            await self._webhooks.start()
        self._task = asyncio.create_task(self._run(), name="portcullis-governance-events")

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every event emitted before this call is stored (TimeoutError after `timeout`)."""
        target = self._emitted
        if self._task is None or self._progress is None:
            raise RuntimeError("GovernanceEvents.flush() before start()")
        assert self._wake is not None
        self._wake.set()

        async def reached() -> None:
            async with self._progress:  # type: ignore[union-attr]
                await self._progress.wait_for(lambda: self._done >= target)  # type: ignore[union-attr]

        await asyncio.wait_for(reached(), timeout)

    async def aclose(self, timeout: float = 5.0) -> None:
        """Store what is queued (for up to `timeout` when the store is down), then stop."""
        if self._task is None:
            return
        if self._webhooks is not None:
            await self._webhooks.aclose()  # its failures become events: before the last flush
        try:
            await self.flush(timeout)
        except TimeoutError:
            log.error("governance events closed with %d events not stored", self.depth)
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None

    # ---- background task ---------------------------------------------------------------

    async def _run(self) -> None:
        assert self._wake is not None and self._progress is not None
        delay = self._retry_s
        while True:
            if not self._batch and not self._queue:
                self._wake.clear()
                await self._wake.wait()
            self._note_drops()
            while self._queue and len(self._batch) < self._batch_size:
                self._batch.append(self._queue.popleft())
            try:
                await self._store.add_events(list(self._batch))
            except BackendError as e:
                self.failed_writes += 1
                log.warning("governance events: store write of %d events failed, retrying in %.1fs: %s",
                            len(self._batch), delay, e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            except Exception:  # a bug: keep the batch and retry rather than lose it
                self.failed_writes += 1
                log.exception("governance events: store write of %d events failed, retrying in %.1fs",
                              len(self._batch), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            delay = self._retry_s
            stored, self._batch = len(self._batch), []
            async with self._progress:
                self._done += stored
                self._progress.notify_all()

    def _note_drops(self) -> None:
        if self.dropped != self._logged_drops:
            log.error("governance event queue full (%d): %d oldest events dropped so far",
                      self._queue_max, self.dropped)
            self._logged_drops = self.dropped
