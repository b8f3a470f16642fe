"""The lifecycle side of policy (DESIGN contract 6): `violation` and `approval` in decisions,
on the regorus engine (both evaluators) and the OPA adapter, through the decision caches,
and the lifecycle thresholds of data.json (`parse_rules`, `engine.lifecycle`), including
reloads that bad lifecycle data must not get past."""
from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from adapters.cache.memory import MemoryDecisionCache
from adapters.cache.redis_l2 import RedisL2DecisionCache
from adapters.policy import lint
from adapters.policy.bundle import collect
from adapters.policy.opa import OPAEngine
from adapters.policy.regorus_engine import RegorusEngine, to_decision
from gateway.errors import PolicyCompileError, PolicyError
from gateway.lifecycle.model import Budget, LifecycleRules
from gateway.lifecycle.rules import parse_rules
from gateway.metrics import Metrics
from gateway.settings import CacheSettings, PolicySettings
from gateway.settings_opa import L2CacheSettings
from gateway.stages.policy import PolicyStage
from tests.support.harness import LoopThread
from tests.support.opa_server import OPAServer
from tests.support.redis_process import delete_prefix
from tests.support.services import redis_url, unique
from tests.unit.test_policy_engine import POLICIES, model_input, tool_input

STATIC = PolicySettings(hot_reload=False)
DESTRUCTIVE = {"kind": "destructive_tool", "severity": "CRITICAL"}
FORBIDDEN = {"kind": "forbidden_tool", "severity": "HIGH"}
APPROVAL = {"required": True, "reason": "tool.call delete_customer is destructive: "
            "a supervised agent at tier 3 needs an operator's approval"}
DEFAULT_RULES = LifecycleRules(
    budgets={t: Budget(8, 2, 1, 86400.0) for t in range(5)},
    consecutive_compliant_for_promotion={0: 50, 1: 100, 2: 200, 3: 500},
    auto_promote_max_tier=None, rate_limited_errors_after=10, budget_warn_fraction=0.8)

# (input, expected violation, expected approval) on the quickstart agents and the orders tools.
CASES = [
    (tool_input("intern-bot", "tool.call", "delete_customer"), DESTRUCTIVE, None),
    (tool_input("executor", "tool.call", "delete_customer"), None, APPROVAL),
    (tool_input("builder", "tool.call", "delete_customer"), DESTRUCTIVE, None),
    (tool_input("intern-bot", "tool.call", "refund_order"), FORBIDDEN, None),
    (tool_input("observer", "tool.call", "read_orders"), FORBIDDEN, None),
    (model_input("intern-bot", "llm.chat", "gpt-4o"), None, None),  # an ordinary denial
    (tool_input("architect", "tool.call", "delete_customer"), None, None),  # allowed
]


def check_case(decision: Any, violation: Any, approval: Any) -> None:
    assert decision.violation == violation
    assert decision.approval == approval
    assert decision.allow is (violation is None and approval is None and decision.reasons == ())
    if approval is not None:
        # The denial stays the reason (it is what a plain denial says with the lifecycle off).
        assert decision.reasons == ("maturity supervised below required autonomous for tool.call delete_customer",)


@pytest.fixture(scope="module", params=["compiled", "interpreter"])
async def engine(request: pytest.FixtureRequest):
    e = RegorusEngine(PolicySettings(hot_reload=False, evaluator=request.param), POLICIES)
    await e.start()
    assert await e.compiled_ready() == request.param
    yield e
    await e.aclose()


@pytest.fixture
def policy_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(POLICIES, tmp_path / "policies"))


def edit_lifecycle(policy_dir: Path, **changes: Any) -> None:
    path = policy_dir / "portcullis" / "config" / "data.json"
    data = json.loads(path.read_text())
    data["lifecycle"].update(changes)
    path.write_text(json.dumps(data))


# ---- decisions: regorus ------------------------------------------------------------------

@pytest.mark.parametrize(("doc", "violation", "approval"), CASES)
async def test_regorus_decisions_carry_violation_and_approval(engine, doc, violation, approval):
    check_case(engine.evaluate(doc), violation, approval)


