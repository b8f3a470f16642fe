"""Stand-in backends for bench/experiments.py (bench only, loaded by import string)."""
from __future__ import annotations

import time
from typing import Any, AsyncIterator, Mapping, Sequence


class DictDecisionCache:
    """A decision cache as a plain dict of (expiry, decision): what aiocache costs, measured."""

    def __init__(self, settings: Any = None, max_entries: int = 100_000) -> None:
        self._data: dict[str, tuple[float, Any]] = {}
        self._max = max_entries

    async def start(self) -> None:
        return None

    async def get(self, key: str) -> Any:
        hit = self._data.get(key)
        if hit is None:
            return None
        if hit[0] < time.monotonic():
            del self._data[key]
            return None
        return hit[1]

    async def set(self, key: str, decision: Any, ttl_s: int) -> None:
        if ttl_s > 0:
            if len(self._data) >= self._max:
                self._data.clear()  # crude bound; a real one would evict the oldest
            self._data[key] = (time.monotonic() + ttl_s, decision)

    async def aclose(self) -> None:
        self._data.clear()


class NullAuditStore:
    """Discards every row: an upper bound on what the audit store costs (never for real use)."""

    def __init__(self, settings: Any = None, path: Any = None) -> None:
        pass

    async def start(self) -> None:
        return None

    async def insert_batch(self, rows: Sequence[Mapping[str, Any]]) -> None:
        return None

    async def last_link(self, chain_id: str) -> tuple[int, str] | None:
        return None

    async def tail(self, n: int) -> list[dict[str, Any]]:
        return []

    async def iter_chain(self, chain_id: str | None = None) -> AsyncIterator[dict[str, Any]]:
        return
        yield  # pragma: no cover

    async def writable(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None
