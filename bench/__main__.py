"""python -m bench run | micro | profile | ab | fuzz | replay | console  (see docs/performance.md)."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description="Portcullis benchmarks")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="end-to-end load: direct, bare proxy, Portcullis (embedded, fleet), LiteLLM")
    r.add_argument("--quick", action="store_true", help="short scenarios; finishes in under 2 minutes")
    r.add_argument("--duration", type=float, help="seconds per scenario (default 10, quick 3)")
    r.add_argument("--concurrency", type=int, default=32, help="connections for the loaded scenarios")
    r.add_argument("--with-litellm", action="store_true", help="also measure LiteLLM's proxy (installs it once)")
    r.add_argument("--repeat", type=int, default=1,
                   help="runs per scenario, best kept (use 2-3 on a shared, noisy machine)")
    r.add_argument("--baseline-ref", metavar="REV",
                   help="also measure the governed gateway as it was at git revision REV (a sha, main~3, a tag), "
                        "from a temporary worktree, in the same run: before and after side by side")
    r.add_argument("--keep", action="store_true", help="keep the temp work directory (configs, logs)")

    m = sub.add_parser("micro", help="policy decision, audit writer and rate limiter microbenchmarks")
    m.add_argument("--quick", action="store_true", help="fewer iterations")

    pr = sub.add_parser("profile", help="py-spy profile of Portcullis under load; uvicorn vs granian")
    pr.add_argument("--duration", type=float, default=15.0, help="seconds of load while sampling")
    pr.add_argument("--concurrency", type=int, default=32)
    pr.add_argument("--scenario", default="chat", choices=("chat", "stream", "deny_mix", "cold_mix"))
    pr.add_argument("--target", default="governed", choices=("governed", "bare"),
                    help="profile Portcullis (default) or the bare proxy, for comparison")
    pr.add_argument("--out", default="/tmp/portcullis-profile", help="directory for the profiles")
    pr.add_argument("--granian", action="store_true", help="also compare uvicorn with granian (installs it once)")
    ab = sub.add_parser("ab", help="measure proposed optimizations as in-process patches (bench only)")
    ab.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    ab.add_argument("--rounds", type=int, default=2, help="alternated rounds; the best is kept")
    ab.add_argument("--only", help="comma-separated experiment names (default: all)")
    from bench.fuzz import add_arguments as fuzz_arguments
    fuzz_arguments(sub.add_parser("fuzz", help="fuzz the request parsers and SSE usage readers (not in CI)"))
    from bench.replay import add_arguments as replay_arguments
    replay_arguments(sub.add_parser("replay", help="time `policy replay` over a big recorded SQLite audit log"))
    from bench.console import add_arguments as console_arguments
    console_arguments(sub.add_parser("console", help="time the console's pages over a big PostgreSQL audit table"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "run":
        from bench.run import run
        return run(args)
    if args.command == "micro":
        from bench.micro import main as micro
        return micro(args)
    if args.command == "fuzz":
        from bench.fuzz import main as fuzz
        return fuzz(args)
    if args.command == "replay":
        from bench.replay import main as replay
        return replay(args)
    if args.command == "console":
        from bench.console import main as console
        return console(args)
    if args.command == "ab":
        from bench.ab import main as ab
        return ab(args)
    from bench.profile import main as profile
    return profile(args)


if __name__ == "__main__":
    sys.exit(main())
