"""What OPA 1.x refuses is refused here too: METADATA blocks and data that breaks its schema.

Every entry point is covered: `portcullis policy check`, `portcullis policy test`,
the engine's first load, and a hot reload (rejected, counted, the old set kept).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from adapters.policy.bundle import collect
from adapters.policy.lint import annotation_problems, check, metadata_blocks
from adapters.policy.regorus_engine import RegorusEngine
from gateway.cli import main
from gateway.errors import PolicyCompileError
from gateway.metrics import Metrics
from gateway.settings import PolicySettings
from tests.support.waiting import eventually_async

POLICIES = Path(__file__).resolve().parents[2] / "policies_rego"
TIERS = "portcullis/tiers/tiers.rego"
DATA = "portcullis/config/data.json"

# The defect OPA reported (`tiers.rego:46: yaml: line 4: could not find expected ':'`):
# an ordinary comment run into a METADATA block.
RUN_ON_BLOCK = """# METADATA
# title: Tool server settings
# description: The server's entry in the config merged over the defaults.
# (Functions here use guarded definitions rather than `else` chains: regorus'
# compiled VM mishandles an undefined `else` value, and the gateway runs it.)
"""


@pytest.fixture
def policy_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(POLICIES, tmp_path / "policies"))


def break_tiers(policy_dir: Path) -> int:
    """Put the shipped defect back into tiers.rego; returns the line OPA names (the 4th YAML line)."""
    path = policy_dir / TIERS
    text = path.read_text()
    start = text.index("# METADATA\n# title: Tool server settings")
    end = text.index("server(name)", start)
    text = text[:start] + RUN_ON_BLOCK + text[end:]
    path.write_text(text)
    return text[:start].count("\n") + 5


def edit_data(policy_dir: Path, edit) -> None:  # noqa: ANN001 - a small mutator
    path = policy_dir / DATA
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2))


def rego(*lines: str) -> str:
    return "\n".join(lines) + "\n"


# ---- METADATA blocks ---------------------------------------------------------------

def test_the_shipped_set_is_clean() -> None:
    assert check(collect(POLICIES, include_tests=True)) == []


def test_the_shipped_defect_is_found_at_opas_line(policy_copy: Path) -> None:
    line = break_tiers(policy_copy)
    [problem] = check(collect(policy_copy))
    assert (problem.file, problem.line) == (TIERS, line)
    assert "not valid YAML" in problem.message and "expected ':'" in problem.message


@pytest.mark.parametrize(("source", "line", "fragment"), [
    (rego("package p", "", "# METADATA", "# titel: x", "r := 1"), 4, "unknown METADATA key 'titel'"),
    (rego("package p", "", "# METADATA", "# scope: everything", "r := 1"), 4, "invalid annotation scope 'everything'"),
    (rego("package p", "", "# METADATA", "# scope: package", "r := 1"), 4, "must be applied to a package (have rule)"),
    (rego("# METADATA", "# scope: rule", "package p"), 2, "must be applied to a rule (have package)"),
    (rego("package p", "", "# METADATA", "# title: x", "import rego.v1"), 3, "invalid annotation scope 'import'"),
    (rego("package p", "", "r := 1", "", "# METADATA", "# title: dangling"), 5, "invalid annotation scope ''"),
    (rego("package p", "", "# METADATA", "# entrypoint: 1", "r := 1"), 4, "entrypoint must be true or false"),
    (rego("package p", "", "# METADATA", "# entrypoint: true", "r := 1"), 3,
     "entrypoint applied to non-document or package scope 'rule'"),
    (rego("package p", "", "# METADATA", "# title: [a, b]", "r := 1"), 4, "title must be a string"),
    (rego("package p", "", "# METADATA", "# description:", "#   a: b", "r := 1"), 4, "description must be a string"),
    (rego("package p", "", "# METADATA", "# organizations: acme", "r := 1"), 4, "organizations must be a list"),
    (rego("package p", "", "# METADATA", "# authors:", "# - {}", "r := 1"), 4, "authors entry must be a name"),
    (rego("package p", "", "# METADATA", "# related_resources:", "# - description: no ref", "r := 1"), 4,
     "related_resources entry must be a URL"),
    (rego("package p", "", "# METADATA", "# schemas:", "# - input: notaschema", "r := 1"), 4, "each schemas entry"),
    (rego("package p", "", "# METADATA", "# custom: [1]", "r := 1"), 4, "custom must be a mapping"),
    (rego("package p", "", "# METADATA", "# title: a", "# title: b", "r := 1"), 5, "'title' is set twice"),
    (rego("package p", "", "# METADATA", "# just words", "r := 1"), 4, "must be a YAML mapping"),
    (rego("package p", "", "# METADATA", "#", "r := 1"), 3, "found whitespace"),
    (rego("package p", "", "# METADATA", "# title: x", "#\tindented: [", "r := 1"), 5, "not valid YAML"),
])
def test_invalid_blocks_name_file_and_line(source: str, line: int, fragment: str) -> None:
    [problem] = annotation_problems("p.rego", source)
    assert (problem.file, problem.line) == ("p.rego", line)
    assert fragment in problem.message
    assert str(problem).startswith(f"p.rego:{line}: ")


@pytest.mark.parametrize("source", [
    # A blank line ends the block; the comment after it is ordinary.
    rego("package p", "", "# METADATA", "# title: x", "", "# (an aside: with a colon)", "r := 1"),
    # Only comments at column 1 on consecutive rows belong to a block.
    rego("package p", "", "# METADATA", "# title: x", "r := 1 # not: [yaml", "  # METADATA", "  # x: [", "s := 2"),
    # A `#` inside a string or a raw string is not a comment.
    rego("package p", "", 'r := "# METADATA"', "s := `", "# METADATA", "# scope: nonsense", "`"),
    rego("# METADATA", "# scope: subpackages", "# title: all of p", "# custom: {any: [thing, 1]}", "package p"),
    rego("package p", "", "# METADATA", "# scope: document", "# entrypoint: yes",
         "# authors:", "# - Jane Doe <jane@example.com>", "# - {email: ops@example.com}",
         "# organizations: [acme]", "# related_resources:", "# - https://example.com",
         "# - {ref: https://example.com/b, description: b}", "# schemas:", "# - input: schema.input",
         "# - data.x: {type: string}", "r := 1"),
    rego("package p", "", "# METADATA", "# title:", "r := 1"),  # a null value decodes to the zero value
])
def test_valid_blocks_pass(source: str) -> None:
    assert annotation_problems("p.rego", source) == []


def test_blocks_follow_opas_grouping() -> None:
    source = rego("# METADATA", "# title: a", "# METADATA", "# title: b", "package p")
    assert [b.row for b in metadata_blocks(source)] == [1, 3]
    assert [b.text for b in metadata_blocks(source)] == ["title: a\n", "title: b\n"]


# ---- data.json against data.schema.json --------------------------------------------

@pytest.mark.parametrize("value", [0, 5, "2", 2.5, None])
def test_out_of_range_complexity_breaks_the_schema(policy_copy: Path, value: object) -> None:
    edit_data(policy_copy, lambda d: d["action_complexity"].update({"llm.chat": value}))
    [problem] = check(collect(policy_copy))
    assert problem.file == DATA and problem.message.startswith("action_complexity/llm.chat: ")


@pytest.mark.parametrize(("edit", "where"), [
    (lambda d: d["tiers"].update({"five": d["tiers"]["4"]}), "tiers: 'five' does not match"),
    (lambda d: d["tiers"]["2"]["obligations"].update({"max_output_token": 10}), "tiers/2/obligations:"),
    (lambda d: d["tool_servers"]["orders"]["tool_complexity"].update({"refund_order": 9}),
     "tool_servers/orders/tool_complexity/refund_order:"),
    (lambda d: d.update({"maturity_order": ["student", "student"]}), "maturity_order:"),
    (lambda d: d.pop("tiers"), "(root): 'tiers' is a required property"),
])
def test_schema_violations_are_named_by_path(policy_copy: Path, edit, where: str) -> None:  # noqa: ANN001
    edit_data(policy_copy, edit)
    messages = [p.message for p in check(collect(policy_copy)) if p.file == DATA]
    assert any(m.startswith(where) for m in messages), messages


def test_broken_schema_and_missing_data_are_problems(tmp_path: Path) -> None:
    (tmp_path / "p.rego").write_text("package p\n")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "data.schema.json").write_text('{"type": "object"}')
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "data.schema.json").write_text('{"type": 12}')
    (tmp_path / "b" / "data.json").write_text("{}")
    problems = {p.file: p.message for p in check(collect(tmp_path))}
    assert problems["a/data.schema.json"] == "no a/data.json beside this schema"
    assert problems["b/data.schema.json"].startswith("not a valid JSON Schema")


def test_data_without_a_schema_is_not_checked(tmp_path: Path) -> None:
    (tmp_path / "p.rego").write_text("package p\n")
    (tmp_path / "data.json").write_text('{"anything": [1, "two"]}')
    assert check(collect(tmp_path)) == []


# ---- the three entry points ---------------------------------------------------------

def test_policy_check_cli(policy_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check", str(policy_copy)]) == 0
    assert "OK" in capsys.readouterr().out
    line = break_tiers(policy_copy)
    edit_data(policy_copy, lambda d: d["action_complexity"].update({"llm.chat": 5}))
    assert main(["policy", "check", str(policy_copy)]) == 1
    err = capsys.readouterr().err
    assert f"{TIERS}:{line}: METADATA is not valid YAML" in err
    assert f"{DATA}:20: action_complexity/llm.chat: 5 is greater than the maximum of 4" in err
    assert "2 problem(s)" in err


def test_policy_check_cli_reports_rego_syntax(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.rego").write_text("package bad\n\nallow if {\n")
    assert main(["policy", "check", str(tmp_path)]) == 1
    assert "bad.rego" in capsys.readouterr().err


def test_policy_check_covers_test_files(policy_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (policy_copy / "portcullis" / "x_test.rego").write_text(rego("# METADATA", "# titel: t", "package x_test"))
    assert main(["policy", "check", str(policy_copy)]) == 1
    assert "portcullis/x_test.rego:2: unknown METADATA key 'titel'" in capsys.readouterr().err


def test_policy_test_cli_refuses_the_set(policy_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = break_tiers(policy_copy)
    assert main(["policy", "test", str(policy_copy)]) == 1
    out = capsys.readouterr().out
    assert f"FAIL check ({TIERS}): {TIERS}:{line}: METADATA is not valid YAML" in out
    assert "PASS" not in out  # like `opa test`, nothing runs on a set OPA cannot load


def test_policy_test_cli_refuses_data_breaking_the_schema(policy_copy: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    edit_data(policy_copy, lambda d: d["action_complexity"].update({"llm.chat": "2"}))
    assert main(["policy", "test", str(policy_copy)]) == 1
    assert f"FAIL check ({DATA}): {DATA}:20: action_complexity/llm.chat: '2' is not of type 'integer'" in (
        capsys.readouterr().out)


async def test_engine_refuses_to_start_on_an_invalid_block(policy_copy: Path) -> None:
    line = break_tiers(policy_copy)
    with pytest.raises(PolicyCompileError, match=f"{TIERS}:{line}: METADATA is not valid YAML"):
        await RegorusEngine(PolicySettings(hot_reload=False), policy_copy).start()


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str | None, Exception | None]] = []

    def __call__(self, revision: str | None, exc: Exception | None) -> None:
        self.calls.append((revision, exc))


@pytest.mark.parametrize("breakage", ["metadata", "schema"])
async def test_hot_reload_rejects_and_keeps_the_old_set(policy_copy: Path, breakage: str) -> None:
    recorder, metrics = Recorder(), Metrics()

    def on_reload(revision: str | None, exc: Exception | None) -> None:
        recorder(revision, exc)
        metrics.on_policy_reload(revision, exc)

    e = RegorusEngine(PolicySettings(hot_reload=True, evaluator="interpreter"), policy_copy, on_reload=on_reload)
    await e.start()
    try:
        before = e.revision
        chat = {"agent": {"id": "a", "tier": 1, "maturity": "student", "workspace": "w"},
                "action": "llm.chat", "resource": {"type": "model", "name": "gpt-4o-mini"}}
        assert not e.evaluate(chat).allow
        if breakage == "metadata":
            break_tiers(policy_copy)
            expected = f"{TIERS}:"
        else:  # chat at complexity 1 would let a student chat; the schema refuses 0
            edit_data(policy_copy, lambda d: d["action_complexity"].update({"llm.chat": 0}))
            expected = f"{DATA}:20: action_complexity/llm.chat: 0 is less than the minimum of 1"
        await eventually_async(lambda: recorder.calls, "the watcher to try the edited set", interval=0.05)
        [(revision, exc)] = recorder.calls
        assert revision is None and expected in str(exc)
        assert 'portcullis_policy_reloads_total{result="rejected"} 1.0' in metrics.render().decode()
        assert e.revision == before
        assert not e.evaluate(chat).allow
    finally:
        await e.aclose()
