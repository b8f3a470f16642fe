"""Argument rules in the default policy set: the opt-in accessor, and both regorus evaluators
deciding argument-carrying inputs alike (the compiled VM mishandles some rule shapes)."""
from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from adapters.policy.bundle import argument_rules, collect
from adapters.policy.regorus_engine import RegorusEngine
from gateway.settings import PolicySettings

POLICIES = Path(__file__).resolve().parents[2] / "policies_rego"
AGENTS = [(0, "student"), (1, "intern"), (2, "supervised"), (3, "supervised"), (4, "autonomous"), (9, "expert")]
ARGUMENTS = [None, {}, {"order_id": "A-1001"}, {"amount": 10}, {"amount": 100}, {"amount": 100.5},
             {"amount": 250}, {"amount": -1}, {"amount": "250"}, {"amount": None}, {"amount": [250]},
             {"amount": {"value": 250}}, {"amount": True}, [250], "amount=250"]


def call(tier: int, maturity: str, tool: str, arguments: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {"type": "tool", "name": tool, "server": "orders", "annotations": {}}
    if arguments is not None:
        resource["arguments"] = arguments
    return {"agent": {"id": "a", "tier": tier, "maturity": maturity, "workspace": "w", "labels": {}, "auth": "api_key"},
            "action": "tool.call", "resource": resource, "request": {"api": "mcp", "stream": False}}


def test_default_set_opts_in_refund_order_only() -> None:
    assert argument_rules(collect(POLICIES).data) == frozenset({("orders", "refund_order")})


@pytest.mark.parametrize("data", [
    {}, {"portcullis": None}, {"portcullis": {"config": {"tool_servers": []}}},
    {"portcullis": {"config": {"tool_servers": {"orders": {"argument_rules": ["refund_order"]}}}}},
    {"portcullis": {"config": {"tool_servers": {"orders": {"argument_rules": {"refund_order": 1}}}}}},
])
def test_malformed_or_missing_opt_in_opts_nothing_in(data: dict[str, Any]) -> None:
    assert argument_rules(data) == frozenset()


async def test_accessor_follows_a_reload(tmp_path: Path) -> None:
    policies = shutil.copytree(POLICIES, tmp_path / "p")
    engine = RegorusEngine(PolicySettings(hot_reload=False), policies)
    await engine.start()
    try:
        assert engine.argument_rules == frozenset({("orders", "refund_order")})
        data_file = policies / "portcullis" / "config" / "data.json"
        data = json.loads(data_file.read_text())
        data["tool_servers"]["orders"]["argument_rules"] = {"refund_order": False, "read_orders": True}
        data_file.write_text(json.dumps(data))
        await engine.reload()
        assert engine.argument_rules == frozenset({("orders", "read_orders")})
    finally:
        await engine.aclose()


async def test_compiled_and_interpreter_agree_on_argument_inputs() -> None:
    engines = [RegorusEngine(PolicySettings(hot_reload=False, evaluator=ev), POLICIES)
               for ev in ("compiled", "interpreter")]
    for e in engines:
        await e.start()
    try:
        assert await engines[0].compiled_ready() == "compiled"
        docs = [call(t, m, tool, a) for (t, m), tool, a
                in itertools.product(AGENTS, ("refund_order", "read_orders", "delete_customer"), ARGUMENTS)]
        compiled, interpreted = ([e.evaluate(d) for d in docs] for e in engines)
        assert compiled == interpreted
        assert not any("<undefined>" in d.reasons for d in compiled)
        by_amount = {json.dumps(a): d for a, d in zip(ARGUMENTS, interpreted[2 * 3 * len(ARGUMENTS):])}
        assert by_amount['{"amount": 10}'].allow and by_amount['{"amount": 100}'].allow
        assert by_amount['{"amount": 250}'].reasons == ("refund_order amount 250 above 100 needs tier 3",)
        assert by_amount['{"amount": "250"}'].reasons == ("refund_order amount must be a number",)
        assert by_amount["null"].allow  # no arguments (a listing's input): the rule does not fire
    finally:
        for e in engines:
            await e.aclose()
