"""The lifecycle overlay in the identity stage, and how finished requests count (contract 6).

Real resolvers (API keys from the quickstart agents file, HS256 JWTs) over a real Overlay;
real Exchange objects through the classifier.
"""
from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from adapters.identity.apikeys import APIKeySource
from adapters.identity.jwt import JWTSource
from gateway.agents_file import load_agents
from gateway.context import Exchange
from gateway.directory import AgentDirectory
from gateway.errors import AgentRevoked
from gateway.lifecycle.counting import classify, exceeded, near
from gateway.lifecycle.model import AgentState, Budget, Outcome
from gateway.lifecycle.overlay import Overlay
from gateway.lifecycle.runtime import next_step
from gateway.settings import JWTSettings
from gateway.stages.identity import IdentityResolver
from gateway.types import Agent, Decision, Vocabulary
from tests.support.harness import KEYS, REPO

VOCAB = Vocabulary(tiers=frozenset(range(5)), maturities=("student", "intern", "supervised", "autonomous"))
SECRET = "lifecycle-overlay-test-secret-0123456789abcdef"


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.fixture
def directory() -> AgentDirectory:
    return AgentDirectory.from_file(load_agents(REPO / "config" / "agents.yaml"))


@pytest.fixture
def overlay() -> Overlay:
    return Overlay(lambda: VOCAB)


@pytest.fixture
async def resolver(directory: AgentDirectory, overlay: Overlay) -> Any:
    hs = JWTSource(JWTSettings.model_validate({"issuer": "https://idp.test", "audience": "portcullis",
                                               "algorithms": ["HS256"], "hs_secret_env": "X", "hs_secret": SECRET}))
    await hs.start()
    yield IdentityResolver([APIKeySource(directory), hs], directory, None, overlay)
    await hs.aclose()


def token(**claims: Any) -> str:
    now = int(time.time())
    body = {"sub": "jwt-bot", "iss": "https://idp.test", "aud": "portcullis", "iat": now, "exp": now + 600,
            "tier": 2, "maturity": "supervised", "workspace": "quickstart", **claims}
    return jwt.encode(body, SECRET, algorithm="HS256")


def st(agent_id: str, version: int, **kw: Any) -> AgentState:
    return AgentState(agent_id=agent_id, version=version, **kw)


async def test_nothing_revoked_or_overridden_returns_the_directory_agent(
        resolver: IdentityResolver, directory: AgentDirectory, overlay: Overlay) -> None:
    assert not overlay.active
    agent, _ = await resolver.resolve(bearer(KEYS["intern-bot"]))
    assert agent is directory.agent("intern-bot")


async def test_a_revoked_agent_is_refused_with_its_reason(resolver: IdentityResolver, overlay: Overlay) -> None:
    overlay.update("intern-bot", st("intern-bot", 3, revoked=True, revoked_reason="error budget exceeded: x"))
    assert overlay.active
    with pytest.raises(AgentRevoked) as e:
        await resolver.resolve(bearer(KEYS["intern-bot"]))
    assert (e.value.status, e.value.code) == (403, "agent_revoked")
    assert e.value.message == "agent intern-bot is revoked: error budget exceeded: x"
    builder, _ = await resolver.resolve(bearer(KEYS["builder"]))
    assert builder.id == "builder"
    # A workspace key choosing the agent is refused too.
    with pytest.raises(AgentRevoked):
        await resolver.resolve({**bearer("pk-quickstart-workspace"), "x-agent-id": "intern-bot"})
    overlay.update("intern-bot", st("intern-bot", 4))  # reinstated
    assert not overlay.active
    agent, _ = await resolver.resolve(bearer(KEYS["intern-bot"]))
    assert agent.id == "intern-bot"


async def test_overrides_replace_tier_and_maturity_without_allocating_per_request(
        resolver: IdentityResolver, directory: AgentDirectory, overlay: Overlay) -> None:
    overlay.update("intern-bot", st("intern-bot", 1, tier=2))
    first, _ = await resolver.resolve(bearer(KEYS["intern-bot"]))
    second, _ = await resolver.resolve(bearer(KEYS["intern-bot"]))
    assert (first.tier, first.maturity, first.workspace) == (2, "intern", "quickstart")
    assert first is second  # cached per (agent, override)
    assert directory.agent("intern-bot").tier == 1  # the baseline is untouched
    overlay.update("intern-bot", st("intern-bot", 2, tier=2, maturity="supervised"))
    third, _ = await resolver.resolve(bearer(KEYS["intern-bot"]))
    assert (third.tier, third.maturity) == (2, "supervised")
    overlay.update("intern-bot", st("intern-bot", 3))
    assert (await resolver.resolve(bearer(KEYS["intern-bot"])))[0] is directory.agent("intern-bot")


async def test_a_jwt_agent_is_capped_by_its_state(resolver: IdentityResolver, overlay: Overlay) -> None:
    claimed, principal = await resolver.resolve(bearer(token()))
    assert (principal.auth, claimed.tier, claimed.maturity) == ("jwt", 2, "supervised")
    overlay.update("jwt-bot", st("jwt-bot", 1, tier=3, maturity="autonomous"))  # a promotion lifts no claim
    agent, _ = await resolver.resolve(bearer(token()))
    assert (agent.tier, agent.maturity) == (2, "supervised")
    overlay.update("jwt-bot", st("jwt-bot", 2, tier=1, maturity="intern"))  # demoted: an old token stays down
    agent, _ = await resolver.resolve(bearer(token()))
    assert (agent.tier, agent.maturity) == (1, "intern")
    overlay.update("jwt-bot", st("jwt-bot", 3, revoked=True, revoked_reason="by ops"))
    with pytest.raises(AgentRevoked, match="agent jwt-bot is revoked: by ops"):
        await resolver.resolve(bearer(token()))


