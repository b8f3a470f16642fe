"""Token buckets in Redis, shared by every replica of a gateway fleet.

The semantics and results are those of `adapters.ratelimit.memory`: two buckets
per agent (requests, tokens), each refilling at limit/60 per second; a reserve
checks both and deducts both or neither; a settle gives back the reservation
minus the real usage and may drive the level negative.

Every reserve is ONE Lua script that refills, checks and deducts both buckets,
and every settle is one script too. Redis runs a script with no other command
in between, so N replicas together admit exactly the limit. The scripts read
Redis' clock (TIME), so all replicas share one clock.

Reserves made in the same event-loop iteration go to Redis as one pipeline (one
EVALSHA each, so every command still touches one agent's keys and the keys stay
cluster-safe): redis-py's command layer cost ~80 µs of CPU a reserve, and under load
many requests reach their reserve together. A lone reserve is sent on the next
iteration, with no timer. The batch is packed here and written on a pooled connection
directly (see _evalsha_reserves); callers each await their own future, and every
caller of a batch that fails gets the BackendError.

Keys: `<key_prefix>{<agent>}:r` and `…:t`, hashes of level `l` and time `t`
(µs). The hash tag puts both buckets of an agent in one cluster slot. A key
expires when its bucket would be full again: a missing key is a full bucket.

Every Redis failure (refused, timed out, script error) is raised as BackendError,
naming host:port/db but never the URL's password. `start()` fails when Redis is
unreachable; as a readiness `Dependency` (gateway/readiness.py) the app then comes up
not ready and retries it, while every reserve fails closed (503), exactly as when Redis
goes away later.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError

try:  # redis-py >= 7
    from redis.maint_notifications import MaintNotificationsConfig
except ImportError:  # older clients have no maintenance notifications, so the pool's check runs
    MaintNotificationsConfig = None  # type: ignore[assignment,misc]

from adapters.ratelimit.scripts import RESERVE, SETTLE
from gateway.errors import BackendError
from gateway.settings import LimitsSettings
from gateway.types import LimitResult, Limits, Reservation

log = logging.getLogger("portcullis.limits")


def _tag(agent: str) -> str:
    # Braces in an agent id would move the hash tag: escape them (and '%', to stay unambiguous).
    return agent.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


def _bulk(b: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(b), b)


def _pack_args(args: list[Any]) -> bytes:
    # The reserve's ARGV (a clock string, ints): RESP bulk strings, as redis-py would encode them.
    return b"".join([_bulk(str(a).encode()) for a in args])


def _pool_options() -> dict[str, Any]:
    """Keep the pool's check that a pooled connection is still open before a command is sent.

    redis-py 8 enables maintenance notifications ("auto") by default, and with them on the
    pool skips that check: after a Redis restart every idle connection then fails its next
    command ("Connection closed by server"), so requests got 503s after Redis was back.
    The check runs before anything is sent, so replacing the connection there is always safe,
    unlike retrying a reserve (not idempotent: it may have run). Open-source Redis sends no
    maintenance notifications, so nothing is lost by turning them off.
    """
    if MaintNotificationsConfig is None:
        return {}
    return {"maint_notifications_config": MaintNotificationsConfig(enabled=False)}


class RedisRateLimiter:
    dependency = "redis"  # gateway.readiness.Dependency: probed by /readyz, reconnected at boot

    def __init__(self, settings: LimitsSettings, clock: Callable[[], float] | None = None) -> None:
        self._settings = settings
        self._clock = clock  # tests only (seconds); None means Redis' own clock
        self._redis: Redis | None = None
        self._reserve: Any = None
        self._settle: Any = None
        self._where = "Redis"  # host:port/db once started; never the URL (it may hold a password)
        self._secret = ""
        self._down: str | None = None  # why the last start() failed, for /readyz
        # Settles wait up to settle_flush_ms and go to Redis summed per bucket, pipelined:
        # one round trip for many requests instead of one each (see settle()).
        self._pending: dict[tuple[str, int], int] = {}
        self._flusher: asyncio.Task[None] | None = None
        # Reserves waiting for the next loop iteration, sent together (see _send_reserves).
        self._queued: list[tuple[bytes, list[Any], asyncio.Future[Any]]] = []
        self._batches: set[asyncio.Task[None]] = set()
        self._keycache: dict[str, bytes] = {}
        # Pooled connections kept between reserve batches (see _take); the rest of the pool
        # stays free for settles, probes and concurrent batches.
        self._held: list[Any] = []
        self._hold = min(4, settings.redis_pool_size // 4)
        self._head = b""  # EVALSHA <sha> 2, packed (start())

    def _error(self, doing: str, e: BaseException) -> BackendError:
        msg = f"{doing} on Redis at {self._where} failed: {type(e).__name__}: {e}"
        return BackendError(msg.replace(self._secret, "***") if self._secret else msg)

    async def start(self) -> None:
        """Connect, ping and load the scripts; an unreachable Redis fails startup."""
        s = self._settings
        try:
            pool = BlockingConnectionPool.from_url(
                s.redis_url, max_connections=s.redis_pool_size, timeout=s.redis_pool_wait_s,
                socket_timeout=s.redis_timeout_s, socket_connect_timeout=s.redis_timeout_s,
                # No retries: a re-sent reserve could be charged twice, and a dead Redis
                # must fail the request now, not after backoff. Stale pooled connections
                # are still replaced before use (see _pool_options).
                retry=Retry(NoBackoff(), 0), decode_responses=True, **_pool_options())
        except ValueError as e:
            raise BackendError(f"limits.redis_url is not a usable Redis URL: {e}") from None
        kw = pool.connection_kwargs
        self._where = (f"unix:{kw['path']}" if "path" in kw
                       else f"{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}")
        self._secret = str(kw.get("password") or "")
        self._redis = Redis.from_pool(pool)
        self._reserve = self._redis.register_script(RESERVE)
        self._settle = self._redis.register_script(SETTLE)
        self._head = b"*9\r\n" + _bulk(b"EVALSHA") + _bulk(self._reserve.sha.encode()) + _bulk(b"2")
        try:
            await self._redis.ping()
            for script in (self._reserve, self._settle):
                await self._redis.script_load(script.script)  # also proves the scripts compile
        except (RedisError, OSError) as e:
            await self.aclose()
            err = self._error("connecting the rate limiter", e)
            self._down = str(err)
            raise err from e
        self._down = None

    async def probe(self) -> str | None:
        """PING on the limiter's own pool: None when Redis answers, else why not (no password)."""
        if self._redis is None:
            return self._down or f"Redis at {self._where}: rate limiter not connected"
        try:
            await self._redis.ping()
        except (RedisError, OSError) as e:
            return str(self._error("ping", e))
        return None

    async def aclose(self) -> None:
        if self._queued:  # callers waiting for the next iteration: send them first
            self._send_reserves()
        if self._batches:
            await asyncio.gather(*self._batches, return_exceptions=True)
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
        if self._redis is not None:
            held, self._held = self._held, []
            for conn in held:
                await self._redis.connection_pool.release(conn)
            try:
                await self._flush()  # settles still waiting are applied before closing
            finally:
                client, self._redis = self._redis, None
                await client.aclose()

    def _keys(self, agent: str) -> list[str]:
        base = f"{self._settings.key_prefix}{{{_tag(agent)}}}"
        return [base + ":r", base + ":t"]

    def _packed_keys(self, agent: str) -> bytes:
        """The reserve's two keys as RESP bulk strings, built once per agent."""
        packed = self._keycache.get(agent)
        if packed is None:
            if len(self._keycache) >= 4096:  # agent ids are few; bound it anyway
                self._keycache.clear()
            packed = self._keycache[agent] = b"".join(_bulk(k.encode()) for k in self._keys(agent))
        return packed

    def _now(self) -> str:
        return "" if self._clock is None else str(round(self._clock() * 1_000_000))

    async def reserve(self, key: str, limits: Limits, tokens: int) -> LimitResult:
        rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
        if self._redis is None:  # not reached since boot: fail closed, as when Redis is down later
            raise BackendError(self._down or "the Redis rate limiter is not started")
        fut = asyncio.get_running_loop().create_future()
        if not self._queued:
            asyncio.get_running_loop().call_soon(self._send_reserves)
        self._queued.append((self._packed_keys(key), [self._now(), rpm or 0, tpm or 0, tokens], fut))
        reason, r, t = await fut
        rl = float(r) if rpm else None
        tl = float(t) if tpm else None
        wait = 0.0
        if reason == "request_too_large":
            wait = 60.0
        elif reason == "requests":
            wait = (1.0 - rl) * 60.0 / rpm
        elif reason == "tokens":
            wait = (tokens - tl) * 60.0 / tpm
        allowed = not reason
        return LimitResult(
            allowed=allowed, retry_after_s=wait, reason=reason,
            limit_requests=rpm, limit_tokens=tpm,
            remaining_requests=max(0, int(rl)) if rl is not None else None,
            remaining_tokens=max(0, int(tl)) if tl is not None else None,
            reset_requests_s=(rpm - rl) * 60.0 / rpm if rl is not None else None,
            reset_tokens_s=(tpm - tl) * 60.0 / tpm if tl is not None else None,
            reservation=Reservation(key, tokens, limits) if allowed else None,
        )

    def _send_reserves(self) -> None:
        batch, self._queued = self._queued, []
        if batch:
            # A task of its own: a caller cancelled while waiting must not stop the others' reserves.
            task = asyncio.get_running_loop().create_task(self._run_reserves(batch))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _run_reserves(self, batch: list[tuple[bytes, list[Any], asyncio.Future[Any]]]) -> None:
        """Run the batch's reserves and hand each caller its reply or its BackendError."""
        try:
            replies = await self._evalsha_reserves(batch)
        except BaseException as e:  # every caller learns why; nothing is left waiting
            for _, _, fut in batch:
                if not fut.done():
                    if isinstance(e, (RedisError, OSError)):
                        err = self._error("reserve", e)
                        err.__cause__ = e
                        fut.set_exception(err)
                    elif isinstance(e, asyncio.CancelledError):
                        fut.cancel()
                    else:
                        fut.set_exception(e)
            if not isinstance(e, (Exception, asyncio.CancelledError)):
                raise
            return
        for (_, _, fut), reply in zip(batch, replies):
            if fut.done():  # its caller was cancelled meanwhile
                continue
            if isinstance(reply, Exception):  # this reserve's own script error (e.g. WRONGTYPE)
                err = self._error("reserve", reply)
                err.__cause__ = reply
                fut.set_exception(err)
            else:
                fut.set_result(reply)

    async def _evalsha_reserves(self, batch: list[tuple[bytes, list[Any], asyncio.Future[Any]]]) -> list[Any]:
        """One EVALSHA per reserve, written at once on one pooled connection (a pipeline).

        Packed here and sent on the connection itself: redis-py's command and pipeline
        layers cost more CPU than the round trip. A reply that is an error (a script
        error such as WRONGTYPE) comes back as that exception, for its caller alone. A
        reserve that got NOSCRIPT (Redis restarted empty) did not run, so loading the
        script and sending just those again never charges twice.
        """
        redis = self._redis
        if redis is None:
            raise RedisError("the rate limiter was closed")
        pool = redis.connection_pool
        todo = list(range(len(batch)))
        replies: list[Any] = [None] * len(batch)
        for attempt in (0, 1):
            packed = [self._head + batch[i][0] + _pack_args(batch[i][1]) for i in todo]
            conn = await self._take(pool)
            try:
                await conn.send_packed_command(packed)
                for i in todo:
                    try:
                        replies[i] = await conn.read_response()
                    except ResponseError as e:  # one command's error: the others' replies follow
                        replies[i] = e
            except BaseException:
                await conn.disconnect()  # replies may be left unread: never reuse it
                await pool.release(conn)
                raise
            if len(self._held) < self._hold:
                self._held.append(conn)
            else:
                await pool.release(conn)
            todo = [i for i in todo if isinstance(replies[i], NoScriptError)]
            if not todo or attempt:
                break
            await redis.script_load(RESERVE)
        return replies

    async def _take(self, pool: Any) -> Any:
        """A connection for a reserve batch: one held from an earlier batch, else the pool's.

        Holding a few saves the pool's acquire and release (a third of a lone reserve's
        CPU). A held one gets the pool's own check before use (`ensure_connection`:
        reconnect if Redis closed it, e.g. a restart), so a restart costs no request.
        """
        if not self._held:
            return await pool.get_connection()
        conn = self._held.pop()
        try:
            await pool.ensure_connection(conn)
        except BaseException:
            await conn.disconnect()
            await pool.release(conn)
            raise
        return conn

    async def settle(self, reservation: Reservation, actual_tokens: int) -> None:
        """Give back (or charge) the difference between the reservation and real usage.

        With `settle_flush_ms` > 0 the correction is applied within that time, summed with
        the agent's other corrections in one pipelined round trip. Waiting is on the safe
        side when usage is below the reservation (the usual case: tokens come back a few
        ms late, so the fleet admits less, never more); an overshoot is charged late by at
        most the same few ms.
        """
        tpm = reservation.limits.tokens_per_minute
        back = reservation.tokens - actual_tokens
        if not tpm or back == 0:  # nothing to give back or charge
            return
        if self._redis is None:
            raise BackendError("the Redis rate limiter is not started")
        if self._settings.settle_flush_ms <= 0:
            try:
                await self._settle(keys=self._keys(reservation.key)[1:], args=[self._now(), tpm, back])
            except (RedisError, OSError) as e:
                raise self._error("settle", e) from e
            return
        k = (reservation.key, tpm)
        self._pending[k] = self._pending.get(k, 0) + back
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_soon(), name="limits-settle")

    async def _flush_soon(self) -> None:
        await asyncio.sleep(self._settings.settle_flush_ms / 1000)
        try:
            await self._flush()
        except BackendError as e:
            # The reservations stay charged: the fleet admits less until they refill.
            log.error("settling %s", e.args[0])

    async def _flush(self) -> None:
        pending, self._pending = self._pending, {}
        if not pending or self._redis is None:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for (key, tpm), back in pending.items():
                    if back:
                        await self._settle(keys=self._keys(key)[1:], args=[self._now(), tpm, back], client=pipe)
                await pipe.execute()
        except (RedisError, OSError) as e:
            raise self._error(f"settle of {len(pending)} bucket(s)", e) from e
