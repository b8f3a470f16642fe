"""`portcullis serve | check-config | policy test | audit tail | audit verify | keys new`."""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Sequence

from gateway import registry
from gateway.settings import ConfigError, Settings, check, load_settings

DEFAULT_CONFIG = "config/quickstart.yaml"


def _settings(path: str) -> Settings:
    try:
        return load_settings(path, os.environ)
    except ConfigError as e:
        for key, reason in e.problems:
            print(f"config error: {key}: {reason}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import create_app
    from gateway.logs import configure_logging

    settings = _settings(args.config)
    configure_logging(settings.logging.level)
    host = args.host or settings.server.host
    port = args.port if args.port is not None else settings.server.port
    config = uvicorn.Config(create_app(settings), host=host, port=port, loop="uvloop", http="httptools",
                            lifespan="on", access_log=False, log_config=None,
                            # The gateway decides whom to believe (server.trust_forwarded_for);
                            # uvicorn's default would take X-Forwarded-For from any local client.
                            proxy_headers=False,
                            timeout_graceful_shutdown=30)
    uvicorn.Server(config).run()
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
    run = registry.import_from_string("adapters.policy.regorus_testrunner:run_policy_tests")
    fmt = registry.import_from_string("adapters.policy.regorus_testrunner:format_results")
    text, code = fmt(run(Path(args.dir)))
    print(text)
    return code


def _audit_store(args: argparse.Namespace):  # noqa: ANN202 - adapter type is dynamic
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
    from gateway.audit.verify import format_report, verify

    async def go() -> int:
        store = _audit_store(args)
        await store.start()
        try:
            text, code = format_report(await verify(store))
        finally:
            await store.aclose()
        print(text)
        return code

    return asyncio.run(go())


def cmd_keys_new(args: argparse.Namespace) -> int:
    from gateway.keys import new_key

    key, digest = new_key()
    print(f"key:    {key}")
    print(f"sha256: {digest}")
    print("\nadd to agents.yaml under keys: (store only the hash; give the key to the agent once)")
    print(f"  - id: {args.id}\n    sha256: {digest}\n    workspace: {args.workspace}")
    if args.agent:
        print(f"    agent: {args.agent}")
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
    t.set_defaults(func=cmd_policy_test)

    aud = sub.add_parser("audit", help="audit log tools").add_subparsers(dest="audit_command", required=True)
    at = aud.add_parser("tail", help="show the newest audit rows")
    at.add_argument("-n", type=int, default=20)
    at.add_argument("--config", default=default_config)
    at.set_defaults(func=cmd_audit_tail)
    av = aud.add_parser("verify", help="walk the hash chains and report the first broken link")
    av.add_argument("--config", default=default_config)
    av.set_defaults(func=cmd_audit_verify)

    keys = sub.add_parser("keys", help="API key tools").add_subparsers(dest="keys_command", required=True)
    kn = keys.add_parser("new", help="print a new API key and the hash to store")
    kn.add_argument("--id", default="new-key")
    kn.add_argument("--workspace", default="default")
    kn.add_argument("--agent")
    kn.set_defaults(func=cmd_keys_new)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
