"""`fleet3` and `bare3` for `bench run`: three replicas behind the round-robin load balancer.

fleet3 is three `portcullis serve` replicas on the fleet backends (one Redis key prefix,
one PostgreSQL table, a chain each); bare3 is three bare proxies (bench/bare_proxy.py). Each
group sits behind its own bench/lb.py, and all of it shares the machine's 2 cores with wrk
and the upstream (nothing pinned: that is the point of a fleet on 2 cores). The ratio
`fleet3_vs_bare3` compares the two through the same balancer; CPU per request counts the
replicas and the balancer together.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any, Callable

from bench import fixtures, fleet, procs

REPLICAS = 3


def _lb(name: str, work: Path, servers: list[procs.Server], stack: contextlib.ExitStack) -> procs.Server:
    port = procs.free_port()
    cmd = [sys.executable, "-m", "bench.lb", "--port", str(port), *(a for s in servers for a in ("--backend", s.url))]
    lb = procs.start(name, cmd, port, work, cwd=fixtures.REPO)
    stack.callback(procs.stop, lb)
    procs.wait_ready(lb, timeout_s=30)
    return lb


def start_bare3(work: Path, upstream: str, stack: contextlib.ExitStack) -> tuple[procs.Server, list[int]]:
    """The balancer in front of three bare proxies; returns it and every pid to count CPU for."""
    servers = []
    for i in range(REPLICAS):
        port = procs.free_port()
        cmd = [sys.executable, "-m", "bench.bare_proxy", "--port", str(port), "--upstream", upstream]
        s = procs.start(f"bare3-{i}", cmd, port, work, cwd=fixtures.REPO)
        stack.callback(procs.stop, s)
        servers.append(s)
    for s in servers:
        procs.wait_ready(s, timeout_s=30)
    lb = _lb("bare3-lb", work, servers, stack)
    return lb, [lb.pid, *(s.pid for s in servers)]


def start_fleet3(work: Path, upstream: str, agents: Path, policy_dir: Path, stack: contextlib.ExitStack,
                 start_replica: Callable[..., procs.Server], results: dict[str, Any]) -> tuple[procs.Server, list[int]]:
    """Three fleet-mode replicas (started by `start_replica`, bench.run.start_portcullis) behind
    the balancer. Their Redis keys and table are removed on exit, after the replicas stopped."""
    prefix, table = fleet.unique_names()
    limits, audit = fleet.config_sections(prefix, table)

    def finish() -> None:
        if results.get("fleet3", {}).get("status") == "ok":
            results["fleet3"]["audit_rows"] = fleet.count_rows(table)
        for problem in fleet.cleanup(prefix, table):
            print(f"  fleet3 cleanup: {problem}", flush=True)

    stack.callback(finish)  # LIFO: runs after every replica below has stopped
    servers = []
    for i in range(REPLICAS):
        s = start_replica(f"fleet3-{i}", work, upstream, agents, policy_dir, limits=limits, audit=audit, cpus=None)
        stack.callback(procs.stop, s)
        servers.append(s)
    lb = _lb("fleet3-lb", work, servers, stack)
    return lb, [lb.pid, *(s.pid for s in servers)]
