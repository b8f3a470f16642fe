"""docs/policy-workflow.md stays runnable: its config example loads, and every `portcullis`
command it shows (the CI job's included) parses with the real CLI parser."""
from __future__ import annotations

import re
import shlex
import shutil

import yaml

from gateway.cli import parser
from gateway.settings import check, load_settings
from tests.support.harness import REPO

DOC = (REPO / "docs" / "policy-workflow.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC, flags=re.DOTALL)


def workflow() -> dict:
    [job] = [doc for doc in map(yaml.safe_load, blocks("yaml")) if "jobs" in doc]
    return job


def commands() -> list[list[str]]:
    text = "\n".join(blocks("sh") + [s["run"] for s in workflow()["jobs"]["policy"]["steps"] if "run" in s])
    text = text.replace("\\\n", " ")
    return [shlex.split(ln.split(" > ")[0], comments=True) for ln in text.splitlines()
            if ln.strip().startswith("portcullis ")]


def test_every_portcullis_command_in_the_doc_parses():
    found = commands()
    assert any(c[1:3] == ["policy", "test"] for c in found)
    [ci_replay] = [c for c in found if c[1:3] == ["policy", "replay"] and "--fail-on" in c]
    assert ci_replay[ci_replay.index("--fail-on") + 1] == "allow-to-deny"
    [gate] = [c for c in found if c[1:3] == ["policy", "shadow-report"] and "--fail-on" in c]
    assert gate[gate.index("--fail-on") + 1] == "allow-to-deny"
    for cmd in found:
        args = parser().parse_args(cmd[1:])  # SystemExit(2) on anything the CLI would refuse
        assert callable(args.func)


def test_the_replay_config_example_loads(tmp_path):
    config = yaml.safe_load(blocks("yaml")[0])
    (tmp_path / "ci").mkdir()
    shutil.copytree(REPO / "policies_rego", tmp_path / "policies_rego")
    (tmp_path / "ci" / "replay.yaml").write_text(yaml.safe_dump(config))
    s = load_settings(tmp_path / "ci" / "replay.yaml", {"PORTCULLIS_AUDIT_DSN": "postgresql://ro@db/portcullis"})
    assert s.audit.backend == "postgres" and s.audit.dsn == "postgresql://ro@db/portcullis"
    assert s.path(s.policy.dir) == (tmp_path / "policies_rego").resolve()


def test_the_shadow_config_example_loads_and_passes_check_config(tmp_path):
    [policy] = [doc["policy"] for doc in map(yaml.safe_load, blocks("yaml")) if "shadow" in doc.get("policy", {})]
    (tmp_path / "config").mkdir()
    shutil.copytree(REPO / "policies_rego", tmp_path / "policies_rego")
    shutil.copytree(REPO / "policies_rego", tmp_path / "policies_candidate")
    shutil.copy(REPO / "config" / "agents.yaml", tmp_path / "config" / "agents.yaml")
    config = {"policy": policy, "upstreams": {"mock": {"provider": "mock"}},
              "routes": [{"match": "*", "upstream": "mock"}]}
    (tmp_path / "config" / "gateway.yaml").write_text(yaml.safe_dump(config))
    s = load_settings(tmp_path / "config" / "gateway.yaml", {})
    assert s.policy.shadow is not None and s.policy.shadow.sample == 0.25
    assert s.path(s.policy.shadow.dir) == (tmp_path / "policies_candidate").resolve()
    assert check(tmp_path / "config" / "gateway.yaml", {}) == []
