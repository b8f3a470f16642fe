"""Turning raw scenario results into the summary keys, the budget verdicts and a table.

Pure functions over plain dicts, so they are unit-tested without running anything.
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

BASELINE_PREFIX = "governed@"  # `bench run --baseline-ref REV` adds the target governed@<short sha>

# (key, label, comparison, threshold). Targets, reported as met / not met; never asserted.
RUN_BUDGET: tuple[tuple[str, str, str, float], ...] = (
    ("governed_vs_bare", "embedded governed throughput / bare proxy", ">=", 0.75),
    ("overhead_c1_excess_ms", "added latency at c1 minus the bare proxy's (ms)", "<=", 0.25),
    ("stream_governed_vs_bare", "streamed governed throughput / bare proxy", ">=", 0.85),
    ("rss_mb", "governed peak RSS under load (MB)", "<=", 150.0),
    ("governed_vs_litellm", "governed throughput / LiteLLM", ">=", 30.0),
    ("fleet_vs_bare", "fleet-mode governed throughput / bare proxy", ">=", 0.5),
    ("fleet3_vs_bare3", "3 fleet replicas / 3 bare proxies, same balancer, 2 cores", ">=", 0.5),
    # The same ratios on a CPU-per-request basis (bare CPU/req ÷ governed CPU/req): what the
    # throughput ratio would be with the core to itself; robust when the machine is shared.
    ("governed_vs_bare_cpu", "  same, CPU basis: governed / bare", ">=", 0.75),
    ("stream_governed_vs_bare_cpu", "  same, CPU basis: streamed governed / bare", ">=", 0.85),
    ("governed_vs_litellm_cpu", "  same, CPU basis: governed / LiteLLM", ">=", 30.0),
    ("fleet_vs_bare_cpu", "  same, CPU basis: fleet / bare (gateway process only)", ">=", 0.5),
    ("fleet3_vs_bare3_cpu", "  same, CPU basis: fleet3 / bare3 (replicas and balancer)", ">=", 0.5),
)
MICRO_BUDGET: tuple[tuple[str, str, str, float], ...] = (
    ("cached_decision_us", "cached policy decision (µs)", "<=", 10.0),
    ("uncached_decision_us", "uncached decision, RegorusEngine.evaluate as configured (µs)", "<=", 100.0),
    ("sqlite_audit_rows_per_s", "SQLite audit rows/s sustained", ">=", 20_000.0),
)


def _get(results: dict[str, Any], target: str, label: str, field: str) -> float | None:
    v = results.get(target, {}).get(label)
    return v.get(field) if isinstance(v, dict) else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _minus(a: float | None, b: float | None) -> float | None:
    return round(a - b, 3) if a is not None and b is not None else None


def summarize(results: dict[str, Any], concurrency: int) -> dict[str, Any]:
    """The flat keys of latest.json, computed from per-target results."""
    cc = f"chat_c{concurrency}"
    st = f"stream_c{concurrency}"
    rps = {t: _get(results, t, cc, "rps") for t in ("direct", "bare", "governed", "fleet", "litellm")}
    c1 = {t: _get(results, t, "chat_c1", "p50_ms") for t in ("direct", "bare", "governed", "fleet", "litellm")}
    s: dict[str, Any] = {
        "direct_rps": rps["direct"], "bare_rps": rps["bare"], "governed_rps": rps["governed"],
        "governed_vs_bare": _ratio(rps["governed"], rps["bare"]),
        "overhead_c1_ms": _minus(c1["governed"], c1["direct"]),
        "bare_overhead_c1_ms": _minus(c1["bare"], c1["direct"]),
        "bare_stream_rps": _get(results, "bare", st, "rps"),
        "governed_stream_rps": _get(results, "governed", st, "rps"),
        "governed_p99_ms": _get(results, "governed", cc, "p99_ms"),
        "bare_p99_ms": _get(results, "bare", cc, "p99_ms"),
        "deny_mix_rps": _get(results, "governed", f"deny_mix_c{concurrency}", "rps"),
        "cold_mix_rps": _get(results, "governed", f"cold_mix_c{concurrency}", "rps"),
        "rss_mb": results.get("governed", {}).get("rss_mb"),
        "bare_rss_mb": results.get("bare", {}).get("rss_mb"),
    }
    s["stream_governed_vs_bare"] = _ratio(s["governed_stream_rps"], s["bare_stream_rps"])
    s["overhead_c1_excess_ms"] = _minus(s["overhead_c1_ms"], s["bare_overhead_c1_ms"])
    s["deny_mix_vs_bare"] = _ratio(s["deny_mix_rps"], rps["bare"])
    s["cold_mix_vs_bare"] = _ratio(s["cold_mix_rps"], rps["bare"])
    for t in ("fleet", "litellm"):
        status = results.get(t, {}).get("status", "not run")
        s[f"{t}_status"] = status
        if status == "ok":
            s[f"{t}_rps"] = rps[t]
            s[f"{t}_overhead_c1_ms"] = _minus(c1[t], c1["direct"])
            s[f"{t}_rss_mb"] = results[t].get("rss_mb")
    if s["fleet_status"] == "ok":
        s["fleet_vs_bare"] = _ratio(rps["fleet"], rps["bare"])
        s["fleet_stream_rps"] = _get(results, "fleet", st, "rps")
        s["fleet_audit_rows"] = results["fleet"].get("audit_rows")
    if s["litellm_status"] == "ok":
        s["governed_vs_litellm"] = _ratio(rps["governed"], rps["litellm"])
    cpu = {t: _get(results, t, cc, "cpu_us_per_req") for t in ("bare", "governed", "fleet", "litellm")}
    s.update({f"{t}_cpu_us_per_req": v for t, v in cpu.items() if v is not None})
    s["governed_vs_bare_cpu"] = _ratio(cpu["bare"], cpu["governed"])
    s["stream_governed_vs_bare_cpu"] = _ratio(_get(results, "bare", st, "cpu_us_per_req"),
                                              _get(results, "governed", st, "cpu_us_per_req"))
    s["fleet_vs_bare_cpu"] = _ratio(cpu["bare"], cpu["fleet"])
    s["governed_vs_litellm_cpu"] = _ratio(cpu["litellm"], cpu["governed"])
    s.update(_fleet3_keys(results, concurrency))
    for b in baselines(results):
        s.update(_baseline_keys(results, b, concurrency))
    s["budget"] = verdicts(s, RUN_BUDGET)
    s["results"] = results
    return s


def _fleet3_keys(results: dict[str, Any], concurrency: int) -> dict[str, Any]:
    """fleet3 against bare3: three replicas of each behind the same balancer (bench/fleet3.py)."""
    status = results.get("fleet3", {}).get("status", "not run")
    out: dict[str, Any] = {"fleet3_status": status}
    if status != "ok" or results.get("bare3", {}).get("status") != "ok":
        return out
    cc, st = f"chat_c{concurrency}", f"stream_c{concurrency}"
    for t in ("fleet3", "bare3"):
        out[f"{t}_rps"] = _get(results, t, cc, "rps")
        out[f"{t}_cpu_us_per_req"] = _get(results, t, cc, "cpu_us_per_req")
    out["fleet3_vs_bare3"] = _ratio(out["fleet3_rps"], out["bare3_rps"])
    out["fleet3_vs_bare3_cpu"] = _ratio(out["bare3_cpu_us_per_req"], out["fleet3_cpu_us_per_req"])
    out["stream_fleet3_vs_bare3"] = _ratio(_get(results, "fleet3", st, "rps"), _get(results, "bare3", st, "rps"))
    out["fleet3_audit_rows"] = results["fleet3"].get("audit_rows")
    return out


def baselines(results: dict[str, Any]) -> list[str]:
    """The governed@REV targets that were measured."""
    return [t for t, r in results.items() if t.startswith(BASELINE_PREFIX) and r.get("status") == "ok"]


def _baseline_keys(results: dict[str, Any], b: str, concurrency: int) -> dict[str, Any]:
    """governed (working tree) against governed@REV, and governed@REV against bare, as for the other
    targets: throughput ratios, and CPU-basis ratios (the other's CPU/req ÷ this one's)."""
    cc = f"chat_c{concurrency}"
    out: dict[str, Any] = {
        f"{b}_rps": _get(results, b, cc, "rps"),
        f"{b}_overhead_c1_ms": _minus(_get(results, b, "chat_c1", "p50_ms"),
                                      _get(results, "direct", "chat_c1", "p50_ms")),
        f"{b}_rss_mb": results[b].get("rss_mb"),
        f"{b}_cpu_us_per_req": _get(results, b, cc, "cpu_us_per_req"),
    }
    for prefix, label in (("", cc), ("stream_", f"stream_c{concurrency}")):
        rps = {t: _get(results, t, label, "rps") for t in ("bare", "governed", b)}
        cpu = {t: _get(results, t, label, "cpu_us_per_req") for t in ("bare", "governed", b)}
        out[f"{prefix}{b}_vs_bare"] = _ratio(rps[b], rps["bare"])
        out[f"{prefix}governed_vs_{b}"] = _ratio(rps["governed"], rps[b])
        out[f"{prefix}{b}_vs_bare_cpu"] = _ratio(cpu["bare"], cpu[b])
        out[f"{prefix}governed_vs_{b}_cpu"] = _ratio(cpu[b], cpu["governed"])
    return out


def ratio_keys(bs: list[str]) -> list[str]:
    """The ratio table's rows; each governed@REV pair right after the governed ratio it pairs with."""
    def pair(prefix: str, suffix: str) -> list[str]:
        return [k for b in bs for k in (f"{prefix}{b}_vs_bare{suffix}", f"{prefix}governed_vs_{b}{suffix}")]

    return ["governed_vs_bare", *pair("", ""), "stream_governed_vs_bare", *pair("stream_", ""),
            "deny_mix_vs_bare", "cold_mix_vs_bare", "fleet_vs_bare", "fleet3_vs_bare3", "stream_fleet3_vs_bare3",
            "governed_vs_litellm",
            "governed_vs_bare_cpu", *pair("", "_cpu"), "stream_governed_vs_bare_cpu", *pair("stream_", "_cpu"),
            "fleet_vs_bare_cpu", "fleet3_vs_bare3_cpu", "governed_vs_litellm_cpu"]


