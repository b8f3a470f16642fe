"""The audit spool: chained rows appended (fsynced) while the store is down, read back in order.

Its methods block; the writer runs them in a worker thread.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import orjson

from gateway.audit.chain import row_from_store
from gateway.errors import Unavailable

log = logging.getLogger("portcullis.audit")


class SpoolFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, rows: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = b"".join(orjson.dumps(r) + b"\n" for r in rows)
        with open(self.path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict[str, Any]]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        rows, good = [], 0
        for line in data.splitlines(keepends=True):
            try:
                if not line.endswith(b"\n"):
                    raise ValueError("incomplete line")
                rows.append(row_from_store(orjson.loads(line)))
            except ValueError:
                if good + len(line) < len(data):
                    raise Unavailable(f"audit spool {self.path} is corrupt at byte {good}") from None
                # A crash mid-append leaves a partial last line; its slot was never released.
                log.warning("dropping a partial last line from audit spool %s", self.path)
                with open(self.path, "r+b") as f:
                    f.truncate(good)
                    os.fsync(f.fileno())
                break
            good += len(line)
        return rows

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