def test_versions_only_move_forward() -> None:
    overlay = Overlay()
    assert overlay.update("a", st("a", 5, revoked=True, revoked_reason="r"))
    assert not overlay.update("a", st("a", 4))  # an older read arriving late
    assert overlay.revoked == {"a": "r"} and overlay.version("a") == 5
    overlay.load({"a": st("a", 3), "b": st("b", 1, tier=0)})  # a stale snapshot keeps the newer revocation
    assert overlay.revoked == {"a": "r"} and overlay.overrides == {"b": (0, None)}
    overlay.load({})  # states gone from the store: no overlay
    assert not overlay.active and overlay.revoked == {} and overlay.overrides == {}


# ---- classifying finished requests -----------------------------------------------------------

AGENT = Agent(id="intern-bot", tier=1, maturity="intern", workspace="quickstart")


def ex(**kw: Any) -> Exchange:
    e = Exchange(request_id="req_1", api="openai", client_ip=None)
    e.agent, e.resource_name = AGENT, kw.pop("resource_name", "gpt-4o")
    for k, v in kw.items():
        setattr(e, k, v)
    return e


def test_classification() -> None:
    streaks: dict[str, int] = {}
    ok = ex(outcome="allow", status=200, decision=Decision(allow=True))
    assert classify(ok, streaks, 3).kind == "compliant"
    deny = ex(outcome="deny", status=403, decision=Decision(allow=False, reasons=("tier 1 may not use model o3",)))
    assert (classify(deny, streaks, 3).kind, classify(deny, streaks, 3).signature) == \
        ("error", "deny:tier 1 may not use model o3")
    mcp_deny = ex(outcome="deny", status=200, resource_name="delete_customer", decision=Decision(
        allow=False, reasons=("no",), violation={"kind": "destructive_tool", "severity": "CRITICAL"}))
    v = classify(mcp_deny, streaks, 3)
    assert (v.kind, v.detail, v.severity) == ("violation", "destructive_tool delete_customer", "CRITICAL")
    waiting = ex(outcome="deny", status=403, decision=Decision(allow=False, approval={"required": True}))
    assert classify(waiting, streaks, 3) is None
    revoked = Exchange(request_id="r", api="openai", client_ip=None)
    revoked.outcome, revoked.status = "deny", 403  # refused in identity: no agent on the exchange
    assert classify(revoked, streaks, 3) is None
    upstream = ex(outcome="allow", status=400, upstream_ms=3.0, error="bad", decision=Decision(allow=True))
    assert classify(upstream, streaks, 3).signature == "upstream:400"
    ours = ex(outcome="allow", status=502, upstream_ms=3.0, error="down", decision=Decision(allow=True))
    assert classify(ours, streaks, 3) is None
    tool = ex(outcome="allow", status=200, tool_error=True, resource_name="read_orders", error="isError",
              decision=Decision(allow=True))
    assert classify(tool, streaks, 3).signature == "tool_error:read_orders"
    unauthenticated = Exchange(request_id="r", api="openai", client_ip=None)
    unauthenticated.status = 401
    assert classify(unauthenticated, streaks, 3) is None


def test_every_nth_consecutive_429_counts() -> None:
    streaks: dict[str, int] = {}
    limited = ex(outcome="rate_limited", status=429, decision=Decision(allow=True))
    assert [classify(limited, streaks, 3) is not None for _ in range(7)] == [False, False, True,
                                                                           False, False, True, False]
    classify(ex(outcome="allow", status=200, decision=Decision(allow=True)), streaks, 3)  # the streak ends
    assert classify(limited, streaks, 3) is None
    assert all(classify(limited, {}, 0) is None for _ in range(5))  # 0: never


def test_budgets_fire_at_exactly_their_counts() -> None:
    b = Budget(max_total_errors=4, max_same_error_repeats=2, max_procedure_violations=1)
    err = Outcome("a", 0.0, "error", signature="deny:x")
    assert exceeded(AgentState("a", total_errors=1, same_errors={"deny:x": 1}), b, err) is None
    rule, reason = exceeded(AgentState("a", total_errors=2, same_errors={"deny:x": 2}), b, err)
    assert rule == "error_budget.max_same_error_repeats"
    assert reason == "error budget exceeded: the same error 2 times (deny:x)"
    viol = Outcome("a", 0.0, "violation", signature="violation:forbidden_tool t", detail="forbidden_tool t")
    assert exceeded(AgentState("a", total_errors=1, violations=1), b, viol) == (
        "error_budget.max_procedure_violations", "error budget exceeded: 1 procedure violation (forbidden_tool t)")
    assert near(AgentState("a", total_errors=3, same_errors={"x": 1, "y": 1, "z": 1}), b, 0.8) is None
    assert near(AgentState("a", total_errors=4, same_errors={"x": 1}), b, 0.8) == "max_total_errors"


def test_promotion_goes_to_the_next_tier_then_the_next_maturity() -> None:
    assert next_step(AGENT, VOCAB) == (2, "intern")
    top = Agent(id="t", tier=4, maturity="supervised", workspace="w")
    assert next_step(top, VOCAB) == (4, "autonomous")
    assert next_step(Agent(id="t", tier=4, maturity="autonomous", workspace="w"), VOCAB) is None
