"""`portcullis agents | approvals | proposals | events | bypass | report | admin-token`.

The commands talk to the admin API (`--url`, `--token`), so the gateway's rules run once, in
the gateway; the read commands and `report` can instead read the stores a config names
(`--direct`, no gateway needed). Exit codes: 0 ok, 1 the API refused or failed, 2 usage.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.admin import tables
from gateway.admin.client import AdminClient, AdminError, base_url


class UsageError(Exception):
    """Bad arguments argparse cannot see (no token, a bad duration): exit code 2."""


def _settings(args: argparse.Namespace) -> Any:
    from gateway.cli import _settings  # exits 2 on a bad config, printing its problems

    return _settings(args.config)


def _client(args: argparse.Namespace) -> AdminClient:
    if not args.token:
        raise UsageError("no admin token: pass --token or set PORTCULLIS_ADMIN_TOKEN")
    url = args.url
    if not url:
        admin = _settings(args).admin
        url = base_url(admin.host, admin.port)
    return AdminClient(url, args.token)


def _api(args: argparse.Namespace, method: str, path: str, **kw: Any) -> Any:
    with _client(args) as c:
        return c.call(method, path, **kw)


def _direct(args: argparse.Namespace, work: Callable[[Any], Any]) -> Any:
    from gateway.admin.direct import Direct

    async def go() -> Any:
        async with Direct(_settings(args)) as d:
            return await work(d)

    return asyncio.run(go())


def _seconds(text: str) -> float:
    from gateway.admin.ops import duration_s
    from gateway.errors import InvalidRequest

    try:
        return duration_s(text)
    except InvalidRequest as e:
        raise UsageError(e.message) from None


def _show(args: argparse.Namespace, data: Any, render: Callable[[Any], str]) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if args.json else render(data))


# ---- commands ---------------------------------------------------------------------------------

def agents(args: argparse.Namespace) -> int:
    verb = args.agents_command
    if verb == "list":
        rows = _direct(args, lambda d: d.agents()) if args.direct else _api(args, "GET", "/admin/agents")["agents"]
        _show(args, rows, lambda r: tables.table(r, tables.AGENTS))
    elif verb == "show":
        if args.direct:
            found = [a for a in _direct(args, lambda d: d.agents()) if a["id"] == args.id]
            if not found:
                raise AdminError(f"no agent {args.id!r} in the agents file")
            data = found[0]
        else:
            data = _api(args, "GET", f"/admin/agents/{args.id}")
        _show(args, data, tables.pairs)
    else:  # revoke | reinstate | promote | demote
        body: dict[str, Any] = {"reason": args.reason}
        if verb in ("promote", "demote"):
            body.update({k: v for k, v in (("tier", args.tier), ("maturity", args.maturity)) if v is not None})
        data = _api(args, "POST", f"/admin/agents/{args.id}/{verb}", body=body)
        _show(args, data, lambda d: f"{verb}d {args.id}\n" + tables.pairs(d))
    return 0


def approvals(args: argparse.Namespace) -> int:
    if args.approvals_command == "list":
        if args.direct:
            rows = _direct(args, lambda d: d.approvals(args.status, args.agent))
        else:
            rows = _api(args, "GET", "/admin/approvals", params={"status": args.status, "agent": args.agent})
            rows = rows["approvals"]
        _show(args, rows, lambda r: tables.table(r, tables.APPROVALS))
        return 0
    verb = args.approvals_command
    data = _api(args, "POST", f"/admin/approvals/{args.id}/{verb}", body={"reason": args.reason or ""})
    _show(args, data, lambda d: f"{data.get('status', verb)}: approval {args.id}\n" + tables.pairs(d))
    return 0


def proposals(args: argparse.Namespace) -> int:
    if args.proposals_command == "list":
        if args.direct:
            rows = _direct(args, lambda d: d.proposals(args.status))
        else:
            rows = _api(args, "GET", "/admin/proposals", params={"status": args.status})["proposals"]
        _show(args, rows, lambda r: tables.table(r, tables.PROPOSALS))
        return 0
    verb = args.proposals_command
    data = _api(args, "POST", f"/admin/proposals/{args.id}/{verb}", body={"reason": args.reason or ""})
    _show(args, data, lambda d: f"{data.get('status', verb)}: proposal {args.id}\n" + tables.pairs(d))
    return 0


def events(args: argparse.Namespace) -> int:
    severity = args.min_severity.upper() if args.min_severity else None
    if args.direct:
        import time

        query = {"since": time.time() - _seconds(args.since), "agent_id": args.agent,
                 "workspace": args.workspace, "min_severity": severity, "limit": args.limit}
        rows = _direct(args, lambda d: d.events(**query))
    else:
        _seconds(args.since)  # a bad duration is a usage error here, not the API's 400
        params = {"since": args.since, "agent": args.agent, "workspace": args.workspace,
                  "min_severity": severity, "limit": args.limit}
        rows = _api(args, "GET", "/admin/events", params=params)["events"]
    _show(args, rows, lambda r: tables.table(r, tables.EVENTS))
    return 0


def bypass(args: argparse.Namespace) -> int:
    if args.state == "status":
        data = _api(args, "GET", "/admin/bypass")
    else:
        if not args.reason:
            raise UsageError("bypass on|off needs --reason")
        data = _api(args, "PUT", "/admin/bypass", body={"enabled": args.state == "on", "reason": args.reason})
    _show(args, data, tables.pairs)
    return 0


def report(args: argparse.Namespace) -> int:
    period = _seconds(args.period)
    if args.direct:
        stored = _direct(args, lambda d: d.report(period, _local_actor()))
        text = _render(stored["body"], args.format)
    else:
        with _client(args) as c:
            stored = c.call("POST", "/admin/reports", body={"period": args.period})
            # Rendered by the gateway that built it (GET .../{id}?format=), not by this CLI's version.
            text = (json.dumps(stored["body"], indent=2, sort_keys=True) if args.format == "json" else
                    c.call("GET", f"/admin/reports/{stored['id']}", params={"format": args.format}, raw=True))
    if args.out:
        Path(args.out).write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
        print(f"report {stored['id']} written to {args.out}", file=sys.stderr)
    else:
        print(text)
    return 0


def _local_actor() -> str:
    """Who made a --direct report: the local user (there is no admin token to name one)."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):
        return "cli"


