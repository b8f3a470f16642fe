"""Error-budget counting (contract 6): finished requests classified on the request path (cheap,
no I/O), counted into the store and judged against the policy's budgets off it.

What counts is policy: a decision's `violation` is a procedure violation; a policy denial, an
upstream 4xx the request caused, a tool result with isError and (from the Nth in a row) a 429
are errors; a 2xx allowed request is compliant. Refusals that say nothing about the agent's
conduct (revoked, approval required, our 5xx, 401s, a client that left) are not counted.
"""
from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from gateway.context import Exchange
from gateway.errors import BackendError
from gateway.lifecycle.model import AgentState, Budget, LifecycleRules, Outcome
from gateway.types import Agent

log = logging.getLogger("portcullis.lifecycle.counting")


def classify(ex: Exchange, streaks: dict[str, int], rate_limited_after: int) -> Outcome | None:
    """What one finished exchange means for its agent's error budget, or None.

    `streaks` (agent id -> consecutive 429s) is the caller's memory across requests.
    """
    agent = ex.agent
    if agent is None:
        return None
    d, status, outcome = ex.decision, ex.status, ex.outcome
    limited = outcome == "rate_limited" or status == 429
    if not limited and streaks and agent.id in streaks:
        del streaks[agent.id]  # the streak is of consecutive 429s
    if d is not None:
        if d.violation is not None:
            kind = str(d.violation.get("kind") or "violation")
            sev = str(d.violation.get("severity") or "HIGH").upper()
            detail = f"{kind} {ex.resource_name}" if ex.resource_name else kind
            return Outcome(agent.id, ex.ts, "violation", signature="violation:" + detail, detail=detail,
                           severity=sev if sev in ("LOW", "MEDIUM", "HIGH", "CRITICAL") else "HIGH",  # type: ignore[arg-type]
                           request_id=ex.request_id)
        if d.approval is not None and d.approval.get("required") and not d.allow:
            return None  # waiting for a human is not misconduct
        if outcome == "deny" and not d.allow:
            first = d.reasons[0] if d.reasons else "denied by policy"
            return _error(ex, agent, "deny:" + first)
    if limited:
        n = streaks.get(agent.id, 0) + 1
        streaks[agent.id] = n
        if rate_limited_after > 0 and n % rate_limited_after == 0:
            return _error(ex, agent, "rate_limited")
        return None
    if ex.tool_error:
        return _error(ex, agent, f"tool_error:{ex.resource_name}")
    if ex.upstream_ms is not None and 400 <= status < 500 and status != 408:
        return _error(ex, agent, f"upstream:{status}")
    if outcome == "allow" and 200 <= status < 300 and ex.error is None:
        return Outcome(agent.id, ex.ts, "compliant", request_id=ex.request_id)
    return None


def _error(ex: Exchange, agent: Agent, signature: str) -> Outcome:
    return Outcome(agent.id, ex.ts, "error", signature=signature[:300], detail=signature[:300],
                   request_id=ex.request_id)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def exceeded(state: AgentState, budget: Budget, outcome: Outcome) -> tuple[str, str] | None:
    """(rule, reason) for the first budget the state has used up, or None."""
    if 0 < budget.max_procedure_violations <= state.violations:
        what = outcome.detail if outcome.kind == "violation" else "in the window"
        return ("error_budget.max_procedure_violations",
                f"error budget exceeded: {_plural(state.violations, 'procedure violation')} ({what})")
    sig = outcome.signature
    same = state.same_errors.get(sig, 0) if sig else 0
    if 0 < budget.max_same_error_repeats <= same:
        return ("error_budget.max_same_error_repeats",
                f"error budget exceeded: the same error {same} times ({sig})")
    if 0 < budget.max_total_errors <= state.total_errors:
        return ("error_budget.max_total_errors",
                f"error budget exceeded: {_plural(state.total_errors, 'error')} in the window (last: {sig})")
    return None


def near(state: AgentState, budget: Budget, fraction: float) -> str | None:
    """The first budget at least `fraction` consumed (for the budget.80pct event), or None."""
    same = max(state.same_errors.values(), default=0)
    for name, used, cap in (("max_procedure_violations", state.violations, budget.max_procedure_violations),
                            ("max_same_error_repeats", same, budget.max_same_error_repeats),
                            ("max_total_errors", state.total_errors, budget.max_total_errors)):
        if cap > 0 and used > 0 and used >= fraction * cap:
            return name
    return None


