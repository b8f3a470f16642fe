"""In-process token buckets for requests/min and tokens/min.

A bucket holds up to `limit` units and refills at limit/60 per second, which is
exact and smooth (no fixed-window double burst). Tokens are reserved at
admission and settled against real usage; a settle that exceeds the
reservation can drive the level negative, so the overshoot is paid back before
the next admission instead of being forgotten.
"""
from __future__ import annotations

import time
from typing import Callable

from gateway.settings import LimitsSettings
from gateway.types import Limits, LimitResult, Reservation


class _Bucket:
    __slots__ = ("level", "ts")

    def __init__(self, level: float, ts: float) -> None:
        self.level = level
        self.ts = ts


class MemoryRateLimiter:
    def __init__(self, settings: LimitsSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        self._buckets.clear()

    def _refill(self, key: str, capacity: int, now: float) -> _Bucket:
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = _Bucket(float(capacity), now)
            return b
        b.level = min(float(capacity), b.level + (now - b.ts) * capacity / 60.0)
        b.ts = now
        return b

    async def reserve(self, key: str, limits: Limits, tokens: int) -> LimitResult:
        # No await between check and deduct: the event loop makes this atomic.
        now = self._clock()
        rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
        rb = self._refill(key + "|r", rpm, now) if rpm else None
        tb = self._refill(key + "|t", tpm, now) if tpm else None
        reason, wait = "", 0.0
        if tpm and tokens > tpm:
            reason, wait = "request_too_large", 60.0
        elif rb is not None and rb.level < 1.0:
            reason, wait = "requests", (1.0 - rb.level) * 60.0 / rpm
        elif tb is not None and tb.level < tokens:
            reason, wait = "tokens", (tokens - tb.level) * 60.0 / tpm
        allowed = not reason
        if allowed:
            if rb is not None:
                rb.level -= 1.0
            if tb is not None:
                tb.level -= tokens
        return LimitResult(
            allowed=allowed, retry_after_s=wait, reason=reason,
            limit_requests=rpm, limit_tokens=tpm,
            remaining_requests=max(0, int(rb.level)) if rb is not None else None,
            remaining_tokens=max(0, int(tb.level)) if tb is not None else None,
            reset_requests_s=(rpm - rb.level) * 60.0 / rpm if rb is not None else None,
            reset_tokens_s=(tpm - tb.level) * 60.0 / tpm if tb is not None else None,
            reservation=Reservation(key, tokens, limits) if allowed else None,
        )

    async def settle(self, reservation: Reservation, actual_tokens: int) -> None:
        tpm = reservation.limits.tokens_per_minute
        if not tpm:
            return
        b = self._refill(reservation.key + "|t", tpm, self._clock())
        b.level = min(float(tpm), b.level + reservation.tokens - actual_tokens)
