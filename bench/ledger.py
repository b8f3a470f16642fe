"""Per-request CPU ledger: what each hot-path step costs alone, in µs (part of `bench micro`).

Each line times one thing the governed path does per request, next to the
cheaper alternative a proposal would use, so a proposed change has a measured
saving that does not depend on how busy the machine is. Timings are best-of-5.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import time
import uuid
from typing import Any, Callable


def best_us(fn: Callable[[], Any], n: int = 20000, rounds: int = 5) -> float:
    per = max(1, n // rounds)
    for _ in range(min(per, 500)):
        fn()
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(per):
            fn()
        best = min(best, (time.perf_counter() - t) / per)
    return round(best * 1e6, 2)


def _run(coro_fn: Callable[[], Any]) -> Callable[[], Any]:
    """A sync callable that drives a coroutine that never suspends (no loop round trip)."""
    def go() -> Any:
        c = coro_fn()
        try:
            c.send(None)
        except StopIteration as e:
            return e.value
        raise RuntimeError("coroutine suspended")
    return go


async def ledger(n: int) -> dict[str, float]:
    from aiocache import SimpleMemoryCache
    from starlette.applications import Starlette
    from starlette.routing import Route

    from gateway.audit.chain import event_to_row, link
    from gateway.http import headers_dict
    from gateway.keys import hash_key
    from gateway.metrics import Metrics
    from gateway.stages.policy import digest
    from gateway.surfaces import openai
    from gateway.types import Decision
    from bench.microparts import audit_event, policy_docs

    out: dict[str, float] = {}
    counter, prefix = itertools.count(), "0123456789abcdef"
    out["request_id uuid4().hex"] = best_us(lambda: "req_" + uuid.uuid4().hex, n)
    out["request_id prefix+counter (alternative)"] = best_us(lambda: f"req_{prefix}{next(counter):016x}", n)

    scope_headers = [(b"host", b"127.0.0.1:8080"), (b"content-type", b"application/json"),
                     (b"authorization", b"Bearer pk-quickstart-builder"), (b"content-length", b"120"),
                     (b"user-agent", b"OpenAI/Python 1.50.0"), (b"accept", b"application/json")]
    out["headers_dict(scope)"] = best_us(lambda: headers_dict({"headers": scope_headers}), n)
    out["api key sha256 (identity)"] = best_us(lambda: hash_key("pk-quickstart-builder"), n)
    body = (b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in five words."}],'
            b'"max_tokens":64}')
    out["surface parse (orjson.loads + checks)"] = best_us(lambda: openai.parse("/v1/chat/completions", body, 128), n)

    doc = policy_docs()[0]
    out["input digest: orjson sorted + sha256"] = best_us(lambda: digest(doc), n)
    cache = SimpleMemoryCache(timeout=None)
    await cache.set("k", Decision(allow=True), ttl=60)
    out["aiocache SimpleMemoryCache.get (hit)"] = best_us(_run(lambda: cache.get("k")), n)
    plain: dict[str, tuple[float, Decision]] = {"k": (time.monotonic() + 60, Decision(allow=True))}

    def dict_get() -> Any:
        hit = plain.get("k")
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None
    out["dict get with expiry (alternative)"] = best_us(dict_get, n)
    d = Decision(allow=True, obligations={"max_output_tokens": 4096}, revision="r")
    out["dataclasses.replace(decision, cache_hit=True)"] = best_us(
        lambda: dataclasses.replace(d, cache_hit=True), n)

    m = Metrics()
    out["prometheus requests.labels(...).inc()"] = best_us(
        lambda: m.requests.labels("openai", "allow", "200").inc(), n)
    child = m.requests.labels("openai", "allow", "200")
    out["prometheus bound child .inc() (alternative)"] = best_us(lambda: child.inc(), n)
    out["prometheus histogram .labels().observe()"] = best_us(lambda: m.upstream.labels("fast").observe(0.001), n)

    ev = audit_event()
    out["audit event_to_row"] = best_us(lambda: event_to_row(ev), n)
    row = {**event_to_row(ev), "chain_id": "c", "seq": 1, "prev_hash": "0" * 64}
    out["audit chain link (canonical JSON + sha256)"] = best_us(lambda: link("0" * 64, row), n)
    try:
        from adapters.audit.sqlite import _values  # noqa: PLC0415 - the store's row encoding
        out["sqlite _values (re-serializes policy_input)"] = best_us(lambda: _values({**row, "hash": "h"}), n)
    except ImportError:
        pass
    out["sha256 of 300 bytes (reference)"] = best_us(lambda: hashlib.sha256(b"x" * 300).hexdigest(), n)

    out.update(await _asgi_overhead(n // 4, Starlette, Route))
    return out


async def _asgi_overhead(n: int, Starlette: Any, Route: Any) -> dict[str, float]:
    """Starlette() wraps routes in ServerErrorMiddleware + ExceptionMiddleware; app.router does not."""
    async def endpoint(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    class Endpoint:
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await endpoint(scope, receive, send)

    app = Starlette(routes=[Route("/v1/chat/completions", Endpoint()), Route("/v1/models", Endpoint())])
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "root_path": "",
             "headers": [], "query_string": b"", "app": app}

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(msg: Any) -> None:
        return None

    out = {}
    for label, asgi in (("Starlette() app per request", app), ("app.router only (alternative)", app.router),
                        ("bare endpoint call (floor)", Endpoint())):
        out[f"ASGI dispatch: {label}"] = best_us(_run(lambda a=asgi: a(dict(scope), receive, send)), n)
    return out

