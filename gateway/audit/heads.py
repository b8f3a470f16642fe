"""Each chain's first and last stored link, kept in a small file beside the spool.

A second record of the chains, outside the store: a store that was wiped,
replaced or truncated (its chain restarted at seq 1, or ending before the last
row this writer stored) verifies clean on its own, but not against this file.
One file per writer (replica), so it works for any AuditStore; `audit verify`
compares the store with the file of the host it runs on.

    {"chains": {"<chain_id>": {"start_seq": 1, "start_hash": "…", "seq": 42, "hash": "…"}}}

Saved by write-to-temp and rename, so a reader never sees half a file.
"""
from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import orjson

log = logging.getLogger("portcullis.audit")

# Rewritten at most this often (and when a chain starts, and at shutdown): a lagging
# head only makes `audit verify` check a little less, never wrongly.
SAVE_EVERY_S = 1.0


def heads_path(spool_path: Path) -> Path:
    spool_path = Path(spool_path)
    return spool_path.with_name(spool_path.name + ".heads.json")


def load_heads(path: Path) -> dict[str, dict[str, Any]]:
    """The recorded chains; {} when there is no file. ValueError when it is not a head file."""
    try:
        doc = orjson.loads(Path(path).read_bytes())
    except FileNotFoundError:
        return {}
    except orjson.JSONDecodeError as e:
        raise ValueError(f"chain-head file {path} is not valid JSON: {e}") from None
    chains = doc.get("chains") if isinstance(doc, dict) else None
    if not isinstance(chains, dict) or not all(
            isinstance(h, dict) and isinstance(h.get("start_seq"), int) and isinstance(h.get("seq"), int)
            and isinstance(h.get("start_hash"), str) and isinstance(h.get("hash"), str)
            for h in chains.values()):
        raise ValueError(f"chain-head file {path} is malformed")
    return chains


class ChainHeads:
    def __init__(self, path: Path, chains: dict[str, dict[str, Any]] | None = None) -> None:
        self.path = Path(path)
        self.chains: dict[str, dict[str, Any]] = dict(chains or {})
        self._dirty = self._started = False
        self._due = 0.0

    def record(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Rows now in the store (saved later by flush())."""
        self._started |= self.advance(rows)
        self._dirty = True

    def due_in(self, now: float) -> float | None:
        """Seconds until flush() has something to save, None when nothing is waiting."""
        return max(0.0, self._due - now) if self._dirty else None

    async def flush(self, now: float, force: bool = False) -> None:
        """Save off the event loop when due; a failed save is logged, never fatal."""
        if not self._dirty or not (force or self._started or now >= self._due):
            return
        started, self._dirty, self._started = self._started, False, False
        self._due = now + SAVE_EVERY_S
        try:
            await asyncio.to_thread(self.save, started)
        except OSError as e:
            log.warning("audit chain-head file %s not written: %s", self.path, e)

    def head(self, chain_id: str) -> tuple[int, str] | None:
        h = self.chains.get(chain_id)
        return (h["seq"], h["hash"]) if h else None

    def advance(self, rows: Iterable[Mapping[str, Any]]) -> bool:
        """Move each chain's head to its newest stored row; True when a chain starts here."""
        started = False
        for r in rows:
            h = self.chains.get(r["chain_id"])
            if h is None:
                h = self.chains[r["chain_id"]] = {"start_seq": r["seq"], "start_hash": r["hash"]}
                started = True
            if r["seq"] >= h.get("seq", 0):
                h["seq"], h["hash"] = r["seq"], r["hash"]
        return started

    def save(self, durable: bool) -> None:
        """Atomic replace; fsynced when a chain's start is recorded (heads only ever lag)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(orjson.dumps({"chains": self.chains}, option=orjson.OPT_SORT_KEYS))
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, self.path)
