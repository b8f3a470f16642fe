"""`bench run --baseline-ref REV`: the worktree, the code it really runs, and the report (no wrk)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from bench import baseline, fixtures, procs, report
from bench.__main__ import parser
from bench.run import Plan

REV = "HEAD"  # the committed code: a worktree of it must run, not the working tree (paths tell them apart)


def _git(*args: str, cwd: Path = fixtures.REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def checkout() -> Iterator[baseline.Checkout]:
    with baseline.checkout(REV) as co:
        yield co


def _config(tmp_path: Path, port: int) -> Path:
    return fixtures.write_config(tmp_path / "g.yaml", port=port, upstream_url="http://127.0.0.1:9",
                                 policy_dir=fixtures.write_policy(tmp_path / "policies"),
                                 agents_file=fixtures.write_agents(tmp_path / "agents.yaml", 0))


def test_the_worktree_is_at_the_revision(checkout: baseline.Checkout) -> None:
    commit = _git("rev-parse", REV)
    assert checkout.commit == commit and _git("rev-parse", "HEAD", cwd=checkout.path) == commit
    assert (checkout.path / "gateway" / "cli.py").read_text() == _git("show", f"{commit}:gateway/cli.py") + "\n"
    assert checkout.target == f"governed@{checkout.short}" and commit.startswith(checkout.short)


def test_the_worktree_is_removed_afterwards() -> None:
    with baseline.checkout("HEAD") as co:
        assert (co.path / "gateway").is_dir()
        assert str(co.path) in _git("worktree", "list", "--porcelain")
    assert not co.path.exists() and str(co.path) not in _git("worktree", "list", "--porcelain")


def test_an_unknown_revision_is_an_error() -> None:
    with pytest.raises(baseline.BaselineError, match="no-such-revision"):
        with baseline.checkout("no-such-revision-x9"):
            pass


def test_the_started_gateway_runs_the_checkouts_code(checkout: baseline.Checkout, tmp_path: Path) -> None:
    port = procs.free_port()
    server = baseline.start(checkout, checkout.target, _config(tmp_path, port), port, tmp_path)
    try:
        files = baseline.imported_files(server.log.read_text())
    finally:
        procs.stop(server)
    assert any(f.startswith(f"{checkout.path}/gateway/") for f in files)
    assert any(f.startswith(f"{checkout.path}/adapters/") for f in files)  # loaded by import string
    assert not [f for f in files if f.startswith((f"{fixtures.REPO}/gateway/", f"{fixtures.REPO}/adapters/"))]


def test_the_working_trees_code_is_refused(checkout: baseline.Checkout, tmp_path: Path) -> None:
    """The same command without the checkout on PYTHONPATH gets the editable install: caught."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run(checkout.gateway_cmd("--help"), cwd=tmp_path, env={**env, "PYTHONVERBOSE": "1"},
                       capture_output=True, text=True, check=True)
    with pytest.raises(baseline.BaselineError, match="did not run") as e:
        baseline.verify_origin(r.stderr, checkout, "the check")
    assert f"{fixtures.REPO}/gateway/" in str(e.value)


def test_where_code_came_from() -> None:
    log = "\n".join(["import 'x' # <loader>", "# code object from '/wt/gateway/__pycache__/cli.cpython-311.pyc'",
                     "# code object from /site/adapters/policy/compiled.py", "# cleanup[2] removing gateway"])
    files = baseline.imported_files(log)
    assert files == ["/wt/gateway/__pycache__/cli.cpython-311.pyc", "/site/adapters/policy/compiled.py"]
    assert baseline.wrong_origins(files, Path("/wt"), [Path("/repo")]) == []
    assert baseline.wrong_origins(files, Path("/wt"), [Path("/site")]) == [
        "imported from outside the checkout: /site/adapters/policy/compiled.py"]
    assert baseline.wrong_origins(files[1:], Path("/wt"), [])[0].startswith("no gateway module")


