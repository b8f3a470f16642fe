"""bench/fuzz.py stays runnable: every target over its seeds and some mutations, and findings are caught."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from bench import fuzz
from gateway.errors import InvalidRequest


@pytest.mark.parametrize("target", fuzz.TARGETS)
def test_each_target_runs_its_seeds_and_mutations_without_findings(target: str) -> None:
    findings = fuzz.Findings(None)
    fuzz.fallback(target, None, 400, findings, seed=9)
    assert findings.runs == 400
    assert findings.seen == {}, list(findings.seen.values())[0]["traceback"]


def test_findings_keep_other_exceptions_once_and_pass_gateway_errors() -> None:
    def target(data: bytes) -> None:
        if data == b"refuse":
            raise InvalidRequest("a refusal is an answer")
        {}[data]  # a KeyError: a finding

    findings = fuzz.Findings(None)
    for data in (b"refuse", b"a", b"b"):
        findings.run(target, data)
    [(key, found)] = findings.seen.items()
    assert key.startswith("KeyError at test_fuzz_harness.py:") and found["count"] == 2


def test_the_mutations_reach_a_wrong_type_in_a_governed_field() -> None:
    """The class of bug issue 9 found by hand (`"tools": 5` iterated): a planted one is found."""
    def planted(data: bytes) -> None:
        body = json.loads(data[1:])
        for _ in body.get("tools") or ():  # a TypeError when tools is a number or true
            pass

    findings = fuzz.Findings(None)
    fuzz.fallback("openai_parse", None, 2000, findings, seed=1, fn=planted)
    assert any(k.startswith("TypeError") for k in findings.seen), list(findings.seen)


def test_the_fuzz_command_runs_with_the_engine_at_hand(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # atheris comes with the bench extra; without it the command falls back to its own mutation loop.
    engine = "atheris" if importlib.util.find_spec("atheris") is not None else "fallback"
    proc = subprocess.run([sys.executable, "-m", "bench", "fuzz", "--seconds", "1", "--target", "jsonrpc_parse",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert f"engine: {engine}" in proc.stdout and "jsonrpc_parse: 0 finding(s)" in proc.stdout, \
        proc.stdout + proc.stderr
