"""Approvals and governance switches (gateway/lifecycle/{approvals,switches}.py) on real backends:
the SQLite lifecycle store, governance events, the in-process bus and an audit writer on SQLite,
in tmp_path. Time is a hand-moved clock, so expiry needs no sleeping.

The end-to-end flows (real gateway, real SDKs) are in tests/e2e/test_lifecycle_gates.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from adapters.audit.sqlite import SQLiteAuditStore
from gateway import registry
from gateway.audit.writer import AuditWriter
from gateway.errors import InvalidRequest, NotFound, PermissionDenied
from gateway.lifecycle.approvals import Approvals
from gateway.lifecycle.events import GovernanceEvents
from gateway.lifecycle.switches import Switches
from gateway.settings_lifecycle import LifecycleSettings
from gateway.types import Agent
from tests.support.audit_rows import rows_of
from tests.support.audit_rows import settings as audit_settings
from tests.support.clock import Clock
from tests.support.waiting import eventually_async

EXECUTOR = Agent(id="executor", tier=3, maturity="supervised", workspace="quickstart")
DIGEST = "a" * 64


class Backends:
    """One replica's lifecycle pieces over a shared store file and bus."""

    def __init__(self, tmp: Path, settings: LifecycleSettings, clock: Clock, bus: Any, name: str) -> None:
        self.store = registry.load("lifecycle_store", "sqlite")(settings, tmp / "lifecycle.db")
        self.audit_store = SQLiteAuditStore(audit_settings(chain_id=name), tmp / f"audit-{name}.db")
        self.writer = AuditWriter(self.audit_store, audit_settings(chain_id=name), tmp / f"{name}.spool")
        self.events = GovernanceEvents(self.store, settings, clock=clock)
        self.approvals = Approvals(self.store, self.events, settings, self.writer.record, clock=clock)
        self.switches = Switches(self.store, bus, self.events, settings, self.writer.record, clock=clock)

    async def start(self) -> None:
        for b in (self.store, self.audit_store, self.writer, self.events, self.switches):
            await b.start()

    async def aclose(self) -> None:
        for b in (self.switches, self.events, self.writer, self.audit_store, self.store):
            await b.aclose()

    async def audit(self) -> list[dict]:
        await eventually_async(lambda: self.writer.depth == 0, "the audit rows written")
        return await rows_of(self.audit_store)

    async def events_of(self, event_type: str) -> list[Any]:
        await self.events.flush(5)
        return [e for e in await self.store.events() if e.event_type == event_type]


@pytest.fixture
def clock() -> Clock:
    return Clock(1_800_000_000.0)


@pytest.fixture
async def bus():
    b = registry.load("lifecycle_bus", "memory")(LifecycleSettings())
    await b.start()
    yield b
    await b.aclose()


@pytest.fixture
async def replica(tmp_path: Path, clock: Clock, bus: Any):
    r = Backends(tmp_path, LifecycleSettings(approval_ttl_s=60), clock, bus, "one")
    await r.start()
    yield r
    await r.aclose()


async def requested(r: Backends) -> str:
    a = await r.approvals.request(EXECUTOR, "tool.call", "tool", "delete_customer", DIGEST, "destructive")
    assert a.id.startswith("apr_") and a.status == "pending"
    return a.id


async def test_an_approved_approval_is_used_once_by_its_agent_for_its_request(replica: Backends, clock: Clock):
    aid = await requested(replica)
    with pytest.raises(PermissionDenied, match="still pending") as pending:
        await replica.approvals.redeem(aid, "executor", DIGEST, "req-0")
    assert pending.value.code == "approval_invalid"
    approved = await replica.approvals.decide(aid, True, "alice", "checked with the customer")
    assert (approved.status, approved.decided_by) == ("approved", "alice")
    for _ in range(2):  # a check spends nothing
        assert (await replica.approvals.check(aid, "executor", DIGEST)).id == aid
    with pytest.raises(PermissionDenied, match="different request"):
        await replica.approvals.check(aid, "executor", "b" * 64)
    with pytest.raises(PermissionDenied, match="not issued to agent builder"):
        await replica.approvals.redeem(aid, "builder", DIGEST, "req-1")
    with pytest.raises(PermissionDenied, match="different request"):
        await replica.approvals.redeem(aid, "executor", "b" * 64, "req-2")
    used = await replica.approvals.redeem(aid, "executor", DIGEST, "req-3")
    assert (used.status, used.used_by_request) == ("used", "req-3")
    with pytest.raises(PermissionDenied, match="already used"):
        await replica.approvals.redeem(aid, "executor", DIGEST, "req-4")
    with pytest.raises(PermissionDenied, match="already used"):
        await replica.approvals.check(aid, "executor", DIGEST)
    with pytest.raises(InvalidRequest) as again:
        await replica.approvals.decide(aid, True, "alice", "twice")
    assert again.value.code == "not_pending"

    rows = [r for r in await replica.audit() if r["action"].startswith("approval.")]
    assert [r["action"] for r in rows] == ["approval.requested", "approval.approved", "approval.used"]
    assert all(r["resource_name"] == aid and r["agent_id"] == "executor" for r in rows)
    summary = f"approval.approved {aid} for tool.call delete_customer (checked with the customer)"
    assert rows[1]["reasons"] == [f"alice: {summary}"]
    assert rows[2]["policy_input"]["used_by_request"] == "req-3"
    assert [(e.severity, e.details["approval_id"]) for e in await replica.events_of("approval.requested")] == \
        [("MEDIUM", aid)]
    assert len(await replica.events_of("approval.used")) == 1