def _render(body: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(body, indent=2, sort_keys=True)
    from gateway.lifecycle.report import render

    return render(body, fmt)


def admin_token_new(args: argparse.Namespace) -> int:
    from gateway.keys import new_key

    token, digest = new_key(prefix="pat-")
    scopes = ["read", "write"] if args.scope == "write" else ["read"]
    print(f"token:  {token}")
    print(f"sha256: {digest}")
    print("\nadd under admin.tokens in the gateway config (store only the hash; give the token to the operator once):")
    print(f"    - name: {args.name}\n      sha256: {digest}\n      scopes: [{', '.join(scopes)}]")
    return 0


# ---- parser -----------------------------------------------------------------------------------

def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except UsageError as e:
            print(f"portcullis: {e}", file=sys.stderr)
            return 2
        except AdminError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    return run


def add_commands(sub: Any, *, default_config: str, default_token: str | None) -> None:
    """Add the operator commands to `portcullis`'s subparsers (gateway/cli.py)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=default_config, help="gateway config (admin listener, stores)")
    common.add_argument("--url", help="admin API URL (default: http://ADMIN_HOST:ADMIN_PORT of --config)")
    common.add_argument("--token", default=default_token, help="admin token (default: $PORTCULLIS_ADMIN_TOKEN)")
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    direct = argparse.ArgumentParser(add_help=False)
    direct.add_argument("--direct", action="store_true", help="read the stores of --config, not the admin API")

    def reason(p: argparse.ArgumentParser, required: bool) -> None:
        p.add_argument("--reason", required=required, default=None, help="why (audited)")

    ag = sub.add_parser("agents", help="agent lifecycle: list, show, revoke, reinstate, promote, demote")
    ags = ag.add_subparsers(dest="agents_command", required=True)
    ags.add_parser("list", parents=[common, direct], help="every agent with its state")
    ags.add_parser("show", parents=[common, direct], help="one agent").add_argument("id")
    for verb in ("revoke", "reinstate", "promote", "demote"):
        p = ags.add_parser(verb, parents=[common], help=f"{verb} an agent")
        p.add_argument("id")
        reason(p, True)
        if verb in ("promote", "demote"):
            p.add_argument("--tier", type=int)
            p.add_argument("--maturity")
    ag.set_defaults(func=_guarded(agents))

    for name, statuses in (("approvals", ("pending", "approved", "rejected", "used", "expired")),
                           ("proposals", ("pending", "approved", "rejected", "auto_approved"))):
        top = sub.add_parser(name, help=f"{name}: list, approve, reject")
        subs = top.add_subparsers(dest=f"{name}_command", required=True)
        lp = subs.add_parser("list", parents=[common, direct])
        lp.add_argument("--status", choices=statuses)
        if name == "approvals":
            lp.add_argument("--agent")
        for verb in ("approve", "reject"):
            p = subs.add_parser(verb, parents=[common])
            p.add_argument("id")
            reason(p, False)
        top.set_defaults(func=_guarded(approvals if name == "approvals" else proposals))

    ev = sub.add_parser("events", parents=[common, direct], help="governance events")
    ev.add_argument("--since", default="24h", help="how far back (24h, 7d, ...)")
    ev.add_argument("--agent")
    ev.add_argument("--workspace")
    ev.add_argument("--min-severity", choices=["LOW", "MEDIUM", "HIGH", "CRITICAL", "low", "medium", "high",
                                               "critical"])
    ev.add_argument("--limit", type=int, default=1000)
    ev.set_defaults(func=_guarded(events))

    by = sub.add_parser("bypass", parents=[common], help="the emergency bypass: on, off or status")
    by.add_argument("state", choices=["on", "off", "status"])
    reason(by, False)
    by.set_defaults(func=_guarded(bypass))

    rp = sub.add_parser("report", parents=[common, direct], help="build and store a governance report")
    rp.add_argument("--period", default="7d", help="the window ending now (7d, 24h, ...)")
    rp.add_argument("--format", choices=["md", "json", "html"], default="md")
    rp.add_argument("--out", help="write to this file instead of stdout")
    rp.set_defaults(func=_guarded(report))

    at = sub.add_parser("admin-token", help="admin API tokens").add_subparsers(dest="admin_token_command",
                                                                             required=True)
    an = at.add_parser("new", help="print a new admin token and the config entry holding its hash")
    an.add_argument("--name", required=True, help="the operator, as audited")
    an.add_argument("--scope", choices=["read", "write"], default="read", help="write includes read")
    an.set_defaults(func=admin_token_new)
