"""`Services.lifecycle`: the agent lifecycle of one replica (contract 6), assembled in one place.

It follows the store (overlay refreshed from bus messages, on reconnect and every
`refresh_s`), counts finished requests off the request path and applies the policy's rules
(revocation on a spent error budget, the 80% warning, promotion proposals).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from gateway.context import Exchange
from gateway.errors import BackendError
from gateway.lifecycle.approvals import Approvals
from gateway.lifecycle.counting import Counting, exceeded, near
from gateway.lifecycle.events import GovernanceEvents
from gateway.lifecycle.manager import LifecycleManager
from gateway.lifecycle.model import SYSTEM, AgentState, LifecycleRules, Outcome
from gateway.lifecycle.overlay import Overlay
from gateway.lifecycle.switches import Switches
from gateway.settings_lifecycle import LifecycleSettings
from gateway.types import Agent, AuditEvent, Vocabulary

log = logging.getLogger("portcullis.lifecycle")


def next_step(agent: Agent, vocab: Vocabulary) -> tuple[int, str] | None:
    """The promotion target: the next tier (maturity kept); at the top tier, the next maturity."""
    tiers = sorted(vocab.tiers) if vocab.tiers is not None else None
    higher = [t for t in tiers if t > agent.tier] if tiers is not None else [agent.tier + 1]
    if higher:
        return higher[0], agent.maturity
    order = vocab.maturities
    if order and agent.maturity in order and order.index(agent.maturity) + 1 < len(order):
        return agent.tier, order[order.index(agent.maturity) + 1]
    return None


class Lifecycle:
    def __init__(self, settings: LifecycleSettings, store: Any, bus: Any, overlay: Overlay, *,
                 engine: Any, directory: Callable[[], Any], record: Callable[[AuditEvent], Awaitable[None]],
                 audit_store: Any, request_ids: Callable[[], str], clock: Callable[[], float] = time.time,
                 replica_id: str | None = None) -> None:
        self.settings = settings
        self.store = store
        self.bus = bus
        self.overlay = overlay
        self._engine = engine
        self.events = GovernanceEvents(store, settings, clock=clock)
        self.approvals = Approvals(store, self.events, settings, record, clock=clock)
        self.switches = Switches(store, bus, self.events, settings, record, clock=clock)
        self.manager = LifecycleManager(store, bus, self.events, settings, record, overlay, directory=directory,
                                        engine=engine, audit_store=audit_store, request_ids=request_ids,
                                        clock=clock)
        self.counting = Counting(store, self.rules, self._judge, settings.count_queue_max,
                                 settings.count_flush_ms / 1000.0)
        self._counting_on = settings.error_budgets
        self._task: asyncio.Task[None] | None = None
        self._clock = clock
        # This replica in the store's replica list (the console's "revision on every replica"):
        # host and pid, and a random part, so two gateways in one process stay two rows.
        host, pid = socket.gethostname(), os.getpid()
        self.replica = {"replica_id": replica_id or f"{host}:{pid}:{secrets.token_hex(3)}", "host": host,
                        "pid": pid, "started_at": float(clock())}
        self._beat: asyncio.Task[None] | None = None

    def rules(self) -> LifecycleRules:
        """The loaded policy set's lifecycle rules (a reload brings new ones)."""
        return getattr(self._engine, "lifecycle", None) or LifecycleRules()

    def observe(self, ex: Exchange) -> None:
        """Called by gateway.exchange.finish() for every request: classify, queue, return."""
        if self._counting_on:
            self.counting.observe(ex)

    # -- following the store ---------------------------------------------------------------

    async def reload(self) -> None:
        """Re-read every agent's state (start, bus reconnect, every refresh_s)."""
        self.overlay.load(await self.store.states())

    async def _reload_logged(self) -> None:
        try:
            await self.reload()
        except BackendError as e:  # keep what we have; the next pass tries again
            log.warning("reloading the agent states failed: %s", e)

    async def _on_message(self, message: Mapping[str, Any]) -> None:
        agent_id = message.get("agent_id")
        if not isinstance(agent_id, str):
            return
        version = message.get("version")
        if isinstance(version, int) and version <= self.overlay.version(agent_id):
            return  # this replica made the change, or has seen a newer one
        try:
            self.overlay.update(agent_id, await self.store.state(agent_id))
        except BackendError as e:
            log.warning("reading the state of %s failed, reloading everything: %s", agent_id, e)
            await self._reload_logged()

    async def heartbeat(self) -> None:
        """Write this replica's row (its policy revision, seen now); a store error is logged."""
        beat = getattr(self.store, "heartbeat", None)
        if beat is None:  # a store (module:Class) without a replica list
            return
        r = self.replica
        try:
            await beat(r["replica_id"], r["host"], r["pid"], getattr(self._engine, "revision", None) or None,
                       r["started_at"], float(self._clock()))
        except BackendError as e:
            log.warning("writing the replica heartbeat failed: %s", e)

    def heartbeat_soon(self) -> None:
        """From sync code (a policy reload): write the heartbeat now, off the caller's path."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a reload outside the server): the next refresh writes it
        if self._beat is None or self._beat.done():
            self._beat = loop.create_task(self.heartbeat(), name="portcullis-replica-heartbeat")

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(self.settings.refresh_s)
            try:
                await self._reload_logged()
                await self.heartbeat()
            except Exception:  # a bug must not stop the pass that bounds a lost message
                log.exception("reloading the agent states failed")

    async def start(self) -> None:
        await self.events.start()
        await self._reload_logged()  # a store down at boot: no overlay until it answers
        await self.heartbeat()
        self.bus.subscribe(self._on_message, self._reload_logged)
        await self.switches.start()
        await self.counting.start()
        self._task = asyncio.create_task(self._periodic(), name="portcullis-lifecycle-refresh")

    async def flush(self) -> None:
        """Count everything observed so far, then store every event emitted (tests, shutdown)."""
        await self.counting.flush()
        await self.events.flush()

    async def aclose(self) -> None:
        for task in (self._task, self._beat):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._beat = None
        await self.counting.aclose()
        await self.switches.aclose()
        await self.events.aclose()

    # -- the rules -------------------------------------------------------------------------

    async def _judge(self, state: AgentState, outcome: Outcome, agent: Agent, rules: LifecycleRules) -> None:
        """After counting one outcome: revoke on a spent budget, warn at 80%, propose promotions."""
        if state.revoked:
            return
        if outcome.kind == "compliant":
            await self._maybe_propose(state, agent, rules, outcome.n)
            return
        if outcome.kind == "violation":  # the security side of the risk score: each violation is an event
            self.events.emit("agent.violation", outcome.severity or "HIGH", agent_id=agent.id,
                             workspace=agent.workspace,
                             details={"violation": outcome.detail, "request_id": outcome.request_id,
                                      "category": "security"})
        budget = rules.budget(agent.tier)
        fired = exceeded(state, budget, outcome)
        if fired is not None:
            rule, reason = fired
            await self.manager.revoke(agent.id, SYSTEM, reason, rule=rule, violation=outcome.kind == "violation")
            return
        if not state.budget_warned and (name := near(state, budget, rules.budget_warn_fraction)) is not None:
            pct = round(rules.budget_warn_fraction * 100)
            self.events.emit("budget.80pct", "MEDIUM", agent_id=agent.id, workspace=agent.workspace,
                             details={"budget": name, "fraction": rules.budget_warn_fraction,
                                      "total_errors": state.total_errors, "violations": state.violations,
                                      "same_errors": dict(state.same_errors), "category": "reliability"})
            # Remembered in the store (reset with the window), so the fleet warns once a window.
            await self.manager.change(agent.id, "reset", SYSTEM, f"error budget {name} {pct}% consumed",
                                      {"budget_warned": False}, {"budget_warned": True},
                                      rule="error_budget.warn", audit=False)

    async def _maybe_propose(self, state: AgentState, agent: Agent, rules: LifecycleRules, outcome_n: int) -> None:
        n = rules.consecutive_compliant_for_promotion.get(agent.tier)
        c = state.consecutive_compliant
        # Coalesced outcomes (Outcome.n) can step over a multiple of n: propose when one was crossed.
        if not n or c < n or c // n == (c - outcome_n) // n or state.total_errors:
            return
        vocab = self._engine.vocabulary
        target = next_step(agent, vocab)
        if target is None:
            return
        to_tier, to_maturity = target
        top = max(vocab.tiers) if vocab.tiers else 4
        cap = rules.auto_promote_max_tier
        auto = cap is not None and to_tier <= cap and to_tier < top  # the top tier always needs a human
        await self.manager.propose(agent, to_tier, to_maturity,
                                   f"{c} consecutive compliant requests without an error", auto)
