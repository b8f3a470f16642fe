"""What the audit writer reports (gateway/metrics.py implements it for Prometheus)."""
from __future__ import annotations

from typing import Protocol


class AuditMetrics(Protocol):
    def set_depth(self, n: int) -> None: ...
    def inc_failures(self) -> None: ...
    def inc_written(self, n: int) -> None: ...
    def inc_store_replaced(self) -> None: ...


class NoMetrics:
    def set_depth(self, n: int) -> None:
        pass

    def inc_failures(self) -> None:
        pass

    def inc_written(self, n: int) -> None:
        pass

    def inc_store_replaced(self) -> None:
        pass