async def test_batch_decisions_carry_them_too(engine):
    got = engine.evaluate_many([doc for doc, _, _ in CASES])
    for d, (_, violation, approval) in zip(got, CASES, strict=True):
        check_case(d, violation, approval)


# ---- decisions: the OPA adapter ------------------------------------------------------------

@pytest.fixture
def opa(loop_thread: LoopThread) -> Iterator[OPAServer]:
    server = loop_thread.run(OPAServer(POLICIES).start())
    yield server
    loop_thread.run(server.stop())


@pytest.fixture
def opa_engine(loop_thread: LoopThread, opa: OPAServer) -> Iterator[OPAEngine]:
    e = OPAEngine(PolicySettings(backend="opa", hot_reload=False, opa={"url": opa.url, "timeout_s": 5.0}),
                  POLICIES)
    loop_thread.run(e.start())
    yield e
    loop_thread.run(e.aclose())


def test_opa_decisions_carry_violation_and_approval(loop_thread, opa, opa_engine):
    for doc, violation, approval in CASES:  # one Data API call each
        [d] = loop_thread.run(opa_engine.aevaluate_many([doc]))
        check_case(d, violation, approval)
    assert len(opa.inputs) >= len(CASES)  # decided by the server, not locally
    batch = loop_thread.run(opa_engine.aevaluate_many([doc for doc, _, _ in CASES]))  # one ad-hoc query
    for d, (_, violation, approval) in zip(batch, CASES, strict=True):
        check_case(d, violation, approval)
    assert opa_engine.lifecycle == DEFAULT_RULES


# ---- parsing the decision ----------------------------------------------------------------

BASE = {"allow": False, "reasons": ["r"], "obligations": {}, "cache_ttl_s": 5}


def test_absent_fields_are_none_and_required_false_is_none():
    d = to_decision(dict(BASE), "rev", 60)
    assert (d.violation, d.approval) == (None, None)
    d = to_decision({**BASE, "approval": {"required": False}}, "rev", 60)
    assert d.approval is None
    d = to_decision({**BASE, "approval": {"required": True}}, "rev", 60)
    assert d.approval == {"required": True, "reason": ""}


@pytest.mark.parametrize(("extra", "field"), [
    ({"violation": "forbidden_tool"}, "decision.violation must be an object"),
    ({"violation": {"severity": "HIGH"}}, "decision.violation.kind"),
    ({"violation": {"kind": "x", "severity": "SEVERE"}}, "decision.violation.severity"),
    ({"violation": {"kind": "x", "severity": "high"}}, "decision.violation.severity"),
    ({"approval": True}, "decision.approval must be an object"),
    ({"approval": {"required": "yes"}}, "decision.approval.required"),
    ({"approval": {"required": True, "reason": 5}}, "decision.approval.reason"),
    ({"allow": True, "reasons": [], "approval": {"required": True, "reason": "x"}}, "needs allow false"),
])
def test_malformed_fields_are_policy_errors_naming_the_field(extra, field):
    with pytest.raises(PolicyError) as e:
        to_decision({**BASE, **extra}, "rev", 60)
    assert field in e.value.message


async def test_a_policy_with_a_malformed_violation_fails_closed(tmp_path):
    (tmp_path / "portcullis").mkdir()
    (tmp_path / "portcullis" / "decision.rego").write_text(
        'package portcullis\n\nimport rego.v1\n\n'
        'decision := {"allow": false, "reasons": ["x"], "obligations": {}, "cache_ttl_s": 5,\n'
        '\t"violation": {"kind": "odd", "severity": "URGENT"}} if input.action == "odd"\n\n'
        'decision := {"allow": true, "reasons": [], "obligations": {}, "cache_ttl_s": 5} if input.action != "odd"\n')
    e = RegorusEngine(STATIC, tmp_path)
    await e.start()
    try:
        # Not pytest.raises: its ExceptionInfo would tie the engine into a reference cycle,
        # freed by a later GC pass on another thread (regorus engines are thread-bound).
        try:
            e.evaluate({"action": "odd"})
        except PolicyError as err:
            message = err.message
        else:
            pytest.fail("a malformed violation was accepted")
        assert "violation.severity" in message
    finally:
        await e.aclose()


