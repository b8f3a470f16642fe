"""Shadow mode (`policy.shadow`): a second policy set decides sampled requests after their answer.

finish() offers each decided request's audit event here instead of submitting it. A sampled
event waits in a bounded queue (its audit slot stays taken, so the audit queue's bound still
holds) until the worker has decided its policy input with the shadow set; then the event goes
to the audit writer with `shadow_revision` and, where the two sets disagree, `shadow_decision`.
A full queue, an unsampled request or a closing runner: the event is submitted at once, without
a shadow decision (a drop, counted). The shadow decision never reaches the client.

The worker decides at most `batch` inputs per loop turn, then yields, so one turn stalls the
requests sharing the loop for about `batch` evaluations at most. Decisions are cached per
(shadow revision, input digest), as the serving set's are.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

from cachetools import LRUCache
from prometheus_client import Counter, Gauge, Info

from gateway.errors import PolicyError
from gateway.replay.compare import REASONS, change_kind, decision_doc, failed_decision
from gateway.settings_shadow import ShadowSettings
from gateway.types import AuditEvent, Decision

log = logging.getLogger("portcullis.shadow")

Emit = Callable[[str, str, dict[str, Any]], None]  # (event type, severity, details): a governance event
CACHE_ENTRIES = 10_000


class ShadowMetrics:
    """The shadow series, on the app's registry (gateway.metrics.Metrics.registry)."""

    def __init__(self, registry: Any, depth: Callable[[], int]) -> None:
        r = registry
        self.decisions = Counter("portcullis_shadow_decisions", "Requests the shadow policy set decided, "
                                 "by whether it agreed with the serving set", ["result"], registry=r)
        self.disagreements = Counter("portcullis_shadow_disagreements", "Requests the shadow policy set "
                                     "decided differently, by action and kind of change", ["action", "kind"],
                                     registry=r)
        self.dropped = Counter("portcullis_shadow_dropped", "Sampled requests not shadow-decided because "
                               "the shadow queue was full", registry=r)
        self.errors = Counter("portcullis_shadow_errors", "Inputs the shadow set failed to decide", registry=r)
        self.reloads = Counter("portcullis_shadow_reloads", "Shadow policy reloads by result", ["result"],
                               registry=r)
        self.revision = Info("portcullis_shadow_policy", "Shadow policy revision", registry=r)
        depth_gauge = Gauge("portcullis_shadow_queue_depth", "Requests waiting for their shadow decision",
                            registry=r)
        depth_gauge.set_function(lambda: float(depth()))


class _Window:
    """Decisions and disagreements in the current alert window (ShadowRunner._maybe_alert)."""
    __slots__ = ("alerted", "decided", "disagreed", "kinds", "start")

    def __init__(self, now: float) -> None:
        self.start, self.decided, self.disagreed, self.alerted = now, 0, 0, False
        self.kinds: dict[str, int] = {}


