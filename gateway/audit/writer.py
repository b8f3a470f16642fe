"""Batched, hash-chained audit writes off the request path, with a local spool.

Every request holds one queue slot from `admit()` until its row is durable (in
the store or fsynced to the spool), so a full queue stops new requests instead
of dropping rows. One background task does all chaining and I/O, which keeps
the chain strictly ordered without locks.

A store file deleted or replaced while open (one stat per batch, and when idle) has
its rows spooled and is reopened, the chain carrying on; not ready until replayed.
Chain starts and heads also go to a file beside the spool (heads.py) for `verify`.
A store unreachable at start leaves the chain head unknown: rows are held unchained
(unchained.py) and `unready()` refuses governed work until the store is reached.
Each row is also in a local journal before its response ends, replayed after a kill (journal.py).
"""
from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from gateway.audit.chain import GENESIS, event_to_row, link
from gateway.audit.heads import ChainHeads, heads_path, load_heads
from gateway.audit.journal import Journal, Journaled, journal_path
from gateway.audit.metrics import AuditMetrics, NoMetrics
from gateway.audit.spool import SpoolFile
from gateway.audit.unchained import HeadUnknown, UnchainedRows
from gateway.errors import BackendError, Unavailable
from gateway.protocols import AuditStore
from gateway.settings import AuditSettings
from gateway.types import AuditEvent

log = logging.getLogger("portcullis.audit")


