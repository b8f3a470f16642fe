"""The `opa` policy backend against a local server speaking OPA's REST API (tests/support/opa_server.py).

The server evaluates with the embedded engine, so its decisions must equal RegorusEngine's;
what is tested here is the adapter: the documented request and response shapes, undefined
results, errors, timeouts, a server that is down, the bounded pool, the revision (bundle
vs directory hash) and the batch call. Everything runs on the harness's loop thread,
where the test server's regorus engine lives.
"""
from __future__ import annotations

import asyncio
import shutil
import socket
from pathlib import Path
from typing import Any, Iterator

import pytest

from adapters.policy.bundle import collect
from adapters.policy.opa import OPAEngine
from adapters.policy.regorus_engine import RegorusEngine
from gateway.errors import PolicyCompileError, PolicyError
from gateway.protocols import PolicyEngine, RemotePolicyEngine
from gateway.settings import PolicySettings
from tests.support.harness import LoopThread
from tests.support.opa_server import OPAServer
from tests.support.waiting import eventually
from tests.unit.test_policy_engine import ORDERS_TOOLS, POLICIES, model_input, tool_input

CONFLICT = ('package portcullis\n\n'
            'default decision := {"allow": false, "reasons": ["default"], "obligations": {}, "cache_ttl_s": 5}\n\n'
            'decision := {"allow": true, "reasons": ["a"]} if input.action == "conflict"\n\n'
            'decision := {"allow": false, "reasons": ["b"]} if input.action == "conflict"\n')
UNDEFINED = ('package portcullis\n\n'
             'decision := {"allow": true, "reasons": [], "obligations": {}, "cache_ttl_s": 5} '
             'if input.action != "nothing"\n')


def settings(url: str, **opa: Any) -> PolicySettings:
    return PolicySettings(backend="opa", hot_reload=opa.pop("hot_reload", False),
                          opa={"url": url, "timeout_s": 5.0, **opa})


@pytest.fixture
def opa(loop_thread: LoopThread) -> Iterator[OPAServer]:
    server = loop_thread.run(OPAServer(POLICIES).start())
    yield server
    loop_thread.run(server.stop())


@pytest.fixture
def engines(loop_thread: LoopThread) -> Iterator[list[Any]]:
    made: list[Any] = []
    yield made
    for e in made:
        loop_thread.run(e.aclose())


def started(loop_thread: LoopThread, engines: list[Any], s: PolicySettings, policy_dir: Path = POLICIES,
            **kw: Any) -> OPAEngine:
    e = OPAEngine(s, policy_dir, **kw)
    engines.append(e)
    loop_thread.run(e.start())
    return e


def decide(loop_thread: LoopThread, e: OPAEngine, *docs: dict[str, Any]) -> list[Any]:
    return loop_thread.run(e.aevaluate_many(list(docs)))


def one_policy(tmp_path: Path, source: str) -> Path:
    (tmp_path / "p" / "portcullis").mkdir(parents=True)
    (tmp_path / "p" / "portcullis" / "decision.rego").write_text(source)
    return tmp_path / "p"


def test_is_a_remote_policy_engine(loop_thread, opa, engines):
    e = started(loop_thread, engines, settings(opa.url))
    assert isinstance(e, PolicyEngine) and isinstance(e, RemotePolicyEngine)
    assert e.problem is None
    # The same files hash to the same revision as the regorus engine's; the vocabulary is data.json's.
    assert e.revision == collect(POLICIES).revision
    assert e.vocabulary.maturities == ("student", "intern", "supervised", "autonomous")
    with pytest.raises(PolicyError):  # a blocking call on the event loop would stall it: refused
        e.evaluate(model_input("intern-bot", "llm.chat", "gpt-4o-mini"))