class ShadowRunner:
    """`offer()` on the request path (O(1), no await); everything else in the worker task."""

    def __init__(self, settings: ShadowSettings, engine: Any, submit: Callable[[AuditEvent], None],
                 registry: Any, emit: Emit | None = None, *, rand: Callable[[], float] = random.random,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._s = settings
        self.engine = engine  # a PolicyEngine on the shadow directory, owned (started, closed) here
        self._submit = submit
        self._emit = emit
        self._rand = rand
        self._clock = clock
        self._queue: collections.deque[tuple[AuditEvent, Decision]] = collections.deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._cache: LRUCache[tuple[str, str], tuple[Decision, bool]] = LRUCache(CACHE_ENTRIES)
        self._window = _Window(clock())
        self.metrics = ShadowMetrics(registry, lambda: len(self._queue))

    @property
    def revision(self) -> str:
        return self.engine.revision

    def on_reload(self, revision: str | None, error: Exception | None) -> None:
        """The shadow engine's reload hook: counted, and a rejected set is a governance event."""
        if error is None:
            self.metrics.reloads.labels("ok").inc()
            self.metrics.revision.info({"revision": revision or ""})
            log.info("shadow policy reloaded, revision %s", revision)
        else:
            self.metrics.reloads.labels("rejected").inc()
            if self._emit is not None:
                self._emit("policy.shadow_reload_rejected", "MEDIUM", {"error": str(error)[:2000]})

    # ---- request path --------------------------------------------------------------

    def offer(self, event: AuditEvent, decision: Decision | None) -> bool:
        """Take `event` for a shadow decision (True) or leave it to the caller to submit (False)."""
        if decision is None or event.policy_input is None or event.input_digest is None or self._closing \
                or event.decision == "bypass":  # bypassed: no serving decision to compare with
            return False
        sample = self._s.sample
        if sample < 1.0 and self._rand() >= sample:
            return False
        queue = self._queue
        if len(queue) >= self._s.queue_size:
            self.metrics.dropped.inc()
            return False
        queue.append((event, decision))
        if len(queue) == 1 or len(queue) >= self._s.batch:
            self._wake.set()
        return True

    # ---- worker ----------------------------------------------------------------------

    async def start(self) -> None:
        await self.engine.start()  # a broken shadow set fails the start, as a broken serving set does
        self.metrics.revision.info({"revision": self.engine.revision})
        self._task = asyncio.create_task(self._run(), name="shadow-policy")
        log.info("shadow policy %s, sampling %.0f%% of decided requests", self.engine.revision,
                 100 * self._s.sample)

    async def aclose(self) -> None:
        """Decide what is queued and hand every row to the audit writer (closed after this)."""
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            self._wake.set()
            try:
                await task
            except Exception:
                log.exception("shadow worker failed while closing")
        while self._queue:  # the worker failed: its rows still go out, without shadow decisions
            self._submit(self._queue.popleft()[0])
        await self.engine.aclose()

    async def _run(self) -> None:
        queue, batch = self._queue, self._s.batch
        while True:
            if not queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            items = [queue.popleft() for _ in range(min(batch, len(queue)))]
            try:
                self._decide(items)
            except Exception:  # a bug here must not hold rows back: they go out undecided
                log.exception("shadow decisions failed; %d row(s) recorded without them", len(items))
                for event, _ in items:
                    self._submit(event)
            await asyncio.sleep(0)  # the requests sharing this loop go first

    def _decide(self, items: list[tuple[AuditEvent, Decision]]) -> None:
        revision = self.engine.revision
        shadows = self._shadow_decisions(revision, [event for event, _ in items])
        window = self._current_window()
        m = self.metrics
        for (event, serving), (shadow, failed) in zip(items, shadows):
            kind = change_kind(serving, shadow)
            record = None
            if kind is None:
                m.decisions.labels("agree").inc()
            else:
                m.decisions.labels("disagree").inc()
                m.disagreements.labels(event.action or "", kind).inc()
                record = {"kind": kind, "decision": decision_doc(shadow), "serving": decision_doc(serving)}
                if failed:
                    record["error"] = True
                if kind != REASONS:  # a reworded reason alone is no cause for alarm
                    window.disagreed += 1
                    window.kinds[kind] = window.kinds.get(kind, 0) + 1
            window.decided += 1
            self._submit(dataclasses.replace(event, shadow_decision=record, shadow_revision=revision))
        self._maybe_alert(window, revision, items[-1][1].revision)

    def _shadow_decisions(self, revision: str, events: list[AuditEvent]) -> list[tuple[Decision, bool]]:
        """(decision, failed) per event; a failure is the gateway's fail-closed deny."""
        cache = self._cache
        out: list[tuple[Decision, bool] | None] = [cache.get((revision, e.input_digest or "")) for e in events]
        missing = [i for i, d in enumerate(out) if d is None]
        if missing:
            docs = [events[i].policy_input for i in missing]
            try:
                decided = [(d, False) for d in self.engine.evaluate_many(docs)]
            except PolicyError:
                decided = [self._one(doc, revision) for doc in docs]
            for i, d in zip(missing, decided):
                out[i] = d
                if not d[1]:
                    cache[(revision, events[i].input_digest or "")] = d
        return out  # type: ignore[return-value]

    def _one(self, doc: Mapping[str, Any] | None, revision: str) -> tuple[Decision, bool]:
        try:
            return self.engine.evaluate(doc), False
        except PolicyError as e:
            self.metrics.errors.inc()
            return failed_decision(e.message, revision), True

    def _current_window(self) -> _Window:
        now = self._clock()
        if now - self._window.start >= self._s.alert.window_s:
            self._window = _Window(now)
        return self._window

    def _maybe_alert(self, w: _Window, revision: str, serving_revision: str) -> None:
        a = self._s.alert
        if w.alerted or self._emit is None or w.disagreed < a.min_disagreements or \
                w.disagreed < a.rate * w.decided:
            return
        w.alerted = True
        self._emit("policy.shadow_disagreements", "MEDIUM", {
            "shadow_revision": revision, "serving_revision": serving_revision,
            "disagreements": w.disagreed, "decided": w.decided, "rate": round(w.disagreed / w.decided, 4),
            "window_s": a.window_s, "kinds": dict(w.kinds),
            "hint": "portcullis policy shadow-report --since 1h"})
