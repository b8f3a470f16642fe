"""`python -m bench console --rows 1000000`: the governance console over a big PostgreSQL audit table.

1. Fills a dedicated table (`--table`, default bench_console_audit, in the test database) with
   `--rows` rows by COPY, made by the store's own start() first, so its rollup trigger counts
   them exactly as it counts the gateway's batches; seeds governance events, approvals and
   proposals into lifecycle tables under `--prefix`. `--reuse` keeps a table already filled.
2. Times the store's console queries in this process (median of `--repeat`) and prints the
   PostgreSQL plans of the row queries (EXPLAIN ANALYZE): which index each uses, how long.
3. Starts a real gateway (`portcullis serve`) on that table with the admin listener, logs in
   to the console with an admin token and times each page over HTTP (median of `--repeat`).
Not a test: the target is < 300 ms a page; it prints the numbers.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import secrets
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import yaml

from bench import fixtures, procs
from bench.run import _portcullis_cmd

DSN = os.environ.get("PORTCULLIS_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
DECISIONS = (("allow", 0.84), ("deny", 0.09), ("rate_limited", 0.03), ("error", 0.02), ("bypass", 0.02))
APIS = (("openai", "llm.chat", "model", "gpt-4o-mini"), ("anthropic", "llm.messages", "model", "claude-sonnet-4-6"),
        ("mcp", "tool.call", "tool", "refund_order"), ("openai", "llm.embedding", "model", "text-embedding-3-small"))
CHUNK = 50_000
TARGET_MS = 300.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", type=int, default=1_000_000, help="audit rows in the table (default 1,000,000)")
    p.add_argument("--days", type=float, default=7.0, help="the rows span this many days up to now (7)")
    p.add_argument("--agents", type=int, default=50, help="generated agents (cold-<i>) in the traffic (50)")
    p.add_argument("--dsn", default=DSN, help="PostgreSQL (default $PORTCULLIS_BENCH_PG_DSN or the test db)")
    p.add_argument("--table", default="bench_console_audit", help="the audit table (dropped and refilled)")
    p.add_argument("--prefix", default="bench_console_", help="the lifecycle tables' prefix")
    p.add_argument("--repeat", type=int, default=5, help="timed loads per page; the median is printed (5)")
    p.add_argument("--reuse", action="store_true", help="keep the table if it already holds --rows rows")
    p.add_argument("--no-http", action="store_true", help="store timings and plans only, no gateway")
    p.add_argument("--keep", action="store_true", help="keep the temp directory (config, logs)")


# ---- filling ------------------------------------------------------------------------------

def _row(rng: random.Random, seq: int, ts: float, agents: list[str]) -> dict[str, Any]:
    decision = rng.choices([d for d, _ in DECISIONS], [w for _, w in DECISIONS])[0]
    api, action, rtype, rname = APIS[min(int(rng.paretovariate(1.5)) - 1, len(APIS) - 1)]
    agent = agents[min(int(rng.paretovariate(1.1)) - 1, len(agents) - 1)]
    upstream = decision in ("allow", "bypass")
    latency = rng.lognormvariate(5.5, 0.6) if upstream else rng.uniform(0.3, 3.0)
    doc = {"agent": {"id": agent, "tier": 2, "maturity": "intern", "workspace": "bench", "auth": "api_key"},
           "action": action, "resource": {"type": rtype, "name": rname}, "request": {"api": api}}
    return {
        "chain_id": "bench-fill", "seq": seq, "ts": datetime.fromtimestamp(ts, UTC),
        "request_id": f"req_{seq:012x}", "agent_id": agent, "tier": 2, "maturity": "intern",
        "workspace": "bench", "auth": "api_key", "action": action, "resource_type": rtype, "resource_name": rname,
        "upstream": "fast", "api": api, "stream": rng.random() < 0.3, "decision": decision,
        "reasons": orjson.dumps(["ok"] if decision == "allow" else [f"{decision}: bench"]).decode(),
        "policy_revision": "bypass" if decision == "bypass" else "bench-rev", "cache_hit": rng.random() < 0.7,
        "status": {"allow": 200, "deny": 403, "rate_limited": 429, "error": 502, "bypass": 200}[decision],
        "latency_ms": round(latency, 3), "upstream_ms": round(latency - rng.uniform(0.4, 2.5), 3) if upstream else None,
        "input_tokens": rng.randrange(20, 2000), "output_tokens": rng.randrange(1, 500) if upstream else None,
        "client_ip": "10.0.0.7", "input_digest": hashlib.sha256(f"{agent}{rname}".encode()).hexdigest(),
        "policy_input": orjson.dumps(doc, option=orjson.OPT_SORT_KEYS).decode(), "prev_hash": "0" * 64,
        "hash": f"{seq:064x}",
    }


async def _drop(conn: asyncpg.Connection, table: str, prefix: str) -> None:
    from adapters.audit.console_postgres import _names
    n = _names(table)
    await conn.execute(f"DROP TABLE IF EXISTS {n['t']}, {n['rollup']}, {n['minutes']}")
    await conn.execute(f"DROP FUNCTION IF EXISTS {n['fn']}()")
    for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE tablename LIKE $1", prefix + "%"):
        await conn.execute(f'DROP TABLE IF EXISTS "{r["tablename"]}"')


async def fill(args: argparse.Namespace, agents: list[str]) -> None:
    from adapters.audit.postgres import PostgresAuditStore
    from gateway.audit.chain import ROW_FIELDS
    from gateway.settings import AuditSettings

    conn = await asyncpg.connect(args.dsn)
    try:
        if args.reuse and await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f'"{args.table}"'):
            have = await conn.fetchval(f'SELECT count(*) FROM "{args.table}" WHERE chain_id = $1', "bench-fill")
            if have == args.rows:
                print(f"reusing {args.table}: {have:,} rows", flush=True)
                return
        await _drop(conn, args.table, args.prefix)
        store = PostgresAuditStore(AuditSettings(backend="postgres", dsn=args.dsn, table=args.table,
                                                 chain_id="bench-fill"))
        await store.start()  # the table, its indexes, the rollup and its trigger
        await store.aclose()
        rng, now = random.Random(13), time.time()
        span = args.days * 86400.0
        times = sorted(now - rng.uniform(0, span) for _ in range(args.rows))
        t0 = time.perf_counter()
        for start in range(0, args.rows, CHUNK):
            rows = [_row(rng, i + 1, times[i], agents) for i in range(start, min(start + CHUNK, args.rows))]
            records = [tuple(r.get(f) for f in ROW_FIELDS) for r in rows]
            await conn.copy_records_to_table(args.table, records=records, columns=list(ROW_FIELDS))
            print(f"\r  copied {start + len(rows):,} rows ({time.perf_counter() - t0:.0f} s)", end="", flush=True)
        await conn.execute(f'ANALYZE "{args.table}"')
        print(f"\nfilled {args.table}: {args.rows:,} rows over {args.days:g} days in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
    finally:
        await conn.close()
    await seed_lifecycle(args, agents)


async def seed_lifecycle(args: argparse.Namespace, agents: list[str]) -> None:
    """Events over the span, a few pending approvals and proposals: what the other pages list."""
    from adapters.lifecycle.postgres import PostgresLifecycleStore
    from gateway.lifecycle.model import Approval, GovernanceEvent, Proposal
    from gateway.settings_lifecycle import LifecycleSettings

    store = PostgresLifecycleStore(LifecycleSettings(store="postgres", dsn=args.dsn, table_prefix=args.prefix))
    await store.start()
    rng, now = random.Random(17), time.time()
    kinds = (("agent.violation", "HIGH"), ("budget.80pct", "MEDIUM"), ("approval.requested", "LOW"),
             ("agent.revoked", "CRITICAL"), ("policy.reloaded", "LOW"))
    events = [GovernanceEvent(id=f"ev-{i:06d}", ts=now - rng.uniform(0, args.days * 86400), event_type=k,
                              severity=s, agent_id=rng.choice(agents), workspace="bench", details={"n": i})
              for i, (k, s) in enumerate(rng.choice(kinds) for _ in range(5000))]
    for i in range(0, len(events), 500):
        await store.add_events(events[i:i + 500])
    for i in range(20):
        await store.add_approval(Approval(id=f"ap-{i}", agent_id=agents[i % len(agents)], action="tool.call",
                                          resource_type="tool", resource_name="delete_customer",
                                          input_digest="d" * 64, reason="destructive", created_at=now - i,
                                          expires_at=now + 86400))
    for i in range(5):
        await store.add_proposal(Proposal(id=f"pr-{i}", agent_id=agents[i], created_at=now - i, from_tier=2,
                                          to_tier=3, from_maturity="intern", to_maturity="supervised",
                                          reason="500 compliant requests"))
    await store.aclose()


# ---- the store, in process ----------------------------------------------------------------

def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 1)


async def time_store(args: argparse.Namespace, agents: list[str]) -> dict[str, float]:
    from adapters.audit.postgres import PostgresAuditStore
    from gateway.settings import AuditSettings

    store = PostgresAuditStore(AuditSettings(backend="postgres", dsn=args.dsn, table=args.table, chain_id="bench-q"))
    await store.start()
    now = time.time()
    day = now - now % 86400
    first = await store.recent_rows(limit=50)
    calls: dict[str, Any] = {
        "decision_series 1h/60s": lambda: store.decision_series(now - 3600, now, 60),
        "decision_series 1d/600s": lambda: store.decision_series(now - 86400, now, 600),
        "decision_series 1w/3600s": lambda: store.decision_series(now - 7 * 86400, now, 3600),
        "agent_activity (today)": lambda: store.agent_activity(day),
        "cache_hit_rate (1h)": lambda: store.cache_hit_rate(now - 3600),
        "overhead_percentiles (1h)": lambda: store.overhead_percentiles(now - 3600),
        "overhead_percentiles (1w)": lambda: store.overhead_percentiles(now - 7 * 86400),
        "recent_rows 50": lambda: store.recent_rows(limit=50),
        "recent_rows 50, page 2": lambda: store.recent_rows(limit=50, before=(first[-1]["ts"], first[-1]["request_id"])),
        "recent_rows agent": lambda: store.recent_rows(limit=50, agent=agents[-1]),
        "recent_rows decision=error": lambda: store.recent_rows(limit=50, decision="error"),
        "recent_rows api=mcp": lambda: store.recent_rows(limit=50, api="mcp"),
        "recent_rows agent+decision": lambda: store.recent_rows(limit=50, agent=agents[-1], decision="rate_limited"),
        "recent_rows api=nothing (bounded)": lambda: store.recent_rows(limit=50, api="none-such"),
        "recent_rows after_ts (live)": lambda: store.recent_rows(limit=200, after_ts=now - 60),
    }
    out = {}
    print(f"\nstore queries (in process, median of {args.repeat}):")
    for name, call in calls.items():
        await call()
        samples = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            await call()
            samples.append(time.perf_counter() - t)
        out[name] = _median_ms(samples)
        print(f"  {name:<36} {out[name]:8.1f} ms", flush=True)
    await explain(store, args, agents, first)
    await store.aclose()
    return out


async def explain(store: Any, args: argparse.Namespace, agents: list[str], first: list[dict]) -> None:
    """EXPLAIN ANALYZE of the row queries: the index each one uses, and its time in the server."""
    plans = {
        "recent_rows": store.recent_sql(),
        "recent_rows page 2": store.recent_sql(before=(first[-1]["ts"], first[-1]["request_id"])),
        "recent_rows agent": store.recent_sql(agent=agents[-1]),
        "recent_rows decision": store.recent_sql(decision="error"),
        "recent_rows agent+api": store.recent_sql(agent=agents[0], api="mcp"),
    }
    conn = await asyncpg.connect(args.dsn)
    try:
        print("\nPostgreSQL plans (EXPLAIN ANALYZE):")
        for name, (sql, qargs) in plans.items():
            lines = [r[0] for r in await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *qargs, 50)]
            words = {w.strip('"(),') for ln in lines for w in ln.split()}
            used = sorted(w for w in words if w.startswith(args.table + "_") and "." not in w)
            took = next((ln for ln in lines if ln.startswith("Execution Time")), "")
            seq = " SEQ SCAN!" if any("Seq Scan" in ln for ln in lines) else ""
            print(f"  {name:<24} {', '.join(used) or '-':<48} {took}{seq}", flush=True)
    finally:
        await conn.close()


# ---- the console over HTTP ----------------------------------------------------------------

def start_gateway(args: argparse.Namespace, work: Path, token: str) -> tuple[procs.Server, str]:
    port, admin_port = procs.free_port(), procs.free_port()
    agents_file = fixtures.write_agents(work / "agents.json", args.agents)
    policy_dir = fixtures.write_policy(work / "policies")
    cfg_path = fixtures.write_config(work / "gateway.yaml", port=port, upstream_url="http://127.0.0.1:9",
                                     policy_dir=policy_dir, agents_file=agents_file, chain_id="bench-console",
                                     audit={"backend": "postgres", "dsn": args.dsn, "table": args.table})
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["lifecycle"] = {"store": "postgres", "dsn": args.dsn, "table_prefix": args.prefix}
    cfg["admin"] = {"port": admin_port, "tokens": [{"name": "bench-ops", "scopes": ["read", "write"],
                                                    "sha256": hashlib.sha256(token.encode()).hexdigest()}]}
    cfg["logging"] = {"level": "WARNING"}
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    server = procs.start("gateway", _portcullis_cmd(cfg_path), port, work, cwd=work)
    try:
        procs.wait_ready(server, timeout_s=120, path="/readyz")
    except RuntimeError:
        procs.stop(server)
        raise
    settle(server.pid)
    return server, f"http://127.0.0.1:{admin_port}"


def settle(pid: int, timeout_s: float = 60.0) -> None:
    """Until the gateway is idle: right after start it compiles the policy set to a program in
    the background (seconds of CPU), which would be timed as page loads."""
    deadline, last = time.monotonic() + timeout_s, procs.cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = procs.cpu_seconds(pid)
        if now - last < 0.05:
            return
        last = now


def time_pages(args: argparse.Namespace, admin_url: str, token: str, agents: list[str]) -> dict[str, float]:
    import httpx

    pages = ["/console", "/console/api/series?window=1h", "/console/api/series?window=1d",
             "/console/api/series?window=1w", "/console/live", "/console/agents", f"/console/agents/{agents[0]}",
             f"/console/agents/{agents[-1]}", "/console/approvals", "/console/events",
             "/console/events?severity=HIGH", "/console/reports", "/console/policy"]
    out: dict[str, float] = {}
    with httpx.Client(base_url=admin_url, timeout=30.0, follow_redirects=False) as client:
        r = client.post("/console/login", data={"token": token})
        if r.status_code != 303 or "portcullis_console" not in client.cookies:
            raise RuntimeError(f"console login failed: {r.status_code} {r.text[:300]}")
        print(f"\nconsole pages over HTTP (median of {args.repeat}, target < {TARGET_MS:.0f} ms):")
        for page in pages:
            client.get(page)  # warm: templates compiled, connections in the pools
            samples, status, size = [], 0, 0
            for _ in range(args.repeat):
                t = time.perf_counter()
                r = client.get(page)
                size = len(r.content)
                samples.append(time.perf_counter() - t)
                status = r.status_code
            out[page] = _median_ms(samples)
            flag = "" if status == 200 and out[page] < TARGET_MS else "  <-- " + (
                f"HTTP {status}" if status != 200 else "over target")
            print(f"  {page:<40} {out[page]:8.1f} ms  (min {min(samples) * 1000:6.1f}, {size:,} bytes){flag}",
                  flush=True)
    return out


def main(args: argparse.Namespace) -> int:
    agents = [f"cold-{i}" for i in range(args.agents)]
    if (busy := procs.cpu_busy()) > 0.3:
        print(f"warning: the machine is {busy:.0%} busy with other work; the timings will be noisy", flush=True)
    asyncio.run(fill(args, agents))
    asyncio.run(time_store(args, agents))
    if args.no_http:
        return 0
    if not (fixtures.REPO / "gateway" / "console" / "app.py").exists():
        print("\nno gateway/console yet: HTTP page timings skipped")
        return 0
    work = Path(tempfile.mkdtemp(prefix="portcullis-bench-console-"))
    token = "pk-admin-" + secrets.token_urlsafe(24)
    server = None
    try:
        server, admin_url = start_gateway(args, work, token)
        pages = time_pages(args, admin_url, token, agents)
        worst = max(pages.items(), key=lambda kv: kv[1])
        print(f"\nslowest page: {worst[0]} {worst[1]:.1f} ms ({'within' if worst[1] < TARGET_MS else 'OVER'} "
              f"the {TARGET_MS:.0f} ms target) with {args.rows:,} audit rows in PostgreSQL")
    finally:
        if server is not None:
            procs.stop(server)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0
