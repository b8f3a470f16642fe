"""`portcullis policy replay CANDIDATE_DIR`: what a candidate policy set would do to recorded traffic.

Steps: check both sets as `policy check` does (a broken one is exit 2, file:line problems on
stderr); stream the audit store's recorded inputs, folded by digest; evaluate each distinct
input once with the baseline and once with the candidate, in batches, on the embedded
engine; report the differences. Exit 0, 1 when `--fail-on` matches a change, 2 when the
replay could not run (usage, a broken set, an unreadable store).

The baseline is the configured policy directory (or `--baseline DIR`). Past revisions are
not kept anywhere the replay could load them, so rows recorded under another revision are
counted and named in the report: for those, "baseline" means today's set, not the one that
decided them.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from gateway import registry
from gateway.errors import BackendError, PolicyCompileError, PolicyError
from gateway.replay.compare import FAIL_ON, Comparison, failed_decision
from gateway.replay.progress import progress_for
from gateway.replay.render import render
from gateway.replay.source import Recording, parse_when, read_inputs
from gateway.settings import ConfigError, Settings, load_settings
from gateway.types import Decision

BATCH = 256  # inputs per evaluate_many call
# Below this many distinct inputs the interpreter finishes before the compiled program's
# agreement check would (about 2 s): only bigger replays wait for the faster evaluator.
COMPILED_FROM = 20000


class ReplayFailed(Exception):
    """The replay could not run (exit 2); the message says why."""


def add_parser(policy_sub: Any, default_config: str) -> None:
    r = policy_sub.add_parser(
        "replay", help="evaluate the audit log's recorded inputs with a candidate set and report what changes")
    r.add_argument("candidate", metavar="CANDIDATE_DIR", help="the edited policy directory")
    r.add_argument("--baseline", metavar="DIR", help="compare against this set (default: the config's policy dir)")
    add_window_arguments(r, since="7d")
    r.add_argument("--format", choices=("table", "json", "md"), default="table",
                   help="md: a report to paste into a pull request")
    r.add_argument("--fail-on", choices=tuple(FAIL_ON),
                   help="exit 1 when a change of this kind is found (any: any decision or obligation change)")
    r.add_argument("--config", default=default_config, help="the gateway config naming the audit store")
    r.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    r.add_argument("--record", action="store_true",
                   help="also store a summary as a `policy.replayed` governance event in the lifecycle store "
                        "named by --config (the console's policy page lists them)")
    r.set_defaults(func=cmd_policy_replay)


def add_window_arguments(r: Any, *, since: str) -> None:
    """The recorded rows a report reads (--since, --until, --agent, --action) and its examples
    (--limit): shared by `policy replay` and `policy shadow-report`."""
    r.add_argument("--since", default=since, help="start of the window: a duration back (7d, 36h), an ISO-8601 "
                                                  f"time, or all (default {since})")
    r.add_argument("--until", help="end of the window, same forms (default: now)")
    r.add_argument("--agent", help="only this agent's requests")
    r.add_argument("--action", help="only this action (llm.chat, tool.call, ...)")
    r.add_argument("--limit", type=_count, default=5, metavar="N", help="example inputs per kind of change (5)")


def _count(text: str) -> int:
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return n


def cmd_policy_replay(args: argparse.Namespace) -> int:
    try:
        since, until = parse_when(args.since), parse_when(args.until)
    except ValueError as e:
        print(f"policy replay: {e}", file=sys.stderr)
        return 2
    try:
        settings = load_settings(args.config, os.environ)
    except ConfigError as e:
        for key, reason in e.problems:
            print(f"config error: {key}: {reason}", file=sys.stderr)
        return 2
    baseline = Path(args.baseline) if args.baseline else settings.path(settings.policy.dir)
    candidate = Path(args.candidate)
    check = registry.import_from_string("adapters.policy.lint:check_policy_dir")
    broken = False
    for label, d in (("baseline", baseline), ("candidate", candidate)):
        problems, _ = check(d)
        for p in problems:
            print(f"{label} {d}: {p}", file=sys.stderr)
        if problems:
            print(f"{label} {d}: {len(problems)} problem(s)", file=sys.stderr)
            broken = True
    if broken:
        return 2
    try:
        report = asyncio.run(replay(settings, baseline, candidate, since=since, until=until, agent=args.agent,
                                    action=args.action, limit=args.limit, fail_on=args.fail_on,
                                    quiet=args.quiet))
    except ReplayFailed as e:
        print(f"policy replay: {e}", file=sys.stderr)
        return 2
    print(render(report, args.format))
    if args.record:
        try:
            asyncio.run(record(settings, report))
        except (BackendError, ReplayFailed) as e:
            print(f"policy replay: the report was not recorded: {e}", file=sys.stderr)
            return 2
    return 1 if report["failed"] else 0


async def replay(settings: Settings, baseline: Path, candidate: Path, *, since: str | None = None,
                 until: str | None = None, agent: str | None = None, action: str | None = None,
                 limit: int = 5, fail_on: str | None = None, quiet: bool = True) -> dict[str, Any]:
    """The whole replay on this event loop (regorus engines are bound to the thread that made
    them); returns the report (see gateway.replay.render)."""
    with progress_for(sys.stderr, quiet) as bar:
        bar.phase("reading audit rows")
        recording = await _read(settings, since, until, agent, action, bar.update)
        evaluator = settings.policy.evaluator if len(recording.inputs) >= COMPILED_FROM else "interpreter"
        policy = settings.policy.model_copy(update={"hot_reload": False, "evaluator": evaluator})
        engine_cls = registry.load("policy", "regorus")  # the embedded engine, whatever serves
        engines = []
        try:
            for label, d in (("baseline", baseline), ("candidate", candidate)):
                engine = engine_cls(policy, d)
                try:
                    await engine.start()
                except PolicyCompileError as e:
                    raise ReplayFailed(f"{label} {d}: {e}") from None
                engines.append(engine)
            if evaluator == "compiled":
                for engine in engines:
                    await engine.compiled_ready()
            bar.phase("evaluating distinct inputs", total=len(recording.inputs))
            comparison = _compare(recording, engines[0], engines[1], limit, bar.update)
            revisions = (engines[0].revision, engines[1].revision)
        finally:
            for engine in reversed(engines):
                await engine.aclose()
    others = sum(n for rev, n in recording.revisions.items() if rev != revisions[0])
    return {
        "baseline": {"dir": str(baseline), "revision": revisions[0]},
        "candidate": {"dir": str(candidate), "revision": revisions[1]},
        "window": {"since": since, "until": until, "first_row": recording.first_ts,
                   "last_row": recording.last_ts},
        "filters": {"agent": agent, "action": action},
        "rows": recording.rows,
        "inputs": len(recording.inputs),
        "unreadable_rows": recording.unreadable,
        "recorded_revisions": {str(rev): n for rev, n in sorted(recording.revisions.items(),
                                                                key=lambda kv: -kv[1])},
        "rows_other_revisions": others,
        **comparison.report(),
        "fail_on": fail_on,
        "failed": comparison.failed(fail_on),
    }


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """What a recorded replay keeps: the counts and the busiest keys, no inputs (bounded)."""
    return {"baseline": report["baseline"], "candidate": report["candidate"], "window": report["window"],
            "filters": report["filters"], "rows": report["rows"], "inputs": report["inputs"],
            "changes": report["changes"], "unchanged": report["unchanged"], "errors": report["errors"],
            "top": {dim: [{"key": r["key"], "requests": r["requests"]} for r in rows[:5]]
                    for dim, rows in report["breakdown"].items()},
            "fail_on": report["fail_on"], "failed": report["failed"]}


async def record(settings: Settings, report: dict[str, Any]) -> None:
    """The summary as a `policy.replayed` event (LOW) in the configured lifecycle store."""
    import secrets
    import time

    from gateway.lifecycle.model import GovernanceEvent

    lc = settings.lifecycle
    if not lc.enabled:
        raise ReplayFailed("lifecycle.enabled is false in --config: there is no store to record in")
    store_cls = registry.load("lifecycle_store", lc.store)
    store = store_cls(lc, settings.path(lc.path)) if lc.store == "sqlite" else store_cls(lc)
    await store.start()
    try:
        await store.add_events([GovernanceEvent("evt_" + secrets.token_hex(8), time.time(), "policy.replayed",
                                                "LOW", details=summary(report))])
    finally:
        await store.aclose()


async def _read(settings: Settings, since: str | None, until: str | None, agent: str | None,
                action: str | None, progress: Any) -> Recording:
    audit = settings.audit
    path = settings.path(audit.path)
    if audit.backend == "sqlite" and not path.exists():  # starting the store would create an empty one
        raise ReplayFailed(f"no audit database at {path} (audit.path in the config)")
    store = registry.load("audit", audit.backend)(audit, path)
    try:
        await store.start()
        try:
            return await read_inputs(store, since, until, agent, action, progress=progress)
        finally:
            await store.aclose()
    except BackendError as e:
        raise ReplayFailed(f"cannot read the audit store: {e}") from None


def _compare(recording: Recording, base: Any, cand: Any, limit: int, progress: Any) -> Comparison:
    comparison = Comparison(limit=limit)
    entries = list(recording.inputs.values())
    for start in range(0, len(entries), BATCH):
        chunk = entries[start:start + BATCH]
        docs = [e.policy_input for e in chunk]
        for e, (b, b_err), (c, c_err) in zip(chunk, _decide(base, docs), _decide(cand, docs)):
            comparison.add(e.digest, e.policy_input, e.requests, b, c, b_err, c_err)
        progress(start + len(chunk))
    return comparison


def _decide(engine: Any, docs: list[dict[str, Any]]) -> list[tuple[Decision, bool]]:
    """The batch's decisions; when one input fails, each alone, a failure as the gateway's
    fail-closed deny (flagged True)."""
    try:
        return [(d, False) for d in engine.evaluate_many(docs)]
    except PolicyError:
        pass
    out = []
    for doc in docs:
        try:
            out.append((engine.evaluate(doc), False))
        except PolicyError as e:
            out.append((failed_decision(e.message, engine.revision), True))
    return out
