"""`portcullis audit verify` and `audit tail`: walk the chains in any AuditStore.

Checks per row, in this order, so the reason names the likeliest tampering:
seq contiguous from 1 (a gap means deleted rows), prev_hash equal to the
previous row's hash (a row inserted or moved), hash equal to the recomputed
link (a row edited in place). Only the first break of each chain is reported;
everything after it is counted but cannot be trusted anyway.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from gateway.audit.chain import GENESIS, link
from gateway.protocols import AuditStore


@dataclass(frozen=True, slots=True)
class ChainBreak:
    chain_id: str
    seq: int
    reason: str


@dataclass(slots=True)
class ChainReport:
    chain_id: str
    rows: int = 0
    first_break: ChainBreak | None = None

    @property
    def ok(self) -> bool:
        return self.first_break is None


@dataclass(slots=True)
class VerifyReport:
    chains: list[ChainReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.chains)

    @property
    def rows(self) -> int:
        return sum(c.rows for c in self.chains)


def _check(row: Mapping[str, Any], expected_seq: int, prev_hash: str) -> str | None:
    seq = row["seq"]
    if not isinstance(seq, int) or seq < expected_seq:
        return "inserted or reordered"
    if seq > expected_seq:
        return f"deleted rows before seq {seq}"
    if row["prev_hash"] != prev_hash:
        return "inserted or reordered"
    try:
        if row["hash"] != link(prev_hash, row):
            return "edited"
    except (TypeError, ValueError):  # a value that no longer serializes
        return "edited"
    return None


async def verify(store: AuditStore) -> VerifyReport:
    report = VerifyReport()
    current: ChainReport | None = None
    expected_seq, prev_hash = 1, GENESIS
    async for row in store.iter_chain():
        if current is None or row["chain_id"] != current.chain_id:
            current = ChainReport(chain_id=row["chain_id"])
            report.chains.append(current)
            expected_seq, prev_hash = 1, GENESIS
        current.rows += 1
        if current.first_break is None:
            reason = _check(row, expected_seq, prev_hash)
            if reason:
                current.first_break = ChainBreak(current.chain_id, row["seq"], reason)
        # Follow the rows as stored, so a single bad row is not blamed on its successors.
        expected_seq = (row["seq"] if isinstance(row["seq"], int) else expected_seq) + 1
        prev_hash = row["hash"]
    return report


def format_report(report: VerifyReport) -> tuple[str, int]:
    """Human-readable report and the CLI exit code (0 clean, 1 broken)."""
    if not report.chains:
        return "audit log is empty: nothing to verify", 0
    lines = []
    for c in report.chains:
        if c.first_break is None:
            lines.append(f"chain {c.chain_id}: {c.rows} rows, ok")
        else:
            b = c.first_break
            lines.append(f"chain {c.chain_id}: {c.rows} rows checked, BROKEN at seq {b.seq}: {b.reason}")
    broken = sum(1 for c in report.chains if not c.ok)
    lines.append(f"{report.rows} rows in {len(report.chains)} chain(s): "
                 + ("ok" if broken == 0 else f"{broken} broken"))
    return "\n".join(lines), 0 if broken == 0 else 1


def _cell(v: Any) -> str:
    return "-" if v is None or v == "" else str(v)


async def tail_text(store: AuditStore, n: int) -> str:
    """The newest `n` rows, oldest first, one compact line each."""
    lines = []
    for r in await store.tail(n):
        reasons = "; ".join(r.get("reasons") or [])
        cells = [_cell(r.get("ts")), f"#{r.get('seq')}"]
        cells += [_cell(r.get(k)) for k in (
            "request_id", "agent_id", "action", "resource_name", "decision", "status")]
        lines.append(" ".join(cells) + (f"  {reasons}" if reasons else ""))
    return "\n".join(lines)
