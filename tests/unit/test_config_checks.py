"""check-config catches what would stop `serve`: backend names and agents-file references.

Each problem names its key path. `serve` on such a config prints the same problems and
exits 2, with no traceback.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.keys import hash_key
from gateway.settings import check
from tests.support.harness import REPO

QUICKSTART = REPO / "config" / "quickstart.yaml"


def write_config(tmp: Path, agents: dict | None = None, **sections: object) -> Path:
    """The quickstart config with `sections` replaced, its paths pointing back into the repository."""
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["identity"]["agents_file"] = str(REPO / "config" / "agents.yaml")
    doc["policy"]["dir"] = str(REPO / "policies_rego")
    doc["audit"].update(path=str(tmp / "audit.db"), spool_path=str(tmp / "audit.spool"))
    if agents is not None:
        (tmp / "agents.yaml").write_text(yaml.safe_dump(agents))
        doc["identity"]["agents_file"] = str(tmp / "agents.yaml")
    doc.update(sections)
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def quickstart_agents() -> dict:
    return yaml.safe_load((REPO / "config" / "agents.yaml").read_text())


def test_quickstart_passes() -> None:
    assert check(QUICKSTART, {}) == []


@pytest.mark.parametrize("section, key, value, problem", [
    ("cache", "cache.backend", "redis", "unknown cache backend 'redis' (known: memory)"),
    ("limits", "limits.backend", "memcached", "unknown limits backend 'memcached' (known: memory, redis)"),
    ("audit", "audit.backend", "mysql", "unknown audit backend 'mysql' (known: postgres, sqlite)"),
    ("policy", "policy.backend", "wasm", "unknown policy backend 'wasm' (known: opa, regorus)"),
    ("cache", "cache.backend", "no_such_module:Cache", "could not import 'no_such_module'"),
    ("limits", "limits.backend", "adapters.ratelimit.memory:Nope", "has no attribute 'Nope'"),
])
def test_unknown_backend_names_are_problems_at_their_key(tmp_path: Path, section: str, key: str, value: str,
                                                         problem: str) -> None:
    doc = yaml.safe_load(QUICKSTART.read_text())
    problems = check(write_config(tmp_path, **{section: {**doc[section], "backend": value}}), {})
    assert [k for k, _ in problems] == [key]
    assert problem in problems[0][1]


def test_import_string_backends_that_import_pass(tmp_path: Path) -> None:
    path = write_config(tmp_path, limits={"backend": "adapters.ratelimit.memory:MemoryRateLimiter"})
    assert check(path, {}) == []


def test_upstream_provider_and_tool_kind_are_checked(tmp_path: Path) -> None:
    path = write_config(tmp_path, upstreams={"mock": {"provider": "bedrock"}},
                        tools={"servers": {"orders": {"kind": "grpc", "url": "http://127.0.0.1:9300/mcp"}}})
    assert {k for k, _ in check(path, {})} == {"upstreams.mock.provider", "tools.servers.orders.kind"}


def test_key_and_agent_in_undeclared_workspace(tmp_path: Path) -> None:
    agents = quickstart_agents()
    agents["keys"].append({"id": "new-key", "sha256": hash_key("pk-x"), "workspace": "default"})
    agents["agents"].append({"id": "stray", "tier": 1, "maturity": "intern", "workspace": "elsewhere"})
    problems = dict(check(write_config(tmp_path, agents=agents), {}))
    n_keys, n_agents = len(agents["keys"]) - 1, len(agents["agents"]) - 1
    assert problems == {
        f"identity.agents_file (agents.yaml: keys.{n_keys}.workspace)":
            "workspace 'default' is not declared in workspaces",
        f"identity.agents_file (agents.yaml: agents.{n_agents}.workspace)":
            "workspace 'elsewhere' is not declared in workspaces",
    }


def test_every_reference_problem_is_reported_at_once(tmp_path: Path) -> None:
    agents = quickstart_agents()
    agents["workspaces"]["ops"] = {"default_agent": "builder"}  # builder belongs to quickstart
    agents["keys"].append({**agents["keys"][0], "id": "copy"})  # the observer's key hash again
    agents["agents"].append(dict(agents["agents"][0]))  # observer twice
    problems = dict(check(write_config(tmp_path, agents=agents), {}))
    prefix = "identity.agents_file (agents.yaml: "
    assert problems == {
        prefix + "workspaces.ops.default_agent)": "'builder' is not an agent of workspace 'ops'",
        prefix + f"keys.{len(agents['keys']) - 1}.sha256)": "'copy' and 'quickstart-observer' share one key hash",
        prefix + f"agents.{len(agents['agents']) - 1}.id)": "duplicate agent id 'observer'",
    }


@pytest.mark.parametrize("broken, expected", [
    ("backend", "config error: cache.backend: unknown cache backend 'redis'"),
    ("workspace", "config error: agents.yaml: keys.6.workspace: workspace 'default' is not declared"),
])
def test_serve_reports_problems_without_a_traceback(tmp_path: Path, broken: str, expected: str) -> None:
    agents = quickstart_agents()
    agents["keys"].append({"id": "new-key", "sha256": hash_key("pk-x"), "workspace": "default"})
    path = (write_config(tmp_path, cache={"backend": "redis"}) if broken == "backend"
            else write_config(tmp_path, agents=agents))
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--config", str(path), "--port", "0"],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert (r.returncode, "Traceback" in r.stderr) == (2, False), r.stderr
    assert expected in r.stderr, r.stderr
