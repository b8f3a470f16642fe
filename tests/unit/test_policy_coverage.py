"""`portcullis policy test --coverage`: regorus line coverage, merged over the tests, per policy file."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from adapters.policy.regorus_testrunner import (
    format_coverage,
    run_policy_tests_with_coverage,
)
from tests.support.harness import REPO, copy_policies

POLICIES = REPO / "policies_rego"
# Appended to tiers.rego, and no test reaches it.
UNTESTED = '''
# METADATA
# description: Whether a tool call names the refund tool (no test reaches this rule).
refund_call if {
	input.action == "tool.call"
	input.resource.name == "refund_order"
}
'''


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], check=False, capture_output=True,
                          text=True, cwd=REPO, timeout=120)


def test_default_policies_report_coverage_per_policy_file() -> None:
    results, files = run_policy_tests_with_coverage(POLICIES)
    assert results and all(r.passed for r in results)
    expected = sorted(p.relative_to(POLICIES).as_posix() for p in POLICIES.rglob("*.rego")
                      if not p.name.endswith("_test.rego"))
    assert [f.file for f in files] == expected  # the policy files, not the _test.rego files
    assert all(f.total > 0 and f.covered for f in files)
    r = cli("policy", "test", "--coverage")
    assert r.returncode == 0, r.stdout + r.stderr
    for f in files:
        assert f"  {f.file}: {len(f.covered)}/{f.total} lines (" in r.stdout
    assert "\ntotal: " in r.stdout


def test_an_untested_rule_is_reported_with_exactly_its_lines(tmp_path: Path) -> None:
    baseline = {f.file: f for f in run_policy_tests_with_coverage(POLICIES)[1]}
    pol = copy_policies(tmp_path / "policies")
    tiers = pol / "portcullis" / "tiers" / "tiers.rego"
    tiers.write_text(tiers.read_text() + UNTESTED)
    # The rule's lines regorus counts: its body's two expressions (the head is not a statement).
    source = tiers.read_text().splitlines()
    rule_lines = tuple(n for n, line in enumerate(source, 1)
                       if line.startswith("\tinput.") and n > len(source) - 4)
    assert len(rule_lines) == 2

    results, files = run_policy_tests_with_coverage(pol)
    assert results and all(r.passed for r in results)  # the tests still pass: only coverage drops
    by_file = {f.file: f for f in files}
    changed = by_file.pop("portcullis/tiers/tiers.rego")
    assert changed.not_covered == rule_lines
    assert changed.covered == baseline["portcullis/tiers/tiers.rego"].covered  # nothing else moved
    assert all(f == baseline[name] for name, f in by_file.items())

    text, code = format_coverage(files, 100)
    assert code == 1 and "is under the minimum 100%" in text
    r = cli("policy", "test", str(pol), "--min-coverage", "100")
    assert r.returncode == 1, r.stdout + r.stderr
    covered = len(changed.covered)
    assert (f"portcullis/tiers/tiers.rego: {covered}/{covered + 2} lines "
            f"({100 * covered / (covered + 2):.1f}%), not reached: {rule_lines[0]}-{rule_lines[1]}") in r.stdout
    assert cli("policy", "test", str(pol), "--coverage").returncode == 0  # reported, not enforced
    assert cli("policy", "test", str(pol), "--min-coverage", "50").returncode == 0