Judge = Callable[[AgentState, Outcome, Agent, LifecycleRules], Awaitable[None]]


class Counting:
    """A bounded queue of outcomes, drained by one task: store.count, then `judge` the new state."""

    def __init__(self, store: Any, rules: Callable[[], LifecycleRules], judge: Judge,
                 queue_max: int = 10000, flush_s: float = 0.05) -> None:
        self._store = store
        # Woken by the first outcome, the task waits this long before counting: what arrives
        # meanwhile is merged (one store write per agent for a burst of compliant requests)
        # instead of costing a write, and a thread hop to SQLite, per request.
        self._flush_s = flush_s
        self._rules = rules
        self._judge = judge
        self._queue: collections.deque[tuple[Outcome, Agent]] = collections.deque()
        self._queue_max = queue_max
        self._streaks: dict[str, int] = {}
        self.dropped = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._after = 3

    # -- the request path ------------------------------------------------------------------

    def observe(self, ex: Exchange) -> None:
        """Classify and queue; never blocks, never raises, never does I/O."""
        try:
            outcome = classify(ex, self._streaks, self._after)
        except Exception:  # a bug here must not fail the request that just finished
            log.exception("classifying a request for the error budget failed")
            return
        if outcome is None:
            return
        q = self._queue
        if len(q) >= self._queue_max:
            q.popleft()
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.error("lifecycle count queue full: %d outcomes dropped so far", self.dropped)
        q.append((outcome, ex.agent))  # type: ignore[arg-type]
        if len(q) == 1:
            self._idle.clear()
            self._wake.set()

    # -- off the request path --------------------------------------------------------------

    async def start(self) -> None:
        self._after = self._rules().rate_limited_errors_after
        self._task = asyncio.create_task(self._run(), name="portcullis-lifecycle-counting")

    async def flush(self) -> None:
        """Wait until every outcome queued so far is counted and judged (tests, shutdown)."""
        while self._queue or not self._idle.is_set():
            self._wake.set()
            await self._idle.wait()
            if self._task is None or self._task.done():
                return

    async def aclose(self) -> None:
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self.flush(), 5.0)
        except TimeoutError:
            log.warning("lifecycle counting stopped with %d outcomes uncounted", len(self._queue))
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None

    def _coalesce(self) -> None:
        """Merge each agent's compliant outcomes waiting in the queue into one (Outcome.n), so a
        burst of good traffic costs one store write per agent, not one per request. Order per
        agent is kept: an error ends that agent's run of compliant outcomes."""
        q = self._queue
        if len(q) < 2:
            return
        out: list[tuple[Outcome, Agent]] = []
        runs: dict[str, int] = {}  # agent id -> index in `out` of its open compliant run
        for outcome, agent in q:
            if outcome.kind != "compliant":
                runs.pop(outcome.agent_id, None)
                out.append((outcome, agent))
                continue
            i = runs.get(outcome.agent_id)
            if i is None:
                runs[outcome.agent_id] = len(out)
                out.append((outcome, agent))
            else:
                first, _ = out[i]
                out[i] = (replace(outcome, n=first.n + outcome.n), agent)  # the latest ts and agent
        q.clear()
        q.extend(out)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            if self._flush_s > 0:
                await asyncio.sleep(self._flush_s)
            self._wake.clear()
            while self._queue:
                # Each pass: what arrived while the last write was awaited is merged too (cheap:
                # a coalesced queue holds about one entry per agent).
                self._coalesce()
                outcome, agent = self._queue[0]
                rules = self._rules()
                self._after = rules.rate_limited_errors_after
                try:
                    state = await self._store.count(outcome, rules.budget(agent.tier).window_s)
                except BackendError as e:  # the store is down: keep the outcome, retry shortly
                    log.warning("counting an outcome failed, retrying: %s", e)
                    await asyncio.sleep(0.5)
                    continue
                except Exception:  # a bug: drop this outcome rather than stop counting
                    log.exception("counting an outcome of %s failed", outcome.agent_id)
                    self._queue.popleft()
                    continue
                self._queue.popleft()
                try:
                    await self._judge(state, outcome, agent, rules)
                except Exception:
                    log.exception("applying the lifecycle rules to %s failed", outcome.agent_id)
            self._idle.set()
