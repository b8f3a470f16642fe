"""Prometheus metrics, on a registry owned by one app instance (no globals)."""
from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_FAST = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
_SLOW = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("portcullis_requests", "Requests by surface, decision and status",
                                ["surface", "decision", "status"], registry=r)
        self.cache = Counter("portcullis_decision_cache", "Decision cache lookups", ["result"], registry=r)
        self.policy_eval = Histogram("portcullis_policy_eval_seconds", "Policy evaluation latency (cache misses)",
                                     buckets=_FAST, registry=r)
        self.policy_reloads = Counter("portcullis_policy_reloads", "Policy reloads by result", ["result"], registry=r)
        self.agents_reloads = Counter("portcullis_agents_reloads", "Agents file reloads by result", ["result"],
                                      registry=r)
        self.policy_errors = Counter("portcullis_policy_errors", "Policy evaluation failures", registry=r)
        self.revision = Info("portcullis_policy", "Active policy revision", registry=r)
        self.upstream = Histogram("portcullis_upstream_seconds", "Upstream latency", ["upstream"],
                                  buckets=_SLOW, registry=r)
        self.overhead = Histogram("portcullis_overhead_seconds", "Gateway overhead (total minus upstream)",
                                  buckets=_FAST, registry=r)
        self.rate_limited = Counter("portcullis_rate_limited", "Requests refused by limits", ["reason"], registry=r)
        # One series per agent and decision: as many as the agents file (and JWT subjects) has agents.
        self.agent_requests = Counter("portcullis_agent_requests", "Requests by agent and decision",
                                      ["agent", "decision"], registry=r)
        self.audit_depth = Gauge("portcullis_audit_queue_depth", "Audit rows waiting to be written", registry=r)
        # Bytes of rows held in the local spool while the store is unreachable; read at scrape time.
        self.audit_spool = Gauge("portcullis_audit_spool_bytes", "Audit rows spooled locally, waiting for the store",
                                 registry=r)
        self.audit_failures = Counter("portcullis_audit_write_failures", "Failed audit batch writes", registry=r)
        self.audit_written = Counter("portcullis_audit_rows_written", "Audit rows written to the store", registry=r)
        self.audit_store_replaced = Counter("portcullis_audit_store_replaced",
                                            "Audit store found deleted, replaced or wiped under the writer",
                                            registry=r)
        # 1 when the dependency answered its last readiness probe (or reconnect), else 0.
        self.dependency_up = Gauge("portcullis_dependency_up", "Network dependency reachable (Redis, PostgreSQL, "
                                   "OPA, audit store writable)", ["dependency"], registry=r)

        self.breaker_state = Gauge("portcullis_breaker_state",
                                   "Circuit breaker per upstream or tool server: 0 closed, 1 half-open, 2 open",
                                   ["target", "kind"], registry=r)
        self.breaker_transitions = Counter("portcullis_breaker_transitions", "Circuit breaker transitions",
                                           ["target", "kind", "to"], registry=r)
        self._children: dict[tuple, object] = {}
        self.cache_hit = self.cache.labels("hit")
        self.cache_miss = self.cache.labels("miss")

    def count_request(self, surface: str, decision: str, status: int) -> None:
        # prometheus_client's labels() validates and locks on every call; the children
        # are few (surfaces x decisions x statuses), so each is looked up once.
        key = (surface, decision, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.requests.labels(surface, decision, str(status))
        child.inc()  # type: ignore[attr-defined]

    def count_agent(self, agent: str, decision: str) -> None:
        key = ("agent", agent, decision)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.agent_requests.labels(agent, decision)
        child.inc()  # type: ignore[attr-defined]

    def watch_spool(self, path: Any) -> None:
        """Report the spool file's size at each scrape (0 when there is none)."""
        def size() -> float:
            try:
                return float(path.stat().st_size)
            except OSError:
                return 0.0
        self.audit_spool.set_function(size)

    def observe_upstream(self, upstream: str, seconds: float) -> None:
        key = ("upstream", upstream)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.upstream.labels(upstream)
        child.observe(seconds)  # type: ignore[attr-defined]

    # AuditMetrics protocol (gateway.audit.writer)
    def set_depth(self, n: int) -> None:
        self.audit_depth.set(n)

    def inc_failures(self) -> None:
        self.audit_failures.inc()

    def inc_written(self, n: int) -> None:
        self.audit_written.inc(n)

    def inc_store_replaced(self) -> None:
        self.audit_store_replaced.inc()

    def set_dependency_up(self, dependency: str, up: bool) -> None:  # DependencyMetrics (gateway.readiness)
        self.dependency_up.labels(dependency).set(1 if up else 0)

    def on_policy_reload(self, revision: str | None, error: Exception | None) -> None:
        if error is not None:
            self.policy_reloads.labels("rejected").inc()
        else:
            self.policy_reloads.labels("ok").inc()
            self.revision.info({"revision": revision or ""})

    def on_agents_reload(self, result: str) -> None:
        self.agents_reloads.labels(result).inc()

    def set_breaker_state(self, target: str, kind: str, value: int, to: str | None = None) -> None:
        """A breaker's state (0 closed, 1 half-open, 2 open); `to` counts a transition into it."""
        self.breaker_state.labels(target, kind).set(value)
        if to is not None:
            self.breaker_transitions.labels(target, kind, to).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
