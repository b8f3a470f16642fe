"""Policy stage: build the input document, consult the cache, evaluate, fail closed."""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import replace
from typing import Any, Sequence

import orjson

from gateway.errors import PolicyError
from gateway.metrics import Metrics
from gateway.protocols import DecisionCache, PolicyEngine
from gateway.types import Agent, Decision

log = logging.getLogger("portcullis.policy")


def policy_input(agent: Agent, auth: str, action: str, resource: dict[str, Any],
                 request: dict[str, Any]) -> dict[str, Any]:
    """The whole input a decision may depend on (no time, tokens or prompt text)."""
    return {
        "agent": {"id": agent.id, "tier": agent.tier, "maturity": agent.maturity,
                  "workspace": agent.workspace, "labels": dict(agent.labels), "auth": auth},
        "action": action,
        "resource": resource,
        "request": request,
    }


def digest(doc: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()


class PolicyStage:
    def __init__(self, engine: PolicyEngine, cache: DecisionCache, metrics: Metrics,
                 fail_open: bool = False) -> None:
        self._engine = engine
        self._cache = cache
        self._metrics = metrics
        self._fail_open = fail_open

    async def decide(self, doc: dict[str, Any]) -> tuple[Decision, str]:
        """Return the decision and the input digest; raises PolicyError when failing closed.

        The one-input path of decide_many, without its lists: it runs on every request.
        """
        dig = digest(doc)
        # The revision in the key means a reload can never serve a stale decision.
        key = self._engine.revision + ":" + dig
        cached = await self._cache.get(key)
        if cached is not None:  # stored with cache_hit=True already: no copy per hit
            self._metrics.cache_hit.inc()
            return cached, dig
        self._metrics.cache_miss.inc()
        [decision] = self._evaluate([doc])
        if decision.cache_ttl_s > 0:  # 0: a fail-open stand-in, never cached
            await self._cache.set(key, replace(decision, cache_hit=True), decision.cache_ttl_s)
        return decision, dig

    async def decide_many(self, docs: Sequence[dict[str, Any]]) -> list[tuple[Decision, str]]:
        """Decisions and input digests for several inputs: cache first, the misses in one batch."""
        revision = self._engine.revision  # one revision for the whole batch
        digests = [digest(d) for d in docs]
        # The revision in the key means a reload can never serve a stale decision.
        keys = [revision + ":" + dg for dg in digests]
        out: list[Decision | None] = []
        for k in keys:
            cached = await self._cache.get(k)
            out.append(cached)  # stored with cache_hit=True already: no copy per hit
        misses = [i for i, d in enumerate(out) if d is None]
        hits = len(docs) - len(misses)
        if hits:
            self._metrics.cache_hit.inc(hits)
        if misses:
            self._metrics.cache_miss.inc(len(misses))
            fresh = self._evaluate([docs[i] for i in misses])
            for i, decision in zip(misses, fresh):
                out[i] = decision
                if decision.cache_ttl_s > 0:  # 0: a fail-open stand-in, never cached
                    await self._cache.set(keys[i], replace(decision, cache_hit=True), decision.cache_ttl_s)
        return [(d, dg) for d, dg in zip(out, digests)]  # type: ignore[misc]

    def _evaluate(self, docs: list[dict[str, Any]]) -> list[Decision]:
        t = time.perf_counter()
        try:
            decisions = self._engine.evaluate_many(docs) if len(docs) > 1 else [self._engine.evaluate(docs[0])]
        except PolicyError as e:
            self._metrics.policy_errors.inc()
            if not self._fail_open:
                raise
            log.error("policy engine failed, failing open: %s", e)
            return [Decision(allow=True, reasons=(f"policy engine failed, fail-open: {e}",),
                             revision=self._engine.revision, cache_ttl_s=0) for _ in docs]
        self._metrics.policy_eval.observe((time.perf_counter() - t) / len(docs))
        return decisions
