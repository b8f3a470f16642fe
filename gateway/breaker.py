"""Circuit breakers: one per upstream and per tool server (MCP server or HTTP tool).

A breaker is this replica's view of one target, kept in process: no Redis, no
coordination. Each replica learns on its own that a target is down (within
`failures` requests) and probes it on its own, so a fleet never shares a stale
verdict and one replica's network trouble does not close a target for the rest.

closed ──(failures consecutive failures, or error_rate over window_s with at least
          min_requests)──► open ──(open_s later)──► half_open ──(half_open_probes
          successes)──► closed;  a failed probe ──► open again.

While open a request is refused at once with CircuitOpen (503, naming the
breaker), without touching the target. What counts (see Permit.answered):
connect errors and timeouts before the answer's status line, and 5xx statuses.
A 4xx (429 included) is an answer: the target is up; a client's bad request or
the provider's quota says nothing about its health, and the client gets the
provider's own 429 with its Retry-After instead of the gateway's 503. What
happens after the status line (a stream cut short, a client leaving) is not
counted: the target has answered, and a half-open probe is settled then rather
than held for a whole stream.
"""
from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pydantic import Field

from gateway.configbase import Model
from gateway.errors import CircuitOpen, UpstreamError, UpstreamTimeout

log = logging.getLogger("portcullis.breaker")

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
STATE_VALUE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}  # portcullis_breaker_state
_BUCKETS = 10  # the error-rate window is kept in this many time buckets, not one entry a request

Clock = Callable[[], float]
OnTransition = Callable[["Breaker", str, str, str], None]  # (breaker, from, to, reason)


class BreakerSettings(Model):
    """`breaker:` at the top level, overridable per upstream / tool server (fields given there win)."""
    enabled: bool = True
    failures: int = Field(5, ge=1)  # consecutive failures that open it
    error_rate: float = Field(0.5, gt=0, le=1)  # or this share of failures within window_s...
    window_s: float = Field(30.0, gt=0)
    min_requests: int = Field(20, ge=1)  # ...once the window holds at least this many requests
    open_s: float = Field(30.0, gt=0)  # refused for this long, then half-open
    half_open_probes: int = Field(1, ge=1)  # requests let through half-open; all must succeed to close


def effective(default: BreakerSettings, override: BreakerSettings | None) -> BreakerSettings:
    """The top-level settings with the fields an override sets explicitly."""
    if override is None:
        return default
    return default.model_copy(update={k: getattr(override, k) for k in override.model_fields_set})


