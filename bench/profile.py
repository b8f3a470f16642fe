"""`python -m bench profile`: where Portcullis spends its CPU under load, and uvicorn vs granian.

Runs the governed target as `bench run` does (core 0; wrk and upstream on core 1),
samples it with py-spy (non-blocking, on core 1) while wrk drives one scenario,
and writes to --out:
  portcullis.collapsed  py-spy raw output (collapsed stacks; feed to any flamegraph tool)
  portcullis.svg        a flamegraph of a second, identical sampling window
  summary.txt           top functions by self and inclusive samples, and samples by area
With --granian it also serves the same app with granian (installed into
bench/.venvs/granian-lib, not a project dependency) and compares throughput.
"""
from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Iterable

from bench import fixtures, procs, wrk
from bench.run import start_portcullis

GRANIAN_LIB = Path(__file__).resolve().parent / ".venvs" / "granian-lib"
GRANIAN_VERSION = "2.8.7"

# Substrings of a frame ("function (file:line)") -> area, first match wins.
AREAS: tuple[tuple[str, str], ...] = (
    ("regorus", "policy engine (regorus)"), ("gateway/stages/policy", "policy stage"),
    ("adapters/cache", "decision cache"), ("aiocache", "decision cache"), ("cachetools", "decision cache"),
    ("gateway/audit", "audit (row, chain, writer)"), ("adapters/audit", "audit store"),
    ("aiosqlite", "audit store"), ("sqlite3", "audit store"),
    ("prometheus_client", "metrics (prometheus)"), ("logging", "logging"), ("jsonlogger", "logging"),
    ("gateway/stages/identity", "identity"), ("adapters/identity", "identity"),
    ("gateway/stages/limits", "limits"), ("adapters/ratelimit", "limits"),
    ("gateway/surfaces", "surface parse/format"), ("adapters/upstream", "upstream adapter"),
    ("aiohttp", "aiohttp client"), ("gateway/context", "exchange/audit event"),
    ("gateway/pipeline", "pipeline"), ("gateway/http", "pipeline"),
    ("starlette", "starlette routing"), ("uvicorn", "uvicorn/httptools"), ("httptools", "uvicorn/httptools"),
    ("uvloop", "event loop"), ("asyncio", "event loop"),
)


def parse_collapsed(lines: Iterable[str]) -> list[tuple[list[str], int]]:
    """py-spy raw format: `frame;frame;... count` per line (root first)."""
    out = []
    for line in lines:
        line = line.rstrip("\n")
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            out.append((stack.split(";"), int(count)))
    return out


def area_of(frame: str) -> str | None:
    for needle, area in AREAS:
        if needle in frame:
            return area
    return None


def summarize(stacks: list[tuple[list[str], int]], top: int = 30) -> str:
    total = sum(c for _, c in stacks) or 1
    self_c: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    areas: collections.Counter[str] = collections.Counter()
    for frames, c in stacks:
        self_c[frames[-1]] += c
        for f in set(frames):
            incl[f] += c
        # Charge the sample to the innermost frame that belongs to a known area.
        area = next((a for a in map(area_of, reversed(frames)) if a), "other")
        areas[area] += c

    def block(title: str, counter: collections.Counter[str]) -> list[str]:
        rows = [f"\n{title}", f"{'%':>6}  samples  frame"]
        rows += [f"{100 * n / total:6.1f}  {n:7d}  {f}" for f, n in counter.most_common(top)]
        return rows

    lines = [f"{total} samples (CPU only; idle excluded)"]
    lines += block("by area (innermost known frame)", areas)
    lines += block("self (leaf frame)", self_c)
    lines += block("inclusive", incl)
    return "\n".join(lines)


def _py_spy() -> str:
    exe = Path(sys.executable).parent / "py-spy"
    found = str(exe) if exe.exists() else shutil.which("py-spy")
    if not found:
        raise SystemExit("py-spy is not installed: .venv/bin/pip install -e '.[bench]'")
    return found


def record(pid: int, seconds: float, out: Path, fmt: str) -> None:
    cmd = [_py_spy(), "record", "--pid", str(pid), "--rate", "250", "--duration", str(int(seconds)),
           "--nonblocking", "--format", fmt, "--output", str(out)]
    if procs.pinning_available():
        cmd = ["taskset", "-c", procs.LOAD_CPU, *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"py-spy failed: {r.stderr.strip()[-500:]}")


def profile_under_load(url: str, pid: int, args: argparse.Namespace, work: Path, out: Path,
                       env: dict[str, str]) -> wrk.WrkResult:
    """Drive `scenario` with wrk while py-spy samples the server, twice (raw, then SVG)."""
    result: dict[str, wrk.WrkResult] = {}

    def load(d: float, key: str) -> None:
        result[key] = wrk.run(url, args.scenario, duration_s=d, connections=args.concurrency,
                              workdir=work, env=env, cpus=procs.LOAD_CPU)

    for fmt, name in (("raw", "portcullis.collapsed"), ("flamegraph", "portcullis.svg")):
        t = threading.Thread(target=load, args=(args.duration + 2, fmt))
        t.start()
        record(pid, args.duration, out / name, fmt)
        t.join()
    return result["raw"]