def test_decisions_equal_the_embedded_engine_and_use_the_data_api(loop_thread, opa, engines):
    e = started(loop_thread, engines, settings(opa.url))
    ref = RegorusEngine(PolicySettings(hot_reload=False, evaluator="interpreter"), POLICIES)
    engines.append(ref)
    loop_thread.run(ref.start())
    docs = [model_input(who, action, model) for who in ("observer", "intern-bot", "architect")
            for action in ("llm.chat", "llm.models") for model in ("gpt-4o-mini", "gpt-4o")]
    opa.requests.clear()
    for doc in docs:
        [got] = decide(loop_thread, e, doc)
        want = loop_thread.run(_sync(ref.evaluate, doc))
        assert (got.allow, got.reasons, dict(got.obligations), got.cache_ttl_s) == \
               (want.allow, want.reasons, dict(want.obligations), want.cache_ttl_s), doc
        assert got.revision == e.revision
    # Each decision is one POST to the Data API at the decision's path, asking for provenance.
    assert opa.requests == [("POST", "/v1/data/portcullis/decision?provenance=true")] * len(docs)
    [allowed] = decide(loop_thread, e, model_input("intern-bot", "llm.chat", "gpt-4o-mini"))
    [denied] = decide(loop_thread, e, model_input("observer", "llm.chat", "gpt-4o"))
    assert allowed.allow and allowed.obligations["max_output_tokens"] == 2048
    assert not denied.allow and denied.reasons


async def _sync(fn: Any, *args: Any) -> Any:
    return fn(*args)


def test_batch_is_one_query_call(loop_thread, opa, engines):
    e = started(loop_thread, engines, settings(opa.url))
    docs = [tool_input("builder", "tool.call", t) for t in ORDERS_TOOLS]
    opa.requests.clear()
    batch = decide(loop_thread, e, *docs)
    assert opa.requests == [("POST", "/v1/query")]  # one round trip for the whole batch
    singles = [decide(loop_thread, e, d)[0] for d in docs]
    assert [(d.allow, d.reasons) for d in batch] == [(d.allow, d.reasons) for d in singles]
    assert [d.allow for d in batch] == [True, True, False]  # read, refund: yes; delete: no (builder)


def test_undefined_decision_fails_closed(loop_thread, engines, tmp_path):
    server = loop_thread.run(OPAServer(one_policy(tmp_path, UNDEFINED)).start())
    try:
        e = started(loop_thread, engines, settings(server.url), tmp_path / "p")
        assert decide(loop_thread, e, {"action": "something"})[0].allow
        with pytest.raises(PolicyError, match="undefined"):
            decide(loop_thread, e, {"action": "nothing"})  # OPA answers {} : never an allow
        with pytest.raises(PolicyError, match="undefined"):
            decide(loop_thread, e, {"action": "something"}, {"action": "nothing"})  # one undefined in a batch
    finally:
        loop_thread.run(server.stop())


def test_opa_errors_fail_closed_with_opas_message(loop_thread, engines, tmp_path):
    server = loop_thread.run(OPAServer(one_policy(tmp_path, CONFLICT)).start())
    try:
        e = started(loop_thread, engines, settings(server.url), tmp_path / "p")
        assert not decide(loop_thread, e, {"action": "x"})[0].allow
        with pytest.raises(PolicyError, match="OPA answered 500: internal_error") as err:
            decide(loop_thread, e, {"action": "conflict"})  # an evaluation error: OPA's 500
        assert err.value.status == 503
        server.fail = (400, "invalid_parameter", "body contains malformed input document")
        with pytest.raises(PolicyError, match="400: invalid_parameter: body contains malformed"):
            decide(loop_thread, e, {"action": "x"})
        server.fail = None
        assert e.problem is None  # a 4xx or an evaluation error is not OPA being down
        server.fail = (503, "unavailable", "server is shutting down")
        with pytest.raises(PolicyError, match="503"):
            decide(loop_thread, e, {"action": "x"})
        assert e.problem and "503" in e.problem
    finally:
        loop_thread.run(server.stop())


def test_timeout_fails_closed(loop_thread, opa, engines):
    e = started(loop_thread, engines, settings(opa.url, timeout_s=0.05))
    opa.delay_s = 1.0
    with pytest.raises(PolicyError, match="timed out"):
        decide(loop_thread, e, model_input("intern-bot", "llm.chat", "gpt-4o-mini"))
    assert e.problem and "timed out" in e.problem
    opa.delay_s = 0.0
    assert decide(loop_thread, e, model_input("intern-bot", "llm.chat", "gpt-4o-mini"))[0].allow
    assert e.problem is None


