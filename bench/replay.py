"""`python -m bench replay --rows 1000000`: `portcullis policy replay` over a big SQLite audit log.

Fills a SQLite audit store (the gateway's own schema) with realistic rows: a few thousand
popular inputs (agents x models/tools x surfaces, Zipf-weighted, as real traffic repeats
itself) plus a small fraction of one-off inputs (fine-tuned model names), spread over six
days, with the lifecycle/admin rows replay must skip. Then times the replay of a candidate
that takes `gpt-4.1-mini` away from tier 1, in this process, through the same function the
CLI runs, and prints rows/s. Not a test: no thresholds, just the numbers.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import yaml

from gateway.audit.chain import ROW_FIELDS, format_ts

REPO = Path(__file__).resolve().parent.parent
MODELS = ("gpt-4o-mini", "gpt-4.1-mini", "gpt-4o", "gpt-4.1", "o3-mini", "claude-haiku-4-5",
          "claude-sonnet-4-6", "claude-opus-4-7", "text-embedding-3-small", "text-embedding-3-large")
TOOLS = (("list_orders", {"readOnlyHint": True}), ("get_order", {"readOnlyHint": True}),
         ("refund_order", {}), ("delete_customer", {"destructiveHint": True}))
MATURITIES = ("student", "intern", "supervised", "autonomous")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", type=int, default=1_000_000, help="audit rows to record (default 1,000,000)")
    p.add_argument("--unique", type=float, default=0.01, help="fraction of rows with a one-off input (0.01)")
    p.add_argument("--agents", type=int, default=300, help="distinct agents in the traffic (300)")
    p.add_argument("--keep", action="store_true", help="keep the temp directory (audit.db, config)")


def _doc(agent: int, action: str, resource: dict[str, Any], api: str, stream: bool) -> dict[str, Any]:
    return {"agent": {"id": f"agent-{agent}", "tier": agent % 5, "maturity": MATURITIES[agent % 4],
                      "workspace": f"ws-{agent % 7}", "labels": {"team": f"t{agent % 11}"}, "auth": "api_key"},
            "action": action, "resource": resource, "request": {"api": api, "stream": stream}}


def _random_doc(rng: random.Random, agents: int, unique: int | None = None) -> dict[str, Any]:
    agent = rng.randrange(agents)
    kind = rng.random()
    if kind < 0.6:
        model = MODELS[rng.randrange(8)] if unique is None else f"ft:gpt-4o-mini:org:{unique}"
        api = "anthropic" if model.startswith("claude") else "openai"
        return _doc(agent, "llm.messages" if api == "anthropic" else "llm.chat",
                    {"type": "model", "name": model, "upstream": api}, api, rng.random() < 0.5)
    if kind < 0.7:
        model = MODELS[8 + rng.randrange(2)]
        return _doc(agent, "llm.embedding", {"type": "model", "name": model, "upstream": "openai"}, "openai", False)
    if kind < 0.95:
        name, ann = TOOLS[rng.randrange(len(TOOLS))]
        return _doc(agent, "tool.call", {"type": "tool", "name": name, "server": "orders", "annotations": ann},
                    "mcp", False)
    return _doc(agent, "tool.list", {"type": "tool", "server": "orders"}, "mcp", False)


def _row(seq: int, ts: float, doc: dict[str, Any] | None, text: str | None, digest: str | None,
         revision: str) -> tuple[Any, ...]:
    agent = doc["agent"]["id"] if doc else "agent-0"
    row = dict.fromkeys(ROW_FIELDS)
    row.update(chain_id="bench", seq=seq, ts=format_ts(ts), request_id=f"r{seq}", agent_id=agent,
               action=doc["action"] if doc else "agent.lifecycle", api=doc["request"]["api"] if doc else "admin",
               stream=0, decision="allow", reasons="[]", policy_revision=revision if doc else None,
               cache_hit=1, status=200, latency_ms=1.0, input_digest=digest,
               policy_input=text if doc else '{"actor": "ops", "change": "promote"}',
               prev_hash="0" * 64, hash=f"{seq:064x}")
    return tuple(row[f] for f in ROW_FIELDS)


def fill(db: Path, rows: int, unique_fraction: float, agents: int, revision: str, seed: int = 12) -> int:
    """Write `rows` input rows (plus 1 lifecycle row per 1,000) into a new store; returns distinct inputs."""
    from adapters.audit.sqlite import SQLiteAuditStore
    from gateway.settings import AuditSettings

    async def schema() -> None:  # the gateway's own table and index
        store = SQLiteAuditStore(AuditSettings(), db)
        await store.start()
        await store.aclose()

    asyncio.run(schema())
    rng = random.Random(seed)
    pool = []
    for _ in range(4000):
        doc = _random_doc(rng, agents)
        text = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS).decode()
        pool.append((doc, text, hashlib.sha256(text.encode()).hexdigest()))
    weights = [1 / (i + 1) for i in range(len(pool))]  # Zipf: a few inputs carry most traffic
    now = time.time()
    start = now - 6 * 86400
    insert = (f"INSERT INTO audit_log ({', '.join(ROW_FIELDS)}) VALUES ({', '.join('?' * len(ROW_FIELDS))})")
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    seen: set[str] = set()
    seq, batch_n = 0, 50_000
    picks = rng.choices(pool, weights, k=rows)
    for base in range(0, rows, batch_n):
        batch = []
        for i in range(base, min(rows, base + batch_n)):
            if rng.random() < unique_fraction:
                doc = _random_doc(rng, agents, unique=i)
                text = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS).decode()
                entry = (doc, text, hashlib.sha256(text.encode()).hexdigest())
            else:
                entry = picks[i]
            seen.add(entry[2])
            seq += 1
            batch.append(_row(seq, start + (now - start - 60) * i / rows, *entry, revision))
            if i % 1000 == 999:  # a lifecycle row: a policy_input but no digest, never replayed
                seq += 1
                batch.append(_row(seq, start + (now - start - 60) * i / rows, None, None, None, revision))
        con.execute("BEGIN")
        con.executemany(insert, batch)
        con.execute("COMMIT")
    con.close()
    return len(seen)


def _candidate(dest: Path) -> Path:
    shutil.copytree(REPO / "policies_rego", dest)
    data_file = dest / "portcullis" / "config" / "data.json"
    data = json.loads(data_file.read_text())
    data["tiers"]["1"]["models"].remove("gpt-4.1-mini")
    data_file.write_text(json.dumps(data, indent=2))
    return dest


def main(args: argparse.Namespace) -> int:
    from adapters.policy.bundle import collect
    from gateway.replay.command import replay
    from gateway.settings import load_settings

    tmp = Path(tempfile.mkdtemp(prefix="portcullis-replay-bench-"))
    try:
        db = tmp / "audit.db"
        config = tmp / "gateway.yaml"
        config.write_text(yaml.safe_dump({
            "identity": {"agents_file": str(REPO / "config" / "agents.yaml")},
            "policy": {"dir": str(REPO / "policies_rego"), "hot_reload": False},
            "audit": {"path": str(db), "spool_path": str(tmp / "audit.spool"), "chain_id": "bench"},
            "lifecycle": {"path": str(tmp / "lifecycle.db")},
            "upstreams": {"mock": {"provider": "mock"}}, "routes": [{"match": "*", "upstream": "mock"}]}))
        revision = collect(REPO / "policies_rego").revision
        t = time.perf_counter()
        distinct = fill(db, args.rows, args.unique, args.agents, revision)
        print(f"filled {args.rows:,} rows ({distinct:,} distinct inputs, {db.stat().st_size / 1e6:.0f} MB) "
              f"in {time.perf_counter() - t:.1f}s")
        settings = load_settings(config, {})
        candidate = _candidate(tmp / "candidate")
        t = time.perf_counter()
        report = asyncio.run(replay(settings, settings.path(settings.policy.dir), candidate, quiet=True))
        took = time.perf_counter() - t
        changes = ", ".join(f"{k} {v['requests']:,}/{v['inputs']:,}" for k, v in report["changes"].items())
        print(f"replayed {report['rows']:,} rows, {report['inputs']:,} distinct inputs in {took:.1f}s: "
              f"{report['rows'] / took:,.0f} rows/s")
        print(f"changes (requests/inputs): {changes}")
        if args.keep:
            print(f"kept {tmp}")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0
