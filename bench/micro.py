"""`python -m bench micro`: the per-request building blocks, each timed alone.

- policy decision: cached (PolicyStage.decide with a warm cache), uncached
  (RegorusEngine.evaluate as configured: the compiled RVM when the engine's
  agreement check passed, else the interpreter), the interpreter alone, and
  the RVM called directly, checked against the interpreter on ~2,000 inputs;
- audit writer rows/s through AuditWriter + store, SQLite and PostgreSQL;
- rate-limiter decisions/s, memory and Redis.

Everything runs on one event loop in this process (uvloop, like the gateway).
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from bench import fixtures, fleet, procs, report
from bench.microparts import per_call_us as _per_call_us, audit_event, audit_rows_per_s, policy_docs, rvm_check, variety_docs

RESULTS = Path(__file__).resolve().parent / "results" / "micro.json"


ROUNDS = 5  # timings are the best of ROUNDS rounds: the machine may be shared, noise only adds


def _per_call_sync_us(fn: Callable[[], Any], n: int) -> float:
    per_round = max(1, n // ROUNDS)
    for _ in range(min(per_round, 1000)):
        fn()
    best = float("inf")
    for _ in range(ROUNDS):
        t = time.perf_counter()
        for _ in range(per_round):
            fn()
        best = min(best, (time.perf_counter() - t) / per_round)
    return best * 1e6


async def policy(n: int, work: Path) -> dict[str, Any]:
    from adapters.cache.memory import MemoryDecisionCache
    from adapters.policy.regorus_engine import RegorusEngine
    from gateway.metrics import Metrics
    from gateway.settings import CacheSettings, PolicySettings
    from gateway.stages.policy import PolicyStage, digest

    policy_dir = fixtures.write_policy(work / "policies")
    engine = RegorusEngine(PolicySettings(dir=str(policy_dir), hot_reload=False), policy_dir)
    await engine.start()
    if hasattr(engine, "compiled_ready"):
        await engine.compiled_ready()  # the compiled program is checked in the background
    # A second engine pinned to the interpreter, when the settings offer the choice.
    interp = engine
    if "evaluator" in PolicySettings.model_fields:
        interp = RegorusEngine(PolicySettings(dir=str(policy_dir), hot_reload=False, evaluator="interpreter"),
                               policy_dir)
        await interp.start()
    cache = MemoryDecisionCache(CacheSettings())
    await cache.start()
    stage = PolicyStage(engine, cache, Metrics())
    docs = policy_docs()
    doc = docs[0]
    out: dict[str, Any] = {"policy_evaluator_in_use": getattr(engine, "evaluator", "interpreter")}
    try:
        await stage.decide(doc)  # warm the cache for `doc`
        out["cached_decision_us"] = round(await _per_call_us(lambda: stage.decide(doc), n), 2)
        out["input_digest_us"] = round(_per_call_sync_us(lambda: digest(doc), n), 2)
        key = engine.revision + ":" + digest(doc)
        out["cache_get_us"] = round(await _per_call_us(lambda: cache.get(key), n), 2)
        m = max(200, n // 20)
        i = iter(range(10 ** 12))
        # The budget line: RegorusEngine.evaluate as configured, over 120 realistic inputs.
        out["uncached_decision_us"] = round(
            _per_call_sync_us(lambda: engine.evaluate(docs[next(i) % len(docs)]), m), 1)
        out["uncached_allowed_chat_us"] = round(_per_call_sync_us(lambda: engine.evaluate(doc), m), 1)
        out["uncached_interpreter_us"] = round(
            _per_call_sync_us(lambda: interp.evaluate(docs[next(i) % len(docs)]), m), 1)
        out.update(rvm_check(policy_dir, docs, variety_docs(), interp, m))
    finally:
        await cache.aclose()
        if interp is not engine:
            await interp.aclose()
        await engine.aclose()
    return out


async def audit(n: int, work: Path) -> dict[str, Any]:
    from adapters.audit.sqlite import SQLiteAuditStore
    from gateway.audit.chain import event_to_row, link
    from gateway.settings import AuditSettings

    out: dict[str, Any] = {}
    ev = audit_event()
    out["event_to_row_us"] = round(_per_call_sync_us(lambda: event_to_row(ev), 20000), 2)
    row = {**event_to_row(ev), "chain_id": "c", "seq": 1, "prev_hash": "0" * 64}
    out["chain_link_us"] = round(_per_call_sync_us(lambda: link("0" * 64, row), 20000), 2)

    settings = AuditSettings(path=str(work / "micro-audit.db"), spool_path=str(work / "micro.spool"),
                             chain_id="micro")
    store = SQLiteAuditStore(settings, work / "micro-audit.db")
    out["sqlite_audit_rows_per_s"] = round(await audit_rows_per_s(store, settings, work, n))

    reason = fleet.unavailable_reason()
    if reason is not None:
        out["postgres_audit"] = f"unavailable: {reason}"
        return out
    from gateway import registry
    prefix, table = fleet.unique_names()
    _, section = fleet.config_sections(prefix, table)
    pg_settings = AuditSettings(**section, spool_path=str(work / "micro-pg.spool"), chain_id="micro")
    try:
        pg = registry.load("audit", "postgres")(pg_settings, work / "unused")
        out["postgres_audit_rows_per_s"] = round(await audit_rows_per_s(pg, pg_settings, work, n))
    except Exception as e:  # noqa: BLE001 - an adapter in progress: report, don't crash
        out["postgres_audit"] = f"unavailable: {type(e).__name__}: {e}"
    finally:
        await fleet.acleanup(prefix, table)
    return out


async def limits(n: int) -> dict[str, Any]:
    from gateway import registry
    from gateway.settings import LimitsSettings
    from gateway.types import Limits

    lim = Limits(fixtures.HIGH_LIMIT, fixtures.HIGH_LIMIT)
    out: dict[str, Any] = {}

    async def decisions_per_s(limiter: Any, count: int, parallel: int) -> float:
        async def one(i: int) -> None:
            r = await limiter.reserve(f"agent-{i % 100}", lim, 100)
            await limiter.settle(r.reservation, 80)
        t = time.perf_counter()
        if parallel == 1:
            for i in range(count):
                await one(i)
        else:
            for start in range(0, count, parallel):
                await asyncio.gather(*(one(i) for i in range(start, min(count, start + parallel))))
        return count / (time.perf_counter() - t)

    mem = registry.load("limits", "memory")(LimitsSettings())
    await mem.start()
    out["memory_limit_decisions_per_s"] = round(await decisions_per_s(mem, n, 1))
    await mem.aclose()

    reason = fleet.unavailable_reason()
    if reason is not None:
        out["redis_limits"] = f"unavailable: {reason}"
        return out
    prefix, table = fleet.unique_names()
    section, _ = fleet.config_sections(prefix, table)
    try:
        red = registry.load("limits", "redis")(LimitsSettings(**section))
        await red.start()
        try:
            m = max(500, n // 20)
            out["redis_limit_decisions_per_s"] = round(await decisions_per_s(red, m, 1))
            out["redis_limit_decisions_per_s_c32"] = round(await decisions_per_s(red, m * 4, 32))
        finally:
            await red.aclose()
    except Exception as e:  # noqa: BLE001
        out["redis_limits"] = f"unavailable: {type(e).__name__}: {e}"
    finally:
        await fleet.acleanup(prefix, table)
    return out


async def _all(quick: bool, work: Path) -> dict[str, Any]:
    n = 20_000 if quick else 100_000
    out: dict[str, Any] = {}
    out.update(await policy(n, work))
    from bench.micro_opa import opa_and_l2
    out.update(await opa_and_l2(n, work))  # the opa backend and the Redis L2 (bench/micro_opa.py)
    out.update(await audit(20_000 if quick else 100_000, work))
    out.update(await limits(n // 2))
    from bench.micro_tracing import tracing_costs
    out.update(await tracing_costs(n // 2, work))  # tracing off vs on, per request (bench/micro_tracing.py)
    from bench.ledger import ledger
    out["hot_path_us"] = await ledger(n // 5)
    return out


def main(args: argparse.Namespace) -> int:
    import uvloop

    work = Path(tempfile.mkdtemp(prefix="portcullis-micro-"))
    busy = procs.cpu_busy()
    if busy > 0.2:
        print(f"warning: the machine is {busy:.0%} busy with other work; numbers will be noisy", flush=True)
    try:
        results = uvloop.run(_all(args.quick, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["machine_busy_before"] = round(busy, 2)
    results["meta"] = report.meta({"quick": args.quick}, 0.0)
    results["budget"] = report.verdicts(results, report.MICRO_BUDGET)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report.write_json(RESULTS, results)
    print("| measure | value |\n|---|---:|")
    for k, v in results.items():
        if k in ("hot_path_us", "meta"):
            continue
        if k != "budget":
            print(f"| {k} | {v:,}|" if isinstance(v, (int, float)) else f"| {k} | {v} |")
    print("\n| hot-path step (alone, best of 5) | µs |\n|---|---:|")
    for k, v in results["hot_path_us"].items():
        print(f"| {k} | {v} |")
    print("\n| budget | value | verdict |\n|---|---:|---|")
    for b in results["budget"]:
        print(f"| {b['target']} | {b['value']} | {b['verdict']} |")
    print(f"\nresults: {RESULTS}")
    return 0
