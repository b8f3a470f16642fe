"""The project's Rego test runner (no `opa` binary here): `opa test` on regorus.

Loads every module, tests included, with the same bundle rules as the engine,
finds the `test_` rules of every package and evaluates each on a fresh clone of
the engine, so no test sees another's state. A test passes only when its value
is `true`. Like `opa test`, it runs nothing for a set that OPA would refuse to
load (lint.py's checks): each problem is then one failed result.

With coverage (`policy test --coverage`, like `opa test --coverage`), regorus
records the lines each test's evaluation reached; the per-test reports are
merged (a line counts as covered when any test reached it) for each policy file,
the `_test.rego` files left out.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from adapters.policy import lint
from adapters.policy.bundle import build_engine, collect, error_text, is_test_file
from gateway.errors import PolicyCompileError


@dataclass(frozen=True, slots=True)
class TestResult:
    __test__ = False  # not a pytest test class, despite the name

    name: str  # data.<package>.<rule>, e.g. data.portcullis_test.test_x
    file: str
    passed: bool
    error: str | None = None


def _ref_path(node: Any, source: bytes) -> list[str]:
    """Turn an AST reference (package path, rule head) into its parts."""
    if not isinstance(node, dict) or len(node) != 1:
        raise ValueError(f"unexpected reference node {node!r}")
    (kind, body), = node.items()
    if kind == "Var":
        return [body["value"]]
    if kind == "RefDot":
        return _ref_path(body["refr"], source) + [body["field"][1]]
    # Anything rarer (package a["b"]): fall back to the source text of the span.
    span = body["span"]
    return [source[span["start"]:span["end"]].decode()]


def _discover(ast_json: str) -> list[tuple[str, str]]:
    """(rule path, file) of every test rule, in file order, each once."""
    seen: dict[str, str] = {}
    for module in orjson.loads(ast_json):
        file = module["source"]["file"]
        source = module["source"]["contents"].encode()
        package = ".".join(_ref_path(module["ast"]["package"]["refr"], source))
        for rule in module["ast"]["rules"]:
            head = rule.get("Spec", {}).get("head", {})
            compr = head.get("Compr")  # `test_x if {...}`; functions and sets are not tests
            if compr is None:
                continue
            parts = _ref_path(compr["refr"], source)
            if len(parts) == 1 and parts[0].startswith("test_"):
                seen.setdefault(f"data.{package}.{parts[0]}", file)
    return list(seen.items())


@dataclass(frozen=True, slots=True)
class FileCoverage:
    file: str  # relative path, e.g. portcullis/decision.rego
    covered: tuple[int, ...]
    not_covered: tuple[int, ...]  # line numbers no test reached

    @property
    def total(self) -> int:
        return len(self.covered) + len(self.not_covered)


def run_policy_tests(policy_dir: Path) -> list[TestResult]:
    """Run every test rule under `policy_dir`; a set that does not load is one failed result."""
    return _run(Path(policy_dir), coverage=False)[0]


def run_policy_tests_with_coverage(policy_dir: Path) -> tuple[list[TestResult], list[FileCoverage]]:
    """`run_policy_tests`, and the lines of each policy file the tests reached (none if the set does not load)."""
    return _run(Path(policy_dir), coverage=True)


def _merge_coverage(reports: list[str], modules: list[str]) -> list[FileCoverage]:
    covered: dict[str, set[int]] = {m: set() for m in modules}
    lines: dict[str, set[int]] = {m: set() for m in modules}
    for text in reports:
        for f in orjson.loads(text).get("files", []):
            if f["path"] in lines:
                covered[f["path"]].update(f["covered"])
                lines[f["path"]].update(f["covered"], f["not_covered"])
    # A file no evaluation entered at all is absent from every report: it shows with no lines
    # (format_coverage says so) and, having none covered, counts as 0%.
    return [FileCoverage(m, tuple(sorted(covered[m])), tuple(sorted(lines[m] - covered[m]))) for m in modules]


def _run(policy_dir: Path, *, coverage: bool) -> tuple[list[TestResult], list[FileCoverage]]:
    try:
        files = collect(policy_dir, include_tests=True)
        problems = lint.check(files)
        if problems:
            return [TestResult(name="check", file=p.file, passed=False, error=str(p)) for p in problems], []
        engine = build_engine(files)
        tests = _discover(engine.get_ast_as_json())
    except (PolicyCompileError, ValueError, KeyError) as e:
        return [TestResult(name="load", file=str(policy_dir), passed=False, error=str(e))], []
    if coverage:
        engine.set_enable_coverage(True)  # clones inherit it; each clone keeps its own data
    results, reports = [], []
    for name, file in tests:
        clone = engine.clone()
        results.append(_run_one(clone, name, file))
        if coverage:
            reports.append(clone.get_coverage_report_as_json())
    if not coverage:
        return results, []
    modules = [path for path, _ in files.modules if not is_test_file(path)]
    return results, _merge_coverage(reports, modules)


def _run_one(engine: Any, name: str, file: str) -> TestResult:
    try:
        value = engine.eval_rule(name)
    except Exception as e:  # noqa: BLE001 - a runtime error in a test is that test's failure
        return TestResult(name, file, False, error_text(e))
    if value is True:
        return TestResult(name, file, True)
    got = "undefined" if value is None else repr(value)
    return TestResult(name, file, False, f"expected true, got {got}")


def format_results(results: list[TestResult]) -> tuple[str, int]:
    """`PASS name` / `FAIL name: error` lines and a summary; exit code 1 on failure or no tests."""
    lines = []
    for r in results:
        if r.passed:
            lines.append(f"PASS {r.name}")
        else:
            error = (r.error or "failed").replace("\n", "\n    ")
            lines.append(f"FAIL {r.name} ({r.file}): {error}")
    passed = sum(r.passed for r in results)
    failed = len(results) - passed
    lines.append(f"{passed} passed, {failed} failed")
    if not results:
        lines.append("no tests found")
    return "\n".join(lines), 0 if results and failed == 0 else 1


def _ranges(lines: tuple[int, ...]) -> str:
    """(3, 4, 5, 9) -> "3-5, 9"."""
    out: list[str] = []
    start = prev = None
    for n in [*lines, None]:
        if start is not None and (n is None or n != prev + 1):
            out.append(str(start) if start == prev else f"{start}-{prev}")
            start = None
        if start is None:
            start = n
        prev = n
    return ", ".join(out)


def coverage_percent(files: list[FileCoverage]) -> float:
    total = sum(f.total for f in files)
    return 100.0 * sum(len(f.covered) for f in files) / total if total else 0.0


def format_coverage(files: list[FileCoverage], min_coverage: float | None = None) -> tuple[str, int]:
    """Per policy file `covered/total lines (P%)` and the lines never reached, a total;
    exit code 1 when the total is under `min_coverage` (percent)."""
    lines = ["coverage:"]
    for f in files:
        if not f.total:
            lines.append(f"  {f.file}: no line reached by any test")
            continue
        pct = 100.0 * len(f.covered) / f.total
        text = f"  {f.file}: {len(f.covered)}/{f.total} lines ({pct:.1f}%)"
        if f.not_covered:
            text += f", not reached: {_ranges(f.not_covered)}"
        lines.append(text)
    pct = coverage_percent(files)
    covered, total = sum(len(f.covered) for f in files), sum(f.total for f in files)
    lines.append(f"total: {covered}/{total} lines ({pct:.1f}%)")
    # A file no test entered counts against the minimum even though its lines are unknown.
    short = min_coverage is not None and (pct < min_coverage or (min_coverage > 0 and any(not f.total for f in files)))
    if short:
        lines.append(f"coverage {pct:.1f}% is under the minimum {min_coverage:g}%")
    return "\n".join(lines), 1 if short else 0
