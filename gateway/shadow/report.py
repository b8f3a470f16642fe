"""`portcullis policy shadow-report`: what the shadow set decided differently, from the audit rows.

Nothing is evaluated again: each sampled row carries the shadow revision, and the rows the two
sets disagreed on carry both decisions and the kind of change as judged when they were made.
Rows are folded by (input digest, serving revision, shadow revision), then counted and rendered
exactly as `policy replay` counts and renders (gateway/replay/), so the two reports read alike.
Exit 0, 1 when `--fail-on` matches a disagreement, 2 when the report could not be made.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson

from gateway import registry
from gateway.errors import BackendError
from gateway.replay.command import add_window_arguments
from gateway.replay.compare import FAIL_ON, KINDS, Comparison, from_doc
from gateway.replay.render import render
from gateway.replay.source import parse_when
from gateway.settings import ConfigError, Settings, load_settings
from gateway.types import Decision


def add_parser(policy_sub: Any, default_config: str) -> None:
    r = policy_sub.add_parser(
        "shadow-report", help="summarise where the shadow policy set (policy.shadow) disagreed with the serving set")
    add_window_arguments(r, since="24h")
    r.add_argument("--format", choices=("table", "json", "md"), default="table")
    r.add_argument("--fail-on", choices=tuple(FAIL_ON),
                   help="exit 1 when a disagreement of this kind was recorded (e.g. before promoting the set)")
    r.add_argument("--config", default=default_config, help="the gateway config naming the audit store")
    r.set_defaults(func=cmd_shadow_report)


def cmd_shadow_report(args: argparse.Namespace) -> int:
    try:
        since, until = parse_when(args.since), parse_when(args.until)
        settings = load_settings(args.config, os.environ)
    except ValueError as e:
        print(f"policy shadow-report: {e}", file=sys.stderr)
        return 2
    except ConfigError as e:
        for key, reason in e.problems:
            print(f"config error: {key}: {reason}", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(shadow_report(settings, since=since, until=until, agent=args.agent,
                                           action=args.action, limit=args.limit, fail_on=args.fail_on))
    except BackendError as e:
        print(f"policy shadow-report: cannot read the audit store: {e}", file=sys.stderr)
        return 2
    print(render(report, args.format))
    return 1 if report["failed"] else 0


@dataclass(slots=True)
class _Seen:
    policy_input: dict[str, Any]
    requests: int
    kind: str | None
    serving: Decision
    shadow: Decision
    error: bool


async def shadow_report(settings: Settings, *, since: str | None = None, until: str | None = None,
                        agent: str | None = None, action: str | None = None, limit: int = 5,
                        fail_on: str | None = None) -> dict[str, Any]:
    """The report dict gateway.replay.render renders, with `"mode": "shadow"`."""
    audit = settings.audit
    store = registry.load("audit", audit.backend)(audit, settings.path(audit.path))
    await store.start()
    try:
        return await summarise(store, settings, since=since, until=until, agent=agent, action=action,
                               limit=limit, fail_on=fail_on)
    finally:
        await store.aclose()


async def summarise(store: Any, settings: Settings | None, *, since: str | None = None, until: str | None = None,
                    agent: str | None = None, action: str | None = None, limit: int = 5,
                    fail_on: str | None = None, max_rows: int | None = None) -> dict[str, Any]:
    """Fold the store's shadow-decided rows into the report (also what the console shows, with
    `max_rows` bounding a page load: the report then says it is `truncated`)."""
    seen: dict[tuple[str, str, str], _Seen | None] = {}
    serving_revs: Counter[str] = Counter()
    shadow_revs: Counter[str] = Counter()
    rows = 0
    first = last = None
    truncated = False
    async with contextlib.aclosing(store.iter_inputs(since, until, agent, action, shadow=True)) as found:
        async for row in found:
            if max_rows is not None and rows >= max_rows:
                truncated = True
                break
            rows += 1
            _fold(row, seen, serving_revs, shadow_revs)
            ts = row["ts"]
            first = ts if first is None or ts < first else first
            last = ts if last is None or ts > last else last
    unreadable = sum(1 for e in seen.values() if e is None)
    comparison = Comparison(limit=limit)
    for (digest, _, _), e in seen.items():
        if e is None:
            continue
        kind = e.kind if e.kind in KINDS else None
        comparison.add(digest, e.policy_input, e.requests, e.serving, e.shadow, cand_error=e.error, kind=kind)
    shadow_settings = settings.policy.shadow if settings is not None else None
    return {
        "mode": "shadow",
        "baseline": {"dir": "serving set", "revision": _most(serving_revs)},
        "candidate": {"dir": shadow_settings.dir if shadow_settings is not None else "shadow set",
                      "revision": _most(shadow_revs)},
        "window": {"since": since, "until": until, "first_row": first, "last_row": last},
        "filters": {"agent": agent, "action": action},
        "rows": rows,
        "truncated": truncated,
        "inputs": len(seen) - unreadable,
        "unreadable_rows": unreadable,
        "recorded_revisions": dict(shadow_revs.most_common()),
        "serving_revisions": dict(serving_revs.most_common()),
        "rows_other_revisions": 0,
        **comparison.report(),
        "fail_on": fail_on,
        "failed": comparison.failed(fail_on),
    }


def _fold(row: dict[str, Any], seen: dict[tuple[str, str, str], _Seen | None], serving_revs: Counter[str],
          shadow_revs: Counter[str]) -> None:
    """One row into `seen`, keyed by (digest, serving revision, shadow revision); None: unreadable."""
    serving_rev, shadow_rev = row["policy_revision"] or "", row["shadow_revision"] or ""
    serving_revs[serving_rev] += 1
    shadow_revs[shadow_rev] += 1
    key = (row["input_digest"], serving_rev, shadow_rev)
    if key in seen:
        entry = seen[key]
        if entry is not None:
            entry.requests += 1
        return
    doc, record = _parse(row["policy_input"]), _parse(row["shadow_decision"])
    if doc is None:
        seen[key] = None
    elif record is None:  # agreed: both sides are the serving decision as the row recorded it
        same = Decision(allow=row["decision"] != "deny", reasons=tuple(_parse(row["reasons"]) or ()))
        seen[key] = _Seen(doc, 1, None, same, same, False)
    else:
        seen[key] = _Seen(doc, 1, record.get("kind"), from_doc(record.get("serving") or {}, serving_rev),
                          from_doc(record.get("decision") or {}, shadow_rev), bool(record.get("error")))


def _most(counts: Counter[str]) -> str:
    return counts.most_common(1)[0][0] if counts else ""


def _parse(stored: Any) -> Any:
    if stored is None or isinstance(stored, (dict, list)):
        return stored
    try:
        return orjson.loads(stored)
    except (orjson.JSONDecodeError, TypeError):
        return None
