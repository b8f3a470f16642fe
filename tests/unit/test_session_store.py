"""The MCP session-binding stores (gateway.protocols.SessionStore), one suite over every backend.

The Redis store runs against the machine's real Redis under a key prefix unique to
the run; an unreachable Redis is checked with a real refused connection.
"""
from __future__ import annotations

import asyncio
import hashlib
import socket
from typing import Any, Iterator

import pytest
import redis

from adapters.sessions.memory import MemorySessionStore
from adapters.sessions.redis import RedisSessionStore
from gateway import registry
from gateway.errors import BackendError
from gateway.protocols import SessionStore
from gateway.settings import LimitsSettings
from tests.support.services import redis_url, unique
from tests.support.redis_process import delete_prefix


@pytest.fixture
def prefix() -> Iterator[str]:
    p = unique("test:sessions:") + ":"
    yield p
    delete_prefix(redis_url(), p)


def make(kind: str, prefix: str, **kw: Any) -> SessionStore:
    if kind == "memory":
        return MemorySessionStore(None, **kw)
    return RedisSessionStore(LimitsSettings(redis_url=redis_url(), key_prefix=prefix), **kw)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_bind_owner_end_per_server(kind: str, prefix: str) -> None:
    async def go() -> None:
        store = make(kind, prefix)
        assert isinstance(store, SessionStore)
        await store.start()
        try:
            assert await store.owner("orders", "s-1") is None
            await store.bind("orders", "s-1", "intern-bot")
            await store.bind("orders", "s-2", "architect")
            assert await store.owner("orders", "s-1") == "intern-bot"
            assert await store.owner("orders", "s-2") == "architect"
            assert await store.owner("billing", "s-1") is None  # bindings are per MCP server
            await store.end("orders", "s-1")
            assert await store.owner("orders", "s-1") is None
            assert await store.owner("orders", "s-2") == "architect"
            await store.end("orders", "never-bound")  # ending an unknown session is no error
        finally:
            await store.aclose()
    run(go())


def test_registry_names_both_backends() -> None:
    assert registry.load("sessions", "memory") is MemorySessionStore
    assert registry.load("sessions", "redis") is RedisSessionStore
    assert (MemorySessionStore.authoritative, RedisSessionStore.authoritative) == (False, True)


def test_memory_store_forgets_the_oldest_session_beyond_its_bound() -> None:
    async def go() -> None:
        store = MemorySessionStore(None, max_sessions=2)
        for i in range(3):
            await store.bind("orders", f"s-{i}", f"agent-{i}")
        assert [await store.owner("orders", f"s-{i}") for i in range(3)] == [None, "agent-1", "agent-2"]
    run(go())


def test_redis_store_shares_bindings_between_instances(prefix: str) -> None:
    """Two replicas are two store instances on one Redis: what A binds, B sees."""
    async def go() -> None:
        a, b = make("redis", prefix), make("redis", prefix)
        await a.start()
        await b.start()
        try:
            await a.bind("orders", "shared", "intern-bot")
            assert await b.owner("orders", "shared") == "intern-bot"
            await b.end("orders", "shared")
            assert await a.owner("orders", "shared") is None
        finally:
            await a.aclose()
            await b.aclose()
    run(go())


def test_redis_store_keeps_no_raw_session_id_and_refreshes_the_ttl_on_use(prefix: str) -> None:
    async def go() -> None:
        store = make("redis", prefix, ttl_s=1000)
        await store.start()
        try:
            await store.bind("orders", "secret-session-id", "intern-bot")
        finally:
            await store.aclose()
    run(go())
    r = redis.Redis.from_url(redis_url(), decode_responses=True)
    try:
        keys = list(r.scan_iter(match=prefix + "*"))
        digest = hashlib.sha256(b"secret-session-id").hexdigest()
        assert keys == [f"{prefix}mcp-session:orders:{digest}"]  # the id (a bearer token) is hashed
        assert 0 < r.ttl(keys[0]) <= 1000
        r.expire(keys[0], 5)  # as if idle for a long while

        async def use() -> str | None:
            store = make("redis", prefix, ttl_s=1000)
            await store.start()
            try:
                return await store.owner("orders", "secret-session-id")
            finally:
                await store.aclose()
        assert run(use()) == "intern-bot"
        assert r.ttl(keys[0]) > 5  # a lookup renews the binding: only idle sessions expire
    finally:
        r.close()


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connecting is refused at once
    return port


def test_redis_down_is_a_backend_error_without_the_password() -> None:
    async def go() -> list[str]:
        store = RedisSessionStore(LimitsSettings(redis_url=f"redis://:hunter2pass@127.0.0.1:{closed_port()}/0",
                                                 key_prefix="test:sessions:down:"))
        await store.start()  # starts while Redis is down: sessions fail, the replica still comes up
        errors = []
        try:
            for op in (store.bind("orders", "s", "a"), store.owner("orders", "s"), store.end("orders", "s")):
                with pytest.raises(BackendError) as e:
                    await op
                errors.append(str(e.value))
        finally:
            await store.aclose()
        return errors
    errors = run(go())
    assert len(errors) == 3
    for msg in errors:
        assert "hunter2pass" not in msg and "127.0.0.1:" in msg, msg


def test_a_bad_redis_url_fails_at_start() -> None:
    store = RedisSessionStore(LimitsSettings(redis_url="notredis://x"))
    with pytest.raises(BackendError, match="limits.redis_url"):
        run(store.start())


def test_session_store_and_drain_settings_are_validated(tmp_path: Any) -> None:
    from gateway.settings import ConfigError, load_settings
    from tests.support.harness import PROVIDER_KEYS, gateway_config

    ok = load_settings(gateway_config(tmp_path, "http://127.0.0.1:9", tools__session_store="redis",
                                      server__drain_timeout_s=7), PROVIDER_KEYS)
    assert (ok.tools.session_store, ok.server.drain_timeout_s) == ("redis", 7)
    defaults = load_settings(gateway_config(tmp_path, "http://127.0.0.1:9"), PROVIDER_KEYS)
    assert (defaults.tools.session_store, defaults.server.drain_timeout_s) == ("memory", 25)
    bad = gateway_config(tmp_path, "http://127.0.0.1:9", tools__session_store="etcd", server__drain_timeout_s=-1)
    with pytest.raises(ConfigError) as e:
        load_settings(bad, PROVIDER_KEYS)
    assert "server.drain_timeout_s" in {p for p, _ in e.value.problems}
    bad = gateway_config(tmp_path, "http://127.0.0.1:9", tools__session_store="etcd")
    with pytest.raises(ConfigError) as e:
        load_settings(bad, PROVIDER_KEYS)
    assert [p for p, _ in e.value.problems] == ["tools.session_store"]


def test_redis_store_bursts_wait_for_a_pooled_connection(prefix: str) -> None:
    """More concurrent lookups than pooled connections queue for one; none fails."""
    async def go() -> list[str | None]:
        store = make("redis", prefix, max_connections=2)
        await store.start()
        try:
            await store.bind("orders", "busy", "intern-bot")
            return await asyncio.gather(*(store.owner("orders", "busy") for _ in range(50)))
        finally:
            await store.aclose()
    assert run(go()) == ["intern-bot"] * 50