async def test_a_request_retried_while_pending_gets_the_same_approval(replica: Backends, clock: Clock):
    first = await requested(replica)
    assert await requested(replica) == first
    other = await replica.approvals.request(EXECUTOR, "tool.call", "tool", "delete_customer", "c" * 64, "x")
    assert other.id != first
    clock.t += 61  # the first one expired: a new request gets a new approval
    assert await requested(replica) not in (first, other.id)
    assert len(await replica.events_of("approval.requested")) == 3


async def test_an_approval_expires_ttl_after_its_creation(replica: Backends, clock: Clock):
    aid = await requested(replica)
    clock.t += 30
    await replica.approvals.decide(aid, True, "alice", "ok")
    clock.t += 30  # 60 s after creation: the TTL counts from there, not from the approval
    with pytest.raises(PermissionDenied, match="expired"):
        await replica.approvals.redeem(aid, "executor", DIGEST, "req-1")
    assert [a.status for a in await replica.approvals.list(agent_id="executor")] == ["expired"]
    assert await replica.approvals.list(status="approved") == []
    late = await requested(replica)
    clock.t += 61
    with pytest.raises(InvalidRequest, match="expired, not pending"):
        await replica.approvals.decide(late, True, "alice", "too late")


async def test_rejected_and_unknown_approvals(replica: Backends):
    aid = await requested(replica)
    rejected = await replica.approvals.decide(aid, False, "bob", "no")
    assert rejected.status == "rejected"
    with pytest.raises(PermissionDenied, match="is rejected"):
        await replica.approvals.redeem(aid, "executor", DIGEST, "req-1")
    with pytest.raises(NotFound):
        await replica.approvals.decide("apr_" + "0" * 24, True, "bob", "?")
    for bad in ("apr_" + "0" * 24, "not-an-id", "apr_../../x"):
        with pytest.raises(PermissionDenied) as e:
            await replica.approvals.redeem(bad, "executor", DIGEST, "req-2")
        assert e.value.code == "approval_invalid"
    assert [a.id for a in await replica.approvals.list(status="rejected")] == [aid]


async def test_switches_start_from_settings_and_follow_the_store_on_every_replica(tmp_path: Path, clock: Clock,
                                                                                   bus: Any):
    settings = LifecycleSettings(governance={"tools": False})
    one, two = (Backends(tmp_path, settings, clock, bus, n) for n in ("one", "two"))
    await one.start()
    await two.start()
    try:
        assert one.switches.snapshot() == {"bypass": False, "governance": {
            "openai": True, "anthropic": True, "mcp": True, "tools": False}}
        assert one.switches.bypassed("tools") and not one.switches.bypassed("openai")
        snap = await one.switches.set_bypass(True, "alice", "policy engine broken")
        assert snap["bypass"] is True and one.switches.bypassed("openai")
        await eventually_async(lambda: two.switches.bypassed("mcp"), "the other replica to follow the bus")
        clock.t += 1  # events are listed by time
        await two.switches.set_governance("tools", True, "bob", "fixed")
        clock.t += 1
        await one.switches.set_bypass(False, "alice", "over")
        await eventually_async(lambda: not two.switches.bypassed("openai"), "bypass off on the other replica")
        assert not one.switches.bypassed("tools") and not two.switches.bypassed("tools")
        with pytest.raises(InvalidRequest):
            await one.switches.set_governance("grpc", False, "bob", "?")

        toggled = await one.events_of("bypass.toggled")
        assert [(e.severity, e.details["new"], e.details["actor"]) for e in toggled] == \
            [("CRITICAL", True, "alice"), ("CRITICAL", False, "alice")]
        assert [e.details["new"] for e in await one.events_of("governance.toggled")] == [True]
        rows = [r for r in await one.audit() if r["action"] == "bypass.toggled"]
        assert [r["policy_input"]["new"] for r in rows] == [True, False]
        assert rows[0]["reasons"] == ["alice: bypass on (policy engine broken)"]
    finally:
        await two.aclose()
        await one.aclose()
