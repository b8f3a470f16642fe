"""`portcullis serve | check-config | policy test|check|replay|shadow-report | audit tail|verify|export | keys new | demo mcp-server`,
and the operator commands `agents | approvals | proposals | events | bypass | report | admin-token` (gateway/admin/cli.py)."""
from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway import registry
from gateway.settings import ConfigError, Settings, check, load_settings

DEFAULT_CONFIG = "config/quickstart.yaml"


def _settings(path: str) -> Settings:
    try:
        return load_settings(path, os.environ)
    except ConfigError as e:
        _print_problems(e)
        raise SystemExit(2) from None


def _print_problems(e: ConfigError) -> None:
    for key, reason in e.problems:
        print(f"config error: {key}: {reason}", file=sys.stderr)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import create_app
    from gateway.drain import BACKSTOP_S, DrainingServer
    from gateway.logs import configure_logging

    settings = _settings(args.config)
    configure_logging(settings.logging.level)
    # This process is the gateway: young-generation collections ten times rarer cost a few
    # hundred KB and save ~5% CPU a request (`python -m bench ab --only gc_threshold`).
    gc.set_threshold(7000, 10, 10)
    host = args.host or settings.server.host
    port = args.port if args.port is not None else settings.server.port
    try:
        app = create_app(settings)
    except ConfigError as e:  # the agents file and the names it cross-references
        _print_problems(e)
        raise SystemExit(2) from None
    config = uvicorn.Config(app, host=host, port=port, loop="uvloop", http="httptools",
                            lifespan="on", access_log=False, log_config=None,
                            # The gateway decides whom to believe (server.trust_forwarded_for);
                            # uvicorn's default would take X-Forwarded-For from any local client.
                            proxy_headers=False,
                            # The drain cuts at drain_timeout_s itself and waits for the rows.
                            timeout_graceful_shutdown=settings.server.drain_timeout_s + BACKSTOP_S)
    DrainingServer(config, app.state.drain).run()  # SIGTERM: drain, flush the audit queue, exit 0
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    problems = check(args.file, os.environ)
    for key, reason in problems:
        print(f"{key}: {reason}")
    if problems:
        print(f"{args.file}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{args.file}: OK")
    return 0


def cmd_policy_test(args: argparse.Namespace) -> int:
    runner = "adapters.policy.regorus_testrunner:"
    fmt = registry.import_from_string(runner + "format_results")
    if not (args.coverage or args.min_coverage is not None):
        text, code = fmt(registry.import_from_string(runner + "run_policy_tests")(Path(args.dir)))
        print(text)
        return code
    results, files = registry.import_from_string(runner + "run_policy_tests_with_coverage")(Path(args.dir))
    text, code = fmt(results)
    cov_text, cov_code = registry.import_from_string(runner + "format_coverage")(files, args.min_coverage)
    print(text + "\n" + cov_text)
    return code or cov_code


def cmd_policy_check(args: argparse.Namespace) -> int:
    check_dir = registry.import_from_string("adapters.policy.lint:check_dir")
    lines, code = check_dir(Path(args.dir))
    print("\n".join(lines), file=sys.stderr if code else sys.stdout)
    return code


def _audit_store(args: argparse.Namespace):  # -> the configured AuditStore (loaded by name)
    settings = _settings(args.config)
    cls = registry.load("audit", settings.audit.backend)
    return cls(settings.audit, settings.path(settings.audit.path))


def cmd_audit_tail(args: argparse.Namespace) -> int:
    from gateway.audit.verify import tail_text

    async def go() -> None:
        store = _audit_store(args)
        await store.start()
        try:
            print(await tail_text(store, args.n))
        finally:
            await store.aclose()

    asyncio.run(go())
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from gateway.audit.heads import heads_path, load_heads
    from gateway.audit.verify import format_report, verify

    # This host's writer's record of its chains (read before the store, which only grows).
    settings = _settings(args.config)
    path = heads_path(settings.path(settings.audit.spool_path))
    try:
        heads = load_heads(path)
    except (OSError, ValueError) as e:
        print(f"audit verify: {e}", file=sys.stderr)
        return 1

    async def go() -> int:
        store = _audit_store(args)
        await store.start()
        try:
            text, code = format_report(await verify(store, heads))
        finally:
            await store.aclose()
        print(text)
        if not heads:
            print(f"no chain-head file at {path}: a wiped or replaced store cannot be detected from this host")
        return code

    return asyncio.run(go())


def cmd_audit_export(args: argparse.Namespace) -> int:
    import time

    from gateway.audit.export import export_decision_log, instant

    try:
        now = time.time()
        since = None if args.since is None else instant(args.since, now)
        until = None if args.until is None else instant(args.until, now)
    except ValueError as e:
        print(f"audit export: {e}", file=sys.stderr)
        return 2

    async def go(out) -> None:
        store = _audit_store(args)
        await store.start()
        try:
            counts = await export_decision_log(store, out, since=since, until=until)
        finally:
            await store.aclose()
        print(f"audit export: {counts.exported} decisions written, {counts.skipped} rows without a policy "
              f"decision skipped ({counts.scanned} rows scanned)", file=sys.stderr)

    if args.out:
        with open(args.out, "wb") as f:
            asyncio.run(go(f))
    else:
        asyncio.run(go(sys.stdout.buffer))
    return 0


