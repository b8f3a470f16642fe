"""The compiled program's agreement corpus comes from the set itself, whatever its data layout."""
from __future__ import annotations

from pathlib import Path

from adapters.policy.bundle import collect, vocabulary
from adapters.policy.compiled import corpus
from adapters.policy.regorus_engine import RegorusEngine
from gateway.settings import PolicySettings

POLICIES = Path(__file__).resolve().parents[2] / "policies_rego"

# A team's own layout (data.acme.gates, no data.portcullis.config) and a rule shape
# the RVM gets wrong: `level` ends in an undefined `else`, which the program turns
# into "<undefined>". Only an action that is a key in the data shows it.
GATES = """package portcullis

import rego.v1

level(a) := 1 if data.acme.gates[a] == false

else := data.nothing[a]

deny contains sprintf("gate %v", [l]) if {
	data.acme.gates[input.action]
	l := level(input.action)
}

decision := {"allow": count(deny) == 0, "reasons": sort(deny), "obligations": {}, "cache_ttl_s": 60}
"""


def gates_policy(tmp_path: Path) -> Path:
    (tmp_path / "acme").mkdir()
    (tmp_path / "decision.rego").write_text(GATES)
    (tmp_path / "acme" / "data.json").write_text('{"gates": {"deploy.prod": true}}')
    return tmp_path


async def test_disagreement_found_in_a_layout_of_its_own(tmp_path: Path) -> None:
    e = RegorusEngine(PolicySettings(hot_reload=False), gates_policy(tmp_path))
    await e.start()
    try:
        assert await e.compiled_ready() == "interpreter"
        assert e.evaluate({"action": "deploy.prod"}).allow
    finally:
        await e.aclose()


def test_corpus_values_come_from_data_code_and_vocabulary(tmp_path: Path) -> None:
    files = collect(gates_policy(tmp_path))
    docs = corpus(files, vocabulary(files.data))
    actions = {d.get("action") for d in docs}
    assert {"deploy.prod", "gates", "acme", None, 5} <= actions
    default = collect(POLICIES)
    docs = corpus(default, vocabulary(default.data))
    assert {d["agent"]["maturity"] for d in docs if d} >= {"student", "autonomous", None, "no-such-maturity"}
    assert {d["agent"]["tier"] for d in docs if d} >= {0, 4, 5, None, -1, 2.5, "1"}
    names = {d["resource"]["name"] for d in docs if d}
    assert {"claude-sonnet-x.1/y:z", "gpt-4.1-mini", "llm.count_tokens"} <= names
    assert {d["resource"]["type"] for d in docs if d} >= {"model", "tool", None}
