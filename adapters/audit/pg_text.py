"""PostgreSQL text cannot hold NUL: the audit store's escape for text columns, shared by the
store (adapters/audit/postgres.py) and its console queries (console_postgres.py).

A value holding NUL, or starting with the mark itself, is stored as the mark plus its JSON
string; reading undoes exactly that and leaves anything else (a hand-edited value) as it is, so
`audit verify` still sees the edit.
"""
from __future__ import annotations

from typing import Any

import orjson

MARK = "\ue000"


def to_text(v: Any) -> Any:
    if isinstance(v, str) and ("\x00" in v or v.startswith(MARK)):
        return MARK + orjson.dumps(v).decode()
    return v


def from_text(v: Any) -> Any:
    if isinstance(v, str) and v.startswith(MARK):
        try:
            s = orjson.loads(v[1:])
        except orjson.JSONDecodeError:
            return v  # not ours (edited by hand): left as is, so verify reports it
        return s if isinstance(s, str) else v
    return v
