"""The project's Rego test runner (no `opa` binary here): `opa test` on regorus.

Loads every module, tests included, with the same bundle rules as the engine,
finds the `test_` rules of every package and evaluates each on a fresh clone of
the engine, so no test sees another's state. A test passes only when its value
is `true`. Like `opa test`, it runs nothing for a set that OPA would refuse to
load (lint.py's checks): each problem is then one failed result.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from adapters.policy import lint
from adapters.policy.bundle import build_engine, collect, error_text
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


def run_policy_tests(policy_dir: Path) -> list[TestResult]:
    """Run every test rule under `policy_dir`; a set that does not load is one failed result."""
    policy_dir = Path(policy_dir)
    try:
        files = collect(policy_dir, include_tests=True)
        problems = lint.check(files)
        if problems:
            return [TestResult(name="check", file=p.file, passed=False, error=str(p)) for p in problems]
        engine = build_engine(files)
        tests = _discover(engine.get_ast_as_json())
    except (PolicyCompileError, ValueError, KeyError) as e:
        return [TestResult(name="load", file=str(policy_dir), passed=False, error=str(e))]
    results = []
    for name, file in tests:
        try:
            value = engine.clone().eval_rule(name)
        except Exception as e:  # a runtime error in a test is that test's failure
            results.append(TestResult(name, file, False, error_text(e)))
            continue
        if value is True:
            results.append(TestResult(name, file, True))
        else:
            got = "undefined" if value is None else repr(value)
            results.append(TestResult(name, file, False, f"expected true, got {got}"))
    return results


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
