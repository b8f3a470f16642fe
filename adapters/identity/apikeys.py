"""Registered API keys, looked up by SHA-256 hash and compared in constant time."""
from __future__ import annotations

import hmac

from gateway.directory import AgentDirectory
from gateway.keys import hash_key
from gateway.types import Principal


class APIKeySource:
    name = "api_key"

    def __init__(self, directory: AgentDirectory) -> None:
        # Shared with the identity stage; a reload of the agents file swaps its entries.
        self._directory = directory

    async def start(self) -> None:
        return None

    async def resolve(self, token: str) -> Principal | None:
        digest = hash_key(token)
        entry = self._directory.key_by_hash(digest)
        # The dict lookup already matched; compare_digest keeps the final check
        # constant-time should the lookup ever become a prefix or range index.
        if entry is None or not hmac.compare_digest(entry.sha256, digest):
            return None  # not ours: the next source (e.g. JWT) may know it
        return self._directory.principal_by_hash(digest)

    async def aclose(self) -> None:
        return None
