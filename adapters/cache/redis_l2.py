"""A decision cache shared by every replica: aiocache's RedisCache (L2) behind the in-process L1.

Why: with the `opa` backend an uncached decision is a network round trip, and N replicas
would each ask OPA for the same decision. A get tries the L1 first, then Redis; an L2
hit fills the L1 for the rest of the entry's lifetime. A set writes both.

- Keys are `<key_prefix><revision>:<input digest>` (the stage's key): a new policy
  revision never reads an old decision, and the TTL is the decision's `cache_ttl_s`
  (SETEX), so Redis expires it on its own.
- Values carry their absolute expiry, so an L2 hit is kept in the L1 only as long as
  it has left, never a full TTL again.
- A Redis error, timeout (`cache.l2.timeout_s`) or unreadable value is a miss: the
  stage then evaluates the policy. It is never an allow. Failures are logged when
  Redis starts and stops failing, naming host:port/db but never the URL (it may hold
  a password).

Whoever can write to this Redis can plant decisions: it must be as trusted as the
limits Redis (the chart points both at the same Secret).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

import orjson
from aiocache import RedisCache
from aiocache.serializers import BaseSerializer
from redis.asyncio import BlockingConnectionPool
from redis.asyncio.connection import SSLConnection, parse_url
from redis.exceptions import RedisError

from gateway.protocols import DecisionCache
from gateway.settings_opa import L2CacheSettings
from gateway.types import Decision

log = logging.getLogger("portcullis.cache")


def _default(obj: Any) -> Any:
    if hasattr(obj, "items"):  # obligations may be a read-only mapping
        return dict(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


class DecisionSerializer(BaseSerializer):
    """A Decision and its absolute expiry (wall clock, shared by replicas) as JSON bytes."""
    DEFAULT_ENCODING = None  # bytes in and out

    def dumps(self, value: tuple[Decision, float]) -> bytes:
        d, expires = value
        doc = {"allow": d.allow, "reasons": d.reasons, "obligations": d.obligations,
               "cache_ttl_s": d.cache_ttl_s, "revision": d.revision, "exp": expires}
        # The lifecycle fields travel only when set: an approval or a violation lost on
        # the way through Redis would let a request skip its approval or its count.
        if d.violation is not None:
            doc["violation"] = d.violation
        if d.approval is not None:
            doc["approval"] = d.approval
        return orjson.dumps(doc, default=_default)

    def loads(self, value: bytes | None) -> tuple[Decision, float] | None:
        if value is None:
            return None
        doc = orjson.loads(value)
        allow = doc["allow"]
        violation, approval = doc.get("violation"), doc.get("approval")
        if not isinstance(allow, bool) or not isinstance(doc["obligations"], dict) \
                or not isinstance(violation, (dict, type(None))) or not isinstance(approval, (dict, type(None))):
            raise ValueError("not a decision")
        return (Decision(allow=allow, reasons=tuple(map(str, doc["reasons"])), obligations=doc["obligations"],
                         cache_ttl_s=int(doc["cache_ttl_s"]), revision=str(doc["revision"]), cache_hit=True,
                         violation=violation, approval=approval),
                float(doc["exp"]))


class _RedisCache(RedisCache):
    """aiocache's RedisCache, sending SET ... EX instead of SETEX (deprecated in redis-py 8)."""

    async def _set(self, key: str, value: Any, ttl: Any = None, _cas_token: Any = None, _conn: Any = None) -> Any:
        if _cas_token is None and isinstance(ttl, int):
            return await self.client.set(key, value, ex=ttl)
        return await super()._set(key, value, ttl=ttl, _cas_token=_cas_token, _conn=_conn)


class RedisL2DecisionCache:
    def __init__(self, settings: L2CacheSettings, l1: DecisionCache,
                 clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._l1 = l1
        self._clock = clock
        self._prefix = settings.key_prefix
        self._redis: _RedisCache | None = None
        self._where = "Redis"  # host:port/db once started; never the URL
        self._failing = False

    async def start(self) -> None:
        """Start the L1 and set up the pool; no Redis I/O, so a Redis that is down delays nothing."""
        await self._l1.start()
        s = self._settings
        kw = parse_url(s.redis_url)
        self._where = f"{kw.get('host', '127.0.0.1')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"
        pool_kw: dict[str, Any] = {"timeout": s.timeout_s, "socket_timeout": s.timeout_s}
        if kw.get("username"):
            pool_kw["username"] = kw["username"]
        self._redis = _RedisCache(
            serializer=DecisionSerializer(), timeout=s.timeout_s,
            endpoint=kw.get("host", "127.0.0.1"), port=kw.get("port", 6379), db=kw.get("db", 0),
            password=kw.get("password"), ssl=kw.get("connection_class") is SSLConnection,
            pool_max_size=s.pool_size, create_connection_timeout=s.timeout_s,
            connection_pool_class=BlockingConnectionPool, connection_pool_kwargs=pool_kw)

    async def get(self, key: str) -> Decision | None:
        hit = await self._l1.get(key)
        if hit is not None or self._redis is None:
            return hit
        try:
            found = await self._redis.get(self._prefix + key)
        except (RedisError, OSError, asyncio.TimeoutError, ValueError, KeyError, TypeError) as e:
            self._failed("get", e)
            return None  # a miss: the stage evaluates
        self._ok()
        if found is None:
            return None
        decision, expires = found
        left = int(expires - self._clock())
        if left <= 0:
            return None if expires <= self._clock() else decision  # under a second left: not worth an L1 entry
        await self._l1.set(key, decision, left)
        return decision

    async def set(self, key: str, decision: Decision, ttl_s: int) -> None:
        await self._l1.set(key, decision, ttl_s)
        if ttl_s <= 0 or self._redis is None:
            return
        try:
            await self._redis.set(self._prefix + key, (decision, self._clock() + ttl_s), ttl=int(ttl_s))
        except (RedisError, OSError, asyncio.TimeoutError, TypeError) as e:
            self._failed("set", e)
            return
        self._ok()

    async def aclose(self) -> None:
        redis, self._redis = self._redis, None
        if redis is not None:
            try:
                await redis.client.aclose()  # what RedisCache.close() does, without its deprecated call
            except (RedisError, OSError):
                pass
        await self._l1.aclose()

    def _failed(self, doing: str, e: BaseException) -> None:
        if not self._failing:
            self._failing = True
            what = "timed out" if isinstance(e, asyncio.TimeoutError) else f"{type(e).__name__}: {e}"
            log.warning("decision cache L2 %s on Redis at %s failed (%s); deciding without it until it answers",
                        doing, self._where, what)

    def _ok(self) -> None:
        if self._failing:
            self._failing = False
            log.info("decision cache L2 on Redis at %s answers again", self._where)
