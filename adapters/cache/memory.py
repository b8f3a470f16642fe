"""In-process decision cache on aiocache's SimpleMemoryCache."""
from __future__ import annotations

from aiocache import SimpleMemoryCache

from gateway.settings import CacheSettings
from gateway.types import Decision


class MemoryDecisionCache:
    def __init__(self, settings: CacheSettings) -> None:
        self._settings = settings
        self._cache: SimpleMemoryCache | None = None

    async def start(self) -> None:
        # timeout=None: aiocache otherwise wraps every call in asyncio.wait_for,
        # a task per lookup on the hot path for an operation that cannot block.
        self._cache = SimpleMemoryCache(timeout=None)

    async def get(self, key: str) -> Decision | None:
        assert self._cache is not None, "start() first"
        return await self._cache.get(key)

    async def set(self, key: str, decision: Decision, ttl_s: int) -> None:
        assert self._cache is not None, "start() first"
        if ttl_s > 0:
            await self._cache.set(key, decision, ttl=ttl_s)

    async def aclose(self) -> None:
        if self._cache is not None:
            await self._cache.clear()
            await self._cache.close()