class _Window:
    """Requests and failures over the last `span` seconds, in _BUCKETS buckets."""
    __slots__ = ("_buckets", "_last", "_width", "failed", "total")

    def __init__(self, span: float) -> None:
        self._width = span / _BUCKETS
        self._buckets: deque[list[int]] = deque()
        self._last: list[int] = [-1, 0, 0]  # the newest bucket (a placeholder while empty)
        self.total = self.failed = 0

    def add(self, now: float, failed: bool) -> None:
        idx = int(now // self._width)
        b = self._last
        if b[0] != idx:  # a new bucket: only then can older ones have expired (the hot path skips both)
            self.expire(now)
            b = self._last = [idx, 0, 0]
            self._buckets.append(b)
        b[1] += 1
        b[2] += failed
        self.total += 1
        self.failed += failed

    def expire(self, now: float) -> None:
        oldest = int(now // self._width) - _BUCKETS
        while self._buckets and self._buckets[0][0] <= oldest:
            _, t, f = self._buckets.popleft()
            self.total -= t
            self.failed -= f

    def clear(self) -> None:
        self._buckets.clear()
        self._last = [-1, 0, 0]
        self.total = self.failed = 0


class Permit:
    """One admitted call's ticket: settle it once with answered(), failure() or release().

    Later settlements are ignored, so `finally: permit.release()` is always safe. A
    permit from an earlier state (a call admitted before the breaker opened) counts
    for nothing: only probes decide a half-open breaker.
    """
    __slots__ = ("_breaker", "_done", "_gen", "probe")

    def __init__(self, breaker: Breaker | None, gen: int = 0, probe: bool = False) -> None:
        self._breaker = breaker
        self._gen = gen
        self.probe = probe
        self._done = breaker is None

    def answered(self, status: int) -> None:
        """The target answered with `status`: 5xx is a failure, anything else a success."""
        if status >= 500:
            self.failure(f"answered {status}")
        else:
            self._settle(False, "")

    def failure(self, reason: str) -> None:
        self._settle(True, reason)

    def release(self) -> None:
        """Not called, or no verdict (the limiter refused, the client left): counts for nothing."""
        if not self._done:
            self._done = True
            self._breaker._released(self)  # type: ignore[union-attr]

    def _settle(self, failed: bool, reason: str) -> None:
        if not self._done:
            self._done = True
            self._breaker._record(self, failed, reason)  # type: ignore[union-attr]


_FREE = Permit(None)  # a disabled breaker's permit: settled already, so every call is a no-op


class Breaker:
    def __init__(self, kind: str, target: str, settings: BreakerSettings, *,
                 clock: Clock = time.monotonic, on_transition: OnTransition | None = None) -> None:
        self.kind = kind  # upstream | mcp_server | http_tool
        self.target = target
        self.settings = settings
        self._clock = clock
        self._on_transition = on_transition
        self.state = CLOSED
        self.reason: str | None = None  # why it last changed state
        self._gen = 0  # bumped on every transition: permits of an earlier state are ignored
        self._consecutive = 0
        self._window = _Window(settings.window_s)
        self._opened_at = 0.0
        self._probes = 0  # probes admitted (and not released) in this half-open period
        self._probe_ok = 0

    @property
    def name(self) -> str:
        return f"{self.kind} {self.target}"

    def enter(self) -> Permit:
        """A permit to call the target, or CircuitOpen when the breaker refuses."""
        if not self.settings.enabled:
            return _FREE
        if self.state is CLOSED:
            return Permit(self, self._gen)
        if self.state is OPEN:
            left = self._opened_at + self.settings.open_s - self._clock()
            if left > 0:
                raise self._refusal(f"is open ({self.reason}); calls resume in {math.ceil(left)}s", left)
            self._move(HALF_OPEN, f"open for {self.settings.open_s:g}s: probing")
        if self._probes >= self.settings.half_open_probes:
            raise self._refusal(f"is half-open, waiting for its probe ({self.reason})", 1.0)
        self._probes += 1
        return Permit(self, self._gen, probe=True)

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "target": self.target, "state": self.state}
        if self.state is not CLOSED:
            out["reason"] = self.reason
        if self.state is OPEN:
            out["retry_in_s"] = round(max(0.0, self._opened_at + self.settings.open_s - self._clock()), 3)
        return out

    def _refusal(self, what: str, retry_in: float) -> CircuitOpen:
        return CircuitOpen(f"circuit breaker for {self.name} {what}",
                           headers={"retry-after": str(max(1, math.ceil(retry_in)))})

    def _record(self, permit: Permit, failed: bool, reason: str) -> None:
        if permit._gen != self._gen:
            return
        s = self.settings
        if self.state is CLOSED:
            now = self._clock()
            self._window.add(now, failed)
            if not failed:
                self._consecutive = 0
                return
            self._consecutive += 1
            w = self._window
            if self._consecutive >= s.failures:
                self._open(f"{self._consecutive} consecutive failures, the last: {reason}")
            elif w.total >= s.min_requests and w.failed >= s.error_rate * w.total:
                self._open(f"{w.failed} of the last {w.total} calls failed within {s.window_s:g}s, "
                           f"the last: {reason}")
        elif self.state is HALF_OPEN and permit.probe:
            if failed:
                self._open(f"half-open probe failed: {reason}")
                return
            self._probe_ok += 1
            if self._probe_ok >= s.half_open_probes:
                self._move(CLOSED, f"{self._probe_ok} half-open probe(s) succeeded")

    def _released(self, permit: Permit) -> None:
        if permit.probe and permit._gen == self._gen and self.state is HALF_OPEN:
            self._probes -= 1  # its slot goes to the next request

    def _open(self, reason: str) -> None:
        self._opened_at = self._clock()
        self._move(OPEN, reason)

    def _move(self, to: str, reason: str) -> None:
        old, self.state, self.reason = self.state, to, reason
        self._gen += 1
        self._consecutive = self._probes = self._probe_ok = 0
        self._window.clear()
        log.log(logging.WARNING if to is OPEN else logging.INFO, "circuit breaker %s: %s -> %s (%s)",
                self.name, old, to, reason,
                extra={"breaker_kind": self.kind, "breaker_target": self.target,
                       "from_state": old, "to_state": to, "reason": reason})
        if self._on_transition is not None:
            self._on_transition(self, old, to, reason)


class Breakers:
    """Every breaker of one app, by kind and target; an unknown target gets no breaker."""

    def __init__(self, breakers: list[Breaker] | None = None) -> None:
        self._by: dict[tuple[str, str], Breaker] = {(b.kind, b.target): b for b in breakers or ()}
        self._tools = {b.target: b for b in breakers or () if b.kind != "upstream"}
        self._none = Breaker("none", "none", BreakerSettings(enabled=False))

    @classmethod
    def build(cls, default: BreakerSettings, upstreams: Mapping[str, BreakerSettings | None],
              tools: Mapping[str, tuple[str, BreakerSettings | None]], *, clock: Clock = time.monotonic,
              on_transition: OnTransition | None = None) -> Breakers:
        """`upstreams`: name -> override; `tools`: name -> (kind, override)."""
        made = [Breaker("upstream", n, effective(default, o), clock=clock, on_transition=on_transition)
                for n, o in upstreams.items()]
        made += [Breaker(kind, n, effective(default, o), clock=clock, on_transition=on_transition)
                 for n, (kind, o) in tools.items()]
        return cls(made)

    def __iter__(self) -> Any:
        return iter(self._by.values())

    def upstream(self, name: str) -> Breaker:
        return self._by.get(("upstream", name), self._none)

    def tool(self, name: str) -> Breaker:
        """An MCP server's or an HTTP tool's breaker (their names never clash)."""
        return self._tools.get(name, self._none)

    def snapshot(self) -> list[dict[str, Any]]:
        return [b.snapshot() for b in self._by.values()]


class GuardedTransport:
    """A ToolTransport whose calls pass its breaker: for the gateway's own calls (tools/list).

    Refused while open (CircuitOpen, a GatewayError the caller already handles), and
    its outcomes count like any request's: its initialize may be the half-open probe.
    """

    def __init__(self, inner: Any, breaker: Breaker) -> None:
        self._inner = inner
        self._breaker = breaker
        self.name = inner.name

    async def start(self) -> None:  # the inner transport is started by the app, not through this
        return None

    async def aclose(self) -> None:
        return None

    async def send(self, method: str, body: bytes, headers: Mapping[str, str],
                   params: Mapping[str, str] | None = None) -> Any:
        return await through(self._breaker.enter(), self._inner.send(method, body, headers, params))


def breakers_for(settings: Any, metrics: Any, clock: Clock = time.monotonic) -> Breakers:
    """One breaker per upstream, MCP server and HTTP tool of `settings` (gateway.settings.Settings),
    reporting its state to `metrics.set_breaker_state(target, kind, value, to)`."""
    def on_transition(b: Breaker, old: str, new: str, reason: str) -> None:
        metrics.set_breaker_state(b.target, b.kind, STATE_VALUE[new], new)

    tools = {**{n: ("mcp_server", t.breaker) for n, t in settings.tools.servers.items()},
             **{n: ("http_tool", t.breaker) for n, t in settings.tools.http.items()}}
    breakers = Breakers.build(settings.breaker, {n: u.breaker for n, u in settings.upstreams.items()}, tools,
                              clock=clock, on_transition=on_transition)
    for b in breakers:
        metrics.set_breaker_state(b.target, b.kind, STATE_VALUE[CLOSED])  # every series exists from the start
    return breakers


async def through(permit: Permit, pending: Awaitable[Any]) -> Any:
    """Await a call to the target (its response, once the status line is in) and settle the
    permit by it: an UpstreamError/UpstreamTimeout or a 5xx is a failure, any other answer a
    success, anything else (a bug, a cancellation) no verdict."""
    try:
        resp = await pending
        permit.answered(resp.status)
        return resp
    except (UpstreamError, UpstreamTimeout) as e:
        permit.failure(e.message)
        raise
    finally:
        permit.release()
