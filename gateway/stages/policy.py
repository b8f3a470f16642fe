"""Policy stage: build the input document, consult the cache, evaluate, fail closed."""
from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import orjson

from gateway.errors import PolicyError, Unavailable
from gateway.metrics import Metrics
from gateway.protocols import DecisionCache, PolicyEngine
from gateway.tracing import RequestTrace
from gateway.types import Agent, Decision

log = logging.getLogger("portcullis.policy")

# A bypassed request's decision (gateway/lifecycle/switches.py): its revision marks it.
BYPASS_REVISION = "bypass"
BYPASS_REASON = "emergency bypass: policy not evaluated"


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
                 fail_open: bool = False, gate: Callable[[], str | None] | None = None,
                 bypassed: Callable[[str], str | None] | None = None,
                 on_fail_open: Callable[[dict[str, Any]], None] | None = None) -> None:
        self._engine = engine
        # Told {"error", "requests"} when decisions fail open: at most once a minute, with the
        # number of requests let through since the last call (the policy.fail_open event).
        self._on_fail_open = on_fail_open
        self._fail_opens = 0
        self._fail_open_next = 0.0
        # Whether a surface skips policy now (the emergency bypass, governance off for the
        # surface: gateway/lifecycle/switches.py); None when the lifecycle is off.
        self._bypassed = bypassed
        # Why no decision may be made now (the audit chain cannot continue: 503), or None.
        self._gate = gate or (lambda: None)
        self._cache = cache
        self._metrics = metrics
        self._fail_open = fail_open
        # An engine whose decisions cost I/O (the OPA backend) offers an awaitable batch call;
        # the in-process engines keep their plain call, which costs no task switch.
        self._remote = getattr(engine, "aevaluate_many", None)

    async def decide(self, doc: dict[str, Any], trace: RequestTrace | None = None) -> tuple[Decision, str]:
        """Return the decision and the input digest; raises PolicyError when failing closed.

        The one-input path of decide_many, without its lists: it runs on every request.
        With the request's `trace`, a "policy" span records it (untraced: this one check).
        """
        if trace is not None:
            with trace.child("policy") as sp:
                decided = await self.decide(doc)
                sp.set("portcullis.cache_hit", decided[0].cache_hit)
                return decided
        if (why := self._gate()) is not None:
            raise Unavailable(why, code="audit_unavailable")
        dig = digest(doc)
        if self._bypassed is not None and (why := self._bypassed(doc["request"]["api"])):
            return self.bypass_decision(doc, why), dig
        # The revision in the key means a reload can never serve a stale decision.
        key = self._engine.revision + ":" + dig
        cached = await self._cache.get(key)
        if cached is not None:  # stored with cache_hit=True already: no copy per hit
            self._metrics.cache_hit.inc()
            return cached, dig
        self._metrics.cache_miss.inc()
        [decision] = self._evaluate([doc]) if self._remote is None else await self._evaluate_remote([doc])
        if decision.cache_ttl_s > 0:  # 0: a fail-open stand-in, never cached
            await self._cache.set(key, replace(decision, cache_hit=True), decision.cache_ttl_s)
        return decision, dig

    async def decide_many(self, docs: Sequence[dict[str, Any]],
                          trace: RequestTrace | None = None) -> list[tuple[Decision, str]]:
        """Decisions and input digests for several inputs: cache first, the misses in one batch."""
        if trace is not None:
            with trace.child("policy") as sp:
                decided = await self.decide_many(docs)
                sp.set("portcullis.cache_hit", all(d.cache_hit for d, _ in decided))  # True: no evaluation
                sp.set("portcullis.decisions", len(decided))
                return decided
        if (why := self._gate()) is not None:
            raise Unavailable(why, code="audit_unavailable")
        revision = self._engine.revision  # one revision for the whole batch
        digests = [digest(d) for d in docs]
        if self._bypassed is not None and docs and (why := self._bypassed(docs[0]["request"]["api"])):
            return [(self.bypass_decision(d, why), dg) for d, dg in zip(docs, digests)]  # one request: one surface
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
            todo = [docs[i] for i in misses]
            fresh = self._evaluate(todo) if self._remote is None else await self._evaluate_remote(todo)
            for i, decision in zip(misses, fresh):
                out[i] = decision
                if decision.cache_ttl_s > 0:  # 0: a fail-open stand-in, never cached
                    await self._cache.set(keys[i], replace(decision, cache_hit=True), decision.cache_ttl_s)
        return [(d, dg) for d, dg in zip(out, digests)]  # type: ignore[misc]

    @property
    def engine(self) -> PolicyEngine:
        """The serving engine: its revision and vocabulary (the console shows them)."""
        return self._engine

    def argument_rules(self) -> frozenset[tuple[str, str]]:
        """(server, tool) pairs whose tool.call input carries the call's arguments (the loaded set's
        opt-in, contract 2); read per call so a reload takes effect at once."""
        return self._engine.argument_rules

    def use_switches(self, bypassed: Callable[[str], str | None] | None) -> None:
        """Follow the lifecycle's switches (`Switches.bypass_reason`: why a surface skips policy now,
        or None); set once, when the app is built."""
        self._bypassed = bypassed

    def bypass_decision(self, doc: dict[str, Any], reason: str = BYPASS_REASON) -> Decision:
        """The stand-in for a decision while policy is bypassed: nothing evaluated, the request
        allowed with its tier's obligations from the policy data (so it is still rate limited),
        never cached, and audited as `bypass` (admission.allowed_outcome)."""
        tier_obligations = getattr(self._engine, "tier_obligations", None)
        obligations = tier_obligations(doc["agent"]["tier"]) if tier_obligations is not None else {}
        return Decision(allow=True, reasons=(reason,), obligations=obligations,
                        revision=BYPASS_REVISION, cache_ttl_s=0)

    def _evaluate(self, docs: list[dict[str, Any]]) -> list[Decision]:
        t = time.perf_counter()
        try:
            decisions = self._engine.evaluate_many(docs) if len(docs) > 1 else [self._engine.evaluate(docs[0])]
        except PolicyError as e:
            return self._failed(docs, e)
        self._metrics.policy_eval.observe((time.perf_counter() - t) / len(docs))
        return decisions

    async def _evaluate_remote(self, docs: list[dict[str, Any]]) -> list[Decision]:
        t = time.perf_counter()
        try:
            decisions = await self._remote(docs)
        except PolicyError as e:
            return self._failed(docs, e)
        self._metrics.policy_eval.observe((time.perf_counter() - t) / len(docs))
        return decisions

    def _note_fail_open(self, e: PolicyError, n: int) -> None:
        if self._on_fail_open is None:
            return
        self._fail_opens += n
        now = time.monotonic()
        if now < self._fail_open_next:
            return
        self._fail_open_next = now + 60.0
        count, self._fail_opens = self._fail_opens, 0
        try:
            self._on_fail_open({"error": str(e), "requests": count})
        except Exception:  # a listener's bug must not fail the request
            log.exception("policy on_fail_open callback failed")

    def _failed(self, docs: list[dict[str, Any]], e: PolicyError) -> list[Decision]:
        self._metrics.policy_errors.inc()
        if not self._fail_open:
            raise e
        log.error("policy engine failed, failing open: %s", e)
        self._note_fail_open(e, len(docs))
        return [Decision(allow=True, reasons=(f"policy engine failed, fail-open: {e}",),
                         revision=self._engine.revision, cache_ttl_s=0) for _ in docs]
