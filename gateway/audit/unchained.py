"""Rows recorded before the writer knows its chain head, kept unchained until it does.

A replica whose store was unreachable at start cannot know where its chain stands (the
head lives in the store), so it cannot link rows yet. It refuses governed requests (503)
meanwhile, and their rows are fsynced here, in order, without chain fields. Once the store
answers, the writer links them after the head and moves them to the spool, from where the
usual replay stores them. A crash between those two steps leaves rows in both files:
`take()` drops those already in the spool, by request id, so none is stored twice.
`HeadUnknown` is that part of the writer (gateway/audit/writer.py), kept here with its file.
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from gateway.audit.chain import CHAIN_FIELDS
from gateway.audit.spool import SpoolFile
from gateway.errors import BackendError

log = logging.getLogger("portcullis.audit")


def unchained_path(spool_path: Path) -> Path:
    return spool_path.with_name(spool_path.name + ".unchained")


class UnchainedRows:
    def __init__(self, spool_path: Path) -> None:
        self.file = SpoolFile(unchained_path(spool_path))
        self.loose: list[dict[str, Any]] = []  # not yet written: the file could not be
        self.count = 0  # rows in the file

    def __bool__(self) -> bool:
        return bool(self.count or self.loose)

    async def load(self) -> None:
        """Count the rows an earlier run left (it stopped before reaching its store)."""
        self.count = len(await asyncio.to_thread(self.file.read))

    async def hold(self, rows: list[dict[str, Any]]) -> int:
        """Make `rows` (and any still only in memory) durable; returns how many newly are.

        Raises OSError when the file cannot be written; the rows stay in memory then.
        """
        self.loose.extend(rows)
        if not self.loose:
            return 0
        await asyncio.to_thread(self.file.append, self.loose)
        n = len(self.loose)
        self.count += n
        self.loose = []
        return n

    async def take(self, spool: SpoolFile) -> tuple[list[dict[str, Any]], int]:
        """The rows to link, oldest first, and how many of them (the last) were never durable."""
        rows = await asyncio.to_thread(self.file.read)
        spooled = {r["request_id"] for r in await asyncio.to_thread(spool.read)} if rows else set()
        out = [{k: v for k, v in r.items() if k not in CHAIN_FIELDS} for r in rows
               if r["request_id"] not in spooled]
        return out + self.loose, len(self.loose)

    async def clear(self) -> None:
        await asyncio.to_thread(self.file.remove)
        self.count = 0
        self.loose = []


class HeadUnknown:
    """The AuditWriter's part while its chain head is unknown (a mixin: it runs on the writer's state)."""
    _head_known: bool
    _unchained: UnchainedRows
    _spool: SpoolFile
    _spool_rows: int
    _seq: int
    _prev: str
    _chain_id: str
    _next_retry: float
    _failed: Any
    _durable: Any
    _chain: Any
    _find_head: Any
    _replay: Any

    def unready(self) -> str | None:
        """Why governed requests must be refused (503), or None: the chain cannot continue yet."""
        if self._head_known:
            return None
        return "audit store not reached since start: this replica's audit chain cannot continue yet"

    async def _reach_store(self) -> None:
        """Not reached since start: find the head now, then link the rows held meanwhile."""
        if asyncio.get_running_loop().time() < self._next_retry:
            return
        try:
            await self._find_head()
        except BackendError as e:
            self._failed(f"audit store still unreachable, rows held unchained: {e}")
            return
        if await self._link_unchained():
            log.info("audit store reached: chain %r continues from seq %d", self._chain_id, self._seq + 1)
            await self._replay(force=True)

    async def _link_unchained(self) -> bool:
        """Chain the held rows after the head, into the spool (fsynced), then forget them."""
        rows, loose = await self._unchained.take(self._spool)
        seq, prev = self._seq, self._prev
        chained = [self._chain(r) for r in rows]
        try:
            if chained:
                await asyncio.to_thread(self._spool.append, chained)
        except OSError as e:
            self._seq, self._prev = seq, prev
            self._failed(f"audit spool write failed, {len(rows)} rows still held unchained: {e}")
            return False
        self._spool_rows += len(chained)
        await self._unchained.clear()
        self._head_known = True
        if loose:
            self._durable(loose, written=False)
        return True

    async def _hold(self, rows: list[dict[str, Any]]) -> None:
        """Chain head unknown: make rows durable unchained (slots freed), else keep them in memory."""
        try:
            n = await self._unchained.hold(rows)
        except OSError as e:
            self._failed(f"audit unchained-rows file write failed ({len(self._unchained.loose)} rows "
                         f"held in memory): {e}")
            return
        if n:
            self._durable(n, written=False)
