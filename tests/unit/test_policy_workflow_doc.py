"""docs/policy-workflow.md stays runnable: its config example loads, and every `portcullis`
command it shows (the CI job's included) parses with the real CLI parser."""
from __future__ import annotations

import re
import shlex
import shutil

import yaml

from gateway.cli import parser
from gateway.settings import load_settings
from tests.support.harness import REPO

DOC = (REPO / "docs" / "policy-workflow.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC, flags=re.DOTALL)


def commands() -> list[list[str]]:
    text = "\n".join(blocks("sh") + [s["run"] for b in blocks("yaml")[1:]
                                     for s in yaml.safe_load(b)["jobs"]["policy"]["steps"] if "run" in s])
    text = text.replace("\\\n", " ")
    return [shlex.split(ln.split(" > ")[0], comments=True) for ln in text.splitlines()
            if ln.strip().startswith("portcullis ")]


def test_every_portcullis_command_in_the_doc_parses():
    found = commands()
    assert any(c[1:3] == ["policy", "test"] for c in found)
    [ci_replay] = [c for c in found if c[1:3] == ["policy", "replay"] and "--fail-on" in c]
    assert ci_replay[ci_replay.index("--fail-on") + 1] == "allow-to-deny"
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
