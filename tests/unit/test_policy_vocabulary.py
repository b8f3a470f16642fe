"""Tiers and maturities come from the loaded policy data, not from Python.

A team with its own tiers or maturity names loads and decides; the agents file
and JWT claims are held to the loaded set's vocabulary, with errors that name
the agent or the claim; a reload that would leave an agent outside it is refused.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from adapters.identity.jwt import JWTSource
from adapters.policy.bundle import collect, vocabulary
from adapters.policy.regorus_engine import RegorusEngine
from gateway.app import build_services
from gateway.directory import AgentDirectory
from gateway.errors import AuthenticationFailed, PolicyCompileError
from gateway.agents_file import AgentsFile
from gateway.settings import JWTSettings, PolicySettings, check, load_settings
from gateway.types import Vocabulary
from tests.support.harness import PROVIDER_KEYS, gateway_config
from tests.support.team_policy import RENAMED, TEAM_TIERS, own_vocabulary, team_policies

POLICIES = Path(__file__).resolve().parents[2] / "policies_rego"
STATIC = PolicySettings(hot_reload=False, evaluator="interpreter")
DEFAULT = Vocabulary(frozenset({0, 1, 2, 3, 4}), ("student", "intern", "supervised", "autonomous"))
TEAM = Vocabulary(TEAM_TIERS, tuple(RENAMED.values()))  # tests/support/team_policy.py
SECRET = "vocabulary-test-secret-0123456789abcdef"


@pytest.fixture
def team_policy(tmp_path: Path) -> Path:
    return team_policies(tmp_path / "policies")


def directory(*agents: tuple[str, int, str]) -> AgentDirectory:
    return AgentDirectory.from_file(AgentsFile.model_validate({
        "workspaces": {"w": {}},
        "agents": [{"id": i, "tier": t, "maturity": m, "workspace": "w"} for i, t, m in agents]}))


def decide(engine: RegorusEngine, tier: Any, maturity: Any, action: str, model: str) -> Any:
    return engine.evaluate({"agent": {"id": "a", "tier": tier, "maturity": maturity, "workspace": "w"},
                            "action": action, "resource": {"type": "model", "name": model}})


def test_default_vocabulary_is_read_from_the_data() -> None:
    assert vocabulary(collect(POLICIES).data) == DEFAULT


def test_a_set_without_vocabulary_declares_none(tmp_path: Path) -> None:
    (tmp_path / "p.rego").write_text("package portcullis\n")
    assert vocabulary(collect(tmp_path).data) == Vocabulary()
    assert Vocabulary().knows_tier(99) and Vocabulary().knows_maturity("anything")


@pytest.mark.parametrize(("config", "fragment"), [
    ({"tiers": {"one": {}}}, "keyed by tier numbers"),
    ({"tiers": {"01": {}}}, "keyed by tier numbers"),
    ({"maturity_order": ["a", "a"]}, "distinct maturity names"),
    ({"maturity_order": "student"}, "distinct maturity names"),
])
def test_a_malformed_vocabulary_is_a_load_error(config: dict[str, Any], fragment: str) -> None:
    with pytest.raises(PolicyCompileError, match=fragment):
        vocabulary({"portcullis": {"config": config}})


async def test_a_team_vocabulary_loads_and_decides(team_policy: Path) -> None:
    e = RegorusEngine(STATIC, team_policy)
    await e.start()
    try:
        assert e.vocabulary == TEAM
        assert decide(e, 7, "lead", "llm.chat", "gpt-4.1-nano").allow
        assert decide(e, 1, "junior", "llm.chat", "gpt-4o-mini").allow
        assert decide(e, 1, "trainee", "llm.chat", "gpt-4o-mini").reasons == (
            "maturity trainee below required junior for llm.chat",)
        assert decide(e, 4, "autonomous", "llm.chat", "gpt-4o-mini").reasons == (
            "unknown maturity autonomous", "unknown tier 4")
    finally:
        await e.aclose()


def test_directory_names_each_agent_outside_the_vocabulary() -> None:
    d = directory(("ok", 2, "intern"), ("far", 7, "intern"), ("odd", 1, "expert"))
    assert d.vocabulary_problems(DEFAULT) == [
        "agent 'far': tier 7 is not one of the policy's tiers 0, 1, 2, 3, 4",
        "agent 'odd': maturity 'expert' is not one of the policy's maturities student, intern, supervised, "
        "autonomous"]
    assert d.vocabulary_problems(Vocabulary()) == []


async def test_engine_refuses_a_set_whose_vocabulary_leaves_an_agent_out(team_policy: Path) -> None:
    agents = directory(("builder", 2, "supervised"))
    with pytest.raises(PolicyCompileError, match="agent 'builder': maturity 'supervised' is not one"):
        await RegorusEngine(STATIC, team_policy, check_vocabulary=agents.vocabulary_problems).start()


async def test_reload_that_drops_an_agents_maturity_is_rejected(tmp_path: Path) -> None:
    policy_dir = Path(shutil.copytree(POLICIES, tmp_path / "policies"))
    calls: list[tuple[str | None, Exception | None]] = []
    agents = directory(("builder", 2, "supervised"))
    e = RegorusEngine(STATIC, policy_dir, on_reload=lambda r, x: calls.append((r, x)),
                      check_vocabulary=agents.vocabulary_problems)
    await e.start()
    try:
        before = e.revision
        own_vocabulary(policy_dir)
        assert await e.reload() == before and e.vocabulary == DEFAULT
        [(revision, exc)] = calls
        assert revision is None and "agent 'builder': maturity 'supervised'" in str(exc)
        # The agents move first (e.g. an agents reload): now the set fits and goes live.
        agents.replace(directory(("builder", 2, "senior")))
        assert await e.reload() != before and e.vocabulary.maturities == ("trainee", "junior", "senior", "lead")
    finally:
        await e.aclose()


# ---- JWT claims ----------------------------------------------------------------------

def token(**claims: Any) -> str:
    now = int(time.time())
    body = {"sub": "jwt-agent", "iss": "https://idp.test", "aud": "portcullis", "iat": now, "exp": now + 600,
            "tier": 2, "maturity": "senior", "workspace": "w", **claims}
    return jwt.encode(body, SECRET, algorithm="HS256")


def source(vocab: Vocabulary) -> JWTSource:
    settings = JWTSettings.model_validate({"issuer": "https://idp.test", "audience": "portcullis",
                                           "algorithms": ["HS256"], "hs_secret_env": "X",
                                           "max_ttl_s": {0: 900, 1: 900, 2: 900, 3: 900, 7: 900}})
    return JWTSource(settings.model_copy(update={"hs_secret": SECRET}), vocabulary=lambda: vocab)


async def test_jwt_claims_inside_the_policy_vocabulary_resolve() -> None:
    p = await source(TEAM).resolve(token(tier=7, maturity="lead"))
    assert p is not None and (p.agent.tier, p.agent.maturity) == (7, "lead")


@pytest.mark.parametrize(("claims", "message"), [
    ({"tier": 4}, "JWT claim tier must be one of the policy's tiers 0, 1, 2, 3, 7"),
    ({"maturity": "supervised"}, "JWT claim maturity must be one of the policy's maturities trainee, junior, "
                                 "senior, lead"),
    ({"tier": "7"}, "JWT claim tier must be an integer"),
])
async def test_jwt_claims_outside_the_policy_vocabulary_are_401(claims: dict[str, Any], message: str) -> None:
    with pytest.raises(AuthenticationFailed) as info:
        await source(TEAM).resolve(token(**claims))
    assert info.value.status == 401 and info.value.message == message


# ---- the app's wiring ---------------------------------------------------------------

def agents_yaml(path: Path, maturity: str, tier: int = 2) -> Path:
    path.write_text(f"workspaces: {{w: {{default_agent: bot}}}}\n"
                    f"agents:\n  - {{id: bot, tier: {tier}, maturity: {maturity}, workspace: w}}\n")
    return path


async def test_app_refuses_to_start_with_an_agent_outside_the_vocabulary(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, "http://127.0.0.1:9", identity__agents_file=str(
        agents_yaml(tmp_path / "agents.yaml", "expert")))
    _, _, (_, engine) = build_services(load_settings(config, PROVIDER_KEYS))
    with pytest.raises(PolicyCompileError, match="agent 'bot': maturity 'expert' is not one of the policy's"):
        await engine.start()


async def test_app_runs_a_team_vocabulary(tmp_path: Path, team_policy: Path) -> None:
    config = gateway_config(tmp_path, "http://127.0.0.1:9", team_policy,
                            identity__agents_file=str(agents_yaml(tmp_path / "agents.yaml", "lead", 7)))
    services, _, (_, engine) = build_services(load_settings(config, PROVIDER_KEYS))
    await engine.start()
    try:
        agent = services.identity.directory.agent("bot")
        assert engine.vocabulary.knows_tier(agent.tier) and engine.vocabulary.knows_maturity(agent.maturity)
    finally:
        await engine.aclose()


def test_check_config_holds_agents_to_the_policy_vocabulary(tmp_path: Path, team_policy: Path) -> None:
    agents = agents_yaml(tmp_path / "agents.yaml", "expert", 4)
    config = gateway_config(tmp_path, "http://127.0.0.1:9", team_policy, identity__agents_file=str(agents))
    assert check(config, PROVIDER_KEYS) == [
        ("identity.agents_file", "agent 'bot': tier 4 is not one of the policy's tiers 0, 1, 2, 3, 7"),
        ("identity.agents_file", "agent 'bot': maturity 'expert' is not one of the policy's maturities "
                                 "trainee, junior, senior, lead")]
    agents_yaml(agents, "lead", 7)
    assert check(config, PROVIDER_KEYS) == []


def test_check_config_runs_the_policy_checks(tmp_path: Path, team_policy: Path) -> None:
    (team_policy / "portcullis" / "x.rego").write_text("# METADATA\n# scope: everywhere\npackage portcullis.x\n")
    config = gateway_config(tmp_path, "http://127.0.0.1:9", team_policy)
    assert ("policy.dir", "portcullis/x.rego:2: invalid annotation scope 'everywhere' (annotating a package); "
                          "use one of rule, document, package, subpackages") in check(config, PROVIDER_KEYS)
