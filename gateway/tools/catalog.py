"""What the gateway has learned about each MCP server's tools from `tools/list`.

Annotations (readOnlyHint, destructiveHint, ...) are part of the policy input
for `tools/call`, so they are remembered per server when a listing passes
through, and refreshed when older than the server's `annotations_ttl_s`.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Mapping

# The MCP ToolAnnotations hints a policy may use; titles and unknown keys are dropped.
FETCH_BACKOFF_S = 10.0
_HINTS = ("readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint")


def hints(tool: Mapping[str, Any]) -> dict[str, bool]:
    ann = tool.get("annotations")
    if not isinstance(ann, Mapping):
        return {}
    return {k: ann[k] for k in _HINTS if isinstance(ann.get(k), bool)}


class ToolCatalog:
    def __init__(self, ttl_s: Mapping[str, int], clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = dict(ttl_s)
        self._clock = clock
        self._tools: dict[str, dict[str, dict[str, bool]]] = {}
        self._learned: dict[str, float] = {}
        self._complete: set[str] = set()
        self._failed: dict[str, float] = {}

    def learn(self, server: str, tools: list[Any], complete: bool) -> None:
        """Record one page of a listing; `complete` when it was the last page."""
        known = self._tools.setdefault(server, {})
        for t in tools:
            if isinstance(t, Mapping) and isinstance(t.get("name"), str):
                known[t["name"]] = hints(t)
        self._learned[server] = self._clock()
        if complete:
            self._complete.add(server)

    def fresh(self, server: str) -> bool:
        ts = self._learned.get(server)
        return ts is not None and server in self._complete and self._clock() - ts < self._ttl.get(server, 300)

    def should_fetch(self, server: str) -> bool:
        """Stale and not failed lately: a server that is down is not asked on every request."""
        failed = self._failed.get(server)
        return not self.fresh(server) and (failed is None or self._clock() - failed >= FETCH_BACKOFF_S)

    def fetch_failed(self, server: str) -> None:
        self._failed[server] = self._clock()

    def annotations(self, server: str, tool: str) -> dict[str, bool] | None:
        """The tool's hints, or None when the server has not listed it."""
        return self._tools.get(server, {}).get(tool)
