"""The emergency bypass and the per-surface governance switches (issue 11, seed 003).

While the bypass is on, or governance is off for a request's surface, the policy stage
evaluates nothing and answers a synthetic allow (the tier's obligations as limits); the
request is still identified, rate limited and audited, with decision `bypass`.

The switches are flags in the lifecycle store (`bypass`, `governance.<surface>`), so every
replica follows one truth; the settings give the values the store does not have yet. A
change is written to the store, then announced on the bus (`{"flags": true}`) so the other
replicas re-read it at once; they also re-read every `refresh_s` and after a bus
reconnect, so a lost message cannot leave a replica bypassing. `bypassed()` runs on every
request: a bool and a frozenset lookup, no I/O.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from gateway.errors import BackendError, InvalidRequest
from gateway.lifecycle.approvals import governance_row
from gateway.protocols import LifecycleBus, LifecycleStore
from gateway.settings_lifecycle import LifecycleSettings
from gateway.types import AuditEvent

log = logging.getLogger("portcullis.lifecycle.switches")

SURFACES = ("openai", "anthropic", "mcp", "tools")
BYPASS = "bypass"
GOVERNANCE = "governance."  # + surface


class Switches:
    def __init__(self, store: LifecycleStore, bus: LifecycleBus, events: Any, settings: LifecycleSettings,
                 record: Callable[[AuditEvent], Awaitable[None]], *,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._bus = bus
        self._events = events  # gateway.lifecycle.events.GovernanceEvents
        self._settings = settings
        self._record = record
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._bypass = False
        self._ungoverned: frozenset[str] = frozenset()
        self._apply({})  # the settings' values until the store is read

    # ---- the hot path ---------------------------------------------------------------

    def bypassed(self, surface: str) -> bool:
        """Whether requests on this surface skip policy: bypass on, or governance off for it."""
        return self._bypass or surface in self._ungoverned

    def bypass_reason(self, surface: str) -> str | None:
        """Why requests on this surface skip policy now (the audit row's reason), or None."""
        if self._bypass:
            return "emergency bypass: policy not evaluated"
        if surface in self._ungoverned:
            return f"governance off for the {surface} surface: policy not evaluated"
        return None

    def snapshot(self) -> dict:
        return {"bypass": self._bypass, "governance": {s: s not in self._ungoverned for s in SURFACES}}

    # ---- changes (admin API, CLI) -----------------------------------------------------

    async def set_bypass(self, enabled: bool, actor: str, reason: str) -> dict:
        return await self._set(BYPASS, bool(enabled), actor, reason, "bypass.toggled", "bypass")

    async def set_governance(self, surface: str, enabled: bool, actor: str, reason: str) -> dict:
        if surface not in SURFACES:
            raise InvalidRequest(f"unknown surface {surface!r}; one of {', '.join(SURFACES)}",
                                 code="unknown_surface", param="surface")
        return await self._set(GOVERNANCE + surface, bool(enabled), actor, reason, "governance.toggled", surface)

    async def _set(self, flag: str, value: bool, actor: str, reason: str, event: str, name: str) -> dict:
        old = self.snapshot()
        await self._store.set_flag(flag, value)  # BackendError: nothing changed, the caller says so
        await self.refresh()
        new = self.snapshot()
        details = {"flag": flag, "old": _value(old, flag), "new": value, "reason": reason}
        self._events.emit(event, "CRITICAL", details={**details, "actor": actor, "category": "compliance"})
        await self._record(governance_row(event, actor, f"{flag} {'on' if value else 'off'} ({reason})", details,
                                          resource_type="switch", resource_name=name, ts=self._clock()))
        try:  # the other replicas re-read now; a lost message waits for their next refresh
            await self._bus.publish({"flags": True})
        except BackendError as e:
            log.warning("announcing the %s change failed, replicas follow within %ss: %s",
                        flag, self._settings.refresh_s, e)
        return new

    # ---- following the store ---------------------------------------------------------

    async def refresh(self) -> None:
        """Re-read the store's flags (a bus message, a reconnect, the periodic pass)."""
        self._apply(await self._store.flags())

    def _apply(self, flags: Mapping[str, Any]) -> None:
        s = self._settings
        bypass = bool(flags.get(BYPASS, s.bypass))
        off = frozenset(surface for surface in SURFACES
                        if not bool(flags.get(GOVERNANCE + surface, s.governance.get(surface, True))))
        if bypass != self._bypass or off != self._ungoverned:
            log.warning("governance switches: bypass %s, ungoverned surfaces: %s",
                        "ON" if bypass else "off", ", ".join(sorted(off)) or "none")
        self._bypass, self._ungoverned = bypass, off

    async def _on_message(self, message: Mapping[str, Any]) -> None:
        if message.get("flags"):
            await self._refresh_logged()

    async def _refresh_logged(self) -> None:
        try:
            await self.refresh()
        except BackendError as e:  # keep the last values; the next pass tries again
            log.warning("reading the governance switches failed: %s", e)

    async def start(self) -> None:
        await self._refresh_logged()  # a store down at boot: the settings' values meanwhile
        self._bus.subscribe(self._on_message, self._refresh_logged)
        self._task = asyncio.create_task(self._periodic(), name="lifecycle-switches")

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(self._settings.refresh_s)
            try:
                await self._refresh_logged()
            except Exception:  # a bug must not stop the pass that bounds a lost message
                log.exception("refreshing the governance switches failed")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _value(snapshot: Mapping[str, Any], flag: str) -> bool:
    if flag == BYPASS:
        return bool(snapshot["bypass"])
    return bool(snapshot["governance"][flag[len(GOVERNANCE):]])
