"""The LifecycleBus: in-process, and Redis pub/sub between "replicas" (two buses on one channel).

Redis is the machine's real server, on a channel unique to each test. A connection is cut
for real with a TcpProxy in front of Redis: shut, the subscriber's connection dies and
reconnecting is refused; reopened, it must resubscribe and call on_reconnect.
"""
from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from adapters.lifecycle.bus_memory import MemoryLifecycleBus
from adapters.lifecycle.bus_redis import RedisLifecycleBus
from gateway import registry
from gateway.errors import BackendError
from gateway.protocols import LifecycleBus
from gateway.readiness import is_dependency
from gateway.settings_lifecycle import LifecycleSettings
from tests.support.services import redis_url, unique
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import eventually_async


class Subscriber:
    """Records what a bus delivers, the way the lifecycle runtime subscribes."""

    def __init__(self, bus: Any, fail: bool = False) -> None:
        self.messages: list[dict[str, Any]] = []
        self.reconnects = 0
        self.fail = fail
        bus.subscribe(self.on_message, self.on_reconnect)

    async def on_message(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        if self.fail:
            raise RuntimeError("subscriber broke")

    async def on_reconnect(self) -> None:
        self.reconnects += 1


def test_registry_names_both_buses():
    assert registry.load("lifecycle_bus", "memory") is MemoryLifecycleBus
    assert registry.load("lifecycle_bus", "redis") is RedisLifecycleBus


# ---- in-process ------------------------------------------------------------------------------

async def test_memory_bus_delivers_to_every_subscriber():
    bus = MemoryLifecycleBus(LifecycleSettings())
    assert isinstance(bus, LifecycleBus) and not is_dependency(bus)
    broken, ok = Subscriber(bus, fail=True), Subscriber(bus)
    await bus.start()
    await bus.publish({"agent_id": "bot", "version": 3})
    await bus.publish({"flags": True})
    await eventually_async(lambda: len(ok.messages) == 2, "both messages")
    await bus.aclose()
    assert ok.messages == [{"agent_id": "bot", "version": 3}, {"flags": True}]
    assert broken.messages == ok.messages  # its failure reached neither the publisher nor the other
    assert (ok.reconnects, broken.reconnects) == (0, 0)  # no connection, no gap


async def test_memory_bus_refuses_what_redis_could_not_carry():
    bus = MemoryLifecycleBus(LifecycleSettings())
    Subscriber(bus)
    with pytest.raises(BackendError):
        await bus.publish({"agent_id": object()})


async def test_memory_bus_gives_each_subscriber_its_own_copy():
    bus = MemoryLifecycleBus(LifecycleSettings())
    a, b = Subscriber(bus), Subscriber(bus)
    await bus.publish({"agent_id": "bot"})
    await eventually_async(lambda: a.messages and b.messages, "delivery")
    a.messages[0]["agent_id"] = "changed"
    assert b.messages == [{"agent_id": "bot"}]
    await bus.aclose()


# ---- Redis -----------------------------------------------------------------------------------

@pytest.fixture
def channel() -> str:
    return unique("portcullis:lifecycle:test:")


def redis_bus(url: str, channel: str, **kw: Any) -> RedisLifecycleBus:
    return RedisLifecycleBus(LifecycleSettings(bus="redis", redis_url=url, channel=channel), timeout_s=2.0,
                             backoff_initial_s=0.05, backoff_max_s=0.2, poll_s=0.1, **kw)


async def test_redis_bus_reaches_every_replica(channel):
    url = redis_url()
    a, b = redis_bus(url, channel), redis_bus(url, channel)
    sub_a, sub_b = Subscriber(a), Subscriber(b)
    try:
        await a.start()
        await b.start()
        assert isinstance(a, LifecycleBus) and is_dependency(a)
        assert await a.probe() is None
        # Every subscription, the first included, is followed by a reload.
        await eventually_async(lambda: sub_a.reconnects == 1 and sub_b.reconnects == 1, "initial reloads")
        await a.publish({"agent_id": "bot", "version": 7})
        await b.publish({"flags": True})
        want = [{"agent_id": "bot", "version": 7}, {"flags": True}]
        await eventually_async(lambda: len(sub_a.messages) == 2 and len(sub_b.messages) == 2, "delivery")
        assert sub_a.messages == want and sub_b.messages == want
    finally:
        await a.aclose()
        await b.aclose()


async def test_redis_bus_survives_a_broken_subscriber_and_junk(channel):
    import redis.asyncio as aioredis
    url = redis_url()
    bus = redis_bus(url, channel)
    broken, ok = Subscriber(bus, fail=True), Subscriber(bus)
    raw = aioredis.Redis.from_url(url)
    try:
        await bus.start()
        await raw.publish(channel, b"not json")
        await raw.publish(channel, b"[1, 2]")
        await bus.publish({"agent_id": "a"})
        await bus.publish({"agent_id": "b"})
        await eventually_async(lambda: len(ok.messages) == 2, "delivery")
        assert ok.messages == broken.messages == [{"agent_id": "a"}, {"agent_id": "b"}]
    finally:
        await raw.aclose()
        await bus.aclose()


async def test_redis_bus_reloads_after_a_lost_connection(channel):
    url = redis_url()
    proxy = TcpProxy("127.0.0.1", 6379)
    await proxy.open()
    cut = redis_bus(f"redis://127.0.0.1:{proxy.port}/0", channel)
    other = redis_bus(url, channel)
    sub = Subscriber(cut)
    try:
        await cut.start()
        await other.start()
        await eventually_async(lambda: sub.reconnects == 1, "the initial reload")
        await other.publish({"agent_id": "before"})
        await eventually_async(lambda: sub.messages == [{"agent_id": "before"}], "delivery before the cut")

        await proxy.shut()
        await eventually_async(cut.probe, "the bus to report itself down")
        with pytest.raises(BackendError):
            await cut.publish({"agent_id": "lost"})
        await other.publish({"agent_id": "missed"})  # nobody can deliver this one to `cut`
        assert sub.reconnects == 1

        await proxy.open()
        await eventually_async(lambda: sub.reconnects == 2, "on_reconnect after resubscribing")
        assert await cut.probe() is None
        await other.publish({"agent_id": "after"})
        await eventually_async(lambda: sub.messages[-1:] == [{"agent_id": "after"}], "delivery after the cut")
        assert {"agent_id": "missed"} not in sub.messages  # which is why the subscriber reloads
    finally:
        await cut.aclose()
        await other.aclose()
        proxy.close()


async def test_redis_bus_start_fails_when_redis_is_down_and_names_no_password(channel):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, never listening: refused
    try:
        port = sock.getsockname()[1]
        bus = redis_bus(f"redis://:hunter2-pw@127.0.0.1:{port}/0", channel)
        Subscriber(bus)
        with pytest.raises(BackendError) as info:
            await bus.start()
        assert "hunter2-pw" not in str(info.value) and f"127.0.0.1:{port}" in str(info.value)
        reason = await bus.probe()
        assert reason is not None and "hunter2-pw" not in reason
        with pytest.raises(BackendError):
            await bus.publish({"agent_id": "bot"})
    finally:
        sock.close()


async def test_redis_bus_can_start_after_a_failed_start(channel):
    """The readiness Reconnector retries start() on a bus that was down at boot."""
    proxy = TcpProxy("127.0.0.1", 6379)  # shut: refusing
    redis_url()
    bus = redis_bus(f"redis://127.0.0.1:{proxy.port}/0", channel)
    sub = Subscriber(bus)
    try:
        with pytest.raises(BackendError):
            await bus.start()
        await proxy.open()
        await bus.start()
        assert await bus.probe() is None
        await eventually_async(lambda: sub.reconnects == 1, "a reload once subscribed")
        await bus.publish({"agent_id": "bot"})
        await eventually_async(lambda: sub.messages == [{"agent_id": "bot"}], "delivery")
    finally:
        await bus.aclose()
        proxy.close()


async def test_aclose_stops_delivery(channel):
    url = redis_url()
    a, b = redis_bus(url, channel), redis_bus(url, channel)
    sub_b = Subscriber(b)
    await a.start()
    await b.start()
    await b.aclose()
    await a.publish({"agent_id": "bot"})
    # b is gone: a third subscriber proves the message went out, and b never got it.
    c = redis_bus(url, channel)
    sub_c = Subscriber(c)
    await c.start()
    await a.publish({"agent_id": "again"})
    await eventually_async(lambda: sub_c.messages == [{"agent_id": "again"}], "delivery to c")
    await asyncio.gather(a.aclose(), c.aclose())
    assert sub_b.messages == []


async def test_a_late_subscriber_reloads_once(channel):
    """The runtime loads the store, then subscribes to a bus already started: it reloads once more."""
    bus = redis_bus(redis_url(), channel)
    early = Subscriber(bus)
    try:
        await bus.start()
        await eventually_async(lambda: early.reconnects == 1, "the early subscriber's reload")
        late = Subscriber(bus)
        await eventually_async(lambda: late.reconnects == 1, "the late subscriber's reload")
        await bus.publish({"agent_id": "bot"})
        await eventually_async(lambda: late.messages == [{"agent_id": "bot"}], "delivery")
        assert early.reconnects == 1
    finally:
        await bus.aclose()
