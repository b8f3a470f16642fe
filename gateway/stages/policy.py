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
        """Return the decision and the input digest; raises PolicyError when failing closed."""
        dig = digest(doc)
        # The revision in the key means a reload can never serve a stale decision.
        key = self._engine.revision + ":" + dig
        cached = await self._cache.get(key)
        if cached is not None:
            self._metrics.cache.labels("hit").inc()
            return replace(cached, cache_hit=True), dig
        self._metrics.cache.labels("miss").inc()
        t = time.perf_counter()
        try:
            decision = self._engine.evaluate(doc)
        except PolicyError as e:
            self._metrics.policy_errors.inc()
            if not self._fail_open:
                raise
            log.error("policy engine failed, failing open: %s", e)
            return Decision(allow=True, reasons=(f"policy engine failed, fail-open: {e}",),
                            revision=self._engine.revision, cache_ttl_s=0), dig
        self._metrics.policy_eval.observe(time.perf_counter() - t)
        await self._cache.set(key, decision, decision.cache_ttl_s)
        return decision, dig

    async def decide_many(self, docs: Sequence[dict[str, Any]]) -> list[Decision]:
        return [(await self.decide(d))[0] for d in docs]
