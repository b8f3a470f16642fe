"""Driver for `python -m bench ab`: one server per experiment, alternated rounds, best of each.

Every variant (and the baseline, "none") is started once, then each round runs
chat at c1 and c32 against every variant in turn, so slow phases of a shared
machine hit all of them alike. The comparison is on the server's CPU time per
request at c32 (lowest round kept), which other load on the machine barely
moves, unlike requests/s; c1 latency keeps the lowest p50.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from bench import fixtures, procs, wrk
from bench.experiments import EXPERIMENTS, TRACING


def main(args: argparse.Namespace) -> int:
    wrk.ensure_wrk()
    names = ["none", *(args.only.split(",") if args.only else EXPERIMENTS)]
    unknown = [n for n in names if n != "none" and n not in EXPERIMENTS]
    if unknown:
        raise SystemExit(f"unknown experiments: {', '.join(unknown)} (known: {', '.join(EXPERIMENTS)})")
    work = Path(tempfile.mkdtemp(prefix="portcullis-ab-"))
    env = {"BENCH_MODEL": fixtures.CHAT_MODEL, "BENCH_KEY": fixtures.ALLOWED_KEY}
    up_port = procs.free_port()
    upstream = procs.start("upstream", [sys.executable, "-m", "bench.upstream", "--port", str(up_port)],
                           up_port, work, cpus=procs.LOAD_CPU, cwd=fixtures.REPO)
    servers: dict[str, procs.Server] = {}
    sink = None
    best: dict[str, dict[str, wrk.WrkResult]] = {n: {} for n in names}
    try:
        procs.wait_ready(upstream, timeout_s=20)
        policy_dir = fixtures.write_policy(work / "policies")
        agents = fixtures.write_agents(work / "agents.yaml", 0)
        if TRACING.keys() & set(names):  # an OTLP/HTTP endpoint for the tracing experiments
            sink_port = procs.free_port()
            sink = procs.start("otlp-sink", [sys.executable, "-m", "bench.otlp_sink", "--port", str(sink_port)],
                               sink_port, work, cpus=procs.LOAD_CPU, cwd=fixtures.REPO)
            procs.wait_ready(sink, timeout_s=20)
            env["BENCH_OTLP_ENDPOINT"] = f"http://127.0.0.1:{sink_port}/v1/traces"
        for name in names:
            port = procs.free_port()
            cfg = fixtures.write_config(work / f"ab-{name}.yaml", port=port, upstream_url=upstream.url,
                                        policy_dir=policy_dir, agents_file=agents, chain_id=f"ab-{name}")
            s = procs.start(f"ab-{name}", [sys.executable, "-m", "bench.experiments", str(cfg), str(port), name],
                            port, work, cpus=procs.PROXY_CPU, cwd=fixtures.REPO, env=env)
            procs.wait_ready(s, timeout_s=60, path="/readyz")
            servers[name] = s
            wrk.run(s.url, "chat", duration_s=2, connections=32, workdir=work, env=env, cpus=procs.LOAD_CPU)
        for rnd in range(args.rounds):
            for name, s in servers.items():
                for label, conns in (("c1", 1), ("c32", 32)):
                    r = wrk.run(s.url, "chat", duration_s=args.duration, connections=conns, workdir=work,
                                env=env, cpus=procs.LOAD_CPU, server_pid=s.pid)
                    old = best[name].get(label)
                    # c32: lowest CPU per request; c1: lowest p50 latency.
                    if old is None or (label == "c32" and (r.cpu_us_per_req or 0) < (old.cpu_us_per_req or 0)) \
                            or (label == "c1" and r.p50_ms < old.p50_ms):
                        best[name][label] = r
                print(f"  round {rnd + 1} {name:18s} best so far: c1 p50 {best[name]['c1'].p50_ms:.3f} ms, "
                      f"c32 {best[name]['c32'].cpu_us_per_req or 0:.0f} µs CPU/req", flush=True)
    finally:
        for s in servers.values():
            procs.stop(s)
        if sink is not None:
            procs.stop(sink)
        procs.stop(upstream)
        shutil.rmtree(work, ignore_errors=True)
    base = best["none"]
    print("\n| experiment | c32 CPU µs/req | capacity vs baseline | c32 req/s (noisy) | c1 p50 ms | Δ c1 p50 ms "
          "| what it approximates |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name in names:
        b = best[name]
        cpu, base_cpu = b["c32"].cpu_us_per_req or 0.0, base["c32"].cpu_us_per_req or 0.0
        gain = base_cpu / cpu - 1 if cpu else 0.0  # requests per CPU-second, relative
        what = EXPERIMENTS.get(name, "baseline: portcullis as it is")
        print(f"| {name} | {cpu:.0f} | {gain:+.1%} | {b['c32'].rps:,.0f} | {b['c1'].p50_ms:.3f} | "
              f"{b['c1'].p50_ms - base['c1'].p50_ms:+.3f} | {what} |")
    return 0
