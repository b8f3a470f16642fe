"""Prometheus metrics, on a registry owned by one app instance (no globals)."""
from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

_FAST = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
_SLOW = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _Hist:
    """A histogram's buckets as plain counts (observed on the event loop only)."""
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1  # the first bucket with le >= seconds
        self.sum += seconds

    def buckets(self) -> list[tuple[str, float]]:
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts):
            total += n
            out.append((floatToGoString(bound), total))
        return out


class _PerRequest:
    """The series every request updates, as plain counts turned into metric families at scrape time.

    prometheus_client validates and takes a lock on every inc()/observe(): ~3.8 µs a request for
    these four series against ~0.7 µs here. Only the event loop updates them; a scrape reads a copy.
    Exposed exactly as the Counter/Histogram they replace (names, labels, HELP; no `_created`
    for the histograms).
    """

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.agents: dict[tuple[str, str], int] = {}
        self.created: dict[tuple[Any, ...], float] = {}  # the counters' `_created`
        self.upstream: dict[str, _Hist] = {}
        self.overhead = _Hist(_FAST)

    def describe(self) -> Iterator[Metric]:
        return self._families(empty=True)

    def collect(self) -> Iterator[Metric]:
        return self._families(empty=False)

    def _families(self, empty: bool) -> Iterator[Metric]:
        req = CounterMetricFamily("portcullis_requests", "Requests by surface, decision and status",
                                  labels=["surface", "decision", "status"])
        agent = CounterMetricFamily("portcullis_agent_requests", "Requests by agent and decision",
                                    labels=["agent", "decision"])
        up = HistogramMetricFamily("portcullis_upstream_seconds", "Upstream latency", labels=["upstream"])
        over = HistogramMetricFamily("portcullis_overhead_seconds", "Gateway overhead (total minus upstream)")
        if not empty:
            created = self.created
            for (surface, decision, status), n in list(self.requests.items()):
                req.add_metric([surface, decision, str(status)], n, created.get((surface, decision, status)))
            for (name, decision), n in list(self.agents.items()):
                agent.add_metric([name, decision], n, created.get((name, decision)))
            for name, h in list(self.upstream.items()):
                up.add_metric([name], h.buckets(), h.sum)
            over.add_metric([], self.overhead.buckets(), self.overhead.sum)
        return iter((req, up, over, agent))


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self._hot = _PerRequest()  # portcullis_requests, _agent_requests, _upstream_seconds, _overhead_seconds
        r.register(self._hot)  # type: ignore[arg-type]
        self.overhead = self._hot.overhead
        self.cache = Counter("portcullis_decision_cache", "Decision cache lookups", ["result"], registry=r)
        self.policy_eval = Histogram("portcullis_policy_eval_seconds", "Policy evaluation latency (cache misses)",
                                     buckets=_FAST, registry=r)
        self.policy_reloads = Counter("portcullis_policy_reloads", "Policy reloads by result", ["result"], registry=r)
        self.agents_reloads = Counter("portcullis_agents_reloads", "Agents file reloads by result", ["result"],
                                      registry=r)
        self.policy_errors = Counter("portcullis_policy_errors", "Policy evaluation failures", registry=r)
        self.revision = Info("portcullis_policy", "Active policy revision", registry=r)
        self.rate_limited = Counter("portcullis_rate_limited", "Requests refused by limits", ["reason"], registry=r)
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
        self.cache_hit = self.cache.labels("hit")
        self.cache_miss = self.cache.labels("miss")

    def count_request(self, surface: str, decision: str, status: int) -> None:
        counts, key = self._hot.requests, (surface, decision, status)
        n = counts.get(key)
        if n is None:
            self._hot.created[key] = time.time()
            n = 0
        counts[key] = n + 1

    def count_agent(self, agent: str, decision: str) -> None:
        # One series per agent and decision: as many as the agents file (and JWT subjects) has agents.
        counts, key = self._hot.agents, (agent, decision)
        n = counts.get(key)
        if n is None:
            self._hot.created[key] = time.time()
            n = 0
        counts[key] = n + 1

    def watch_spool(self, path: Any) -> None:
        """Report the spool file's size at each scrape (0 when there is none)."""
        def size() -> float:
            try:
                return float(path.stat().st_size)
            except OSError:
                return 0.0
        self.audit_spool.set_function(size)

    def observe_upstream(self, upstream: str, seconds: float) -> None:
        h = self._hot.upstream.get(upstream)
        if h is None:
            h = self._hot.upstream[upstream] = _Hist(_SLOW)
        h.observe(seconds)

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