class AuditWriter(HeadUnknown, Journaled):
    def __init__(self, store: AuditStore, settings: AuditSettings, spool_path: Path,
                 metrics: AuditMetrics | None = None,
                 on_spool: Callable[[dict[str, Any]], None] | None = None) -> None:
        self._store = store
        # Told {"rows", "spool"} when the writer starts spooling (the lifecycle's audit.spooling event).
        self._on_spool = on_spool
        self._settings = settings
        self._spool_path = Path(spool_path)
        self._spool = SpoolFile(self._spool_path)
        self._metrics: AuditMetrics = metrics or NoMetrics()
        self._chain_id = settings.chain_id
        self._batch_size = settings.batch_size
        self._flush_s = settings.flush_interval_ms / 1000
        self._slots = asyncio.Semaphore(settings.queue_max)
        # Only rows of requests refused before any governed work (admit(early=True)) may
        # use these, once _slots is full. The pools are counters: a durable row frees a
        # reserve slot first, so the reserve is free again as soon as the queue moves.
        self._reserve = asyncio.Semaphore(settings.reserve_max)
        self._reserve_held = 0
        self._held = 0        # slots taken by admit() and not yet released
        self._reserved = 0    # admitted but not yet submitted
        self._queue: collections.deque[AuditEvent] = collections.deque()
        self._unsaved: list[dict[str, Any]] = []  # chained, neither in store nor spool
        self._spool_rows = 0
        self._next_retry = 0.0
        self._seq = 0
        self._prev = GENESIS
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # Optional store capability (SQLite): has the file been deleted or replaced?
        self._moved = getattr(store, "replaced", None)
        self._reopen_pending = False
        self._problem: str | None = None  # set while recovering from a replaced store
        self._heads = ChainHeads(heads_path(self._spool_path))
        self._head_known = True  # False: the store was not reached since start (see unready)
        self._unchained = UnchainedRows(self._spool_path)
        self.journal = Journal(journal_path(self._spool_path), enabled=settings.journal, fsync=settings.journal_fsync)
        self._recovered = 0  # rows replayed from the journal at start, holding no slot

    @property
    def store(self) -> AuditStore:
        """The store rows go to; readers on this replica (the console) share its connections."""
        return self._store

    @property
    def depth(self) -> int:
        """Requests admitted whose rows are not yet durable."""
        return self._held

    @property
    def problem(self) -> str | None:
        """Why the audit trail is not healthy (for /readyz), or None."""
        if not self._head_known:
            return self.unready()
        if self._problem is None and self._moved is not None and not self._reopen_pending and self._moved():
            return "audit store file was removed or replaced"
        return self._problem

    # ---- request path ------------------------------------------------------------

    async def admit(self, *, early: bool = False) -> None:
        """Reserve a queue slot before the request runs; raise Unavailable when full.

        `early`: the row of a request refused before any governed work (no body, bad
        method, oversized headers). When the queue is full it takes a reserve slot,
        waiting up to full_wait_s for one, so such rows are recorded while agents
        fill the queue, and a flood of them cannot take the agents' slots either.
        """
        if self._task is None or self._closing:
            raise Unavailable("audit writer is not running")
        if not self._slots.locked():
            await self._slots.acquire()  # free slot: returns without suspending
        elif early:
            try:
                if self._reserve.locked():
                    await asyncio.wait_for(self._reserve.acquire(), self._settings.full_wait_s)
                else:
                    await self._reserve.acquire()
            except TimeoutError:
                raise Unavailable("audit queue full") from None
            self._reserve_held += 1
        elif self._settings.on_full == "refuse":
            raise Unavailable("audit queue full")
        else:
            try:
                await asyncio.wait_for(self._slots.acquire(), self._settings.full_wait_s)
            except TimeoutError:
                raise Unavailable("audit queue full") from None
        self._held += 1
        self._reserved += 1

    def submit(self, event: AuditEvent) -> None:
        """Queue an event in a slot taken by admit(); never blocks."""
        if self._reserved <= 0:
            raise RuntimeError("AuditWriter.submit() without a slot from admit()")
        self._reserved -= 1
        # The row is built in the drain task, off the request's path (see _row); the
        # event is in the journal first (unless already, as the response ended).
        self.journal.submitted(event)
        self._queue.append(event)
        n = len(self._queue)
        if n == 1 or n >= self._batch_size:
            self._wake.set()

    async def record(self, event: AuditEvent) -> None:
        await self.admit()
        self.submit(event)

    # ---- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Replay a spool left by an earlier run, find the chain head, start draining."""
        spooled = await asyncio.to_thread(self._spool.read)
        self._spool_rows = len(spooled)
        try:
            self._heads = ChainHeads(self._heads.path, await asyncio.to_thread(load_heads, self._heads.path))
        except (OSError, ValueError) as e:
            log.error("audit chain heads not loaded, starting a new head file: %s", e)
        await self._unchained.load()
        mine = [r for r in spooled if r["chain_id"] == self._chain_id]
        if mine:
            # The spool is newer than the store: continue from its last row.
            self._seq, self._prev = int(mine[-1]["seq"]), str(mine[-1]["hash"])
        else:
            try:
                await self._find_head()
            except BackendError as e:
                self._head_known = False
                self._failed(f"audit store unreachable at start, so chain {self._chain_id!r} cannot continue: "
                             f"refusing governed requests, their rows held unchained until it answers: {e}")
        if self._head_known and self._unchained:
            await self._link_unchained()
        await self._recover_journal()  # after the spool and unchained rows: it checks them
        if self._spool_rows:
            log.info("replaying %d spooled audit rows", self._spool_rows)
            await self._replay(force=True)
        self._closing = False
        self._task = asyncio.create_task(self._run(), name="portcullis-audit-writer")

    async def _find_head(self) -> None:
        """The chain's last stored link, from the store (raises BackendError when unreachable)."""
        head = await self._store.last_link(self._chain_id)
        known = self._heads.head(self._chain_id)
        if known and (head is None or head[0] < known[0]):
            # Never restart at seq 1 over a wiped store: `audit verify` then shows the gap.
            log.error("audit store has chain %r up to seq %s but this writer stored up to seq %d: "
                      "the store was wiped, replaced or truncated; continuing the chain from seq %d",
                      self._chain_id, head[0] if head else 0, known[0], known[0] + 1)
            self._metrics.inc_store_replaced()
            head = known
        self._seq, self._prev = head if head else (0, GENESIS)

    async def aclose(self) -> None:
        """Write everything queued (to the store or the spool), then stop.

        The store is not closed here: its owner closes it after the writer.
        """
        if self._task is None:
            return
        self._closing = True
        self._wake.set()
        try:
            await self._task
        finally:
            self._task = None
        lost = len(self._unsaved) + len(self._queue) + len(self._unchained.loose)
        if lost:
            log.error("audit writer closed with %d rows neither stored nor spooled, left in journal %s",
                      lost, self.journal.path)
        self.journal.close()  # removed unless it holds rows still to be replayed

    # ---- drain task ----------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                if not self._queue:
                    if self._closing:
                        break
                    await self._idle(loop)
                    continue
                if len(self._queue) < self._batch_size and not self._closing:
                    # Give the batch up to flush_interval to fill.
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), self._flush_s)
                    except TimeoutError:
                        pass
                n = min(len(self._queue), self._batch_size)
                batch = [self._queue.popleft() for _ in range(n)]
                if not self._head_known:
                    await self._reach_store()  # also under steady traffic, when never idle
                if self._head_known:
                    self._unsaved.extend(self._chain(self._row(e)) for e in batch)
                    await self._persist()
                else:
                    await self._hold([self._row(e) for e in batch])
                self._metrics.set_depth(self._held)
                await self._heads.flush(loop.time())
            except Exception:  # keep draining: a dead task would stall every request
                log.exception("audit writer loop failed; retrying")
                await asyncio.sleep(self._settings.retry_interval_s)
        # Closing: one last attempt at whatever is still only in memory or the spool.
        if self._unchained.loose:
            await self._hold([])
        elif self._unsaved:
            await self._persist(force=True)
        elif self._spool_rows:
            await self._replay(force=True)
        self._metrics.set_depth(self._held)
        await self._heads.flush(loop.time(), force=True)

    async def _idle(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait for work; when rows are spooled or unsaved, wake up to retry them."""
        pending = bool(self._spool_rows or self._unsaved or self._problem or not self._head_known)
        if pending:
            timeout: float | None = max(0.0, self._next_retry - loop.time())
        else:  # the periodic file check, when the store has one
            timeout = self._settings.retry_interval_s if self._moved is not None else None
        if (due := self._heads.due_in(loop.time())) is not None:
            timeout = due if timeout is None else min(timeout, due)
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            pass
        await self._heads.flush(loop.time())
        if self._queue or self._closing:
            return
        if not self._head_known:
            await self._reach_store()
        elif self._unsaved:
            await self._persist()
        elif self._spool_rows:
            await self._replay()
        elif self._problem is not None:
            await self._recover()
        elif self._moved is not None and self._moved():
            self._store_replaced()

    async def _recover(self) -> None:
        """A replaced store with nothing spooled: reopen it, then be ready again."""
        if asyncio.get_running_loop().time() < self._next_retry:
            return
        try:
            await self._reopen()
        except Exception as e:  # noqa: BLE001 - a failed reopen is retried
            self._failed(f"audit store reopen failed, will retry: {e}")
            return
        self._problem = None

    def _store_replaced(self) -> None:
        self._problem = "audit store file was removed or replaced; rows spooled until it is reopened"
        self._reopen_pending = True
        self._metrics.inc_store_replaced()
        self._next_retry = asyncio.get_running_loop().time() + self._settings.retry_interval_s
        log.error("audit store file was removed or replaced while open: rows written since are spooled "
                  "and the store reopened; chain %r carries on from seq %d", self._chain_id, self._seq + 1)

    async def _reopen(self) -> None:
        if self._reopen_pending:
            await self._store.reopen()  # type: ignore[attr-defined]  # only stores with replaced()
            self._reopen_pending = False

    async def _store_rows(self, rows: list[dict[str, Any]]) -> None:
        """insert_batch, then one stat: rows that went into a removed file are not stored."""
        await self._reopen()
        await self._store.insert_batch(rows)
        if self._moved is not None and self._moved():
            self._store_replaced()
            raise BackendError("audit store file was removed or replaced during the write")
        self._heads.record(rows)

    @staticmethod
    def _row(event: AuditEvent) -> dict[str, Any]:
        try:
            return event_to_row(event)
        except Exception:  # a malformed event is a bug, but its request still gets a row
            log.exception("audit event %s malformed; recording it without its policy input", event.request_id)
            row = event_to_row(replace(event, policy_input=None, reasons=()))
            row["error"] = ((row.get("error") or "") + " [audit event malformed]").strip()
            return row

    def _chain(self, row: dict[str, Any]) -> dict[str, Any]:
        row["chain_id"] = self._chain_id
        row["seq"] = self._seq + 1
        row["prev_hash"] = self._prev
        try:
            row["hash"] = link(self._prev, row)
        except (TypeError, orjson.JSONEncodeError):
            # Keep the row (never drop), minus the part that cannot be serialized.
            log.error("audit row %s: policy_input not serializable", row.get("request_id"))
            row["policy_input"] = None
            row["error"] = ((row.get("error") or "") + " [policy_input not serializable]").strip()
            row["hash"] = link(self._prev, row)
        self._seq += 1
        self._prev = row["hash"]
        return row

    async def _persist(self, force: bool = False) -> None:
        """Make `_unsaved` durable: store first (after the spool drains), else spool."""
        rows = self._unsaved
        if not rows:
            return
        if not self._spool_rows or await self._replay(force):
            try:
                self.journal.storing(rows)
                await self._store_rows(rows)
            except Exception as e:  # noqa: BLE001 - any store failure spools the rows
                self._failed(f"audit store write failed ({len(rows)} rows), spooling: {e}")
            else:
                self._problem = None  # stored in the live file, nothing spooled
                self._durable(len(rows), written=True)
                return
        try:
            await asyncio.to_thread(self._spool.append, rows)
        except OSError as e:
            # Neither store nor spool: keep rows (and their slots) in memory.
            self._failed(f"audit spool write failed ({len(rows)} rows held in memory): {e}")
            return
        if not self._spool_rows and self._on_spool is not None:
            try:
                self._on_spool({"rows": len(rows), "spool": str(self._spool_path)})
            except Exception:  # a listener's bug must not stop the rows
                log.exception("audit on_spool callback failed")
        self._spool_rows += len(rows)
        self._durable(len(rows), written=False)

    async def _replay(self, force: bool = False) -> bool:
        """Move spooled rows into the store, in order; True when the spool is empty."""
        if not self._spool_rows:
            return True
        if not force and asyncio.get_running_loop().time() < self._next_retry:
            return False
        try:
            rows = await asyncio.to_thread(self._spool.read)
            for i in range(0, len(rows), self._batch_size):
                # Idempotent: a partial earlier replay left some of these in the store.
                await self._store_rows(rows[i:i + self._batch_size])
        except Exception as e:  # noqa: BLE001 - any failure: replay again later
            self._failed(f"audit spool replay failed, will retry: {e}")
            return False
        await asyncio.to_thread(self._spool.remove)
        log.info("replayed %d spooled audit rows", len(rows))
        self._metrics.inc_written(len(rows))
        self._spool_rows = 0
        self._problem = None
        return True

    def _failed(self, message: str) -> None:
        log.warning(message)
        self._metrics.inc_failures()
        self._next_retry = asyncio.get_running_loop().time() + self._settings.retry_interval_s

    def _durable(self, n: int, *, written: bool) -> None:
        self._unsaved = []
        self._held -= n
        self.journal.committed(n)
        replayed = min(n, self._recovered)  # the oldest rows: they took no slot
        self._recovered -= replayed
        from_reserve = min(n - replayed, self._reserve_held)
        self._reserve_held -= from_reserve
        for _ in range(from_reserve):
            self._reserve.release()
        for _ in range(n - replayed - from_reserve):
            self._slots.release()
        if written:
            self._metrics.inc_written(n)
