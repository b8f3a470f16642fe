"""`python -m bench micro`, the remote side: the `opa` backend and the Redis L2 decision cache.

- `opa_adapter_decision_us`: OPAEngine.aevaluate_many([doc]) against the test OPA server
  (tests/support/opa_server.py) on 127.0.0.1, run as a separate process like a sidecar.
  That server is Python (starlette, uvicorn) evaluating with regorus' interpreter, so the
  figure includes its HTTP handling and evaluation: it is not a measurement of real OPA (a
  Go binary with its own cost), only of the round trip's shape.
- `opa_adapter_decision_us_server_in_thread`: the same with the server on a thread of this
  process, sharing the GIL (what the tests do).
- `opa_adapter_batch3_per_decision_us`: one /v1/query call for 3 inputs (the sidecar), per decision.
- `l2_hit_decision_us`: PolicyStage.decide served by the Redis L2 (the L1 holds nothing),
  one GET on real Redis per decision.
- `l1_hit_decision_us` is `cached_decision_us` of bench/micro.py (the L1 serves it).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from bench import fixtures, fleet
from bench.microparts import per_call_us as _per_call_us, policy_docs


class _NoL1:
    """An L1 that keeps nothing, so every decide() reaches the L2 (bench only)."""

    async def start(self) -> None:
        return None

    async def get(self, key: str) -> Any:
        return None

    async def set(self, key: str, decision: Any, ttl_s: int) -> None:
        return None

    async def aclose(self) -> None:
        return None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def opa_and_l2(n: int, work: Path) -> dict[str, Any]:
    from adapters.cache.redis_l2 import RedisL2DecisionCache
    from adapters.policy.opa import OPAEngine
    from gateway.metrics import Metrics
    from gateway.settings import PolicySettings
    from gateway.settings_opa import L2CacheSettings
    from gateway.stages.policy import PolicyStage
    from tests.support.harness import LoopThread
    from tests.support.opa_server import OPAServer

    policy_dir = fixtures.write_policy(work / "opa-policies")
    out: dict[str, Any] = {}
    docs = policy_docs()
    m = max(300, n // 50)
    i = iter(range(10 ** 12))

    def settings(url: str) -> PolicySettings:
        return PolicySettings(backend="opa", dir=str(policy_dir), hot_reload=False,
                              opa={"url": url, "timeout_s": 2.0, "poll_s": 60})

    port = _free_port()
    sidecar = subprocess.Popen([sys.executable, "-m", "tests.support.opa_server", str(policy_dir), str(port)],
                               stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parents[1])
    try:
        assert sidecar.stdout is not None and sidecar.stdout.readline().strip() == b"ready"
        remote = OPAEngine(settings(f"http://127.0.0.1:{port}"), policy_dir)
        await remote.start()
        try:
            out["opa_adapter_decision_us"] = round(
                await _per_call_us(lambda: remote.aevaluate_many([docs[next(i) % len(docs)]]), m), 1)
            batch = docs[:3]
            out["opa_adapter_batch3_per_decision_us"] = round(
                await _per_call_us(lambda: remote.aevaluate_many(batch), m // 3) / 3, 1)
        finally:
            await remote.aclose()
    finally:
        sidecar.kill()
        sidecar.wait()

    server_loop = LoopThread()  # the server's regorus engine lives on this thread
    server = server_loop.run(OPAServer(policy_dir).start())
    engine = OPAEngine(settings(server.url), policy_dir)
    await engine.start()
    try:
        out["opa_adapter_decision_us_server_in_thread"] = round(
            await _per_call_us(lambda: engine.aevaluate_many([docs[next(i) % len(docs)]]), m), 1)
        reason = fleet.unavailable_reason()
        if reason is not None:
            out["l2_hit"] = f"unavailable: {reason}"
            return out
        prefix, table = fleet.unique_names()
        l2 = RedisL2DecisionCache(L2CacheSettings(redis_url=fleet.REDIS_URL, key_prefix=prefix, timeout_s=1.0),
                                  _NoL1())
        await l2.start()
        try:
            stage = PolicyStage(engine, l2, Metrics())
            doc = docs[0]
            await stage.decide(doc)  # from OPA, into Redis
            out["l2_hit_decision_us"] = round(await _per_call_us(lambda: stage.decide(doc), m), 1)
        finally:
            await l2.aclose()
            await fleet.acleanup(prefix, table)
    finally:
        await engine.aclose()
        server_loop.run(server.stop())
        server_loop.close()
    return out
