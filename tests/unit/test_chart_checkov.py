"""checkov on the chart's rendered manifests: every finding is fixed or justified in the chart README.

checkov is installed on first use into tests/.venvs/checkov (tests/support/checkov_tool.py),
never into the project's venv: it pins many packages of its own.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.support.chart import CHART, render
from tests.support.checkov_tool import run_checkov

COMBOS = {
    "defaults": {},
    "everything": {"opa": {"enabled": True}, "ingress": {"enabled": True}, "httpRoute": {"enabled": True},
                   "serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                   "report": {"enabled": True},
                   "config": {"tracing": {"enabled": True}},
                   "gitSync": {"enabled": True, "repo": "https://github.com/example/policies.git",
                               "auth": {"method": "token", "existingSecret": "policies-token"}}},
    "git-sync-ssh-hpa-off": {"autoscaling": {"enabled": False},
                             "gitSync": {"enabled": True, "repo": "git@github.com:example/policies.git",
                                         "auth": {"method": "ssh", "existingSecret": "deploy-key"}}},
}


def justified_skips() -> dict[str, str]:
    """check id -> reason, from the README's checkov table."""
    readme = (CHART / "README.md").read_text()
    return dict(re.findall(r"^\| (CKV2?_K8S_\d+) \| (.+) \|$", readme, re.M))


# The first run installs checkov (about a minute); each run takes 10-30 s on 2 busy cores.
pytestmark = pytest.mark.timeout(600)


def test_checkov_finds_nothing_unjustified(tmp_path: Path) -> None:
    for combo, values in COMBOS.items():
        for template, docs in render(values).items():
            (tmp_path / f"{combo}--{template.replace('/', '_')}").write_text(yaml.safe_dump_all(docs))
    findings = run_checkov(tmp_path)
    skips = justified_skips()
    assert skips, "the README lists no justified checkov skips (or its table moved)"
    unjustified = [f for f in findings if f[0] not in skips]
    assert not unjustified, f"checkov findings neither fixed nor justified in charts/portcullis/README.md: {unjustified}"
    stale = set(skips) - {f[0] for f in findings}
    assert not stale, f"README justifies checkov skips that no longer occur: {sorted(stale)}"


def test_checkov_reports_an_insecure_manifest(tmp_path: Path) -> None:
    """The run really checks: a privileged, root container is reported."""
    deployment = next(d for docs in render({}).values() for d in docs if d["kind"] == "Deployment")
    c = deployment["spec"]["template"]["spec"]["containers"][0]
    c["securityContext"] = {"privileged": True, "runAsUser": 0}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(deployment))
    found = {f[0] for f in run_checkov(tmp_path)}
    assert "CKV_K8S_16" in found  # privileged container
    assert found - set(justified_skips())
