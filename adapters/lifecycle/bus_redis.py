"""The fleet lifecycle bus: Redis pub/sub on `lifecycle.channel`, shared by every replica.

Pub/sub delivers only to connected subscribers, so a replica that lost its connection may
have missed a revocation. The listener therefore treats every (re)subscription as a gap:
once Redis has confirmed the subscription it awaits each subscriber's `on_reconnect()`,
which reloads everything from the store (the source of truth). That happens on the first
subscription too, and for a subscriber that subscribes to a bus already listening, which
closes the window between a subscriber's own initial load and its subscription. A lost
connection is retried with capped exponential backoff.

redis-py's pub/sub quietly reconnects and resubscribes on an error when the client has
retries; this client has none, so every loss surfaces here and cannot skip `on_reconnect`.
The listener polls with a short timeout rather than blocking, so it never trips a socket
timeout on a quiet channel. Publish failures raise BackendError naming host:port/db, never
the URL's password. A readiness Dependency: /readyz reports "redis" down while unsubscribed.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

try:  # redis-py >= 7: keep the pool's check that an idle connection is still open
    from redis.maint_notifications import MaintNotificationsConfig
    _POOL: dict[str, Any] = {"maint_notifications_config": MaintNotificationsConfig(enabled=False)}
except ImportError:
    _POOL = {}

from gateway.errors import BackendError
from gateway.settings_lifecycle import LifecycleSettings

log = logging.getLogger("portcullis.lifecycle.bus")

OnMessage = Callable[[dict[str, Any]], Awaitable[None]]
OnReconnect = Callable[[], Awaitable[None]]


class RedisLifecycleBus:
    dependency = "redis"  # gateway.readiness.Dependency: probed by /readyz, reconnected at boot

    def __init__(self, settings: LifecycleSettings, *, timeout_s: float = 5.0, backoff_initial_s: float = 0.1,
                 backoff_max_s: float = 5.0, poll_s: float = 1.0) -> None:
        self._settings = settings
        self._channel = settings.channel
        self._timeout = timeout_s
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._poll_s = poll_s
        self._subscribers: list[tuple[OnMessage, OnReconnect]] = []
        self._redis: Redis | None = None
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()  # set while Redis has confirmed our subscription
        self._where = "Redis"  # host:port/db once started; never the URL (it may hold a password)
        self._secret = ""
        self._down: str | None = None  # why the subscription is not up, for /readyz
        self._late: set[asyncio.Task[None]] = set()  # on_reconnect of subscribers that came late

    def _error(self, doing: str, e: BaseException) -> BackendError:
        msg = f"lifecycle bus {doing} on Redis at {self._where} failed: {type(e).__name__}: {e}"
        return BackendError(msg.replace(self._secret, "***") if self._secret else msg)

    def subscribe(self, on_message: OnMessage, on_reconnect: OnReconnect) -> None:
        """Subscribe; on a bus already listening, the newcomer's on_reconnect runs once too, as
        whatever it loaded before this call may predate a message it was not there to get."""
        self._subscribers.append((on_message, on_reconnect))
        if self._subscribed.is_set():
            task = asyncio.create_task(_reload(on_reconnect))
            self._late.add(task)
            task.add_done_callback(self._late.discard)

    async def start(self) -> None:
        """Connect and subscribe; returns once Redis confirmed the subscription, else BackendError."""
        if self._listener is not None:
            return
        try:
            # One connection is the subscription's; publishes (rare: operator acts, revocations)
            # share a few more and wait for one rather than fail a burst.
            pool = BlockingConnectionPool.from_url(
                self._settings.redis_url, max_connections=8, timeout=self._timeout,
                socket_timeout=self._timeout, socket_connect_timeout=self._timeout,
                retry=Retry(NoBackoff(), 0), decode_responses=True, **_POOL)
        except ValueError as e:
            raise BackendError(f"lifecycle.redis_url is not a usable Redis URL: {e}") from None
        kw = pool.connection_kwargs
        self._where = (f"unix:{kw['path']}" if "path" in kw
                       else f"{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}")
        self._secret = str(kw.get("password") or "")
        self._redis = Redis.from_pool(pool)
        self._subscribed.clear()
        first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._listener = asyncio.create_task(self._listen(first), name="lifecycle-bus-listener")
        try:
            await asyncio.wait_for(asyncio.shield(first), self._timeout)
        except (TimeoutError, BackendError) as e:
            err = e if isinstance(e, BackendError) else self._error("subscribe", e)
            self._down = str(err)
            await self.aclose()
            raise err from None

    async def probe(self) -> str | None:
        """None while subscribed and Redis answers a PING, else why not (no password)."""
        if self._redis is None or not self._subscribed.is_set():
            return self._down or f"lifecycle bus on Redis at {self._where}: not subscribed"
        try:
            await self._redis.ping()
        except (RedisError, OSError) as e:
            return str(self._error("ping", e))
        return None

    async def publish(self, message: Mapping[str, Any]) -> None:
        if self._redis is None:
            raise BackendError(self._down or "the Redis lifecycle bus is not started")
        try:
            data = orjson.dumps(dict(message))
        except TypeError as e:
            raise BackendError(f"lifecycle bus message is not JSON: {e}") from e
        try:
            await self._redis.publish(self._channel, data)
        except (RedisError, OSError) as e:
            raise self._error("publish", e) from e

    async def aclose(self) -> None:
        for late in list(self._late):
            late.cancel()
        task, self._listener = self._listener, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        client, self._redis = self._redis, None
        self._subscribed.clear()
        if client is not None:
            try:
                await client.aclose()
            except (RedisError, OSError):
                pass

    # ---- the listener ----------------------------------------------------------------

    async def _listen(self, first: asyncio.Future[None]) -> None:
        delay = self._backoff[0]
        while True:
            assert self._redis is not None
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                await self._confirmed(pubsub)
                self._subscribed.set()
                self._down = None
                if not first.done():
                    first.set_result(None)
                delay = self._backoff[0]
                await self._reconnected()
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=self._poll_s)
                    if msg is not None and msg.get("type") == "message":
                        await self._dispatch(msg["data"])
            except (TimeoutError, RedisError, OSError) as e:
                err = self._error("subscription", e)
                self._down = str(err)
                if not first.done():  # start() reports it; the Reconnector retries start()
                    first.set_exception(err)
                    return
                log.warning("%s; resubscribing in %.1fs", err, delay)
            finally:
                self._subscribed.clear()
                try:
                    await pubsub.aclose()
                except (RedisError, OSError):
                    pass
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff[1])

    async def _confirmed(self, pubsub: Any) -> None:
        """Wait for Redis' subscribe reply: messages published after it are ours."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        while loop.time() < deadline:
            msg = await pubsub.get_message(timeout=max(0.0, deadline - loop.time()))
            if msg is not None and msg.get("type") == "subscribe":
                return
        raise TimeoutError(f"no subscribe confirmation within {self._timeout:g}s")

    async def _reconnected(self) -> None:
        for _, on_reconnect in list(self._subscribers):
            await _reload(on_reconnect)

    async def _dispatch(self, data: Any) -> None:
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            log.warning("lifecycle bus: ignored a message that is not JSON on %s", self._channel)
            return
        if not isinstance(message, dict):
            log.warning("lifecycle bus: ignored a message that is not an object on %s", self._channel)
            return
        for on_message, _ in list(self._subscribers):
            try:
                await on_message(dict(message))
            except Exception:
                log.exception("lifecycle bus subscriber failed on %s", message)


async def _reload(on_reconnect: OnReconnect) -> None:
    try:
        await on_reconnect()
    except Exception:  # the subscriber's periodic refresh still bounds the gap
        log.exception("lifecycle bus on_reconnect failed")