def test_down_at_start_then_up_recovers(loop_thread, engines):
    held = socket.socket()  # bound, not listening: connections are refused
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    held.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{held.getsockname()[1]}"
    e = started(loop_thread, engines, settings(url, poll_s=0.05))
    # It starts anyway, on the directory's revision, and says why it cannot decide.
    assert e.revision == collect(POLICIES).revision and e.problem and "OPA at 127.0.0.1" in e.problem
    with pytest.raises(PolicyError, match="OPA at 127.0.0.1"):
        decide(loop_thread, e, model_input("intern-bot", "llm.chat", "gpt-4o-mini"))
    server = loop_thread.run(OPAServer(POLICIES).start(sock=held))
    try:
        eventually(lambda: e.problem is None, "the poll to find OPA up")
        assert decide(loop_thread, e, model_input("intern-bot", "llm.chat", "gpt-4o-mini"))[0].allow
        loop_thread.run(server.stop())  # and down again
        with pytest.raises(PolicyError):
            decide(loop_thread, e, model_input("intern-bot", "llm.chat", "gpt-4o-mini"))
        assert e.problem is not None
    finally:
        loop_thread.run(server.stop())


def test_connection_pool_is_bounded(loop_thread, opa, engines):
    e = started(loop_thread, engines, settings(opa.url, max_connections=2, timeout_s=5.0))
    opa.delay_s = 0.05
    doc = model_input("intern-bot", "llm.chat", "gpt-4o-mini")

    async def burst() -> list[Any]:
        return await asyncio.gather(*(e.aevaluate_many([doc]) for _ in range(8)))

    assert all(d.allow for [d] in loop_thread.run(burst()))
    assert opa.max_in_flight == 2  # 8 callers, never more than 2 connections at once


def test_revision_is_the_bundle_revision_when_opa_has_one(loop_thread, engines):
    server = loop_thread.run(OPAServer(POLICIES, bundle_revision="git-abc123").start())
    seen: list[tuple[str | None, Any]] = []
    try:
        e = started(loop_thread, engines, settings(server.url), on_reload=lambda r, x: seen.append((r, x)))
        assert e.revision == "git-abc123"
        assert decide(loop_thread, e, model_input("intern-bot", "llm.chat", "gpt-4o-mini"))[0].revision == "git-abc123"
        server.bundle_revision = "git-def456"  # a new bundle activated: the next answer says so
        [d] = decide(loop_thread, e, model_input("intern-bot", "llm.chat", "gpt-4o-mini"))
        assert d.revision == e.revision == "git-def456" and ("git-def456", None) in seen
        server.bundle_revision = "git-0789"  # seen by the poll too, while every decision is a cache hit
        loop_thread.run(e.poll_once())
        assert e.revision == "git-0789"
        server.bundle_revision = None  # no bundle: back to the directory's hash
        loop_thread.run(e.poll_once())
        assert e.revision == collect(POLICIES).revision
    finally:
        loop_thread.run(server.stop())


def test_revision_follows_the_directory_and_rejects_a_bad_set(loop_thread, opa, engines, tmp_path):
    pol = tmp_path / "policies"
    shutil.copytree(POLICIES, pol)
    seen: list[tuple[str | None, Any]] = []
    e = started(loop_thread, engines, settings(opa.url, hot_reload=True), pol,
                on_reload=lambda r, x: seen.append((r, x)))
    first = e.revision
    assert first == collect(pol).revision
    data = pol / "portcullis" / "config" / "data.json"
    data.write_text(data.read_text().replace('"cache_ttl_s": 60', '"cache_ttl_s": 61'))
    # the watcher (like a git-sync commit landing) moves the revision to the new content hash
    eventually(lambda: e.revision == collect(pol).revision != first, "the watcher to see the edit")
    assert seen[-1] == (e.revision, None)
    good = e.revision
    (pol / "portcullis" / "broken.rego").write_text("package portcullis\n\nthis is not rego\n")
    assert loop_thread.run(e.reload()) == good  # a set OPA would refuse keeps the old revision
    assert seen[-1][0] is None and isinstance(seen[-1][1], PolicyCompileError)


def test_vocabulary_check_applies(loop_thread, opa, engines):
    with pytest.raises(PolicyCompileError, match="leave out"):
        started(loop_thread, engines, settings(opa.url), check_vocabulary=lambda v: ["agent x: maturity gone"])


def test_health_and_bundle_activation_set_the_problem(loop_thread, opa, engines):
    e = started(loop_thread, engines, settings(opa.url))
    opa.healthy = False
    loop_thread.run(e.poll_once())
    assert e.problem and "not healthy" in e.problem
    opa.healthy, opa.bundles_activated = True, False
    loop_thread.run(e.poll_once())
    assert e.problem and "not healthy" in e.problem
    assert ("GET", "/health") in opa.requests
    opa.bundles_activated = True
    loop_thread.run(e.poll_once())
    assert e.problem is None
