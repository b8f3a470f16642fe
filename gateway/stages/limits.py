"""Limits stage: obligations -> limits, reserve before forwarding, settle after."""
from __future__ import annotations

import math

from gateway.errors import BackendError, RateLimited, Unavailable
from gateway.metrics import Metrics
from gateway.protocols import RateLimiter
from gateway.types import Decision, Limits, LimitResult, Reservation, Usage


def limits_from(decision: Decision) -> Limits:
    o = decision.obligations
    rpm, tpm = o.get("requests_per_minute"), o.get("tokens_per_minute")
    return Limits(int(rpm) if rpm else None, int(tpm) if tpm else None)


class LimitStage:
    def __init__(self, limiter: RateLimiter, metrics: Metrics) -> None:
        self._limiter = limiter
        self._metrics = metrics

    async def reserve(self, agent_id: str, decision: Decision, tokens: int) -> LimitResult:
        limits = limits_from(decision)
        if limits.requests_per_minute is None and limits.tokens_per_minute is None:
            return LimitResult(allowed=True)
        try:
            r = await self._limiter.reserve(agent_id, limits, tokens)
        except BackendError as e:  # fail closed: nothing is admitted unchecked
            raise Unavailable(f"rate limiter unavailable: {e}", code="rate_limiter_unavailable") from e
        if r.allowed:
            return r
        self._metrics.rate_limited.labels(r.reason).inc()
        hdrs = {"retry-after": str(max(1, math.ceil(r.retry_after_s)))}
        if r.reason == "request_too_large":
            msg = (f"request needs about {tokens} tokens, more than the {r.limit_tokens} "
                   f"tokens per minute allowed for agent {agent_id}")
        elif r.reason == "tokens":
            msg = (f"rate limit reached for agent {agent_id}: tokens per minute limit "
                   f"{r.limit_tokens}, retry after {hdrs['retry-after']}s")
        else:
            msg = (f"rate limit reached for agent {agent_id}: requests per minute limit "
                   f"{r.limit_requests}, retry after {hdrs['retry-after']}s")
        raise RateLimited(msg, code=r.reason if r.reason == "request_too_large" else "rate_limit_exceeded",
                          headers=hdrs, limit=r)

    async def settle(self, reservation: Reservation | None, usage: Usage) -> None:
        if reservation is None:
            return
        # Unknown usage (e.g. a stream cut short) keeps the whole reservation charged.
        actual = usage.total if usage.input_tokens is not None else reservation.tokens
        await self._limiter.settle(reservation, actual)
