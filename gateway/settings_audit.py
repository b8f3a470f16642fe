"""The `audit:` section (kept apart so gateway/settings.py stays small)."""
from __future__ import annotations

import socket
from typing import Literal

from pydantic import Field

from gateway.configbase import Model


class AuditSettings(Model):
    backend: str = "sqlite"  # sqlite (embedded) | postgres (fleet) | module:Class
    path: str = "var/audit.db"  # sqlite file
    dsn_env: str | None = None  # names the variable holding the DSN; it overrides dsn
    dsn: str = Field("postgresql://127.0.0.1:5432/portcullis", repr=False)  # postgres; may hold a password
    table: str = Field("audit_log", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
    pool_min_size: int = Field(1, ge=0)  # postgres connection pool, per replica
    pool_max_size: int = Field(4, gt=0)
    timeout_s: float = Field(5.0, gt=0)  # postgres: connect and each statement; slower is down
    spool_path: str = "var/audit.spool"
    chain_id: str = Field(default_factory=socket.gethostname)
    batch_size: int = Field(500, gt=0)
    flush_interval_ms: int = Field(50, gt=0)
    queue_max: int = Field(10000, gt=0)
    on_full: Literal["wait", "refuse"] = "wait"
    full_wait_s: float = Field(5.0, ge=0)
    # Extra slots only for rows of requests refused before any governed work (405, 408,
    # 413, 431, client gone): those rows are recorded even while agents fill queue_max.
    reserve_max: int = Field(256, gt=0)
    retry_interval_s: float = Field(2.0, gt=0)
    # `<spool_path>.journal` (gateway/audit/journal.py): each row is appended there before its
    # response completes, so a SIGKILLed replica's queued rows are replayed when it restarts.
    # One write() per record survives a process kill; journal_fsync adds an fsync per record
    # (host crash, power loss) at a cost measured in docs/architecture.md.
    journal: bool = True
    journal_fsync: bool = False
