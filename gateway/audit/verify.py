"""`portcullis audit verify` and `audit tail`: walk the chains in any AuditStore.

Checks per row, in this order, so the reason names the likeliest tampering:
seq contiguous from 1 (a gap means deleted rows), prev_hash equal to the
previous row's hash (a row inserted or moved), hash equal to the recomputed
link (a row edited in place). Only the first break of each chain is reported;
everything after it is counted but cannot be trusted anyway.

With the writer's chain-head file (gateway/audit/heads.py) it also checks each
recorded chain's start and head against the store, which is what finds a
wiped or replaced database: a chain that restarted at seq 1, or ends early.
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


def _against_heads(report: VerifyReport, heads: Mapping[str, Mapping[str, Any]],
                   seen: Mapping[tuple[str, int], str], last: Mapping[str, int]) -> None:
    """Flag chains whose stored rows disagree with the recorded start and head."""
    by_id = {c.chain_id: c for c in report.chains}
    for chain_id, h in sorted(heads.items()):
        c = by_id.get(chain_id)
        if c is None:
            c = ChainReport(chain_id=chain_id)
            report.chains.append(c)
        start_seq, head_seq = h["start_seq"], h["seq"]
        at = head_seq
        if c.rows == 0:
            reason = f"missing from the store, which had it up to seq {head_seq} (wiped or replaced)"
        elif seen.get((chain_id, start_seq), h["start_hash"]) != h["start_hash"]:
            at, reason = start_seq, (f"restarted: seq {start_seq} is not the row the chain started with "
                                     f"(store wiped or replaced, then a new chain written with the same id)")
        elif (end := last.get(chain_id, 0)) < head_seq:
            reason = f"truncated: the store ends at seq {end}, the chain reached seq {head_seq}"
        elif seen.get((chain_id, head_seq)) != h["hash"]:
            reason = f"replaced: seq {head_seq} is not the row recorded as the chain's head"
        else:
            continue
        # The comparison with a record kept outside the store outranks what the store says of itself.
        c.first_break = ChainBreak(chain_id, at, reason)


async def verify(store: AuditStore, heads: Mapping[str, Mapping[str, Any]] | None = None) -> VerifyReport:
    """Walk every chain; with `heads` (chain id -> recorded start and head) compare them too."""
    wanted = {(cid, s) for cid, h in (heads or {}).items() for s in (h["start_seq"], h["seq"])}
    seen: dict[tuple[str, int], str] = {}
    last: dict[str, int] = {}
    report = VerifyReport()
    current: ChainReport | None = None
    expected_seq, prev_hash = 1, GENESIS
    async for row in store.iter_chain():
        if current is None or row["chain_id"] != current.chain_id:
            current = ChainReport(chain_id=row["chain_id"])
            report.chains.append(current)
            expected_seq, prev_hash = 1, GENESIS
        current.rows += 1
        key = (row["chain_id"], row["seq"])
        if key in wanted:
            seen[key] = row["hash"]
        if isinstance(row["seq"], int):
            last[row["chain_id"]] = max(last.get(row["chain_id"], 0), row["seq"])
        if current.first_break is None:
            reason = _check(row, expected_seq, prev_hash)
            if reason:
                current.first_break = ChainBreak(current.chain_id, row["seq"], reason)
        # Follow the rows as stored, so a single bad row is not blamed on its successors.
        expected_seq = (row["seq"] if isinstance(row["seq"], int) else expected_seq) + 1
        prev_hash = row["hash"]
    if heads:
        _against_heads(report, heads, seen, last)
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
