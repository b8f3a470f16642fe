"""RegorusEngine against the real default policies, plus reloads and failures on tmp copies."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from adapters.policy.bundle import collect, vocabulary
from adapters.policy.regorus_engine import RegorusEngine
from gateway.errors import PolicyCompileError, PolicyError
from gateway.protocols import PolicyEngine
from gateway.settings import PolicySettings
from tests.support.waiting import eventually_async

POLICIES = Path(__file__).resolve().parents[2] / "policies_rego"
STATIC = PolicySettings(hot_reload=False)

# The quickstart agents: id -> (tier, maturity).
AGENTS = {
    "observer": (0, "student"),
    "intern-bot": (1, "intern"),
    "builder": (2, "supervised"),
    "executor": (3, "supervised"),
    "architect": (4, "autonomous"),
}
OBLIGATIONS = {
    0: (1024, 20, 20000), 1: (2048, 60, 40000), 2: (4096, 120, 100000),
    3: (8192, 300, 200000), 4: (16384, 600, 1000000),
}
ORDERS_TOOLS = {
    "read_orders": {"readOnlyHint": True},
    "refund_order": {},
    "delete_customer": {"destructiveHint": True},
}
TOOLS_ALLOWED = {
    "observer": set(),
    "intern-bot": {"read_orders"},
    "builder": {"read_orders", "refund_order"},
    "executor": {"read_orders", "refund_order"},
    "architect": {"read_orders", "refund_order", "delete_customer"},
}


def agent(name: str) -> dict[str, Any]:
    tier, maturity = AGENTS[name]
    return {"id": name, "tier": tier, "maturity": maturity, "workspace": "default",
            "labels": {}, "auth": "api_key"}


def model_input(name: str, action: str, model: str) -> dict[str, Any]:
    return {"agent": agent(name), "action": action,
            "resource": {"type": "model", "name": model, "upstream": "openai"},
            "request": {"api": "openai", "stream": False}}


def tool_input(name: str, action: str, tool: str) -> dict[str, Any]:
    return {"agent": agent(name), "action": action,
            "resource": {"type": "tool", "name": tool, "server": "orders",
                         "annotations": ORDERS_TOOLS[tool]},
            "request": {"api": "mcp", "stream": False}}


@pytest.fixture(scope="module", params=["compiled", "interpreter"])
async def engine(request: pytest.FixtureRequest):
    """Every decision test runs on both evaluators: they must agree on the default set."""
    e = RegorusEngine(PolicySettings(hot_reload=False, evaluator=request.param), POLICIES)
    await e.start()
    assert await e.compiled_ready() == request.param
    yield e
    await e.aclose()


@pytest.fixture
def policy_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(POLICIES, tmp_path / "policies"))


def write_decision(policy_dir: Path, body: str) -> None:
    """A one-file policy set whose decision is `body` (Rego v1)."""
    (policy_dir / "portcullis").mkdir(parents=True, exist_ok=True)
    (policy_dir / "portcullis" / "decision.rego").write_text(
        "package portcullis\n\nimport rego.v1\n\n" + body + "\n")


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str | None, Exception | None]] = []

    def __call__(self, revision: str | None, exc: Exception | None) -> None:
        self.calls.append((revision, exc))


async def test_is_a_policy_engine(engine: RegorusEngine) -> None:
    assert isinstance(engine, PolicyEngine)
    assert len(engine.revision) == 64 and engine.revision == collect(POLICIES).revision


@pytest.mark.parametrize(("who", "action", "model", "allowed"), [
    ("observer", "llm.models", "gpt-4o-mini", True),
    ("observer", "llm.embedding", "text-embedding-3-small", True),
    ("observer", "llm.chat", "gpt-4o-mini", False),
    ("observer", "llm.models", "gpt-4o", False),
    ("intern-bot", "llm.chat", "gpt-4o-mini", True),
    ("intern-bot", "llm.messages", "claude-3-5-haiku-latest", True),
    ("intern-bot", "llm.chat", "gpt-4o", False),
    ("builder", "llm.chat", "gpt-4o", True),
    ("builder", "llm.messages", "claude-sonnet-4-5", True),
    ("builder", "llm.responses", "o3-mini", False),
    ("executor", "llm.responses", "o3-mini", True),
    ("executor", "llm.messages", "claude-opus-4-1", True),
    ("executor", "llm.chat", "gpt-5", False),
    ("architect", "llm.chat", "gpt-5", True),
    ("architect", "llm.images", "dall-e-3", False),
])
async def test_quickstart_agents_models(engine: RegorusEngine, who: str, action: str,
                                        model: str, allowed: bool) -> None:
    d = engine.evaluate(model_input(who, action, model))
    assert d.allow is allowed
    assert (d.reasons == ()) is allowed
    assert d.revision == engine.revision and d.cache_ttl_s == 60


@pytest.mark.parametrize(("policy_input", "reasons"), [
    (model_input("intern-bot", "llm.chat", "gpt-4o"), ("tier 1 may not use model gpt-4o",)),
    (model_input("observer", "llm.chat", "gpt-4o-mini"),
     ("maturity student below required intern for llm.chat",)),
    (tool_input("intern-bot", "tool.call", "refund_order"),
     ("maturity intern below required supervised for tool.call refund_order",)),
    (tool_input("observer", "tool.list", "read_orders"),
     ("tier 0 may not use server orders (minimum tier 1)",)),
    (model_input("architect", "llm.images", "dall-e-3"), ("unknown action llm.images",)),
])
async def test_reasons_name_the_cause(engine: RegorusEngine, policy_input: dict[str, Any],
                                      reasons: tuple[str, ...]) -> None:
    d = engine.evaluate(policy_input)
    assert not d.allow and d.reasons == reasons


@pytest.mark.parametrize("who", list(AGENTS))
async def test_obligations_per_tier(engine: RegorusEngine, who: str) -> None:
    tier = AGENTS[who][0]
    for d in engine.evaluate_many([model_input(who, "llm.models", "gpt-4o-mini"),
                                   model_input(who, "llm.chat", "not-a-model-anyone-has")]):
        assert d.obligations == dict(zip(
            ("max_output_tokens", "requests_per_minute", "tokens_per_minute"), OBLIGATIONS[tier]))
        assert d.max_output_tokens == OBLIGATIONS[tier][0]


@pytest.mark.parametrize("who", list(AGENTS))
async def test_tools_table(engine: RegorusEngine, who: str) -> None:
    calls = engine.evaluate_many([tool_input(who, "tool.call", t) for t in ORDERS_TOOLS])
    assert {t for t, d in zip(ORDERS_TOOLS, calls) if d.allow} == TOOLS_ALLOWED[who]
    listed = engine.evaluate(tool_input(who, "tool.list", "read_orders"))
    assert listed.allow is (who != "observer")


async def test_evaluate_accepts_mapping_types(engine: RegorusEngine) -> None:
    from types import MappingProxyType
    i = model_input("intern-bot", "llm.chat", "gpt-4o-mini")
    i["agent"]["labels"] = MappingProxyType({"team": "payments"})
    assert engine.evaluate(MappingProxyType(i)).allow


async def test_evaluate_before_start_is_policy_error() -> None:
    with pytest.raises(PolicyError):
        RegorusEngine(STATIC, POLICIES).evaluate(model_input("observer", "llm.models", "gpt-4o-mini"))


async def test_revision_follows_loaded_files(policy_copy: Path) -> None:
    recorder = Recorder()
    e = RegorusEngine(STATIC, policy_copy, on_reload=recorder)
    await e.start()
    first = e.revision
    # Test files are not part of the loaded set, so they do not change the revision.
    (policy_copy / "portcullis" / "decision_test.rego").write_text("package portcullis_test\n")
    assert await e.reload() == first and recorder.calls == []
    data = policy_copy / "portcullis" / "config" / "data.json"
    data.write_text(data.read_text().replace('"cache_ttl_s": 60', '"cache_ttl_s": 30'))
    second = await e.reload()
    assert second != first and e.revision == second
    assert recorder.calls == [(second, None)]
    assert e.evaluate(model_input("observer", "llm.models", "gpt-4o-mini")).cache_ttl_s == 30


async def test_hot_reload_picks_up_data_change(policy_copy: Path) -> None:
    recorder = Recorder()
    e = RegorusEngine(PolicySettings(hot_reload=True), policy_copy, on_reload=recorder)
    await e.start()
    try:
        before = e.revision
        gpt4o = model_input("intern-bot", "llm.chat", "gpt-4o")
        assert not e.evaluate(gpt4o).allow
        data_file = policy_copy / "portcullis" / "config" / "data.json"
        data = json.loads(data_file.read_text())
        data["tiers"]["1"]["models"].append("gpt-4o")
        data_file.write_text(json.dumps(data, indent=2))
        # the watcher debounces changes
        await eventually_async(lambda: e.revision != before, "the watcher to reload the data", interval=0.05)
        assert e.evaluate(gpt4o).allow
        assert recorder.calls == [(e.revision, None)]
    finally:
        await e.aclose()


async def test_broken_policy_is_rejected_and_old_set_stays(policy_copy: Path) -> None:
    recorder = Recorder()
    e = RegorusEngine(STATIC, policy_copy, on_reload=recorder)
    await e.start()
    before = e.revision
    gpt4o = model_input("intern-bot", "llm.chat", "gpt-4o")
    (policy_copy / "portcullis" / "decision.rego").write_text("package portcullis\n\ndecision := {\n")
    assert await e.reload() == before
    assert e.revision == before
    [(revision, exc)] = recorder.calls
    assert revision is None and isinstance(exc, PolicyCompileError)
    assert "decision.rego" in str(exc)
    d = e.evaluate(gpt4o)
    assert d.reasons == ("tier 1 may not use model gpt-4o",) and d.revision == before


async def test_invalid_data_json_is_rejected(policy_copy: Path) -> None:
    recorder = Recorder()
    e = RegorusEngine(STATIC, policy_copy, on_reload=recorder)
    await e.start()
    before = e.revision
    (policy_copy / "portcullis" / "config" / "data.json").write_text("{not json")
    assert await e.reload() == before
    assert "invalid JSON" in str(recorder.calls[0][1])


@pytest.mark.parametrize("body", [
    'decision := "allow everything"',
    "decision := {\"allow\": to_number(\"x\") > 0}",
    'decision := {"allow": "yes"}',
    "allow := true",  # no decision at all
])
async def test_set_failing_smoke_evaluation_is_rejected(tmp_path: Path, body: str) -> None:
    write_decision(tmp_path, body)
    with pytest.raises(PolicyCompileError, match="smoke evaluation failed"):
        await RegorusEngine(STATIC, tmp_path).start()


async def test_smoke_failure_on_reload_keeps_old_set(policy_copy: Path) -> None:
    recorder = Recorder()
    e = RegorusEngine(STATIC, policy_copy, on_reload=recorder)
    await e.start()
    before = e.revision
    shutil.rmtree(policy_copy / "portcullis")
    write_decision(policy_copy, 'decision := "oops"')
    assert await e.reload() == before
    assert "must be an object" in str(recorder.calls[0][1])
    assert e.evaluate(model_input("observer", "llm.models", "gpt-4o-mini")).allow


async def test_initial_load_failure_raises(tmp_path: Path) -> None:
    with pytest.raises(PolicyCompileError, match="not found"):
        await RegorusEngine(STATIC, tmp_path / "missing").start()
    (tmp_path / "p.rego").write_text("package portcullis\n\ndecision := {\n")
    with pytest.raises(PolicyCompileError, match="p.rego"):
        await RegorusEngine(STATIC, tmp_path).start()


@pytest.mark.parametrize(("body", "message"), [
    ('decision := "oops" if input.action == "llm.chat"\n\n'
     'else := {"allow": true}', "must be an object, got str"),
    ('decision := {"allow": to_number(input.action) > 0} if input.action == "llm.chat"\n\n'
     'else := {"allow": true}', "could not parse string as number"),
    ('decision := {"allow": 1} if input.action == "llm.chat"\n\n'
     'else := {"allow": true}', "allow must be a boolean"),
    ('decision := {"allow": true, "reasons": [1]} if input.action == "llm.chat"\n\n'
     'else := {"allow": true}', "reasons must be a list of strings"),
])
@pytest.mark.parametrize("evaluator", ["compiled", "interpreter"])
async def test_bad_decision_at_eval_is_policy_error(tmp_path: Path, body: str, message: str,
                                                   evaluator: str) -> None:
    write_decision(tmp_path, body)
    e = RegorusEngine(PolicySettings(hot_reload=False, evaluator=evaluator), tmp_path)
    await e.start()  # the smoke input (llm.models) passes
    assert e.evaluate({"action": "llm.models"}).allow
    # Fail closed either way; the compiled program reports a runtime error as a string result.
    with pytest.raises(PolicyError, match=message if evaluator == "interpreter" else None):
        e.evaluate({"action": "llm.chat"})


async def test_minimal_decision_gets_defaults(tmp_path: Path) -> None:
    write_decision(tmp_path, 'decision := {"allow": false, "reasons": {"b", "a"}}')
    e = RegorusEngine(PolicySettings(hot_reload=False, default_cache_ttl_s=7), tmp_path)
    await e.start()
    d = e.evaluate({})
    assert (d.allow, d.reasons, d.obligations, d.cache_ttl_s) == (False, ("a", "b"), {}, 7)


async def test_data_json_mounted_by_directory(tmp_path: Path) -> None:
    write_decision(tmp_path, 'decision := {"allow": data.team.limits.open, "reasons": [data.motd]}')
    (tmp_path / "data.json").write_text('{"motd": "hello"}')
    (tmp_path / "team" / "limits").mkdir(parents=True)
    (tmp_path / "team" / "limits" / "data.json").write_text('{"open": true}')
    e = RegorusEngine(STATIC, tmp_path)
    await e.start()
    assert e.evaluate({}).reasons == ("hello",) and e.evaluate({}).allow
    # A second file setting the same key is a load error, not a silent overwrite.
    (tmp_path / "data.json").write_text('{"motd": "hello", "team": {"limits": {"open": false}}}')
    with pytest.raises(PolicyCompileError, match="set by two data files"):
        collect(tmp_path)


# A rule shape regorus' compiled program got wrong: a function whose value is
# undefined for some inputs (here, an unknown action) used inside a deny rule.
UNDEFINED_VALUE_RULE = """
cplx(a) := 1 if a == "known"

