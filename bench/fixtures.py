"""Files a governed benchmark target needs, written into a temp directory.

- the policy directory, copied, with every tier's requests/tokens per minute
  raised so the limiter admits everything (the limits still run, they just never refuse);
- an agents file: the quickstart agents and keys (the observer drives the
  deny mix) plus thousands of generated agents with keys `pk-bench-cold-<i>`
  for the cache-cold mix (only their SHA-256 hashes are stored, as always);
- the gateway config, routing every model to the fast upstream.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
HIGH_LIMIT = 1_000_000_000

# Keys documented in README.md ("Quickstart agents").
ALLOWED_KEY = "pk-quickstart-builder"     # tier 2, supervised: may chat with gpt-4o-mini
DENIED_KEY = "pk-quickstart-observer"     # tier 0, student: refused gpt-4o (tier and maturity)
CHAT_MODEL = "gpt-4o-mini"
CATALOG_MODELS = ("gpt-4o-mini", "gpt-4.1-mini", "gpt-4o", "gpt-4.1", "o3-mini", "o4-mini",
                  "claude-sonnet-4-6", "claude-opus-4-7")  # all reachable from tier 3 up
# The cache-cold mix: the catalog plus made-up names under the tier-3 "o3*" pattern, so
# agents x models is far more pairs than a run sends (no pair repeats within the decision TTL).
COLD_MODELS = CATALOG_MODELS + tuple(f"o3-cold-{j}" for j in range(56))
COLD_RUN_STRIDE = 100_000  # each repetition of the cold mix starts this many pairs further on


def cold_key(i: int) -> str:
    return f"pk-bench-cold-{i}"


def write_policy(dest: Path, source: Path = REPO / "policies_rego") -> Path:
    """Copy the policies and raise every tier's rate limits out of reach."""
    shutil.copytree(source, dest)
    data_file = dest / "portcullis" / "config" / "data.json"
    data = json.loads(data_file.read_text())
    for tier in data["tiers"].values():
        tier["obligations"]["requests_per_minute"] = HIGH_LIMIT
        tier["obligations"]["tokens_per_minute"] = HIGH_LIMIT
    data_file.write_text(json.dumps(data, indent=2))
    return dest


def write_agents(dest: Path, cold_agents: int) -> Path:
    """The quickstart agents file plus `cold_agents` generated agents, one pinned key each."""
    from gateway.keys import hash_key  # noqa: PLC0415 - the project's own hash format

    doc: dict[str, Any] = yaml.safe_load((REPO / "config" / "agents.yaml").read_text())
    doc["workspaces"]["bench"] = {"default_agent": None}
    for i in range(cold_agents):
        tier, maturity = (3, "supervised") if i % 2 else (4, "autonomous")
        doc["agents"].append({"id": f"cold-{i}", "tier": tier, "maturity": maturity,
                              "workspace": "bench", "labels": {"team": f"t{i % 50}"}})
        doc["keys"].append({"id": f"cold-{i}", "sha256": hash_key(cold_key(i)),
                            "workspace": "bench", "agent": f"cold-{i}"})
    # YAML is a superset of JSON; JSON is much quicker to write for thousands of agents.
    dest.write_text(json.dumps(doc))
    return dest


def write_config(dest: Path, *, port: int, upstream_url: str, policy_dir: Path, agents_file: Path,
                 limits: dict[str, Any] | None = None, audit: dict[str, Any] | None = None,
                 chain_id: str = "bench") -> Path:
    """A gateway config on embedded defaults unless `limits` / `audit` say otherwise."""
    work = dest.parent
    cfg: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port},
        "identity": {"agents_file": str(agents_file)},
        "policy": {"backend": "regorus", "dir": str(policy_dir), "fail": "closed", "hot_reload": True},
        "cache": {"backend": "memory"},
        "limits": limits or {"backend": "memory"},
        "audit": {"backend": "sqlite", "path": str(work / f"{dest.stem}-audit.db"),
                  "spool_path": str(work / f"{dest.stem}-audit.spool"), "chain_id": chain_id,
                  **(audit or {})},
        "upstreams": {"fast": {"provider": "openai", "base_url": upstream_url}},
        "routes": [{"match": "*", "upstream": "fast", "models": list(CATALOG_MODELS)}],
        # INFO, as users run it: refusals are logged one line each.
        "logging": {"level": "INFO"},
    }
    dest.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dest
