"""The LifecycleStore contract, one suite run against every implementation (uvicorn style).

SQLite on a tmp file; PostgreSQL on the machine's real server, under a table prefix unique
to each test, whose tables are dropped afterwards. "Replicas" are two store objects on the
same database: two connections to one SQLite file, two pools on one PostgreSQL.
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from adapters.lifecycle.postgres import PostgresLifecycleStore
from adapters.lifecycle.sqlite import SQLiteLifecycleStore
from gateway import registry
from gateway.errors import BackendError
from gateway.lifecycle.model import (
    AgentState,
    Approval,
    GovernanceEvent,
    LifecycleChange,
    Outcome,
    Proposal,
    StoredReport,
)
from gateway.protocols import LifecycleStore
from gateway.readiness import is_dependency
from gateway.settings_lifecycle import LifecycleSettings
from tests.support import pg
from tests.support.services import pg_dsn, unique

WINDOW = 100.0


class Backend:
    """Makes stores on one database and removes what they made."""

    def __init__(self, name: str, tmp: Path) -> None:
        self.name = name
        self.stores: list[Any] = []
        if name == "sqlite":
            self.path = tmp / "var" / "lifecycle.db"
            self.settings = LifecycleSettings()
        else:
            self.dsn = pg_dsn()
            self.settings = LifecycleSettings(store="postgres", dsn=self.dsn, table_prefix=unique("lc_t_"))

    async def store(self) -> Any:
        if self.name == "sqlite":
            s: Any = SQLiteLifecycleStore(self.settings, self.path)
        else:
            s = PostgresLifecycleStore(self.settings)
        await s.start()
        self.stores.append(s)
        return s

    async def cleanup(self) -> None:
        for s in self.stores:
            await s.aclose()
        if self.name == "postgres":
            found = await pg.fetch(self.dsn, "SELECT tablename FROM pg_tables WHERE tablename LIKE $1",
                                   self.settings.table_prefix + "%")
            for r in found:
                await pg.drop_table(self.dsn, r["tablename"])


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request, tmp_path):
    b = Backend(request.param, tmp_path)
    yield b
    await b.cleanup()


@pytest.fixture
async def store(backend):
    return await backend.store()


def change(agent: str, kind: str = "revoke", ts: float = 50.0, **new: Any) -> LifecycleChange:
    return LifecycleChange(agent_id=agent, change=kind, actor="ops", reason=f"{kind} it",
                           old={k: None for k in new}, new=new, ts=ts)


def proposal(pid: str, agent: str = "bot", created_at: float = 1.0) -> Proposal:
    return Proposal(id=pid, agent_id=agent, created_at=created_at, from_tier=1, to_tier=2,
                    from_maturity="intern", to_maturity="supervised", reason="50 compliant requests")


def approval(aid: str, agent: str = "bot", digest: str = "d1", created_at: float = 10.0,
             expires_at: float = 100.0) -> Approval:
    return Approval(id=aid, agent_id=agent, action="tool.call", resource_type="tool",
                    resource_name="delete_customer", input_digest=digest, reason="destructive",
                    created_at=created_at, expires_at=expires_at)


def event(eid: str, ts: float, severity: str = "LOW", agent: str | None = "bot", workspace: str | None = "w1",
          **details: Any) -> GovernanceEvent:
    return GovernanceEvent(id=eid, ts=ts, event_type="agent.revoked", severity=severity,  # type: ignore[arg-type]
                           agent_id=agent, workspace=workspace, details=details)


# ---- seams ---------------------------------------------------------------------------------

def test_registry_names_both_stores():
    assert registry.load("lifecycle_store", "sqlite") is SQLiteLifecycleStore
    assert registry.load("lifecycle_store", "postgres") is PostgresLifecycleStore


async def test_store_satisfies_protocol_and_readiness(store, backend):
    assert isinstance(store, LifecycleStore)
    # PostgreSQL is a network dependency (/readyz, reconnect at boot); an SQLite problem fails the boot.
    assert is_dependency(store) is (backend.name == "postgres")
    if backend.name == "postgres":
        assert await store.probe() is None


# ---- agent state and counting ------------------------------------------------------------

async def test_count_from_nothing(store):
    assert await store.state("bot") is None
    assert await store.states() == {}
    s = await store.count(Outcome("bot", 10.0, "compliant"), WINDOW)
    assert s == AgentState(agent_id="bot", window_start=10.0, consecutive_compliant=1, updated_at=10.0, version=1)
    s = await store.count(Outcome("bot", 11.0, "compliant"), WINDOW)
    assert (s.consecutive_compliant, s.total_errors, s.version) == (2, 0, 2)
    s = await store.count(Outcome("bot", 12.0, "error", signature="upstream:400"), WINDOW)
    assert (s.consecutive_compliant, s.total_errors, s.violations) == (0, 1, 0)
    assert s.same_errors == {"upstream:400": 1}
    s = await store.count(Outcome("bot", 13.0, "violation", signature="deny:forbidden_tool", severity="HIGH"),
                          WINDOW)
    s = await store.count(Outcome("bot", 14.0, "error", signature="upstream:400"), WINDOW)
    s = await store.count(Outcome("bot", 15.0, "error"), WINDOW)  # no signature: only the total
    assert (s.total_errors, s.violations, s.consecutive_compliant) == (4, 1, 0)
    assert s.same_errors == {"upstream:400": 2, "deny:forbidden_tool": 1}
    assert (s.window_start, s.updated_at, s.version) == (10.0, 15.0, 6)
    assert await store.state("bot") == s
    assert await store.states() == {"bot": s}


async def test_window_restarts_the_counters(store):
    await store.count(Outcome("bot", 1000.0, "error", signature="a"), WINDOW)
    await store.apply(change("bot", "reset", ts=1001.0, budget_warned=True))
    await store.count(Outcome("bot", 1002.0, "compliant"), WINDOW)
    s = await store.count(Outcome("bot", 1000.0 + WINDOW - 0.5, "violation", signature="b"), WINDOW)
    assert (s.window_start, s.total_errors, s.violations, s.budget_warned) == (1000.0, 2, 1, True)
    # ts - window_start >= window_s: the counters restart from this outcome.
    s = await store.count(Outcome("bot", 1000.0 + WINDOW, "error", signature="b"), WINDOW)
    assert (s.window_start, s.total_errors, s.violations, s.budget_warned) == (1000.0 + WINDOW, 1, 0, False)
    assert s.same_errors == {"b": 1}
    s = await store.count(Outcome("bot", 2000.0, "compliant"), WINDOW)
    assert (s.window_start, s.total_errors, s.same_errors, s.consecutive_compliant) == (2000.0, 0, {}, 1)
    # consecutive_compliant is never windowed.
    s = await store.count(Outcome("bot", 5000.0, "compliant"), WINDOW)
    assert (s.window_start, s.consecutive_compliant) == (5000.0, 2)


async def test_a_revoked_agent_is_still_counted(store):
    await store.apply(change("bot", revoked=True, revoked_reason="budget"))
    s = await store.count(Outcome("bot", 60.0, "error", signature="x"), WINDOW)
    assert (s.revoked, s.revoked_reason, s.total_errors) == (True, "budget", 1)


async def test_count_refuses_an_unknown_kind(store):
    with pytest.raises(ValueError):
        await store.count(Outcome("bot", 1.0, "weird"), WINDOW)  # type: ignore[arg-type]
    assert await store.state("bot") is None


async def test_nul_in_a_signature_is_stored(store):
    s = await store.count(Outcome("bot", 1.0, "error", signature="deny:model a\x00b"), WINDOW)
    assert s.same_errors == {"deny:model a\ufffdb": 1}
    assert (await store.state("bot")).same_errors == {"deny:model a\ufffdb": 1}


async def test_concurrent_counts_are_exact(backend):
    replicas = [await backend.store(), await backend.store()]
    outcomes = [Outcome("bot", 10.0 + i, "violation" if i % 10 == 0 else "error", signature=f"sig{i % 2}")
                for i in range(50)]
    await asyncio.gather(*(replicas[i % 2].count(o, 1e9) for i, o in enumerate(outcomes)))
    s = await replicas[0].state("bot")
    assert (s.total_errors, s.violations, s.version) == (50, 5, 50)
    assert s.same_errors == {"sig0": 25, "sig1": 25}


async def test_apply_sets_state_fields_and_keeps_history(store):
    await store.count(Outcome("bot", 10.0, "error", signature="a"), WINDOW)
    s = await store.apply(LifecycleChange(
        agent_id="bot", change="revoke", actor="system", reason="error budget exceeded",
        old={"revoked": False}, new={"revoked": True, "revoked_reason": "1 procedure violation", "note": "x"},
        ts=20.0, rule="error_budget.max_procedure_violations"))
    assert (s.revoked, s.revoked_reason, s.total_errors, s.updated_at, s.version) == (
        True, "1 procedure violation", 1, 20.0, 2)
    s = await store.apply(change("bot", "reinstate", ts=30.0, revoked=False, revoked_reason=None, total_errors=0,
                                 violations=0, same_errors={}, consecutive_compliant=0, budget_warned=False,
                                 window_start=30.0))
    assert s == AgentState(agent_id="bot", window_start=30.0, updated_at=30.0, version=3)
    s = await store.apply(change("bot", "promote", ts=40.0, tier=2, maturity="supervised"))
    assert (s.tier, s.maturity, s.revoked, s.version) == (2, "supervised", False, 4)
    s = await store.apply(change("new-bot", "demote", ts=41.0, tier=0))  # no state yet: one is made
    assert s == AgentState(agent_id="new-bot", tier=0, updated_at=41.0, version=1)
    assert await store.state("bot") == AgentState(agent_id="bot", tier=2, maturity="supervised",
                                                  window_start=30.0, updated_at=40.0, version=4)

    history = await store.changes()
    assert [(c.agent_id, c.change, c.ts) for c in history] == [
        ("new-bot", "demote", 41.0), ("bot", "promote", 40.0), ("bot", "reinstate", 30.0), ("bot", "revoke", 20.0)]
    first = history[-1]
    assert (first.actor, first.reason, first.rule, dict(first.old), dict(first.new)) == (
        "system", "error budget exceeded", "error_budget.max_procedure_violations", {"revoked": False},
        {"revoked": True, "revoked_reason": "1 procedure violation", "note": "x"})
    assert [c.change for c in await store.changes(agent_id="bot")] == ["promote", "reinstate", "revoke"]
    assert [c.change for c in await store.changes(since=30.0)] == ["demote", "promote", "reinstate"]
    assert [c.change for c in await store.changes(limit=1)] == ["demote"]


async def test_state_survives_a_restart(backend):
    first = await backend.store()
    await first.apply(change("bot", revoked=True, revoked_reason="r"))
    await first.count(Outcome("bot", 60.0, "error", signature="s"), WINDOW)
    await first.aclose()
    again = await backend.store()
    s = await again.state("bot")
    assert (s.revoked, s.revoked_reason, s.total_errors, s.same_errors, s.version) == (True, "r", 1, {"s": 1}, 2)
    assert len(await again.changes()) == 1


# ---- proposals -----------------------------------------------------------------------------

async def test_one_pending_proposal_per_agent(store):
    assert await store.add_proposal(proposal("p1")) is True
    assert await store.add_proposal(proposal("p2")) is False  # one is pending for the agent
    assert await store.add_proposal(proposal("p3", agent="other", created_at=2.0)) is True
    assert await store.proposal("p2") is None
    assert [p.id for p in await store.proposals()] == ["p3", "p1"]  # newest first
    assert [p.id for p in await store.proposals(agent_id="bot")] == ["p1"]

    done = await store.decide_proposal("p1", "approved", "ops", "", at=5.0)
    assert (done.status, done.decided_by, done.decided_at, done.reason) == (
        "approved", "ops", 5.0, "50 compliant requests")  # an empty reason keeps the proposal's
    assert await store.decide_proposal("p1", "rejected", "ops", "no", at=6.0) is None  # not pending
    assert await store.decide_proposal("nope", "approved", "ops", "", at=6.0) is None
    assert (await store.proposal("p1")).status == "approved"

    assert await store.add_proposal(proposal("p4", created_at=3.0)) is True  # none pending any more
    rejected = await store.decide_proposal("p4", "rejected", "ops", "not yet", at=7.0)
    assert (rejected.status, rejected.reason) == ("rejected", "not yet")
    auto = await store.decide_proposal("p3", "auto_approved", "system", "", at=8.0)
    assert auto.status == "auto_approved"
    assert [p.id for p in await store.proposals(status="approved")] == ["p1"]
    assert [p.id for p in await store.proposals(status="rejected", agent_id="bot")] == ["p4"]
    assert await store.proposals(status="pending") == []
    with pytest.raises(ValueError):
        await store.decide_proposal("p1", "pending", "ops", "", at=9.0)


async def test_concurrent_proposals_leave_one_pending(backend):
    replicas = [await backend.store(), await backend.store()]
    won = await asyncio.gather(*(replicas[i % 2].add_proposal(proposal(f"p{i}")) for i in range(10)))
    assert won.count(True) == 1
    assert len(await replicas[0].proposals(status="pending", agent_id="bot")) == 1


# ---- approvals -----------------------------------------------------------------------------

async def test_approval_lifecycle(store):
    await store.add_approval(approval("a1"))
    await store.add_approval(approval("a2", created_at=11.0))
    assert await store.approval("a1") == approval("a1")
    assert await store.approval("nope") is None
    assert [a.id for a in await store.approvals()] == ["a2", "a1"]  # newest first

    # A pending approval cannot be used.
    assert await store.use_approval("a1", "bot", "d1", at=20.0, request_id="r0") is None
    ok = await store.decide_approval("a1", "approved", "ops", at=20.0)
    assert (ok.status, ok.decided_by, ok.decided_at) == ("approved", "ops", 20.0)
    assert await store.decide_approval("a1", "rejected", "ops", at=21.0) is None  # not pending
    assert await store.decide_approval("nope", "approved", "ops", at=21.0) is None
    assert [a.id for a in await store.approvals(status="approved", agent_id="bot")] == ["a1"]

    # Another agent, another input: refused, and the approval stays usable.
    assert await store.use_approval("a1", "other", "d1", at=30.0, request_id="r1") is None
    assert await store.use_approval("a1", "bot", "d2", at=30.0, request_id="r1") is None
    used = await store.use_approval("a1", "bot", "d1", at=30.0, request_id="r2")
    assert (used.status, used.used_at, used.used_by_request) == ("used", 30.0, "r2")
    assert await store.use_approval("a1", "bot", "d1", at=31.0, request_id="r3") is None  # once only
    assert (await store.approval("a1")).used_by_request == "r2"

    rejected = await store.decide_approval("a2", "rejected", "ops", at=40.0)
    assert rejected.status == "rejected"
    assert await store.use_approval("a2", "bot", "d1", at=41.0, request_id="r4") is None
    with pytest.raises(ValueError):
        await store.decide_approval("a2", "used", "ops", at=42.0)


async def test_approvals_expire(store):
    await store.add_approval(approval("late", expires_at=100.0))
    await store.add_approval(approval("old", expires_at=100.0))
    await store.add_approval(approval("live", expires_at=100.0))
    assert await store.decide_approval("late", "approved", "ops", at=100.0) is None  # expired at its TTL
    assert (await store.approval("late")).status == "expired"
    assert (await store.decide_approval("old", "approved", "ops", at=99.0)).status == "approved"
    assert await store.use_approval("old", "bot", "d1", at=100.0, request_id="r1") is None
    assert (await store.approval("old")).status == "expired"
    assert (await store.decide_approval("live", "approved", "ops", at=50.0)).status == "approved"
    assert (await store.use_approval("live", "bot", "d1", at=99.9, request_id="r2")).status == "used"
    assert [a.id for a in await store.approvals(status="expired")] == ["old", "late"]  # ties: id descending


async def test_an_approval_is_used_once_across_replicas(backend):
    replicas = [await backend.store(), await backend.store()]
    await replicas[0].add_approval(approval("a1"))
    await replicas[1].decide_approval("a1", "approved", "ops", at=20.0)
    results = await asyncio.gather(*(replicas[i % 2].use_approval("a1", "bot", "d1", at=30.0, request_id=f"r{i}")
                                     for i in range(10)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert (await replicas[0].approval("a1")).used_by_request == winners[0].used_by_request


async def test_duplicate_approval_id_is_a_backend_error(store):
    await store.add_approval(approval("a1"))
    with pytest.raises(BackendError):
        await store.add_approval(approval("a1"))


# ---- governance events, reports, flags ---------------------------------------------------------

async def test_events_filter_and_order(store):
    await store.add_events([
        event("e3", 30.0, "HIGH", agent="a", workspace="w1", reason="budget", n=[1, 2.5, None]),
        event("e1", 10.0, "LOW", agent="b", workspace="w2"),
        event("e2", 20.0, "CRITICAL", agent=None, workspace=None, text="nul \x00 here"),
        event("e4", 40.0, "MEDIUM", agent="a", workspace="w1"),
    ])
    await store.add_events([event("e1", 10.0, "LOW", agent="b", workspace="w2")])  # a retried batch
    await store.add_events([])
    everything = await store.events()
    assert [e.id for e in everything] == ["e1", "e2", "e3", "e4"]  # oldest first, e1 once
    e3 = everything[2]
    assert (e3.ts, e3.event_type, e3.severity, e3.agent_id, e3.workspace, dict(e3.details)) == (
        30.0, "agent.revoked", "HIGH", "a", "w1", {"reason": "budget", "n": [1, 2.5, None]})
    assert everything[1].details == {"text": "nul \ufffd here"}
    assert [e.id for e in await store.events(since=20.0, until=40.0)] == ["e2", "e3"]
    assert [e.id for e in await store.events(agent_id="a")] == ["e3", "e4"]
    assert [e.id for e in await store.events(workspace="w2")] == ["e1"]
    assert [e.id for e in await store.events(min_severity="HIGH")] == ["e2", "e3"]
    assert [e.id for e in await store.events(min_severity="MEDIUM", agent_id="a")] == ["e3", "e4"]
    assert [e.id for e in await store.events(min_severity="LOW", limit=2)] == ["e1", "e2"]
    with pytest.raises(ValueError):
        await store.events(min_severity="SEVERE")


async def test_reports(store):
    for i in range(3):
        await store.add_report(StoredReport(id=f"r{i}", created_at=100.0 + i, period_start=float(i),
                                            period_end=50.0 + i, body={"totals": {"allow": i}, "agents": ["x"]}))
    assert [r.id for r in await store.reports()] == ["r2", "r1", "r0"]  # newest first
    assert [r.id for r in await store.reports(limit=2)] == ["r2", "r1"]
    assert await store.report("r1") == StoredReport(id="r1", created_at=101.0, period_start=1.0, period_end=51.0,
                                                    body={"agents": ["x"], "totals": {"allow": 1}})
    assert await store.report("nope") is None


async def test_flags(store):
    assert await store.flags() == {}
    await store.set_flag("bypass", True)
    await store.set_flag("governance", {"mcp": False})
    await store.set_flag("bypass", False)
    assert await store.flags() == {"bypass": False, "governance": {"mcp": False}}


# ---- failures ----------------------------------------------------------------------------------

async def test_unstarted_store_raises_backend_error(backend):
    s: Any = (SQLiteLifecycleStore(backend.settings, backend.path) if backend.name == "sqlite"
              else PostgresLifecycleStore(backend.settings))
    with pytest.raises(BackendError):
        await s.state("bot")
    with pytest.raises(BackendError):
        await s.count(Outcome("bot", 1.0, "compliant"), WINDOW)


async def test_sqlite_unusable_path_is_a_backend_error(tmp_path):
    (tmp_path / "dir.db").mkdir()
    s = SQLiteLifecycleStore(LifecycleSettings(), tmp_path / "dir.db")
    with pytest.raises(BackendError):
        await s.start()


async def test_postgres_down_names_no_password():
    import socket
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, never listening: refused
    try:
        port = sock.getsockname()[1]
        s = PostgresLifecycleStore(LifecycleSettings(dsn=f"postgresql://u:s3cr3t-pw@127.0.0.1:{port}/x"),
                                   timeout_s=2.0)
        with pytest.raises(BackendError) as info:
            await s.start()
        assert "s3cr3t-pw" not in str(info.value)
        assert f"127.0.0.1:{port}" in str(info.value)
        reason = await s.probe()
        assert reason is not None and "s3cr3t-pw" not in reason
        with pytest.raises(BackendError):
            await s.flags()
    finally:
        sock.close()


async def test_postgres_outage_is_a_backend_error_and_heals():
    from tests.support.tcp_proxy import TcpProxy
    dsn = pg_dsn()
    proxy = TcpProxy("127.0.0.1", 5432)
    await proxy.open()
    settings = LifecycleSettings(store="postgres", table_prefix=unique("lc_t_"),
                                 dsn=dsn.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}"))
    s = PostgresLifecycleStore(settings, timeout_s=2.0)
    try:
        await s.start()
        await s.count(Outcome("bot", 1.0, "error", signature="x"), WINDOW)
        await proxy.shut()
        with pytest.raises(BackendError):
            await s.count(Outcome("bot", 2.0, "error", signature="x"), WINDOW)
        assert await s.probe() is not None
        await proxy.open()
        # The pool replaces the connections that died; nothing was counted twice or lost.
        assert (await s.count(Outcome("bot", 3.0, "error", signature="x"), WINDOW)).total_errors == 2
        assert await s.probe() is None
    finally:
        await s.aclose()
        proxy.close()
        for r in await pg.fetch(dsn, "SELECT tablename FROM pg_tables WHERE tablename LIKE $1",
                                settings.table_prefix + "%"):
            await pg.drop_table(dsn, r["tablename"])