def test_a_config_that_does_not_validate_there_is_an_error(checkout: baseline.Checkout, tmp_path: Path) -> None:
    cfg = _config(tmp_path, 8080)
    baseline.validate_config(checkout, cfg)
    doc = yaml.safe_load(cfg.read_text())
    doc["server"]["only_in_a_newer_schema"] = True
    cfg.write_text(yaml.safe_dump(doc))
    with pytest.raises(baseline.BaselineError, match="does not validate at HEAD") as e:
        baseline.validate_config(checkout, cfg)
    assert "only_in_a_newer_schema" in str(e.value)


def test_the_flag_and_the_scenarios() -> None:
    args = parser().parse_args(["run", "--quick", "--baseline-ref", "main~3"])
    assert args.baseline_ref == "main~3"
    plan = Plan.from_args(args)
    assert plan.scenarios("governed@7eb3577") == plan.scenarios("governed")


def _scen(rps: float, p50: float) -> dict[str, float]:
    return {"rps": rps, "p50_ms": p50, "p99_ms": p50 * 3, "requests": 100, "non2xx": 0,
            "cpu_us_per_req": 1e6 / rps}


def test_the_report_puts_both_governed_targets_side_by_side() -> None:
    b = "governed@abc1234"
    results = {
        "direct": {"status": "ok", "chat_c1": _scen(9000, 0.10), "chat_c32": _scen(60000, 0.5)},
        "bare": {"status": "ok", "chat_c1": _scen(2000, 0.45), "chat_c32": _scen(4000, 8.0),
                 "stream_c32": _scen(1000, 30.0), "rss_mb": 45.0},
        "governed": {"status": "ok", "chat_c1": _scen(1500, 0.60), "chat_c32": _scen(3200, 10.0),
                     "stream_c32": _scen(900, 35.0), "cold_mix_c32": _scen(2000, 12.0), "rss_mb": 110.0},
        b: {"status": "ok", "chat_c1": _scen(1400, 0.70), "chat_c32": _scen(2800, 11.0),
            "stream_c32": _scen(1000, 33.0), "cold_mix_c32": _scen(2500, 11.0), "rss_mb": 120.0},
        "fleet": {"status": "unavailable: Redis not reachable"},
    }
    s = report.summarize(results, 32)
    assert s["governed_vs_bare"] == 0.8 and s[f"{b}_vs_bare"] == 0.7
    assert s[f"governed_vs_{b}"] == pytest.approx(1.143) and s[f"governed_vs_{b}_cpu"] == pytest.approx(1.143)
    assert s[f"{b}_vs_bare_cpu"] == 0.7 and s[f"stream_governed_vs_{b}"] == 0.9
    assert s[f"stream_{b}_vs_bare"] == 1.0 and s[f"stream_governed_vs_{b}_cpu"] == 0.9
    assert s[f"{b}_overhead_c1_ms"] == 0.6 and s[f"{b}_rss_mb"] == 120.0
    text = report.table(results, s, 32)
    assert f"| {b} | chat_c32 | 2,800 |" in text
    assert f"| scenario | governed req/s | {b} req/s | governed / {b} |" in text
    assert "| cold_mix_c32 | 2,000 | 2,500 | 0.800 | 500 | 400 | 0.800 |" in text
    rows = [ln.split(" | ")[0][2:] for ln in text.splitlines() if ln.startswith("| ") and "_vs_" in ln]
    assert rows[:3] == ["governed_vs_bare", f"{b}_vs_bare", f"governed_vs_{b}"]
    assert {f"{b}_vs_bare_cpu", f"governed_vs_{b}_cpu", f"stream_governed_vs_{b}_cpu"} <= set(rows)


def test_no_baseline_rows_without_the_flag() -> None:
    results = {"bare": {"status": "ok", "chat_c32": _scen(4000, 8.0)},
               "governed": {"status": "ok", "chat_c32": _scen(3200, 10.0)}}
    s = report.summarize(results, 32)
    assert not [k for k in s if "@" in k] and "@" not in report.table(results, s, 32)
