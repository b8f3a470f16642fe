"""What tracing adds to one request's own path, in-process (part of `python -m bench micro`).

- off: the checks the gateway makes per request when tracing is off (the tracer, the
  client's traceparent, `ex.trace is None` for identity, policy, limits and finish, the
  call span in `timed` and its `outbound` pass-through), timed against the same
  coroutine without them: the difference is what "off" costs;
- on: a root span with the five child spans, attributes, a traceparent injected and
  the root finished, through adapters/tracing/otel.py with the SDK's BatchSpanProcessor
  exporting to a local sink process (bench/otlp_sink.py), sampled and unsampled.

    python -m bench.micro_tracing
"""
from __future__ import annotations

import sys
from typing import Any, Awaitable, Callable

from bench import fixtures, procs
from bench.microparts import per_call_us

ROUNDS = 5


async def _best_us(fn: Callable[[], Awaitable[Any]], n: int) -> float:
    return await per_call_us(fn, n * ROUNDS, ROUNDS)  # n calls a round


async def tracing_costs(n: int, work: Any) -> dict[str, Any]:
    from adapters.tracing.otel import OTelTracer
    from gateway.context import Exchange
    from gateway.stages.forward import timed
    from gateway.tracing import TracingSettings, end_request, start_request

    headers = {"content-type": "application/json", "authorization": "Bearer k", "accept": "application/json"}
    tracer: Any = None

    async def bare() -> None:  # the request's shape without tracing's checks
        ex = Exchange(request_id="r", api="openai", client_ip=None)
        async with timed(ex, "upstream"):
            pass

    async def traced() -> None:  # every check and call the gateway makes per request
        ex = Exchange(request_id="r", api="openai", client_ip=None)
        if tracer is not None:
            start_request(tracer, scope, ex)
        if ex.trace_id is None and "traceparent" in headers:
            pass
        for name in ("identity", "policy", "limits"):  # exchange, PolicyStage.decide, admission.reserve
            if ex.trace is None:
                pass
            else:
                with ex.trace.child(name) as sp:
                    sp.set("portcullis.cache_hit", True)
        async with timed(ex, "upstream") as t:
            t.outbound(headers)
        if ex.trace is None:
            return
        with ex.trace.child("audit.enqueue"):
            pass
        ex.status, ex.outcome = 200, "allow"
        end_request(ex)

    async def off() -> None:  # exactly the checks an untraced request makes, inline as in the gateway
        ex = Exchange(request_id="r", api="openai", client_ip=None)
        if tracer is not None:
            pass
        if ex.trace_id is None and "traceparent" in headers:
            pass
        if ex.trace is None:  # identity (exchange.py)
            pass
        if ex.trace is None:  # policy (PolicyStage.decide)
            pass
        if ex.trace is None:  # limits (admission.reserve)
            pass
        async with timed(ex, "upstream") as t:  # its own check, as in bare()
            t.outbound(headers)
        if ex.trace is None:  # finish()
            return

    scope: dict[str, Any] = {"method": "POST", "path": "/v1/chat/completions", "headers": []}
    out: dict[str, Any] = {}
    base = await _best_us(bare, n)
    out["tracing_off_added_us"] = round(await _best_us(off, n) - base, 3)  # noise can make it < 0
    out["tracing_off_added_us_again"] = round(await _best_us(off, n) - await _best_us(bare, n), 3)

    port = procs.free_port()
    sink = procs.start("otlp-sink", [sys.executable, "-m", "bench.otlp_sink", "--port", str(port)], port, work,
                       cwd=fixtures.REPO)
    try:
        procs.wait_ready(sink, timeout_s=20)
        for label, ratio in (("sampled", 1.0), ("unsampled", 0.0)):
            tracer = OTelTracer(TracingSettings(enabled=True, endpoint=f"http://127.0.0.1:{port}/v1/traces",
                                                sample_ratio=ratio))
            await tracer.start()
            out[f"tracing_on_{label}_added_us"] = round(await _best_us(traced, n // 4) - base, 2)
            await tracer.aclose()
    finally:
        procs.stop(sink)
    return out


def main() -> None:
    import tempfile
    from pathlib import Path

    import uvloop
    work = Path(tempfile.mkdtemp(prefix="portcullis-micro-tracing-"))
    for k, v in uvloop.run(tracing_costs(100_000, work)).items():
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()