def ensure_granian() -> Path:
    if not (GRANIAN_LIB / f"granian-{GRANIAN_VERSION}.dist-info").exists():
        print(f"installing granian=={GRANIAN_VERSION} into {GRANIAN_LIB} (bench only) ...", flush=True)
        r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(GRANIAN_LIB),
                            f"granian=={GRANIAN_VERSION}"], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"installing granian failed: {r.stderr.strip()[-500:]}")
    return GRANIAN_LIB


def start_granian(work: Path, config: Path) -> procs.Server:
    lib = ensure_granian()
    port = procs.free_port()
    env = {"PYTHONPATH": os.pathsep.join([str(lib), str(fixtures.REPO)]), "PORTCULLIS_CONFIG": str(config)}
    cmd = [sys.executable, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--runtime-threads", "1", "--loop", "uvloop", "--http", "1", "--no-ws",
           "--log-level", "warning", "--factory", "bench.granian_app:app"]
    server = procs.start("granian", cmd, port, work, cpus=procs.PROXY_CPU, env=env, cwd=work)
    procs.wait_ready(server, timeout_s=60, path="/readyz")
    return server


def compare_servers(uvicorn: procs.Server, granian: procs.Server, work: Path, env: dict[str, str],
                    duration: float, concurrency: int, rounds: int = 2) -> str:
    """Alternate the two servers for `rounds`; keep each one's best run per scenario."""
    servers = (("uvicorn (portcullis serve)", uvicorn), ("granian 1 worker", granian))
    best: dict[tuple[str, str], wrk.WrkResult] = {}
    for name, s in servers:
        wrk.run(s.url, "chat", duration_s=2, connections=concurrency, workdir=work, env=env, cpus=procs.LOAD_CPU)
    for _ in range(rounds):
        for name, s in servers:
            for scen, conns in (("chat", 1), ("chat", concurrency), ("stream", concurrency)):
                r = wrk.run(s.url, scen, duration_s=duration, connections=conns, workdir=work, env=env,
                            cpus=procs.LOAD_CPU, server_pid=s.pid)
                key = (name, f"{scen} c{conns}")
                if key not in best or r.rps > best[key].rps:
                    best[key] = r
    rows = ["| server | scenario | req/s | p50 ms | p99 ms | CPU µs/req |", "|---|---|---:|---:|---:|---:|"]
    for (name, scen), r in best.items():
        rows.append(f"| {name} | {scen} | {r.rps:,.0f} | {r.p50_ms:.3f} | {r.p99_ms:.3f} | "
                    f"{r.cpu_us_per_req or 0:.0f} |")
    return "\n".join(rows)


def main(args: argparse.Namespace) -> int:
    wrk.ensure_wrk()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="portcullis-profile-"))
    cold = 2000 if args.scenario == "cold_mix" else 0
    env = {"BENCH_MODEL": fixtures.CHAT_MODEL, "BENCH_KEY": fixtures.ALLOWED_KEY,
           "BENCH_DENY_KEY": fixtures.DENIED_KEY, "BENCH_AGENTS": str(cold),
           "BENCH_MODELS": ",".join(fixtures.COLD_MODELS)}
    up_port = procs.free_port()
    upstream = procs.start("upstream", [sys.executable, "-m", "bench.upstream", "--port", str(up_port)],
                           up_port, work, cpus=procs.LOAD_CPU, cwd=fixtures.REPO)
    gov = None
    try:
        procs.wait_ready(upstream, timeout_s=20)
        policy_dir = fixtures.write_policy(work / "policies")
        agents = fixtures.write_agents(work / "agents.yaml", cold)
        if args.target == "bare":
            port = procs.free_port()
            gov = procs.start("bare", [sys.executable, "-m", "bench.bare_proxy", "--port", str(port),
                                       "--upstream", upstream.url], port, work, cpus=procs.PROXY_CPU,
                              cwd=fixtures.REPO)
            procs.wait_ready(gov, timeout_s=30)
        else:
            gov = start_portcullis("governed", work, upstream.url, agents, policy_dir)
        wrk.run(gov.url, "chat", duration_s=2, connections=args.concurrency, workdir=work, env=env,
                cpus=procs.LOAD_CPU)
        r = profile_under_load(gov.url, gov.pid, args, work, out, env)
        text = (f"{args.target}, scenario {args.scenario} c{args.concurrency}: {r.rps:,.0f} req/s under py-spy "
                f"(p50 {r.p50_ms:.2f} ms)\n")
        text += summarize(parse_collapsed((out / "portcullis.collapsed").read_text().splitlines()))
        if args.granian and args.target == "governed":
            # Its own config: its own audit file and chain (two writers never share a chain).
            cfg = fixtures.write_config(work / "granian.yaml", port=procs.free_port(), upstream_url=upstream.url,
                                        policy_dir=policy_dir, agents_file=agents, chain_id="bench-granian")
            gran = start_granian(work, cfg)
            try:
                text += "\n\nuvicorn vs granian (same app and policy, core 0, alternated, best of 2):\n"
                text += compare_servers(gov, gran, work, env, max(5.0, args.duration / 2), args.concurrency)
            finally:
                procs.stop(gran)
        (out / "summary.txt").write_text(text + "\n")
        print(text)
        print(f"\nprofiles in {out}: portcullis.collapsed, portcullis.svg, summary.txt")
    finally:
        if gov is not None:
            procs.stop(gov)
        procs.stop(upstream)
        shutil.rmtree(work, ignore_errors=True)
    return 0
