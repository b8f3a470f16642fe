"""The CLI as a newcomer meets it: audit --config anywhere, pipes, keys new, the demo command, the license."""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import openai
import pytest
import yaml

from gateway.agents_file import load_agents
from tests.support.harness import KEYS, REPO

MSG = [{"role": "user", "content": "hello"}]


def cli(*args: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=60, **kw)


@pytest.fixture
def audited(make_gateway):
    """A stopped gateway with a few audit rows."""
    gw = make_gateway()
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS["architect"], max_retries=0)
    for _ in range(5):
        c.models.list()
    gw.stop()  # flushes the audit queue
    return gw


def test_audit_config_before_or_after_the_subcommand(audited) -> None:
    config = str(audited.config_path)
    outputs = [cli("audit", "--config", config, "tail", "-n", "3"),
               cli("audit", "tail", "-n", "3", "--config", config)]
    for r in outputs:
        assert r.returncode == 0, r.stderr
        assert len(r.stdout.splitlines()) == 3 and "architect llm.models" in r.stdout
    assert outputs[0].stdout == outputs[1].stdout
    for args in (("audit", "--config", config, "verify"), ("audit", "verify", "--config", config)):
        r = cli(*args)
        assert r.returncode == 0 and "chain test: 5 rows, ok" in r.stdout, r.stdout + r.stderr


def test_audit_tail_into_a_closed_pipe_exits_quietly(audited) -> None:
    # Like `audit tail | head -0`: the reader is gone before the rows are written.
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "audit", "tail",
                             "--config", str(audited.config_path)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(60) == 1
    assert stderr == ""  # no BrokenPipeError traceback, no "Exception ignored" line


def test_keys_new_needs_a_workspace_and_prints_an_entry_that_validates(tmp_path: Path) -> None:
    r = cli("keys", "new")
    assert r.returncode == 2 and "--workspace" in r.stderr
    agents = (REPO / "config" / "agents.yaml").read_text()
    for args in (("--workspace", "quickstart"), ("--workspace", "quickstart", "--agent", "builder")):
        r = cli("keys", "new", *args)
        assert r.returncode == 0, r.stderr
        entry = r.stdout[r.stdout.index("  - id:"):]
        path = tmp_path / "agents.yaml"
        path.write_text(agents + entry)
        added = load_agents(path).keys[-1]
        assert (added.workspace, added.agent) == ("quickstart", dict(zip(args[::2], args[1::2])).get("--agent"))
        assert added.id == ("builder-key" if "--agent" in args else "quickstart-key")


def test_demo_needs_the_mcp_sdk_only_when_it_runs() -> None:
    lazy = subprocess.run([sys.executable, "-c", "import sys; from gateway import cli; cli.parser(); "
                           "import gateway.app; assert 'mcp' not in sys.modules, 'mcp imported'"],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert lazy.returncode == 0, lazy.stderr
    # Without the SDK installed (None in sys.modules makes its import fail), the command says what to install.
    missing = subprocess.run([sys.executable, "-c", "import sys; sys.modules['mcp'] = None; from gateway import cli; "
                              "raise SystemExit(cli.main(['demo', 'mcp-server', '--port', '1']))"],
                             capture_output=True, text=True, cwd=REPO, timeout=60)
    assert missing.returncode == 2
    assert "pip install -e '.[demo]'" in missing.stderr and "Traceback" not in missing.stderr


def test_license_is_apache_2() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX: How to apply the Apache License" in text


def test_readme_links_stay_inside_the_repository() -> None:
    text = (REPO / "README.md").read_text()
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert local, "no relative links found"
    for link in local:
        target = (REPO / link).resolve()
        assert target.is_relative_to(REPO), f"{link} points outside the repository"
        assert target.exists(), f"{link} does not exist"


def test_quickstart_config_serves_the_readme_tools() -> None:
    doc = yaml.safe_load((REPO / "config" / "quickstart.yaml").read_text())
    assert doc["tools"]["servers"]["orders"] == {"kind": "mcp", "url": "http://127.0.0.1:9300/mcp"}
    assert doc["identity"]["hot_reload"] is True