# ---- the decision caches -------------------------------------------------------------------

async def _stage(cache: Any) -> tuple[PolicyStage, RegorusEngine]:
    engine = RegorusEngine(PolicySettings(hot_reload=False, evaluator="interpreter"), POLICIES)
    await engine.start()
    return PolicyStage(engine, cache, Metrics()), engine


async def test_memory_cache_hits_keep_violation_and_approval():
    cache = MemoryDecisionCache(CacheSettings())
    await cache.start()
    stage, engine = await _stage(cache)
    try:
        for doc, violation, approval in CASES[:2]:
            first, _ = await stage.decide(doc)
            hit, _ = await stage.decide(doc)
            assert (first.cache_hit, hit.cache_hit) == (False, True)
            check_case(hit, violation, approval)
    finally:
        await engine.aclose()
        await cache.aclose()


@pytest.fixture
def l2_prefix() -> Iterator[str]:
    url = redis_url()
    prefix = unique("portcullis:test:lifecycle-l2:")
    yield prefix
    delete_prefix(url, prefix)


async def test_redis_l2_round_trips_violation_and_approval(l2_prefix):
    def l2() -> RedisL2DecisionCache:
        return RedisL2DecisionCache(L2CacheSettings(redis_url=redis_url(), key_prefix=l2_prefix),
                                    MemoryDecisionCache(CacheSettings()))
    writer, reader = l2(), l2()  # two replicas: the reader's L1 is empty, so its hit is Redis'
    await writer.start()
    await reader.start()
    stage, engine = await _stage(writer)
    try:
        for doc, violation, approval in CASES[:3]:
            decided, key = await stage.decide(doc)
            got = await reader.get(engine.revision + ":" + key)
            assert got is not None and got.cache_hit
            check_case(got, violation, approval)
            assert got == replace(decided, cache_hit=True)  # every field survives the trip
    finally:
        await engine.aclose()
        await writer.aclose()
        await reader.aclose()


# ---- lifecycle thresholds: parse_rules and engine.lifecycle ---------------------------------

def test_default_data_parses_to_the_documented_rules():
    files = collect(POLICIES)
    assert parse_rules(files.data["portcullis"]["config"]) == DEFAULT_RULES
    assert DEFAULT_RULES.budget(7) == Budget()  # a tier without a budget gets the defaults


def test_missing_lifecycle_is_the_defaults_and_partial_keys_fill_in():
    assert parse_rules(None) == LifecycleRules()
    assert parse_rules({"tiers": {"0": {}}}) == LifecycleRules()
    rules = parse_rules({"lifecycle": {"error_budgets": {"2": {"max_total_errors": 3}},
                                       "auto_promote_max_tier": 2, "budget_warn_fraction": 0.5}})
    assert rules.budget(2) == Budget(max_total_errors=3)
    assert (rules.auto_promote_max_tier, rules.budget_warn_fraction, rules.rate_limited_errors_after) == (2, 0.5, 10)
    assert rules.consecutive_compliant_for_promotion == {}


