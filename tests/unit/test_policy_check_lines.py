"""`portcullis policy check DIR` names every problem at its file and line (issue 12).

Each case breaks a copy of the shipped set the way a policy author might and runs
the real CLI as a subprocess; a hot reload refuses the same sets.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.policy.lint_data import json_lines, locate
from adapters.policy.regorus_engine import RegorusEngine
from gateway.errors import PolicyCompileError
from gateway.settings import PolicySettings
from tests.support.harness import REPO, copy_policies
from tests.support.waiting import eventually_async

DATA = "portcullis/config/data.json"
EXTRA = "portcullis/extra.rego"


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    return copy_policies(tmp_path / "policies")


def policy_check(policy_dir: Path) -> tuple[int, list[str]]:
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "policy", "check", str(policy_dir)],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    return done.returncode, (done.stdout + done.stderr).splitlines()


def edit_text(policy_dir: Path, rel: str, old: str, new: str) -> int:
    """Replace one exact snippet, keeping the layout; returns its 1-based line."""
    path = policy_dir / rel
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))
    return text[:text.index(old)].count("\n") + 1


def assert_only(policy_dir: Path, expected: str) -> None:
    code, lines = policy_check(policy_dir)
    assert code == 1, lines
    assert lines == [expected, f"{policy_dir}: 1 problem(s)"]


@pytest.mark.parametrize("chart", [False, True])
def test_shipped_sets_pass(tmp_path: Path, chart: bool) -> None:
    src = REPO / "charts" / "portcullis" / "policies" if chart else REPO / "policies_rego"
    code, lines = policy_check(src)
    assert code == 0 and lines[-1].startswith(f"{src}: OK"), lines


def test_rego_v0_rule_body_is_a_syntax_error(policies: Path) -> None:
    (policies / EXTRA).write_text("package portcullis.extra\n\ndefault allow := false\n\nallow {\n\tinput.x\n}\n")
    assert_only(policies, f"{EXTRA}:5: Rego syntax error: `if` keyword is required before rule body")


def test_metadata_that_is_not_yaml(policies: Path) -> None:
    (policies / EXTRA).write_text("package portcullis.extra\n\n# METADATA\n# title: a\n# description: [b\n"
                                  "allow := true\n")
    code, lines = policy_check(policies)
    assert code == 1 and len(lines) == 2, lines
    assert lines[0].startswith(f"{EXTRA}:5: METADATA is not valid YAML: ")


def test_metadata_with_an_unknown_key(policies: Path) -> None:
    (policies / EXTRA).write_text("package portcullis.extra\n\n# METADATA\n# title: a\n# owner: b\n"
                                  "allow := true\n")
    assert_only(policies, f"{EXTRA}:5: unknown METADATA key 'owner'; OPA's keys are scope, title, description, "
                          "related_resources, authors, organizations, schemas, entrypoint, custom "
                          "(put your own under custom)")


def test_data_breaking_its_schema(policies: Path) -> None:
    line = edit_text(policies, DATA, '"cache_ttl_s": 60', '"cache_ttl_s": "60"')
    assert line == 2
    assert_only(policies, f"{DATA}:2: cache_ttl_s: '60' is not of type 'integer'")


def test_missing_key_is_reported_at_its_object(policies: Path) -> None:
    edit_text(policies, DATA, '"cache_ttl_s": 60,', "")
    assert_only(policies, f"{DATA}:1: (root): 'cache_ttl_s' is a required property")


def test_complexity_out_of_range(policies: Path) -> None:
    line = edit_text(policies, DATA, '"llm.chat": 2', '"llm.chat": 5')
    assert_only(policies, f"{DATA}:{line}: action_complexity/llm.chat: 5 is greater than the maximum of 4")


def test_complexity_out_of_range_in_a_nested_key(policies: Path) -> None:
    line = edit_text(policies, DATA, '"destructive": 4', '"destructive": 0')
    assert_only(policies, f"{DATA}:{line}: tool_annotation_complexity/destructive: 0 is less than the minimum of 1")


def test_unknown_action(policies: Path) -> None:
    (policies / EXTRA).write_text('package portcullis.extra\n\nchat if {\n\tinput.action == "llm.chatt"\n}\n')
    assert_only(policies, f'{EXTRA}:4: unknown action "llm.chatt": not in data.portcullis.config.'
                          "action_complexity, mcp_server_content_actions or tool.call")


def test_known_actions_and_test_files_pass(policies: Path) -> None:
    (policies / EXTRA).write_text('package portcullis.extra\n\nx := ["tool.call", "mcp.completion", "llm.embedding",'
                                  ' "llm.", "tool.call needs a name"]\n# "llm.chatt" in a comment\n')
    (policies / "portcullis" / "extra_test.rego").write_text(
        'package portcullis.extra_test\n\ntest_probe if "llm.chatt" != ""\n')
    code, lines = policy_check(policies)
    assert code == 0, lines


def test_config_error_names_its_key_line(policies: Path) -> None:
    doc = json.loads((policies / DATA).read_text())
    doc["lifecycle"]["surprise"] = 1
    text = json.dumps(doc, indent=1)
    (policies / DATA).write_text(text)
    (policies / "portcullis" / "config" / "data.schema.json").unlink()  # only the gateway's own parser speaks
    line = text[:text.index('"lifecycle"')].count("\n") + 1
    code, lines = policy_check(policies)
    assert code == 1, lines
    assert lines[:-1] == [(f"{DATA}:{line}: data.portcullis.config.lifecycle: unknown key 'surprise' (known: "
                          "error_budgets, consecutive_compliant_for_promotion, auto_promote_max_tier, "
                          "rate_limited_errors_after, budget_warn_fraction, approval)")], lines


def test_json_lines_locates_keys_and_items() -> None:
    text = '{\n "a": [1,\n  {"b": "x\\"y:{"},\n  []],\n "c": {}, "d": {"e": null}\n}'
    lines = json_lines(text)
    assert lines == {"": 1, "/a": 2, "/a/0": 2, "/a/1": 3, "/a/1/b": 3, "/a/2": 4,
                     "/c": 5, "/d": 5, "/d/e": 5}
    assert locate(lines, ("a", 1, "b")) == 3  # jsonschema's paths: ints for items, strings for keys
    assert locate(lines, ("a", 1, "missing")) == 3
    assert locate(lines, ("nowhere",)) == 1


async def test_reload_rejects_an_unknown_action(policies: Path) -> None:
    calls: list[tuple[str | None, Exception | None]] = []
    e = RegorusEngine(PolicySettings(hot_reload=True, evaluator="interpreter"), policies,
                      on_reload=lambda revision, exc: calls.append((revision, exc)))
    await e.start()
    try:
        before = e.revision
        (policies / EXTRA).write_text('package portcullis.extra\n\nchat if {\n\tinput.action == "llm.chatt"\n}\n')
        await eventually_async(lambda: calls, "the watcher to try the edited set", interval=0.05)
        [(revision, exc)] = calls
        assert revision is None and isinstance(exc, PolicyCompileError)
        assert f'{EXTRA}:4: unknown action "llm.chatt"' in str(exc)
        assert e.revision == before
    finally:
        await e.aclose()
