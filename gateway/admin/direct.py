"""`--direct`: the read commands and `report` against the stores a config names, with no
gateway running (the Helm CronJob's report, a replica-less look at the state). The rules
stay where they are: the report is EVENTS' build_report, the state the store's."""
from __future__ import annotations

import secrets
import time
from typing import Any, Self

from gateway import registry
from gateway.admin.serialize import jsonable
from gateway.settings import Settings


def lifecycle_store(settings: Settings) -> Any:
    cls = registry.load("lifecycle_store", settings.lifecycle.store)
    return cls(settings.lifecycle, settings.path(settings.lifecycle.path))


class Direct:
    """An opened lifecycle store (and, for reports, the audit store) of one config."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.store = lifecycle_store(settings)

    async def __aenter__(self) -> Self:
        await self.store.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.store.aclose()

    async def agents(self) -> list[dict[str, Any]]:
        """agents.yaml's agents with their stored overlay, shaped like the API's list (no risk)."""
        from gateway.agents_file import load_agents

        agents = load_agents(self._settings.path(self._settings.identity.agents_file)).agents
        states = await self.store.states()
        out = []
        for a in agents:
            st = states.get(a.id)
            revoked = bool(st and st.revoked) or bool(getattr(a, "revoked", False))
            out.append({
                "id": a.id, "workspace": a.workspace, "baseline": {"tier": a.tier, "maturity": a.maturity},
                "tier": st.tier if st and st.tier is not None else a.tier,
                "maturity": st.maturity if st and st.maturity is not None else a.maturity,
                "state": "revoked" if revoked else "active",
                "revoked_reason": st.revoked_reason if st and st.revoked else None,
                "counters": {k: jsonable(getattr(st, k)) if st else v for k, v in (
                    ("total_errors", 0), ("violations", 0), ("same_errors", {}), ("consecutive_compliant", 0))},
                "version": st.version if st else 0})
        return out

    async def events(self, **query: Any) -> list[dict[str, Any]]:
        return jsonable(await self.store.events(**query))

    async def approvals(self, status: str | None, agent_id: str | None) -> list[dict[str, Any]]:
        return jsonable(await self.store.approvals(status, agent_id))

    async def proposals(self, status: str | None) -> list[dict[str, Any]]:
        return jsonable(await self.store.proposals(status))

    async def report(self, period_s: float, actor: str) -> dict[str, Any]:
        """Build the report of the last `period_s` seconds, store it like the API does, return it."""
        from gateway.lifecycle.model import StoredReport
        from gateway.lifecycle.report import audit_rows_between, build_report

        s = self._settings
        end = time.time()
        start = end - period_s
        audit = registry.load("audit", s.audit.backend)(s.audit, s.path(s.audit.path))
        await audit.start()
        try:
            rows = await audit_rows_between(audit, start, end)
        finally:
            await audit.aclose()
        st = self.store
        # As LifecycleManager.make_report does it (the gateway's own path; keep the two alike).
        body = dict(build_report(rows, await st.events(since=start, until=end, limit=1_000_000),
                                 await st.changes(since=start, limit=100_000),
                                 [p for p in await st.proposals() if p.created_at >= start],
                                 [a for a in await st.approvals() if a.created_at >= start],
                                 s.lifecycle.risk, start, end))
        body.setdefault("generated_by", actor)
        report = StoredReport(id="rep_" + secrets.token_hex(8), created_at=end, period_start=start,
                              period_end=end, body=body)
        await st.add_report(report)
        return jsonable(report)
