"""Webhook delivery of HIGH and CRITICAL governance events (contract 6), off the request path.

One bounded queue (full: the oldest delivery is dropped and logged) and one worker task that
posts with httpx, retrying connection errors, timeouts, 429 and 5xx with exponential backoff.
A delivery that finally fails is handed to `on_failed`, which the events module records as a
`webhook.failed` event. Webhook URLs often carry a secret (Slack's do), so only their host
appears in logs and in that event.
"""
from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from gateway.lifecycle.model import SEVERITIES, GovernanceEvent
from gateway.settings_lifecycle import LifecycleSettings, WebhookSettings

log = logging.getLogger("portcullis.lifecycle.webhooks")

_EMOJI = {"LOW": ":information_source:", "MEDIUM": ":warning:", "HIGH": ":rotating_light:",
          "CRITICAL": ":rotating_light:"}


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def redact_url(url: str) -> str:
    """scheme://host[:port] only: the path and query of a webhook URL are often its secret."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def json_payload(event: GovernanceEvent) -> dict[str, Any]:
    return {"id": event.id, "ts": iso(event.ts), "event_type": event.event_type, "severity": event.severity,
            "agent_id": event.agent_id, "workspace": event.workspace, "details": dict(event.details)}


def slack_payload(event: GovernanceEvent) -> dict[str, Any]:
    """Slack's incoming-webhook shape: `text` is the fallback, `blocks` the layout."""
    who = ", ".join(f"{k} `{v}`" for k, v in (("agent", event.agent_id), ("workspace", event.workspace)) if v)
    text = f"[{event.severity}] {event.event_type}" + (f" ({who})" if who else "")
    fields = [{"type": "mrkdwn", "text": f"*{k}*\n{v}"} for k, v in sorted(event.details.items())][:10]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": text[:150]}},
        {"type": "section", "text": {"type": "mrkdwn",
                                     "text": f"{_EMOJI.get(event.severity, '')} *{event.event_type}*"
                                             + (f"\n{who}" if who else "")}},
    ]
    if fields:
        blocks.append({"type": "section", "fields": fields})
    blocks.append({"type": "context", "elements": [
        {"type": "mrkdwn", "text": f"Portcullis governance event `{event.id}` at {iso(event.ts)}"}]})
    return {"text": text, "blocks": blocks}


def payload(hook: WebhookSettings, event: GovernanceEvent) -> dict[str, Any]:
    return slack_payload(event) if hook.format == "slack" else json_payload(event)


def wants(hook: WebhookSettings, severity: str) -> bool:
    return SEVERITIES.index(severity) >= SEVERITIES.index(hook.min_severity)


class _Retryable(Exception):
    """Worth another attempt: connection errors, timeouts, 429, 5xx."""


class _Final(Exception):
    """Another attempt would get the same answer (another 4xx, a redirect)."""


class Webhooks:
    def __init__(self, settings: LifecycleSettings, on_failed: Callable[[dict[str, Any]], None], *,
                 client: httpx.AsyncClient | None = None) -> None:
        self._hooks = list(settings.webhooks)
        self._on_failed = on_failed
        self._retries = settings.webhook_retries
        self._backoff = settings.webhook_backoff_s
        self._max = settings.webhook_queue_max
        self._client = client
        self._own_client = client is None
        self._queue: collections.deque[tuple[WebhookSettings, GovernanceEvent]] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._busy = False
        self.dropped = 0
        self.delivered = 0
        self.failed_attempts = 0  # posts that failed (each retry counts), for tests and metrics

    def submit(self, event: GovernanceEvent) -> None:
        """Queue the event for every webhook whose min_severity it reaches; never blocks."""
        for hook in self._hooks:
            if not wants(hook, event.severity):
                continue
            if len(self._queue) >= self._max:
                old_hook, old = self._queue.popleft()
                self.dropped += 1
                log.error("webhook queue full (%d): dropped %s %s for %s", self._max, old.event_type, old.id,
                          redact_url(old_hook.url))
            self._queue.append((hook, event))
        if self._wake is not None and self._queue:
            self._wake.set()

    async def start(self) -> None:
        if self._task is not None:
            return
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False)
        self._wake = asyncio.Event()
        if self._queue:
            self._wake.set()
        self._task = asyncio.create_task(self._run(), name="portcullis-webhooks")

    async def aclose(self, drain_s: float = 2.0) -> None:
        """Give queued deliveries up to `drain_s`, then stop (what is left is logged)."""
        if self._task is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_s
        while (self._queue or self._busy) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None
        if self._queue:
            log.error("webhooks closed with %d deliveries not sent", len(self._queue))
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            hook, event = self._queue.popleft()
            self._busy = True
            try:
                await self._deliver(hook, event)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not stop later deliveries
                log.exception("webhook delivery of %s failed unexpectedly", event.id)
            finally:
                self._busy = False

    async def _deliver(self, hook: WebhookSettings, event: GovernanceEvent) -> None:
        body = payload(hook, event)
        attempts = self._retries + 1
        error = ""
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(self._backoff * 2 ** (attempt - 1))
            try:
                await self._post(hook, body)
            except _Retryable as e:
                error = str(e)
                self.failed_attempts += 1
                log.warning("webhook %s: delivery of %s failed (attempt %d of %d): %s",
                            redact_url(hook.url), event.id, attempt + 1, attempts, error)
                continue
            except _Final as e:
                error = str(e)
                self.failed_attempts += 1
                break
            self.delivered += 1
            return
        log.error("webhook %s: %s %s not delivered: %s", redact_url(hook.url), event.event_type, event.id, error)
        self._on_failed({"webhook": redact_url(hook.url), "event_id": event.id, "event_type": event.event_type,
                         "event_severity": event.severity, "attempts": attempt + 1, "error": error,
                         "agent_id": event.agent_id, "workspace": event.workspace})

    async def _post(self, hook: WebhookSettings, body: dict[str, Any]) -> None:
        assert self._client is not None
        try:
            r = await self._client.post(hook.url, json=body, timeout=hook.timeout_s)
        except httpx.TransportError as e:  # connection refused, reset, timeouts
            why = str(e).replace(hook.url, redact_url(hook.url))
            raise _Retryable(f"{type(e).__name__}: {why}" if why else type(e).__name__) from None
        if r.status_code == 429 or r.status_code >= 500:
            raise _Retryable(f"HTTP {r.status_code}")
        if r.status_code >= 300:
            raise _Final(f"HTTP {r.status_code}")
