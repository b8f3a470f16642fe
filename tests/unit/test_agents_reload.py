"""AgentsReloader: a valid agents file is swapped in whole; anything else is rejected and counted.

Real files and the real identity stage; reload() is called directly (the watcher is tested
end to end in tests/e2e/test_agents_reload.py).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from adapters.identity.apikeys import APIKeySource
from gateway.agents_reload import AgentsReloader
from gateway.directory import AgentDirectory
from gateway.errors import AuthenticationFailed
from gateway.keys import new_key
from gateway.agents_file import load_agents
from gateway.stages.identity import IdentityResolver
from tests.support.harness import KEYS, REPO


@pytest.fixture
def agents(tmp_path: Path) -> Path:
    path = tmp_path / "agents.yaml"
    shutil.copy(REPO / "config" / "agents.yaml", path)
    return path


def stack(path: Path, anonymous: str | None = None) -> tuple[IdentityResolver, AgentsReloader, list[str]]:
    directory = AgentDirectory.from_file(load_agents(path))
    resolver = IdentityResolver([APIKeySource(directory)], directory, anonymous)
    results: list[str] = []
    reloader = AgentsReloader(path, directory, hot_reload=False, check=resolver.check_directory,
                              on_reload=results.append)
    return resolver, reloader, results


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def test_valid_file_swaps_keys_and_agents(agents: Path) -> None:
    resolver, reloader, results = stack(agents)
    key, digest = new_key()
    text = agents.read_text().replace("tier: 1\n", "tier: 2\n")  # promote intern-bot
    agents.write_text(text + f"  - {{id: added, sha256: {digest}, workspace: quickstart, agent: builder}}\n")
    before, _ = await resolver.resolve(bearer(KEYS["intern-bot"]))
    assert await reloader.reload() is True
    assert results == ["ok"]
    after, _ = await resolver.resolve(bearer(KEYS["intern-bot"]))
    assert (before.tier, after.tier) == (1, 2)  # a resolved agent is never changed in place
    agent, principal = await resolver.resolve(bearer(key))
    assert (agent.id, principal.credential_id) == ("builder", "added")


@pytest.mark.parametrize("breakage", ["yaml", "schema", "reference", "missing"])
async def test_broken_file_is_rejected_and_the_old_one_stays(agents: Path, breakage: str) -> None:
    resolver, reloader, results = stack(agents)
    original = agents.read_text()
    if breakage == "yaml":
        agents.write_text(original + "  - {id: [unclosed\n")
    elif breakage == "schema":
        agents.write_text(original.replace("tier: 0", "tier: 'zero'"))
    elif breakage == "reference":
        agents.write_text(original.replace("agent: builder", "agent: nobody"))
    else:
        agents.unlink()
    assert await reloader.reload() is False
    assert results == ["rejected"]
    for name in ("observer", "builder"):
        agent, _ = await resolver.resolve(bearer(KEYS[name]))
        assert agent.id == name


async def test_reload_may_not_drop_the_anonymous_agent(agents: Path) -> None:
    resolver, reloader, results = stack(agents, anonymous="observer")
    agents.write_text(agents.read_text().replace("default_agent: observer", "default_agent: builder")
                      .replace("id: observer\n", "id: watcher\n").replace("agent: observer", "agent: watcher"))
    assert await reloader.reload() is False
    assert results == ["rejected"]
    agent, principal = await resolver.resolve({})
    assert (agent.id, principal.auth) == ("observer", "anonymous")


async def test_removed_key_is_refused_after_reload(agents: Path) -> None:
    resolver, reloader, _ = stack(agents)
    agents.write_text(agents.read_text().split("  # pk-quickstart-architect")[0])
    assert await reloader.reload() is True
    with pytest.raises(AuthenticationFailed):
        await resolver.resolve(bearer(KEYS["architect"]))