def cmd_keys_new(args: argparse.Namespace) -> int:
    from gateway.keys import new_key

    key, digest = new_key()
    print(f"key:    {key}")
    print(f"sha256: {digest}")
    print("\nadd to agents.yaml under keys: (store only the hash; give the key to the agent once)")
    print(f"  - id: {args.id or (args.agent or args.workspace) + '-key'}\n"
          f"    sha256: {digest}\n    workspace: {args.workspace}")
    if args.agent:
        print(f"    agent: {args.agent}")
    return 0


def cmd_demo_mcp_server(args: argparse.Namespace) -> int:
    try:
        from gateway.demo import orders  # the mcp SDK: imported only for this command
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("mcp"):
            raise
        print(f"portcullis demo needs the demo extra: pip install -e '.[demo]' ({e})", file=sys.stderr)
        return 2
    print(f"orders MCP server on http://{args.host}:{args.port}/mcp (Ctrl-C stops it)", file=sys.stderr)
    orders.run(args.host, args.port)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="portcullis", description="Policy-as-code gateway for AI agents")
    sub = p.add_subparsers(dest="command", required=True)
    default_config = os.environ.get("PORTCULLIS_CONFIG", DEFAULT_CONFIG)

    s = sub.add_parser("serve", help="run the gateway")
    s.add_argument("--config", default=default_config)
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.set_defaults(func=cmd_serve)

    c = sub.add_parser("check-config", help="validate a config file and the files it names")
    c.add_argument("file")
    c.set_defaults(func=cmd_check_config)

    pol = sub.add_parser("policy", help="policy tools").add_subparsers(dest="policy_command", required=True)
    t = pol.add_parser("test", help="run the Rego test_ rules on the embedded engine")
    t.add_argument("dir", nargs="?", default="policies_rego")
    t.add_argument("--coverage", action="store_true", help="report the policy lines no test reached")
    t.add_argument("--min-coverage", type=float, metavar="P",
                   help="fail when the tests cover under P percent of the policy lines (implies --coverage)")
    t.set_defaults(func=cmd_policy_test)
    pc = pol.add_parser("check", help="check a policy directory as OPA would load it, and its data "
                                      "against its data.schema.json")
    pc.add_argument("dir", nargs="?", default="policies_rego")
    pc.set_defaults(func=cmd_policy_check)
    from gateway.replay.command import (
        add_parser as add_replay,  # `policy replay` (gateway/replay/)
    )
    add_replay(pol, default_config)
    from gateway.shadow.report import add_parser as add_shadow_report  # `policy shadow-report`
    add_shadow_report(pol, default_config)

    # --config before or after the subcommand: `audit --config X tail` = `audit tail --config X`.
    audit = sub.add_parser("audit", help="audit log tools")
    audit.add_argument("--config", default=default_config)
    aud = audit.add_subparsers(dest="audit_command", required=True)
    at = aud.add_parser("tail", help="show the newest audit rows")
    at.add_argument("-n", type=int, default=20)
    av = aud.add_parser("verify", help="walk the hash chains and report the first broken link")
    ae = aud.add_parser("export", help="write the policy's decisions as JSON lines (OPA decision-log events)")
    ae.add_argument("--format", choices=["opa-decision-log"], default="opa-decision-log")
    ae.add_argument("--since", help="from this time: a duration back (7d, 12h), ISO 8601 or epoch seconds")
    ae.add_argument("--until", help="before this time (same forms as --since)")
    ae.add_argument("--out", help="write to this file (default: stdout)")
    for cmd, func in ((at, cmd_audit_tail), (av, cmd_audit_verify), (ae, cmd_audit_export)):
        cmd.add_argument("--config", default=argparse.SUPPRESS)  # absent: keep the audit-level value
        cmd.set_defaults(func=func)

    keys = sub.add_parser("keys", help="API key tools").add_subparsers(dest="keys_command", required=True)
    kn = keys.add_parser("new", help="print a new API key and the hash to store")
    # No default workspace: the entry must name one that agents.yaml declares.
    kn.add_argument("--workspace", required=True, help="a workspace declared in agents.yaml")
    kn.add_argument("--agent", help="pin the key to this agent of the workspace (else a workspace key)")
    kn.add_argument("--id", help="a label for the key (default: AGENT-key or WORKSPACE-key)")
    kn.set_defaults(func=cmd_keys_new)

    demo = sub.add_parser("demo", help="servers for the README tour (the demo extra)")
    dm = demo.add_subparsers(dest="demo_command", required=True).add_parser(
        "mcp-server", help="serve the README's orders MCP tools at http://HOST:PORT/mcp")
    dm.add_argument("--host", default="127.0.0.1")
    dm.add_argument("--port", type=int, default=9300)
    dm.set_defaults(func=cmd_demo_mcp_server)

    # The operator commands (contract 7), kept in gateway/admin/cli.py; the token's env default is read here.
    from gateway.admin.cli import add_commands
    add_commands(sub, default_config=default_config, default_token=os.environ.get("PORTCULLIS_ADMIN_TOKEN"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a reader that went away shows here, inside the try
    except BrokenPipeError:
        # `portcullis audit tail | head`: the Python docs' recipe. Point stdout at devnull
        # so the interpreter's final flush cannot fail again, and exit without a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return code


if __name__ == "__main__":
    raise SystemExit(main())
