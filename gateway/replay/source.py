"""Where `policy replay` gets its inputs: the audit store's recorded policy inputs, deduplicated.

Real traffic repeats the same input many times (one agent, one model, one surface), so the
rows are folded by input digest while they stream in: a digest already seen only bumps a
counter, and only the first row of a digest has its JSON parsed. Memory is therefore bounded
by the distinct inputs, not the rows.
"""
from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.audit.chain import format_ts
from gateway.protocols import AuditStore

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(text: str | None, now: float | None = None) -> str | None:
    """`--since`/`--until`: a duration back from now (`7d`, `36h`, `90m`, `2w`), an ISO-8601
    date or time (UTC unless it says otherwise), or `all`/None for no bound; ISO text in the
    store's own format (gateway.audit.chain.format_ts), or None. ValueError when unreadable."""
    if text is None or text.strip().lower() in ("", "all"):
        return None
    text = text.strip()
    if m := _DURATION.fullmatch(text):
        back = float(m.group(1)) * _UNIT_S[m.group(2)]
        return format_ts((time.time() if now is None else now) - back)
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (7d, 36h, 90m) nor an ISO-8601 time") from None
    return format_ts(dt if dt.tzinfo else dt.replace(tzinfo=UTC))


@dataclass(slots=True)
class Recorded:
    """One distinct input and how often it was seen."""
    digest: str
    policy_input: dict[str, Any]
    requests: int = 1


@dataclass(slots=True)
class Recording:
    """Everything read: the distinct inputs (first-seen order) and totals over the rows."""
    inputs: dict[str, Recorded] = field(default_factory=dict)
    rows: int = 0
    revisions: dict[str | None, int] = field(default_factory=dict)  # rows per recorded revision
    first_ts: str | None = None
    last_ts: str | None = None
    unreadable: int = 0  # rows whose policy_input is not a JSON object (skipped)


async def read_inputs(store: AuditStore, since: str | None = None, until: str | None = None,
                      agent: str | None = None, action: str | None = None,
                      progress: Callable[[int], None] | None = None, every: int = 10000) -> Recording:
    """Stream the store's decided inputs in [since, until) and fold them by digest.

    `progress(rows so far)` is called every `every` rows and once at the end.
    """
    rec = Recording()
    inputs, revisions = rec.inputs, rec.revisions
    rows = 0
    first = last = None
    async for row in store.iter_inputs(since, until, agent, action):
        rows += 1
        ts = row["ts"]
        if first is None or ts < first:
            first = ts
        if last is None or ts > last:
            last = ts
        rev = row["policy_revision"]
        revisions[rev] = revisions.get(rev, 0) + 1
        digest = row["input_digest"]
        seen = inputs.get(digest)
        if seen is not None:
            seen.requests += 1
        else:
            doc = _parse(row["policy_input"])
            if doc is None:
                rec.unreadable += 1
            else:
                inputs[digest] = Recorded(digest, doc)
        if progress is not None and rows % every == 0:
            progress(rows)
    rec.rows, rec.first_ts, rec.last_ts = rows, first, last
    if progress is not None:
        progress(rows)
    return rec


def _parse(stored: Any) -> dict[str, Any] | None:
    if isinstance(stored, dict):  # a store that hands back parsed JSON
        return stored
    try:
        doc = orjson.loads(stored)
    except (orjson.JSONDecodeError, TypeError):
        return None
    return doc if isinstance(doc, dict) else None
