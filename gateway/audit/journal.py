"""The audit journal: each row on local disk before its response completes, replayed after a kill.

The writer batches rows off the request path (writer.py), so a SIGKILL (the OOM killer,
kubelet's kill after the grace period, node trouble) would lose every answered request whose
row was still queued. `<spool_path>.journal` is an append-only file of one-line records, each
one store into a shared file mapping (mmap): in the page cache once written, so it survives the process
being killed; a host crash only with `audit.journal_fsync` (an msync of the mapping per record).

    B[request_id, ts, api, client_ip, trace_id]              admitted: its queue slot taken (an array:
                                                             half the cost of an object; read: either)
    F{AuditEvent}                                            its row, written before the last body
                                                             chunk is sent (gateway/exchange.py)
    P{"ids": [...], "last": seq}                             a chained batch about to be inserted
    C[request_id, ...]                                       rows now durable (store, spool or
                                                             the unchained file)

On start the writer replays it (`recover`): each F row not committed, and each B without an F
as an `error` row (INTERRUPTED), minus rows already durable: in the spool, in the unchained
file, or stored by an insert that committed just before the kill (its P is there, its C is
not): that is so when the store's chain head is at or past the P's last seq. A record cut short
by the kill (no newline) is ignored. The rows go back through the writer's queue, chained
after its head, and are the first records of the new journal, written before the old one is
replaced (rename), so a kill during recovery loses nothing either.

Bounded: past MAX_BYTES the file is compacted (temp file, rename) to what is still needed:
B of requests in flight, F of rows not durable yet, the P of the batch being inserted (at
most about twice what is pending, which the audit queue bounds).
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import mmap
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson

from gateway.errors import BackendError, Unavailable
from gateway.types import AuditEvent

log = logging.getLogger("portcullis.audit")

INTERRUPTED = "interrupted: the replica stopped before the request finished"
MAX_BYTES = 4 << 20
_FIELDS = frozenset(f.name for f in dataclasses.fields(AuditEvent))
_OPTS = orjson.OPT_NON_STR_KEYS
_BEGUN = ("request_id", "ts", "api", "client_ip", "trace_id")  # a B record's array, in order


def journal_path(spool_path: Path) -> Path:
    spool_path = Path(spool_path)
    return spool_path.with_name(spool_path.name + ".journal")


def _mapping(v: Any) -> Any:
    if isinstance(v, Mapping):
        return dict(v)
    raise TypeError(f"{type(v).__name__} is not JSON")


def _f_record(event: AuditEvent) -> bytes:
    try:
        return b"F" + orjson.dumps(event, default=_mapping, option=_OPTS) + b"\n"
    except (TypeError, orjson.JSONEncodeError):  # a malformed event (the writer's _row copes too)
        return b"F" + orjson.dumps(event, default=str, option=_OPTS) + b"\n"


def _key(event: AuditEvent) -> tuple[Any, ...]:
    """What a row recorded before its last chunk was sent may still change by (see submitted)."""
    return (event.status, event.decision, event.error, event.input_tokens, event.output_tokens)


class Journal:
    """The writer's journal file. Every method runs on the event loop and never raises:
    a failed write logs an error and turns the journal off (the rows are still written
    to the store as before, just not protected against a kill any more)."""

    def __init__(self, path: Path, *, enabled: bool = True, fsync: bool = False,
                 max_bytes: int = MAX_BYTES) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self._fsync = fsync
        self._max = self._limit = max_bytes  # compacted past _limit
        self._fd = -1
        self._size = 0
        # request id -> its latest record (B, or F with its _key) while not yet submitted
        self._open: dict[str, tuple[bytes, tuple[Any, ...] | None]] = {}
        # submitted rows not yet durable, in the writer's queue order (which is chain order)
        self._fifo: collections.deque[tuple[str, bytes]] = collections.deque()
        self._storing: bytes | None = None  # the P of the insert in progress
        self._mm: mmap.mmap | None = None

    @property
    def size(self) -> int:
        return self._size

    # ---- request path ------------------------------------------------------------

    def begun(self, request_id: str, ts: float, api: str, client_ip: str | None, trace_id: str | None) -> None:
        if self._fd < 0 or not self.enabled:
            return
        rec = b"B" + orjson.dumps((request_id, ts, api, client_ip, trace_id)) + b"\n"
        if self._write(rec):
            self._open[request_id] = (rec, None)

    def finished(self, event: AuditEvent) -> None:
        """The row as it stands before the response's last chunk goes out."""
        if self._fd < 0 or not self.enabled:
            return
        rec = _f_record(event)
        if self._write(rec):
            self._open[event.request_id] = (rec, _key(event))

    def submitted(self, event: AuditEvent) -> None:
        """The row as queued; written again only when it differs from the one `finished` wrote
        in what the response was (latency and upstream_ms, measured after it, may be older)."""
        if self._fd < 0 or not self.enabled:
            return
        prior = self._open.pop(event.request_id, None)
        if prior is not None and prior[1] == _key(event):
            rec = prior[0]
        else:
            rec = _f_record(event)
            if not self._write(rec):
                return
        self._fifo.append((event.request_id, rec))

    # ---- drain task ----------------------------------------------------------------

    def storing(self, rows: list[dict[str, Any]]) -> None:
        """Before inserting a chained batch: if the process dies before committed(), the store's
        chain head says whether the insert made it."""
        if self._fd < 0 or not rows:
            return
        rec = b"P" + orjson.dumps({"ids": [r["request_id"] for r in rows], "last": rows[-1]["seq"]}) + b"\n"
        if self._write(rec):
            self._storing = rec

    def committed(self, n: int) -> None:
        """The oldest `n` submitted rows are durable (the writer's FIFO order)."""
        if self._fd < 0:
            return
        self._storing = None
        n = min(n, len(self._fifo))
        if n:
            ids = [self._fifo.popleft()[0] for _ in range(n)]
            if not self._write(b"C" + orjson.dumps(ids) + b"\n"):
                return
        if not self.enabled and not self._fifo:
            self.close()  # only replayed rows were journaled, and they are durable now
        elif self._size > self._limit:
            self._compact()

    # ---- file --------------------------------------------------------------------

    def open(self, recovered: list[AuditEvent]) -> None:
        """Start a new file holding the recovered rows (as submitted), replacing the old one.

        Raises OSError when it cannot be written: the old file is then left as it was.
        """
        self._fifo = collections.deque((e.request_id, _f_record(e)) for e in recovered)
        self._open = {}
        self._storing = None
        if not self.enabled and not recovered:
            self.path.unlink(missing_ok=True)
            return
        self._replace_with(b"".join(r for _, r in self._fifo))

    def close(self, *, remove: bool | None = None) -> None:
        """Close the file; remove it when nothing in it is still needed (or when told to)."""
        if self._fd >= 0:
            self._unmap()
            os.ftruncate(self._fd, self._size)  # drop the unused zeroed tail
            os.close(self._fd)
            self._fd = -1
        if remove if remove is not None else not (self._fifo or self._open or self._storing):
            self.path.unlink(missing_ok=True)

    def _replace_with(self, data: bytes, room: int = 0) -> None:
        """A new file holding `data`, mapped with space for `room` more bytes and then some."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        # A store that lags keeps much pending: compact again only once as much more is written.
        limit = max(self._max, 2 * len(data))
        capacity = -(-(limit + room + (64 << 10)) // mmap.PAGESIZE) * mmap.PAGESIZE
        try:
            os.ftruncate(fd, capacity)
            mm = mmap.mmap(fd, capacity, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            mm[:len(data)] = data
            if self._fsync:
                mm.flush()
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            raise
        if self._fd >= 0:
            self._unmap()
            os.close(self._fd)
        self._fd, self._mm, self._size, self._limit = fd, mm, len(data), limit

    def _unmap(self) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None

    def _compact(self, room: int = 0) -> None:
        parts = [r for r, _ in self._open.values()] + [r for _, r in self._fifo]
        if self._storing is not None:
            parts.append(self._storing)
        try:
            self._replace_with(b"".join(parts), room)
        except OSError as e:
            self._broken(e)

    def _write(self, rec: bytes) -> bool:
        # A store into a shared file mapping, not os.write: the page cache keeps it when the
        # process is killed, and unlike a syscall it does not release the GIL, which the
        # audit store's thread would take, making the event loop wait (measured: ~150 µs a
        # request with os.write under load, bench ab no_journal).
        end = self._size + len(rec)
        if self._mm is None or end > len(self._mm):
            self._compact(room=len(rec))
            if self._mm is None:
                return False
            end = self._size + len(rec)
        try:
            self._mm[self._size:end] = rec
            if self._fsync:
                self._mm.flush()
        except (OSError, ValueError) as e:
            self._broken(OSError(str(e)))
            return False
        self._size = end
        return True

    def _broken(self, e: OSError) -> None:
        # Removed, not left behind: without its later records a replay would add rows twice.
        log.error("audit journal %s failed, so rows are no longer protected against the process "
                  "being killed until it restarts: %s", self.path, e)
        self._open, self._fifo, self._storing = {}, collections.deque(), None
        try:
            self.close(remove=True)
        except OSError:
            pass


# ---- replay ----------------------------------------------------------------------


@dataclasses.dataclass
class Replay:
    """What a journal file holds."""
    begun: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    finished: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # last F wins
    inserting: list[tuple[list[str], int]] = dataclasses.field(default_factory=list)  # P: ids, last seq
    committed: set[str] = dataclasses.field(default_factory=set)
    skipped: int = 0  # unreadable records

    def pending(self) -> int:
        """How many rows the replay would recover before checking what is durable elsewhere."""
        return len((set(self.finished) | set(self.begun)) - self.committed)


def read(path: Path) -> Replay:
    """Parse a journal file (blocking; the writer runs it in a thread). No file: empty."""
    out = Replay()
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return out
    lines = data.rstrip(b"\0").split(b"\n")  # a killed writer leaves its mapping's zeroed tail
    if lines and lines[-1]:
        log.warning("audit journal %s: ignoring a record cut short by a kill mid-write", path)
    for line in lines[:-1]:  # the last piece has no newline: empty, or torn
        try:
            doc = orjson.loads(line[1:])
            tag = line[:1]
            if tag == b"F":
                out.finished[doc["request_id"]] = doc
            elif tag == b"B":
                if isinstance(doc, list):  # the array form; journals of older versions hold objects
                    doc = dict(zip(_BEGUN, doc))
                out.begun[doc["request_id"]] = doc
            elif tag == b"C":
                out.committed.update(doc)
            elif tag == b"P":
                out.inserting.append((list(doc["ids"]), int(doc["last"])))
            else:
                raise ValueError(f"unknown record {tag!r}")
        except (ValueError, KeyError, TypeError):
            out.skipped += 1
    if out.skipped:
        log.error("audit journal %s: %d unreadable records skipped", path, out.skipped)
    return out


def recover(found: Replay, durable: Iterable[str], head: int | None) -> list[AuditEvent]:
    """The rows to write again, in journal order then the interrupted ones.

    `durable`: request ids in the spool and the unchained file. `head`: the store's last seq
    of this writer's chain, None when the store cannot be asked; a batch whose insert may
    have committed is then written again (a possible duplicate beats a lost row), with a warning.
    """
    done = set(found.committed)
    done.update(durable)
    for ids, last in found.inserting:
        if head is not None and head >= last:
            done.update(ids)
        elif head is None and not done.issuperset(ids):
            log.warning("audit journal: store not reached, so %d rows of an insert cut by the kill are "
                        "written again and may be stored twice", len(set(ids) - done))
    rows = []
    for rid, doc in found.finished.items():
        if rid in done:
            continue
        try:
            fields = {k: v for k, v in doc.items() if k in _FIELDS}
            rows.append(AuditEvent(**{**fields, "reasons": tuple(fields.get("reasons") or ())}))
        except TypeError as e:  # e.g. written by a version whose AuditEvent had other fields
            log.error("audit journal: row %s unreadable (%s), recorded as interrupted", rid, e)
            rows.append(interrupted(doc))
    for rid, doc in found.begun.items():
        if rid not in done and rid not in found.finished:
            rows.append(interrupted(doc))
    return rows


def interrupted(begun: Mapping[str, Any]) -> AuditEvent:
    """The row of a request that was admitted but never finished: what was known at admission."""
    return AuditEvent(
        request_id=str(begun["request_id"]), ts=float(begun.get("ts") or 0.0), agent_id=None, tier=None,
        maturity=None, workspace=None, auth=None, action=None, resource_type=None, resource_name=None,
        upstream=None, api=str(begun.get("api") or "?"), stream=False, decision="error", reasons=(INTERRUPTED,),
        policy_revision=None, cache_hit=False, status=0, latency_ms=None,  # type: ignore[arg-type]
        upstream_ms=None, input_tokens=None, output_tokens=None, client_ip=begun.get("client_ip"),
        error=INTERRUPTED, input_digest=None, policy_input=None, trace_id=begun.get("trace_id"))


class Journaled:
    """The AuditWriter's journal replay at start (a mixin: it runs on the writer's state)."""
    journal: Journal
    _store: Any
    _chain_id: str
    _spool: Any
    _unchained: Any
    _queue: collections.deque[AuditEvent]
    _held: int
    _recovered: int  # replayed rows not yet durable: they hold no queue slot

    async def _recover_journal(self) -> None:
        """Queue the rows a killed run left only in its journal, and start a new journal."""
        found = await asyncio.to_thread(read, self.journal.path)
        rows: list[AuditEvent] = []
        if found.pending():
            durable = {r["request_id"] for r in await asyncio.to_thread(self._spool.read)}
            durable.update(r["request_id"] for r in await asyncio.to_thread(self._unchained.file.read))
            try:
                head: int | None = (await self._store.last_link(self._chain_id) or (0, ""))[0]
            except BackendError:
                head = None
            rows = recover(found, durable, head)
        try:
            await asyncio.to_thread(self.journal.open, rows)
        except OSError as e:
            if rows:  # going on would lose them, or store them twice after the next restart
                raise Unavailable(f"audit journal {self.journal.path} not writable, so {len(rows)} rows it "
                                  f"holds cannot be replayed safely: {e}") from e
            log.error("audit journal %s not writable, rows are not protected against a kill: %s",
                      self.journal.path, e)
            return
        if rows:
            lost = sum(1 for r in rows if r.error == INTERRUPTED)
            log.warning("replaying %d audit rows from journal %s (the last run was killed); %d of them "
                        "for requests it never finished", len(rows), self.journal.path, lost)
            self._queue.extend(rows)
            self._held += len(rows)
            self._recovered += len(rows)