else := data.nothing[a]

deny contains sprintf("needs complexity %v", [c]) if {
	c := cplx(input.action)
	not small(c)
}

small(c) if c < 5

decision := {"allow": count(deny) == 0, "reasons": sort(deny), "obligations": {}, "cache_ttl_s": 60}
"""


async def test_a_program_that_disagrees_runs_on_the_interpreter(tmp_path: Path) -> None:
    write_decision(tmp_path, UNDEFINED_VALUE_RULE)
    e = RegorusEngine(STATIC, tmp_path)
    await e.start()
    try:
        assert await e.compiled_ready() == "interpreter"
        d = e.evaluate({"agent": {}, "action": "unknown", "resource": {}, "request": {}})
        assert (d.allow, d.reasons) == (True, ())
    finally:
        await e.aclose()


async def test_default_set_runs_compiled_and_matches_interpreter_on_odd_inputs() -> None:
    from adapters.policy.compiled import corpus
    engines = [RegorusEngine(PolicySettings(hot_reload=False, evaluator=ev), POLICIES)
               for ev in ("compiled", "interpreter")]
    for e in engines:
        await e.start()
    try:
        assert await engines[0].compiled_ready() == "compiled"
        files = collect(POLICIES)
        docs = corpus(files, vocabulary(files.data))
        assert len(docs) > 1000
        compiled, interpreted = ([e.evaluate(d) for d in docs] for e in engines)
        assert compiled == interpreted
        assert any(not d.allow for d in compiled) and any(d.allow for d in compiled)
    finally:
        for e in engines:
            await e.aclose()


async def test_reloaded_set_is_compiled_again(policy_copy: Path) -> None:
    e = RegorusEngine(STATIC, policy_copy)
    await e.start()
    try:
        assert await e.compiled_ready() == "compiled"
        data_file = policy_copy / "portcullis" / "config" / "data.json"
        data = json.loads(data_file.read_text())
        data["tiers"]["0"]["obligations"]["requests_per_minute"] = 7
        data_file.write_text(json.dumps(data))
        first = e.revision
        assert await e.reload() != first
        assert e.evaluator == "interpreter"  # live at once, on the interpreter
        assert await e.compiled_ready() == "compiled"
        assert e.evaluate(model_input("observer", "llm.chat", "gpt-4o-mini")).obligations["requests_per_minute"] == 7
    finally:
        await e.aclose()