def side_by_side(results: dict[str, Any], b: str) -> list[str]:
    """Per scenario: governed (working tree) next to governed@REV, from the same run."""
    lines = [f"| scenario | governed req/s | {b} req/s | governed / {b} | governed CPU µs/req "
             f"| {b} CPU µs/req | governed / {b}, CPU basis |", "|---|---:|---:|---:|---:|---:|---:|"]
    for label, v in results.get("governed", {}).items():
        if not isinstance(v, dict):
            continue
        rps = (v["rps"], _get(results, b, label, "rps"))
        cpu = (v.get("cpu_us_per_req"), _get(results, b, label, "cpu_us_per_req"))
        lines.append(f"| {label} | {rps[0]:,.0f} | {_fmt(rps[1], ',.0f')} | {_fmt(_ratio(*rps), '.3f')} | "
                     f"{_fmt(cpu[0], '.0f')} | {_fmt(cpu[1], '.0f')} | {_fmt(_ratio(cpu[1], cpu[0]), '.3f')} |")
    return lines


def verdicts(values: dict[str, Any], budget: tuple[tuple[str, str, str, float], ...]) -> list[dict[str, Any]]:
    out = []
    for key, label, op, limit in budget:
        v = values.get(key)
        met = None if v is None else (v >= limit if op == ">=" else v <= limit)
        out.append({"key": key, "target": f"{label} {op} {limit:g}", "value": v,
                    "met": met, "verdict": "not measured" if met is None else ("met" if met else "NOT MET")})
    return out


