"""`python -m bench run`: end-to-end throughput and latency, Portcullis against baselines.

Targets, each started here on 127.0.0.1 and stopped afterwards:
  direct    wrk straight to the fast upstream (the added-latency baseline)
  bare      bench/bare_proxy.py: Starlette + shared aiohttp session, no governance
  governed  `portcullis serve` on embedded defaults (regorus, memory cache/limits, SQLite audit)
  fleet     `portcullis serve` with Redis limits and PostgreSQL audit, when available
  fleet3    three such replicas behind bench/lb.py, unpinned on the 2 cores (bench/fleet3.py)
  bare3     three bare proxies behind the same balancer: fleet3's baseline
  litellm   LiteLLM's proxy (--with-litellm)
  governed@REV  the `governed` target as it was at git revision REV (--baseline-ref REV, bench/baseline.py)

The proxy under test runs on core 0; wrk and the upstream share core 1 (for
`direct`, measured first and alone, the upstream moves to core 0 so it stands
where a proxy would). The proxies are then all started (an idle one uses no
CPU) and measured round-robin, scenario by scenario, so a slow phase of a
shared machine hits all of them alike.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from bench import baseline, fixtures, fleet, fleet3, procs, report, wrk

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"


@dataclass(frozen=True)
class Plan:
    duration_s: float
    warmup_s: float
    concurrency: int
    cold_agents: int
    with_litellm: bool
    quick: bool
    repeat: int = 1  # runs per scenario; the best is kept (on a shared machine noise only slows)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Plan":
        duration = args.duration if args.duration is not None else (3.0 if args.quick else 10.0)
        return cls(duration_s=duration, warmup_s=1.0 if args.quick else 3.0,
                   concurrency=args.concurrency, cold_agents=2000 if args.quick else 5000,
                   with_litellm=args.with_litellm, quick=args.quick, repeat=max(1, args.repeat))

    def scenarios(self, target: str) -> list[tuple[str, str, int]]:
        """(label, lua scenario, connections) for one target."""
        c = self.concurrency
        base = [("chat_c1", "chat", 1), (f"chat_c{c}", "chat", c), (f"stream_c{c}", "stream", c)]
        if target == "governed" or target.startswith(baseline.PREFIX):
            return [*base, (f"deny_mix_c{c}", "deny_mix", c), (f"cold_mix_c{c}", "cold_mix", c)]
        if target == "litellm":
            return base[:2]
        return base


def _wrk_env(target: str) -> dict[str, str]:
    env = {"BENCH_MODEL": fixtures.CHAT_MODEL, "BENCH_KEY": fixtures.ALLOWED_KEY,
           "BENCH_DENY_KEY": fixtures.DENIED_KEY, "BENCH_MODELS": ",".join(fixtures.COLD_MODELS)}
    if target == "litellm":
        from bench.litellm import MASTER_KEY  # noqa: PLC0415

        env["BENCH_KEY"] = MASTER_KEY
    return env


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    pid: int | None          # whose peak RSS to report (None: not a proxy, or a group)
    cpu_pid: int | Sequence[int] | None  # whose CPU to count per request (a group: all of it)
    env: dict[str, str]


class Runner:
    def __init__(self, plan: Plan, workdir: Path) -> None:
        self.plan = plan
        self.work = workdir
        self.results: dict[str, dict[str, Any]] = {}

    def measure(self, targets: list[Target]) -> None:
        """Warm every target up, then run each scenario round-robin over the targets.

        Alternating (bare, governed, fleet, ... then again) exposes every target to the same
        phases of a shared machine, so ratios within one run stay fair; each target keeps
        its best of `repeat` rounds per scenario. Peak RSS is read after everything.
        """
        p = self.plan
        for t in targets:
            self.results[t.name] = {"status": "ok"}
            wrk.run(t.url, "chat", duration_s=p.warmup_s, connections=p.concurrency, workdir=self.work,
                    env=t.env, cpus=procs.LOAD_CPU)
        labels: list[tuple[str, str, int]] = []
        for t in targets:
            labels += [x for x in p.scenarios(t.name) if x not in labels]
        for label, scenario, conns in labels:
            best: dict[str, wrk.WrkResult] = {}
            for i in range(p.repeat):
                for t in targets:
                    if (label, scenario, conns) not in p.scenarios(t.name):
                        continue
                    env = {**t.env, "BENCH_OFFSET": str(i * fixtures.COLD_RUN_STRIDE)}
                    r = wrk.run(t.url, scenario, duration_s=p.duration_s, connections=conns, workdir=self.work,
                                env=env, cpus=procs.LOAD_CPU, server_pid=t.cpu_pid)
                    if t.name not in best or r.rps > best[t.name].rps:
                        best[t.name] = r
            for name, r in best.items():
                self.results[name][label] = r.as_dict()
                print(f"  {name:16s} {label:16s} {r.rps:10.0f} req/s  p50 {r.p50_ms:7.3f} ms  "
                      f"p99 {r.p99_ms:7.3f} ms  non-2xx {r.non2xx_share:5.1%}  "
                      f"cpu {r.cpu_us_per_req or 0:6.0f} µs/req", flush=True)
        for t in targets:
            if t.pid is not None:
                self.results[t.name]["rss_mb"] = round(procs.peak_rss_mb(t.pid), 1)

    def unavailable(self, target: str, reason: str) -> None:
        print(f"  {target:16s} unavailable: {reason}", flush=True)
        self.results[target] = {"status": f"unavailable: {reason}"}


@contextlib.contextmanager
def running(server_factory: Callable[[], procs.Server]) -> Iterator[procs.Server]:
    server = server_factory()
    try:
        yield server
    finally:
        procs.stop(server)


def _portcullis_cmd(config: Path) -> list[str]:
    """`portcullis serve`, the way users run it (the console script of this interpreter)."""
    exe = Path(sys.executable).parent / "portcullis"
    head = [str(exe)] if exe.exists() else [sys.executable, "-m", "gateway.cli"]
    return [*head, "serve", "--config", str(config)]


def start_portcullis(name: str, workdir: Path, upstream_url: str, agents_file: Path, policy_dir: Path,
                     checkout: baseline.Checkout | None = None, cpus: str | None = procs.PROXY_CPU,
                     **sections: Any) -> procs.Server:
    """The working tree's gateway, or with `checkout` the one at that revision (same config);
    pinned to `cpus` (None: unpinned)."""
    port = procs.free_port()
    cfg = fixtures.write_config(workdir / f"{name}.yaml", port=port, upstream_url=upstream_url,
                                policy_dir=policy_dir, agents_file=agents_file, chain_id=f"bench-{name}",
                                **sections)
    if checkout is not None:
        return baseline.start(checkout, name, cfg, port, workdir)
    server = procs.start(name, _portcullis_cmd(cfg), port, workdir, cpus=cpus, cwd=workdir)
    try:
        procs.wait_ready(server, timeout_s=120, path="/readyz")
    except RuntimeError:
        procs.stop(server)
        raise
    return server


def run(args: argparse.Namespace) -> int:
    plan = Plan.from_args(args)
    wrk.ensure_wrk()
    if not procs.pinning_available():
        print("note: taskset or a second core is missing: servers and wrk run unpinned", flush=True)
    busy = procs.cpu_busy()
    if busy > 0.2:
        print(f"warning: the machine is {busy:.0%} busy with other work; numbers will be noisy", flush=True)
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="portcullis-bench-"))
    runner = Runner(plan, work)
    checkout = None
    try:
        with contextlib.ExitStack() as stack:
            if args.baseline_ref:  # first: a bad revision fails before anything is measured
                checkout = stack.enter_context(baseline.checkout(args.baseline_ref))
                print(f"baseline {checkout.target}: {checkout.ref} = {checkout.commit[:12]} "
                      f"\"{checkout.subject[:70]}\", served from {checkout.path}", flush=True)
            _run_targets(runner, plan, work, checkout)
    except baseline.BaselineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept work directory {work}")
    summary = report.summarize(runner.results, plan.concurrency)
    summary["meta"] = report.meta(plan.__dict__, time.monotonic() - t0)
    summary["meta"]["machine_busy_before"] = round(busy, 2)
    if checkout is not None:
        summary["meta"]["baseline"] = checkout.describe()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report.write_json(RESULTS, summary)
    print()
    print(report.table(runner.results, summary, plan.concurrency))
    print(f"\nresults: {RESULTS}  ({time.monotonic() - t0:.0f} s)")
    return 0


def _run_targets(runner: Runner, plan: Plan, work: Path, checkout: baseline.Checkout | None) -> None:
    up_port = procs.free_port()
    upstream = procs.start("upstream", [sys.executable, "-m", "bench.upstream", "--port", str(up_port)],
                           up_port, work, cpus=procs.LOAD_CPU, cwd=fixtures.REPO)
    try:
        procs.wait_ready(upstream, timeout_s=20)
        up = upstream.url
        print(f"fast upstream on {up}; proxies on core {procs.PROXY_CPU}, wrk and upstream on core "
              f"{procs.LOAD_CPU}; {plan.duration_s:.0f} s per scenario", flush=True)

        procs.pin(upstream.pid, procs.PROXY_CPU)  # direct: the upstream stands where a proxy would
        runner.measure([Target("direct", up, None, upstream.pid, _wrk_env("direct"))])
        procs.pin(upstream.pid, procs.LOAD_CPU)

        with contextlib.ExitStack() as stack:
            targets = _start_proxies(runner, plan, work, up, stack, checkout)
            print(f"measuring {', '.join(t.name for t in targets)} (alternating)", flush=True)
            runner.measure(targets)
    finally:
        procs.stop(upstream)


def _start_proxies(runner: Runner, plan: Plan, work: Path, up: str, stack: contextlib.ExitStack,
                   checkout: baseline.Checkout | None) -> list[Target]:
    """Start every proxy target (all idle on core 0 until measured); stop them on exit."""
    targets = []
    bare_port = procs.free_port()
    bare_cmd = [sys.executable, "-m", "bench.bare_proxy", "--port", str(bare_port), "--upstream", up]
    bare = stack.enter_context(running(lambda: procs.start("bare", bare_cmd, bare_port, work,
                                                           cpus=procs.PROXY_CPU, cwd=fixtures.REPO)))
    procs.wait_ready(bare, timeout_s=30)
    targets.append(Target("bare", bare.url, bare.pid, bare.pid, _wrk_env("bare")))

    policy_dir = fixtures.write_policy(work / "policies")
    big_agents = fixtures.write_agents(work / "agents-cold.yaml", plan.cold_agents)
    gov_env = {**_wrk_env("governed"), "BENCH_AGENTS": str(plan.cold_agents)}
    for name, co in [("governed", None), *([(checkout.target, checkout)] if checkout else [])]:
        gov = stack.enter_context(running(functools.partial(start_portcullis, name, work, up, big_agents,
                                                            policy_dir, co)))
        targets.append(Target(name, gov.url, gov.pid, gov.pid, gov_env))

    small_agents = fixtures.write_agents(work / "agents.yaml", 0)
    fl = _start_fleet(runner, work, up, small_agents, policy_dir, stack)
    if fl is not None:
        targets.append(Target("fleet", fl.url, fl.pid, fl.pid, _wrk_env("fleet")))
        targets += _start_fleet3(runner, work, up, small_agents, policy_dir, stack)

    if plan.with_litellm:
        from bench import litellm  # noqa: PLC0415

        try:
            lite = stack.enter_context(running(lambda: litellm.start(work, up, fixtures.CHAT_MODEL)))
            targets.append(Target("litellm", lite.url, lite.pid, lite.pid, _wrk_env("litellm")))
        except RuntimeError as e:
            runner.unavailable("litellm", str(e).splitlines()[0])
    return targets


def _start_fleet(runner: Runner, work: Path, up: str, agents: Path, policy_dir: Path,
                 stack: contextlib.ExitStack) -> procs.Server | None:
    """The fleet-mode gateway, or None (reported unavailable); cleanup is registered on `stack`."""
    reason = fleet.unavailable_reason()
    if reason is not None:
        runner.unavailable("fleet", reason)
        return None
    prefix, table = fleet.unique_names()
    limits, audit = fleet.config_sections(prefix, table)

    def finish() -> None:
        if runner.results.get("fleet", {}).get("status") == "ok":
            runner.results["fleet"]["audit_rows"] = fleet.count_rows(table)
        for problem in fleet.cleanup(prefix, table):
            print(f"  fleet cleanup: {problem}", flush=True)

    stack.callback(finish)  # runs after the server below has stopped (LIFO)
    try:
        return stack.enter_context(running(lambda: start_portcullis("fleet", work, up, agents, policy_dir,
                                                                    limits=limits, audit=audit)))
    except RuntimeError as e:
        last = [ln for ln in str(e).splitlines() if ln.strip()]
        runner.unavailable("fleet", "startup failed: " + (last[-1][:300] if last else "?"))
        return None


def _start_fleet3(runner: Runner, work: Path, up: str, agents: Path, policy_dir: Path,
                  stack: contextlib.ExitStack) -> list[Target]:
    """fleet3 and bare3 (bench/fleet3.py): three replicas of each behind the balancer, unpinned."""
    try:
        bare_lb, bare_pids = fleet3.start_bare3(work, up, stack)
        fleet_lb, fleet_pids = fleet3.start_fleet3(work, up, agents, policy_dir, stack, start_portcullis,
                                                   runner.results)
    except RuntimeError as e:
        last = [ln for ln in str(e).splitlines() if ln.strip()]
        runner.unavailable("fleet3", "startup failed: " + (last[-1][:300] if last else "?"))
        return []
    return [Target("bare3", bare_lb.url, None, bare_pids, _wrk_env("bare")),
            Target("fleet3", fleet_lb.url, None, fleet_pids, _wrk_env("fleet"))]
