"""Governance events into the real SQLite lifecycle store, and their webhooks delivered to a real
local receiver (an aiohttp server on 127.0.0.1): severities, Slack format, retry after the
receiver was down, and a final failure recorded as a `webhook.failed` event."""
from __future__ import annotations

import socket
import sqlite3
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from adapters.lifecycle.sqlite import SQLiteLifecycleStore
from gateway.lifecycle.events import GovernanceEvents
from gateway.settings_lifecycle import LifecycleSettings
from tests.support.waiting import eventually_async

SECRET = "T000/B000/XXXXsecretXXXX"  # Slack webhook URLs carry their secret in the path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver:
    """Records every POST body by path; answers `status` (one per request from `statuses` first)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.posts: list[tuple[str, Any]] = []
        self.statuses: list[int] = []
        self.status = 200
        self._runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}/{SECRET}"

    def bodies(self, path: str) -> list[Any]:
        return [b for p, b in self.posts if p.split("/")[1] == path]

    async def _handle(self, request: web.Request) -> web.Response:
        self.posts.append((request.path, await request.json()))
        status = self.statuses.pop(0) if self.statuses else self.status
        return web.json_response({"ok": status < 300}, status=status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteLifecycleStore]:
    s = SQLiteLifecycleStore(LifecycleSettings(), tmp_path / "lifecycle.db")
    await s.start()
    yield s
    await s.aclose()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


def settings(*hooks: dict[str, Any], retries: int = 5, backoff: float = 0.05) -> LifecycleSettings:
    return LifecycleSettings(webhooks=list(hooks), webhook_retries=retries, webhook_backoff_s=backoff)


async def test_events_are_stored_and_high_and_critical_are_delivered(store, receiver: Receiver) -> None:
    events = GovernanceEvents(store, settings({"url": receiver.url("json")},
                                              {"url": receiver.url("slack"), "format": "slack",
                                               "min_severity": "CRITICAL"}))
    await events.start()
    try:
        low = events.emit("promotion.proposed", "LOW", agent_id="research-bot", workspace="research")
        medium = events.emit("approval.requested", "MEDIUM", agent_id="billing-bot", workspace="finance")
        high = events.emit("policy.reload_rejected", "HIGH", details={"error": "rego_parse_error"})
        critical = events.emit("agent.revoked", "CRITICAL", agent_id="intern-bot", workspace="support",
                               details={"reason": "error budget exceeded: 1 procedure violation"})
        await events.flush(timeout=30)
        stored = await store.events()
        assert [(e.id, e.event_type, e.severity) for e in stored] == [
            (e.id, e.event_type, e.severity) for e in (low, medium, high, critical)]
        assert stored[3].details == {"reason": "error budget exceeded: 1 procedure violation"}
        assert all(e.id.startswith("evt_") and len(e.id) == 20 for e in stored)
        assert len({e.id for e in stored}) == 4

        await eventually_async(lambda: len(receiver.posts) >= 3, "three webhook deliveries")
        await events.aclose()
    finally:
        await events.aclose()
    assert len(receiver.posts) == 3  # nothing more arrived: LOW and MEDIUM went nowhere
    json_bodies = receiver.bodies("json")
    assert [b["event_type"] for b in json_bodies] == ["policy.reload_rejected", "agent.revoked"]
    body = json_bodies[1]
    assert body == {"id": critical.id, "ts": body["ts"], "event_type": "agent.revoked", "severity": "CRITICAL",
                    "agent_id": "intern-bot", "workspace": "support",
                    "details": {"reason": "error budget exceeded: 1 procedure violation"}}
    assert abs(datetime.fromisoformat(body["ts"]).timestamp() - critical.ts) < 0.001  # ISO 8601

    [slack] = receiver.bodies("slack")  # min_severity CRITICAL: the HIGH event is not sent here
    assert set(slack) == {"text", "blocks"}
    assert slack["text"] == "[CRITICAL] agent.revoked (agent `intern-bot`, workspace `support`)"
    kinds = [b["type"] for b in slack["blocks"]]
    assert kinds[0] == "header" and kinds[-1] == "context" and "section" in kinds
    assert slack["blocks"][0]["text"]["type"] == "plain_text"
    assert any(critical.id in e["text"] for e in slack["blocks"][-1]["elements"])
    fields = [f["text"] for b in slack["blocks"] for f in b.get("fields", [])]
    assert "*reason*\nerror budget exceeded: 1 procedure violation" in fields


async def test_delivery_is_retried_until_the_receiver_is_up(store) -> None:
    down = Receiver()  # not started yet: connection refused
    events = GovernanceEvents(store, settings({"url": down.url("json")}, retries=8, backoff=0.1))
    await events.start()
    try:
        bypass = events.emit("bypass.toggled", "CRITICAL", details={"enabled": True, "actor": "alice"})
        hooks = events.webhooks
        assert hooks is not None
        await eventually_async(lambda: hooks.failed_attempts >= 1, "a failed first delivery")
        assert not down.posts
        await down.start()
        try:
            await eventually_async(lambda: down.posts, "the delivery after the receiver came up")
            assert [b["id"] for b in down.bodies("json")] == [bypass.id]
            await eventually_async(lambda: hooks.delivered == 1, "the delivery's answer")
            await events.flush(timeout=30)
            assert [e.event_type for e in await store.events()] == ["bypass.toggled"]  # no webhook.failed
        finally:
            await down.stop()
    finally:
        await events.aclose()


async def test_a_final_failure_becomes_a_webhook_failed_event(store, receiver: Receiver) -> None:
    receiver.status = 503  # a 4xx other than 429 is final at once; 5xx are retried, then given up
    events = GovernanceEvents(store, settings({"url": receiver.url("slack"), "format": "slack"},
                                              retries=2, backoff=0.01))
    await events.start()
    try:
        spool = events.emit("audit.spooling", "HIGH", details={"rows": 12})

        async def failed_event() -> Any:
            await events.flush(timeout=30)
            return [e for e in await store.events() if e.event_type == "webhook.failed"]

        [failed] = await eventually_async(failed_event, "the webhook.failed event")
    finally:
        await events.aclose()
    assert len(receiver.posts) == 3  # the first attempt and 2 retries
    assert failed.severity == "MEDIUM"
    assert failed.details["event_id"] == spool.id and failed.details["event_type"] == "audit.spooling"
    assert failed.details["attempts"] == 3 and failed.details["error"] == "HTTP 503"
    assert failed.details["webhook"] == f"http://127.0.0.1:{receiver.port}"
    assert SECRET.split("/")[-1] not in repr(failed.details)  # the URL's secret path is never recorded
    # The failure was not itself sent to the webhook (MEDIUM, and never to avoid a loop).
    assert all(b["text"].startswith("[HIGH] audit.spooling") for _, b in receiver.posts)


async def test_a_4xx_is_not_retried(store, receiver: Receiver) -> None:
    receiver.statuses = [404]
    events = GovernanceEvents(store, settings({"url": receiver.url("json")}, retries=5, backoff=0.01))
    await events.start()
    try:
        events.emit("policy.fail_open", "CRITICAL", details={"requests": 3})

        async def failed_event() -> Any:
            await events.flush(timeout=30)
            return [e for e in await store.events() if e.event_type == "webhook.failed"]

        [failed] = await eventually_async(failed_event, "the webhook.failed event")
    finally:
        await events.aclose()
    assert len(receiver.posts) == 1 and failed.details["attempts"] == 1 and failed.details["error"] == "HTTP 404"


async def test_events_wait_for_the_store_and_none_is_lost(tmp_path: Path) -> None:
    """Emitted before start and while another process holds the database's write lock: stored
    once the lock is released, each once."""
    path = tmp_path / "locked.db"
    store = SQLiteLifecycleStore(LifecycleSettings(), path, busy_timeout_ms=50)
    await store.start()
    other = sqlite3.connect(path, isolation_level=None)  # another process's connection, as the CLI's
    events = GovernanceEvents(store, LifecycleSettings(), retry_s=0.02)
    try:
        other.execute("BEGIN EXCLUSIVE")
        first = events.emit("audit.spooling", "HIGH", details={"rows": 1})
        await events.start()
        second = events.emit("policy.fail_open", "CRITICAL")
        bad = events.emit("agent.revoked", "SEVERE", agent_id="x")  # unknown severity: stored as MEDIUM
        await eventually_async(lambda: events.failed_writes >= 2, "a failed write, retried")
        assert events.depth == 3
        other.execute("ROLLBACK")
        await events.flush(timeout=30)
        stored = await store.events()
        assert [e.id for e in stored] == [first.id, second.id, bad.id]
        assert stored[2].severity == "MEDIUM"
        assert events.depth == 0
    finally:
        other.close()
        await events.aclose()
        await store.aclose()


async def test_a_full_queue_drops_the_oldest_and_counts(store) -> None:
    events = GovernanceEvents(store, LifecycleSettings(), queue_max=3)
    emitted = [events.emit("budget.80pct", "MEDIUM", agent_id=f"a{i}") for i in range(5)]  # before start
    assert events.dropped == 2
    await events.start()
    try:
        await events.flush(timeout=30)
        assert [e.id for e in await store.events()] == [e.id for e in emitted[2:]]
    finally:
        await events.aclose()


async def test_details_are_stored_as_plain_json(store) -> None:
    """Details the store could not encode (an exception, a set) are stored as text, not lost,
    and do not block the events after them."""
    events = GovernanceEvents(store, LifecycleSettings())
    await events.start()
    try:
        odd = events.emit("policy.reload_rejected", "HIGH", details={"error": ValueError("bad rego"), 3: "x"})
        after = events.emit("audit.spooling", "HIGH")
        await events.flush(timeout=30)
        stored = await store.events()
        assert [e.id for e in stored] == [odd.id, after.id]
        assert stored[0].details == {"error": "bad rego", "3": "x"}
    finally:
        await events.aclose()