def _git(*args: str) -> str | None:
    import subprocess  # noqa: PLC0415

    try:
        r = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5,
                           cwd=Path(__file__).resolve().parent.parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode in (0, 1) else None


def meta(plan: dict[str, Any], elapsed_s: float) -> dict[str, Any]:
    """When, where and on which code (read-only git queries: the commit, and whether the
    gateway, adapters or policies differ from it)."""
    changed = _git("diff", "--name-only", "HEAD", "--", "gateway", "adapters", "policies_rego")
    return {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "elapsed_s": round(elapsed_s, 1),
            "python": platform.python_version(), "cpus": os.cpu_count(), "plan": plan,
            "commit": _git("rev-parse", "--short", "HEAD"),
            "uncommitted_changes": changed.splitlines() if changed else []}


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def _fmt(v: Any, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def table(results: dict[str, Any], s: dict[str, Any], concurrency: int) -> str:
    """Markdown table (readable on a terminal, pasteable into docs/performance.md)."""
    direct_c1 = _get(results, "direct", "chat_c1", "p50_ms")
    lines = ["| target | scenario | req/s | p50 ms | p99 ms | added p50 at c1, ms | non-2xx | CPU µs/req "
             "| peak RSS MB |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for target, r in results.items():
        if r.get("status") != "ok":
            lines.append(f"| {target} | {r.get('status')} | | | | | | | |")
            continue
        first = True
        for label, v in r.items():
            if not isinstance(v, dict):
                continue
            added = _minus(v["p50_ms"], direct_c1) if label == "chat_c1" and target != "direct" else None
            share = v["non2xx"] / v["requests"] if v["requests"] else 0.0
            rss = r.get("rss_mb") if first else None
            lines.append(f"| {target} | {label} | {v['rps']:,.0f} | {v['p50_ms']:.3f} | {v['p99_ms']:.3f} | "
                         f"{_fmt(added, '+.3f')} | {share:.0%} | {_fmt(v.get('cpu_us_per_req'), '.0f')} | "
                         f"{_fmt(rss, '.0f')} |")
            first = False
    for b in baselines(results):
        lines += ["", *side_by_side(results, b)]
    lines += ["", "| ratio (same run) | value |", "|---|---:|"]
    for key in ratio_keys(baselines(results)):
        lines.append(f"| {key} | {_fmt(s.get(key), '.3f')} |")
    lines += ["", "| budget | value | verdict |", "|---|---:|---|"]
    for b in s["budget"]:
        lines.append(f"| {b['target']} | {_fmt(b['value'], '.3f')} | {b['verdict']} |")
    for t in ("fleet", "fleet3", "litellm"):
        if s.get(f"{t}_status") not in ("ok", None):
            lines.append(f"\n{t}: {s[f'{t}_status']}")
    return "\n".join(lines)
