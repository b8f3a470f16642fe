"""Session bindings in Redis, shared by every replica of a fleet (`tools.session_store: redis`).

Replicas behind a Service without sticky sessions each see only some of a session's
requests; with one shared binding every replica refuses a session id presented by an
agent other than the one that opened it. The store is authoritative: every session
opened through the fleet is bound here before its id reaches the client, so an id it
does not know (never opened through the gateway, or idle past the TTL) is refused too.

It uses the limits Redis (`limits.redis_url`, already resolved from `redis_url_env`)
and key prefix. Key: `<key_prefix>mcp-session:<server>:<sha256(id)>`, value the agent
id; the id itself (a bearer token) is never stored. The TTL is refreshed on every use
(GETEX), so only idle sessions expire. Every Redis failure is raised as BackendError
naming host:port/db, never the URL's password; the endpoint fails closed on it.
`start()` does not connect: a replica comes up while Redis is down, and sessions work
once it is back.
"""
from __future__ import annotations

import hashlib
from typing import Any

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
from gateway.settings import LimitsSettings

DEFAULT_TTL_S = 24 * 3600  # an idle session's binding lives this long after its last request


class RedisSessionStore:
    authoritative = True

    def __init__(self, settings: LimitsSettings, ttl_s: int = DEFAULT_TTL_S, max_connections: int = 32) -> None:
        self._settings = settings  # the limits Redis: redis_url (resolved), key_prefix, timeouts
        self._ttl_s = ttl_s
        self._max_connections = max_connections
        self._redis: Redis | None = None
        self._where = "Redis"  # host:port/db once started; never the URL (it may hold a password)
        self._secret = ""

    async def start(self) -> None:
        s = self._settings
        try:
            # Every command here is idempotent (GETEX, SET, DEL): one retry replaces a
            # connection Redis closed (a restart) instead of failing the request.
            # A burst waits for a free connection (limits.redis_pool_wait_s); it is not an outage.
            pool = BlockingConnectionPool.from_url(
                s.redis_url, max_connections=self._max_connections, timeout=s.redis_pool_wait_s,
                socket_timeout=s.redis_timeout_s, socket_connect_timeout=s.redis_timeout_s,
                retry=Retry(NoBackoff(), 1), decode_responses=True, **_POOL)
        except ValueError as e:
            raise BackendError(f"limits.redis_url is not a usable Redis URL: {e}") from None
        self._redis = Redis.from_pool(pool)
        kw = pool.connection_kwargs
        self._where = (f"unix:{kw['path']}" if "path" in kw
                       else f"{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}")
        self._secret = str(kw.get("password") or "")

    async def aclose(self) -> None:
        client, self._redis = self._redis, None
        if client is not None:
            await client.aclose()

    def _key(self, server: str, session_id: str) -> str:
        digest = hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()
        return f"{self._settings.key_prefix}mcp-session:{server}:{digest}"

    def _error(self, doing: str, e: BaseException) -> BackendError:
        msg = f"MCP session {doing} on Redis at {self._where} failed: {type(e).__name__}: {e}"
        return BackendError(msg.replace(self._secret, "***") if self._secret else msg)

    def _client(self) -> Redis:
        if self._redis is None:
            raise BackendError("the Redis session store is not started")
        return self._redis

    async def bind(self, server: str, session_id: str, agent_id: str) -> None:
        try:
            await self._client().set(self._key(server, session_id), agent_id, ex=self._ttl_s)
        except (RedisError, OSError) as e:
            raise self._error("bind", e) from e

    async def owner(self, server: str, session_id: str) -> str | None:
        try:
            return await self._client().getex(self._key(server, session_id), ex=self._ttl_s)
        except (RedisError, OSError) as e:
            raise self._error("lookup", e) from e

    async def end(self, server: str, session_id: str) -> None:
        try:
            await self._client().delete(self._key(server, session_id))
        except (RedisError, OSError) as e:
            raise self._error("end", e) from e
