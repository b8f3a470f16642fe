"""The benchmark harness's pure helpers (no servers, no wrk run)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench import fixtures, profile, report, wrk

WRK_TEXT = """Running 3s test @ http://127.0.0.1:8080
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    12.51ms    3.02ms  45.10ms   80.12%
    Req/Sec     2.56k   210.33     2.90k    70.00%
  Latency Distribution
     50%   11.90ms
     75%   13.20ms
     90%   15.60ms
     99%    1.02s
  7680 requests in 3.00s, 2.80MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 3840
Requests/sec:   2559.87
Transfer/sec:      0.93MB
"""


def test_parse_wrk_text_summary() -> None:
    r = wrk.parse(WRK_TEXT)
    assert r.requests == 7680 and r.duration_s == pytest.approx(3.0)
    assert r.rps == pytest.approx(2559.87)
    assert (r.p50_ms, r.p90_ms, r.p99_ms) == pytest.approx((11.9, 15.6, 1020.0))
    assert r.mean_ms == pytest.approx(12.51)
    assert r.status_errors == 3840 and r.non2xx_share == pytest.approx(0.5)
    assert r.socket_errors == {"connect": 0, "read": 2, "write": 0, "timeout": 1}


def test_parse_wrk_prefers_the_bench_line() -> None:
    line = ('@@BENCH {"requests":1000,"duration_us":2000000,"bytes":1,"connect_errors":0,"read_errors":0,'
            '"write_errors":0,"status_errors":10,"timeouts":0,"p50_us":250,"p90_us":400,"p99_us":900,'
            '"mean_us":300.5,"max_us":5000}')
    r = wrk.parse(WRK_TEXT + line + "\n")
    assert r.rps == 500.0 and r.p50_ms == 0.25 and r.p99_ms == 0.9 and r.status_errors == 10


def test_parse_wrk_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        wrk.parse("unable to connect to 127.0.0.1:1 Connection refused")


def test_every_scenario_script_ends_with_the_report(tmp_path: Path) -> None:
    for name in wrk.SCENARIOS:
        text = wrk.script_path(name, tmp_path).read_text()
        assert "function done(" in text and "@@BENCH" in text


def _scen(rps: float, p50: float) -> dict[str, float]:
    # CPU per request as if each target had the core to itself.
    return {"rps": rps, "p50_ms": p50, "p99_ms": p50 * 3, "requests": 100, "non2xx": 0,
            "cpu_us_per_req": 1e6 / rps}


def test_summary_ratios_and_budget() -> None:
    results = {
        "direct": {"status": "ok", "chat_c1": _scen(9000, 0.10), "chat_c32": _scen(60000, 0.5)},
        "bare": {"status": "ok", "chat_c1": _scen(2000, 0.45), "chat_c32": _scen(4000, 8.0),
                 "stream_c32": _scen(1000, 30.0), "rss_mb": 45.0},
        "governed": {"status": "ok", "chat_c1": _scen(1500, 0.60), "chat_c32": _scen(3200, 10.0),
                     "stream_c32": _scen(900, 35.0), "rss_mb": 110.0},
        "fleet": {"status": "unavailable: Redis not reachable"},
        "litellm": {"status": "ok", "chat_c1": _scen(50, 12.0), "chat_c32": _scen(80, 400.0)},
    }
    s = report.summarize(results, 32)
    assert s["governed_vs_bare"] == 0.8 and s["stream_governed_vs_bare"] == 0.9
    assert s["overhead_c1_ms"] == 0.5 and s["bare_overhead_c1_ms"] == 0.35
    assert s["overhead_c1_excess_ms"] == 0.15
    assert s["governed_vs_litellm"] == 40.0 and s["litellm_rps"] == 80
    assert s["fleet_status"].startswith("unavailable") and "fleet_vs_bare" not in s
    assert s["governed_vs_bare_cpu"] == 0.8 and s["governed_vs_litellm_cpu"] == 40.0
    verdict = {b["key"]: b["verdict"] for b in s["budget"]}
    assert verdict == {"governed_vs_bare": "met", "overhead_c1_excess_ms": "met",
                       "stream_governed_vs_bare": "met", "rss_mb": "met", "governed_vs_litellm": "met",
                       "fleet_vs_bare": "not measured", "governed_vs_bare_cpu": "met",
                       "stream_governed_vs_bare_cpu": "met", "governed_vs_litellm_cpu": "met",
                       "fleet_vs_bare_cpu": "not measured", "fleet3_vs_bare3": "not measured",
                       "fleet3_vs_bare3_cpu": "not measured"}
    json.dumps(s)  # latest.json must serialize
    assert "| governed | chat_c1 |" in report.table(results, s, 32)


def test_fleet3_is_compared_with_bare3_and_the_single_fleet_ratio_stays() -> None:
    results = {
        "direct": {"status": "ok", "chat_c1": _scen(9000, 0.10), "chat_c32": _scen(60000, 0.5)},
        "bare": {"status": "ok", "chat_c1": _scen(2000, 0.45), "chat_c32": _scen(4000, 8.0)},
        "fleet": {"status": "ok", "chat_c1": _scen(1500, 0.6), "chat_c32": _scen(2400, 12.0)},
        "bare3": {"status": "ok", "chat_c1": _scen(1800, 0.5), "chat_c32": _scen(5000, 6.0),
                  "stream_c32": _scen(1000, 30.0)},
        "fleet3": {"status": "ok", "chat_c1": _scen(1400, 0.7), "chat_c32": _scen(3000, 10.0),
                   "stream_c32": _scen(700, 40.0), "audit_rows": 1234},
    }
    s = report.summarize(results, 32)
    assert s["fleet_vs_bare"] == 0.6
    assert s["fleet3_vs_bare3"] == 0.6 and s["fleet3_vs_bare3_cpu"] == 0.6
    assert s["stream_fleet3_vs_bare3"] == 0.7 and s["fleet3_audit_rows"] == 1234
    verdict = {b["key"]: b["verdict"] for b in s["budget"]}
    assert verdict["fleet3_vs_bare3"] == "met" and verdict["fleet3_vs_bare3_cpu"] == "met"
    assert "| fleet3_vs_bare3 | 0.600 |" in report.table(results, s, 32)
    down = report.summarize({**results, "fleet3": {"status": "unavailable: startup failed: x"}}, 32)
    assert down["fleet3_status"].startswith("unavailable") and "fleet3_vs_bare3" not in down
    assert "fleet3: unavailable: startup failed: x" in report.table(results, down, 32)


def test_policy_copy_raises_only_the_rate_limits(tmp_path: Path) -> None:
    dest = fixtures.write_policy(tmp_path / "p")
    data = json.loads((dest / "portcullis" / "config" / "data.json").read_text())
    for tier in data["tiers"].values():
        assert tier["obligations"]["requests_per_minute"] == fixtures.HIGH_LIMIT
        assert tier["obligations"]["tokens_per_minute"] == fixtures.HIGH_LIMIT
        assert tier["obligations"]["max_output_tokens"] < fixtures.HIGH_LIMIT


def test_generated_agents_load_and_keys_match(tmp_path: Path) -> None:
    from gateway.directory import AgentDirectory
    from gateway.keys import hash_key
    from gateway.agents_file import load_agents

    directory = AgentDirectory.from_file(load_agents(fixtures.write_agents(tmp_path / "a.yaml", 3)))
    entry = directory.key_by_hash(hash_key(fixtures.cold_key(2)))
    assert entry is not None and entry.agent == "cold-2"
    assert directory.key_by_hash(hash_key(fixtures.DENIED_KEY)).agent == "observer"


def test_profile_summary_by_area() -> None:
    stacks = profile.parse_collapsed([
        "main (a.py:1);decide (gateway/stages/policy.py:40);eval (adapters/policy/regorus_engine.py:9) 6",
        "main (a.py:1);send (aiohttp/client.py:3) 4", "", "garbage",
    ])
    assert len(stacks) == 2
    text = profile.summarize(stacks)
    assert "10 samples" in text and "60.0" in text and "aiohttp client" in text


def test_cpu_seconds_of_a_group_sums_its_processes() -> None:
    from bench import procs

    sum(range(200_000))  # some CPU of our own to count
    one = procs.cpu_seconds(os.getpid())
    assert one > 0
    assert procs.cpu_seconds([os.getpid(), os.getpid()]) >= 2 * one  # later, so never less
