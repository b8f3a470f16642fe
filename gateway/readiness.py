"""Readiness: which network dependencies are reachable now, and reconnecting those that were not at boot.

A backend that talks to a service (Redis, PostgreSQL, an OPA sidecar) implements `Dependency`:
a `dependency` name and a cheap `probe()`. Two things follow from implementing it:
- `/readyz` probes it (PING, SELECT 1, ...) and lists it per name, with the reason when down;
- a failed `start()` at boot no longer stops the gateway: the replica comes up not ready, the
  backend's own errors refuse what needs it (503, audited), and `Reconnector` retries its
  `start()` in the background with capped, jittered exponential backoff until it succeeds.
A backend without `probe()` (an embedded one: SQLite, regorus) still fails the boot: a local
file or policy problem does not fix itself, and a crash says so louder than a 503.

Probes are cached for `probe_cache_s` and concurrent callers share one round of probes, so
kubelet, a load balancer and Prometheus polling together cost one probe per dependency a second.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterator, Protocol, Sequence, runtime_checkable

from pydantic import Field

from gateway.configbase import Model

log = logging.getLogger("portcullis.readiness")


class ReadinessSettings(Model):
    probe_cache_s: float = Field(1.0, ge=0)  # /readyz reuses probe results this long
    # Per probe; under the kubelet's default 1 s probe timeout, so /readyz always answers.
    probe_timeout_s: float = Field(0.8, gt=0)
    reconnect_initial_s: float = Field(0.5, gt=0)  # first retry of a dependency down at boot
    reconnect_max_s: float = Field(30.0, gt=0)  # the backoff doubles up to this


@runtime_checkable
class Dependency(Protocol):
    """A backend that depends on a network service.

    `probe()` returns None when the service answers, else why not, in words safe to show
    (never a password). It must be cheap (one round trip) and must not raise.
    """
    dependency: str  # "redis", "postgres", "opa": the key in /readyz and in the metric's label

    async def start(self) -> None: ...
    async def probe(self) -> str | None: ...


Probe = Callable[[], Awaitable[str | None]]


@dataclass(frozen=True, slots=True)
class Check:
    """One named I/O readiness check: None when fine, else the problem."""
    name: str
    probe: Probe


class DependencyMetrics(Protocol):
    def set_dependency_up(self, dependency: str, up: bool) -> None: ...


def is_dependency(backend: Any) -> bool:
    return isinstance(backend, Dependency)


def dependency_checks(backends: Sequence[Any]) -> list[Check]:
    """A Check per backend that is a Dependency; a second backend of one kind gets its class named."""
    checks: list[Check] = []
    for b in backends:
        if is_dependency(b):
            name = b.dependency
            if any(c.name == name for c in checks):
                name = f"{name} ({type(b).__name__})"
            checks.append(Check(name, b.probe))
    return checks


def backoff(initial_s: float, max_s: float, rng: random.Random | None = None) -> Iterator[float]:
    """Delays between reconnect attempts: doubling from `initial_s` up to `max_s`, each
    jittered by up to -20%, so replicas that lost a service together do not retry in step."""
    rng = rng or random.Random()
    delay = initial_s
    while True:
        yield delay * (1 - 0.2 * rng.random())
        delay = min(delay * 2, max_s)


class Readiness:
    """/readyz's report: cheap in-memory checks every time, I/O checks cached and coalesced."""

    def __init__(self, checks: Sequence[Check], local: Callable[[], list[str]],
                 settings: ReadinessSettings, metrics: DependencyMetrics | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._checks = list(checks)
        self._local = local
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._results: dict[str, str | None] | None = None
        self._at = 0.0
        self._lock = asyncio.Lock()

    async def _probe(self, check: Check) -> str | None:
        try:
            return await asyncio.wait_for(check.probe(), self._settings.probe_timeout_s)
        except TimeoutError:
            return f"{check.name}: no answer within {self._settings.probe_timeout_s}s"
        except Exception as e:  # a probe must not raise; if one does, it is down, not /readyz
            log.exception("readiness probe %s failed", check.name)
            return f"{check.name}: probe failed ({type(e).__name__})"

    def _fresh(self) -> bool:
        return self._results is not None and self._clock() - self._at < self._settings.probe_cache_s

    async def probes(self) -> dict[str, str | None]:
        """Every I/O check's result, at most probe_cache_s old; one round of probes at a time."""
        if self._fresh():
            return self._results  # type: ignore[return-value]
        async with self._lock:  # callers arriving during a round wait for it instead of probing
            if not self._fresh():
                found = await asyncio.gather(*(self._probe(c) for c in self._checks))
                self._results = {c.name: r for c, r in zip(self._checks, found)}
                self._at = self._clock()
                if self._metrics is not None:
                    for name, problem in self._results.items():
                        self._metrics.set_dependency_up(name, problem is None)
        return self._results  # type: ignore[return-value]

    async def report(self) -> dict[str, Any]:
        """{"status", "problems": [...], "dependencies": {name: {"ok", "error"}}}."""
        probed = await self.probes()
        problems = [p for p in probed.values() if p is not None] + self._local()
        return {"status": "not ready" if problems else "ready", "problems": problems,
                "dependencies": {n: {"ok": p is None, "error": p} for n, p in probed.items()}}


class Reconnector:
    """Starts backends in order; a `Dependency` whose start fails is retried in the background."""

    def __init__(self, settings: ReadinessSettings, metrics: DependencyMetrics | None = None) -> None:
        self._settings = settings
        self._metrics = metrics
        self._tasks: list[asyncio.Task[None]] = []
        self.pending: set[str] = set()  # dependencies whose start has not succeeded yet

    async def start(self, backend: Any) -> None:
        try:
            await backend.start()
        except Exception as e:
            if not is_dependency(backend):
                raise
            name = backend.dependency
            # Adapters' errors name the server but never its password (their boundary scrubs it).
            log.error("%s unreachable at start, serving without it (not ready) and reconnecting: %s", name, e)
            self._down(name)
            self._tasks.append(asyncio.create_task(self._retry(backend), name=f"reconnect-{name}"))

    def _down(self, name: str) -> None:
        self.pending.add(name)
        if self._metrics is not None:
            self._metrics.set_dependency_up(name, False)

    async def _retry(self, backend: Any) -> None:
        name = backend.dependency
        for attempt, delay in enumerate(backoff(self._settings.reconnect_initial_s,
                                                self._settings.reconnect_max_s), start=1):
            await asyncio.sleep(delay)
            try:
                await backend.start()
            except Exception as e:
                log.warning("%s still unreachable (attempt %d), retrying: %s", name, attempt, e)
                continue
            self.pending.discard(name)
            if self._metrics is not None:
                self._metrics.set_dependency_up(name, True)
            log.info("%s reached after %d attempts: ready for it again", name, attempt + 1)
            return

    async def aclose(self) -> None:
        """Stop retrying (before the backends are closed)."""
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