@pytest.mark.parametrize(("lifecycle", "named"), [
    ([], "data.portcullis.config.lifecycle must be an object"),
    ({"error_budget": {}}, "unknown key 'error_budget'"),
    ({"error_budgets": []}, "lifecycle.error_budgets must be an object"),
    ({"error_budgets": {"one": {}}}, "lifecycle.error_budgets: 'one' is not a tier number"),
    ({"error_budgets": {"1": {"max_total_errors": 0}}}, "lifecycle.error_budgets.1.max_total_errors"),
    ({"error_budgets": {"1": {"max_procedure_violations": True}}},
     "lifecycle.error_budgets.1.max_procedure_violations"),
    ({"error_budgets": {"1": {"window_s": -5}}}, "lifecycle.error_budgets.1.window_s"),
    ({"error_budgets": {"1": {"max_errors": 3}}}, "lifecycle.error_budgets.1: unknown key 'max_errors'"),
    ({"consecutive_compliant_for_promotion": {"0": "50"}}, "lifecycle.consecutive_compliant_for_promotion.0"),
    ({"auto_promote_max_tier": "3"}, "lifecycle.auto_promote_max_tier"),
    ({"rate_limited_errors_after": -1}, "lifecycle.rate_limited_errors_after"),
    ({"budget_warn_fraction": 1.5}, "lifecycle.budget_warn_fraction"),
    ({"budget_warn_fraction": 0}, "lifecycle.budget_warn_fraction"),
    ({"approval": {"destructive_min_tier": "3", "maturities": []}}, "lifecycle.approval.destructive_min_tier"),
    ({"approval": {"destructive_min_tier": 3, "maturities": "supervised"}}, "lifecycle.approval.maturities"),
    ({"approval": {"min_tier": 3}}, "lifecycle.approval: unknown key 'min_tier'"),
])
def test_malformed_lifecycle_data_names_the_key(lifecycle, named):
    with pytest.raises(PolicyCompileError) as e:
        parse_rules({"lifecycle": lifecycle})
    assert named in str(e.value)


async def test_regorus_engine_exposes_the_rules_and_rejects_a_reload_with_bad_ones(policy_copy):
    e = RegorusEngine(STATIC, policy_copy)
    assert e.lifecycle == LifecycleRules()  # not started: the defaults
    await e.start()
    try:
        assert e.lifecycle == DEFAULT_RULES
        before = e.revision
        edit_lifecycle(policy_copy, error_budgets={"1": {"max_total_errors": 4}})
        assert await e.reload() != before  # a good change goes live with its rules
        assert e.lifecycle.budget(1) == Budget(max_total_errors=4) and e.lifecycle.budget(0) == Budget()
        good = e.revision
        edit_lifecycle(policy_copy, budget_warn_fraction=2)
        assert await e.reload() == good  # rejected: the previous set and its rules stay
        assert e.lifecycle.budget(1) == Budget(max_total_errors=4) and e.lifecycle.budget_warn_fraction == 0.8
    finally:
        await e.aclose()


async def test_rules_checked_without_the_schema_too(policy_copy):
    """A set without data.schema.json still cannot load malformed lifecycle data."""
    (policy_copy / "portcullis" / "config" / "data.schema.json").unlink()
    edit_lifecycle(policy_copy, rate_limited_errors_after="three")
    with pytest.raises(PolicyCompileError, match="lifecycle.rate_limited_errors_after"):
        await RegorusEngine(STATIC, policy_copy).start()
    assert any("lifecycle.rate_limited_errors_after" in p for p in lint.check_policy_dir(policy_copy)[0])


def test_opa_engine_rejects_a_reload_with_bad_lifecycle_data(loop_thread, policy_copy):
    server = loop_thread.run(OPAServer(policy_copy).start())
    e = OPAEngine(PolicySettings(backend="opa", hot_reload=False, opa={"url": server.url, "timeout_s": 5.0}),
                  policy_copy)
    try:
        loop_thread.run(e.start())
        assert e.lifecycle == DEFAULT_RULES
        edit_lifecycle(policy_copy, auto_promote_max_tier=2)
        changed = loop_thread.run(e.reload())
        assert e.lifecycle.auto_promote_max_tier == 2
        edit_lifecycle(policy_copy, auto_promote_max_tier=-1)
        assert loop_thread.run(e.reload()) == changed  # rejected
        assert e.lifecycle.auto_promote_max_tier == 2
    finally:
        loop_thread.run(e.aclose())
        loop_thread.run(server.stop())


def test_policy_check_reports_bad_lifecycle_data(policy_copy):
    edit_lifecycle(policy_copy, consecutive_compliant_for_promotion={"3": 0})
    lines, code = lint.check_dir(policy_copy)
    assert code == 1
    assert any("consecutive_compliant_for_promotion" in line for line in lines)
