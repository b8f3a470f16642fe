"""The shipped default, `policy.evaluator: compiled`, through a real gateway (the harness runs the
interpreter): once the background agreement check swaps the compiled program in, the real SDKs get
the same answers, and the audit rows the same decisions, as from the interpreter."""
from __future__ import annotations

import json

import openai

from tests.support.harness import KEYS

MSG = [{"role": "user", "content": "hi"}]
CALLS = [("intern-bot", "gpt-4.1-mini"), ("intern-bot", "gpt-4o"), ("builder", "gpt-4o"),
         ("observer", "gpt-4o-mini"), ("architect", "o3-mini")]


def answers(gw) -> list[tuple]:
    out = []
    for agent, model in CALLS:
        c = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS[agent], max_retries=0)
        try:
            r = c.chat.completions.with_raw_response.create(model=model, messages=MSG)
            rid, status = r.headers["x-request-id"], 200
        except openai.APIStatusError as e:
            rid, status = e.response.headers["x-request-id"], e.status_code
        row = gw.audit_row(rid)
        out.append((agent, model, status, row["decision"], tuple(reasons_of(row["reasons"]))))
    return out


def reasons_of(stored: str | list) -> list:
    return json.loads(stored) if isinstance(stored, str) else stored


def test_the_compiled_program_serves_the_same_decisions_as_the_interpreter(make_gateway, loop_thread) -> None:
    compiled = make_gateway(policy__evaluator="compiled")
    engine = compiled.app.state.services.policy.engine
    assert loop_thread.run(engine.compiled_ready(), timeout=120) == "compiled"
    interpreted = make_gateway()
    assert interpreted.app.state.services.policy.engine.evaluator == "interpreter"
    got = answers(compiled)
    assert got == answers(interpreted)
    assert {status for _, _, status, _, _ in got} == {200, 403}
