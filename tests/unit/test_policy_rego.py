"""The default Rego policy set passes its own tests, and the runner reports failures."""
from __future__ import annotations

import shutil
from pathlib import Path

from adapters.policy.regorus_testrunner import TestResult, format_results, run_policy_tests

POLICIES = Path(__file__).resolve().parents[2] / "policies_rego"


def test_default_policies_pass_their_tests() -> None:
    results = run_policy_tests(POLICIES)
    failed = [f"{r.name}: {r.error}" for r in results if not r.passed]
    assert failed == []
    assert len(results) >= 25
    packages = {r.name.rsplit(".", 1)[0] for r in results}
    assert packages == {"data.portcullis_test", "data.portcullis.tiers_test",
                        "data.portcullis.maturity_test"}
    text, code = format_results(results)
    assert code == 0
    assert text.endswith(f"{len(results)} passed, 0 failed")


def test_every_policy_file_has_a_test_sibling() -> None:
    for rego in POLICIES.rglob("*.rego"):
        if not rego.name.endswith("_test.rego"):
            assert rego.with_name(rego.stem + "_test.rego").is_file(), rego


def test_failing_and_erroring_tests_are_reported(tmp_path: Path) -> None:
    shutil.copytree(POLICIES, tmp_path / "p")
    (tmp_path / "p" / "portcullis" / "broken_test.rego").write_text(
        "package portcullis.broken_test\n\n"
        "import rego.v1\n\n"
        "import data.portcullis.decision\n\n"
        "test_wrong_expectation if {\n"
        '\tdecision.allow with input as {"action": "llm.chat"}\n'
        "}\n\n"
        "test_runtime_error if {\n"
        '\tto_number("not a number") == 1\n'
        "}\n\n"
        "test_still_fine if true\n"
    )
    results = run_policy_tests(tmp_path / "p")
    by_name = {r.name: r for r in results}
    wrong = by_name["data.portcullis.broken_test.test_wrong_expectation"]
    assert not wrong.passed and wrong.error == "expected true, got undefined"
    assert wrong.file == "portcullis/broken_test.rego"
    error = by_name["data.portcullis.broken_test.test_runtime_error"]
    assert not error.passed and "could not parse string as number" in error.error
    assert "Stack backtrace" not in error.error
    assert by_name["data.portcullis.broken_test.test_still_fine"].passed

    text, code = format_results(results)
    assert code == 1
    assert "FAIL data.portcullis.broken_test.test_wrong_expectation" in text
    assert "PASS data.portcullis.broken_test.test_still_fine" in text
    assert text.splitlines()[-1] == f"{len(results) - 2} passed, 2 failed"


def test_unparsable_policy_is_one_failure(tmp_path: Path) -> None:
    (tmp_path / "bad.rego").write_text("package bad\n\nallow if {\n")
    results = run_policy_tests(tmp_path)
    assert len(results) == 1 and not results[0].passed
    assert "bad.rego" in results[0].error
    assert format_results(results)[1] == 1


def test_no_tests_found_is_a_failure(tmp_path: Path) -> None:
    (tmp_path / "p.rego").write_text("package p\n\nimport rego.v1\n\nallow if true\n")
    assert run_policy_tests(tmp_path) == []
    text, code = format_results([])
    assert code == 1 and "0 passed, 0 failed" in text


def test_format_passing_results() -> None:
    results = [TestResult("data.a_test.test_x", "a_test.rego", True)]
    assert format_results(results) == ("PASS data.a_test.test_x\n1 passed, 0 failed", 0)
