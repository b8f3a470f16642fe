"""Inputs and helpers for bench/micro.py: policy inputs, an audit event, the RVM check."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import orjson

ENTRY = "data.portcullis.decision"


def policy_docs() -> list[dict[str, Any]]:
    """Varied, realistic inputs: every tier and maturity, several actions and models."""
    from gateway.stages.policy import policy_input
    from gateway.types import Agent

    docs = []
    maturities = ("student", "intern", "supervised", "autonomous")
    for tier in range(5):
        for mat in maturities:
            agent = Agent(id=f"agent-{tier}-{mat}", tier=tier, maturity=mat, workspace="bench",
                          labels={"team": "payments"})
            for action, model in (("llm.chat", "gpt-4o-mini"), ("llm.chat", "gpt-4o"),
                                  ("llm.chat", "claude-opus-4-7"), ("llm.embedding", "text-embedding-3-small"),
                                  ("llm.messages", "claude-haiku-4-5"), ("llm.models", "o3-mini")):
                docs.append(policy_input(agent, "api_key", action,
                                         {"type": "model", "name": model, "upstream": "openai"},
                                         {"api": "openai", "stream": False}))
    # The first doc is the one the cached benchmark uses: an allowed chat.
    docs.sort(key=lambda d: (d["agent"]["tier"] != 2 or d["agent"]["maturity"] != "supervised"
                             or d["resource"]["name"] != "gpt-4o-mini"))
    return docs


def audit_event() -> Any:
    """One realistic allowed-request event, policy input included."""
    from gateway.types import AuditEvent

    doc = policy_docs()[0]
    return AuditEvent(
        request_id="req_" + "0" * 32, ts=time.time(), agent_id="builder", tier=2, maturity="supervised",
        workspace="quickstart", auth="api_key", action="llm.chat", resource_type="model",
        resource_name="gpt-4o-mini", upstream="openai", api="openai", stream=False, decision="allow",
        reasons=(), policy_revision="f" * 64, cache_hit=True, status=200, latency_ms=1.234,
        upstream_ms=0.9, input_tokens=12, output_tokens=8, client_ip="127.0.0.1", error=None,
        input_digest="e" * 64, policy_input=doc)


async def audit_rows_per_s(store: Any, settings: Any, work: Path, n: int) -> float:
    """Push n rows through AuditWriter into `store` as fast as admit() lets us; rows/s to durable."""
    from gateway.audit.writer import AuditWriter

    writer = AuditWriter(store, settings, work / f"{settings.chain_id}-{id(store)}.spool")
    await store.start()
    await writer.start()
    ev = audit_event()
    try:
        t = time.perf_counter()
        for _ in range(n):
            await writer.admit()  # waits when the queue is full: this is the sustained rate
            writer.submit(ev)
        while writer.depth:
            await asyncio.sleep(0.002)
        return n / (time.perf_counter() - t)
    finally:
        await writer.aclose()
        await store.aclose()


def _same(interp: Any, rvm: dict[str, Any]) -> bool:
    return (interp.allow == rvm.get("allow")
            and sorted(interp.reasons) == sorted(rvm.get("reasons") or []))


def variety_docs() -> list[dict[str, Any]]:
    """Thousands of inputs, odd ones included (unknown tiers, non-strings, tools), for agreement checks."""
    tiers: list[Any] = [0, 1, 2, 3, 4, 5, -1, 2.5, "2", None]
    maturities: list[Any] = ["student", "intern", "supervised", "autonomous", "guru", None]
    resources: list[tuple[str, Any]] = [
        ("llm.chat", {"type": "model", "name": "gpt-4o-mini"}), ("llm.chat", {"type": "model", "name": "gpt-4o"}),
        ("llm.chat", {"type": "model", "name": "o3-mini"}), ("llm.chat", {"type": "model", "name": None}),
        ("llm.messages", {"type": "model", "name": "claude-opus-4-7"}), ("llm.models", {"type": "model"}),
        ("llm.embedding", {"type": "model", "name": "text-embedding-3-large"}), ("llm.bogus", {}),
        ("tool.list", {"type": "tool", "server": "orders"}), ("tool.list", {"type": "model"}),
        ("tool.call", {"type": "tool", "name": "refund_order", "server": "orders"}),
        ("tool.call", {"type": "tool", "name": "x", "server": "unknown",
                       "annotations": {"readOnlyHint": True}}),
        ("tool.call", {"type": "tool", "name": "x", "server": "orders",
                       "annotations": {"destructiveHint": True}}),
        ("tool.call", {"type": "tool", "server": None}), (5, {"type": "model", "name": "gpt-4o"}),
    ]
    docs = []
    for tier in tiers:
        for mat in maturities:
            for action, res in resources:
                for stream in (False, True):
                    docs.append({"agent": {"id": "a", "tier": tier, "maturity": mat, "workspace": "w",
                                           "labels": {}, "auth": "api_key"},
                                 "action": action, "resource": res,
                                 "request": {"api": "openai", "stream": stream}})
    return docs


def rvm_check(policy_dir: Path, docs: list[dict[str, Any]], variety: list[dict[str, Any]], engine: Any,
              n: int) -> dict[str, Any]:
    """Time regorus' compiled program (RVM) directly and count where it disagrees with the interpreter
    (on the realistic inputs plus the odd ones of variety_docs(); `engine` is an interpreter engine).

    The program is compiled with the data *and* the data is loaded into the VM
    with set_data_json: without the latter every decision falls to the policy's
    default ("policy could not reach a decision").
    """
    import regorus

    from adapters.policy.bundle import collect

    if not hasattr(regorus, "Program") or not hasattr(regorus, "Rvm"):
        return {"rvm": "not exposed by this regorus"}
    files = collect(policy_dir)
    try:
        program = regorus.Program.compile_from_modules(orjson.dumps(files.data).decode(),
                                                       list(files.modules), [ENTRY])
        vm = regorus.Rvm()
        vm.load_program(program)
        vm.set_data_json(orjson.dumps(files.data).decode())  # the program does not carry the data
    except Exception as e:  # noqa: BLE001
        return {"rvm": f"compile failed: {e}"}
    wrong = 0
    checked = [*docs, *variety]
    for doc in checked:
        vm.set_input_json(orjson.dumps(doc).decode())
        try:
            got = vm.execute_entry_point(ENTRY)
            got = orjson.loads(got) if isinstance(got, str) else got
        except Exception:  # noqa: BLE001 - an RVM error counts as a wrong decision
            got = None
        if not isinstance(got, dict) or not _same(engine.evaluate(doc), got):
            wrong += 1
    payloads = [orjson.dumps(d).decode() for d in docs]
    us = float("inf")
    for _ in range(5):  # best of 5 rounds, like the other timings
        t = time.perf_counter()
        for i in range(n // 5):
            vm.set_input_json(payloads[i % len(payloads)])
            vm.execute_entry_point(ENTRY)
        us = min(us, (time.perf_counter() - t) / (n // 5) * 1e6)
    return {"compiled_rvm_decision_us (direct)": round(us, 1),
            "compiled_rvm_disagreements_vs_interpreter": f"{wrong} of {len(checked)}"}


async def per_call_us(fn: Callable[[], Awaitable[Any]], n: int, rounds: int = 5) -> float:
    """Best per-call time in µs over `rounds` rounds of n/rounds calls: noise on a shared machine only adds."""
    per_round = max(1, n // rounds)
    for _ in range(min(per_round, 1000)):  # warm-up
        await fn()
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(per_round):
            await fn()
        best = min(best, (time.perf_counter() - t) / per_round)
    return best * 1e6
