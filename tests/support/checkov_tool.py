"""checkov for tests, installed on first use into tests/.venvs/checkov.

checkov pins many packages of its own, so it lives in its own venv (built once,
under a lock, by tool_envs.ensure_built) and never in the project's test extra.

    findings = run_checkov(manifest_dir)   # [(check_id, resource, file), ...] of failed checks
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.tool_envs import check, clean_env, ensure_built

SPEC = "checkov==3.3.30"
RUN_TIMEOUT_S = 300


def _install(home: Path) -> None:
    check([sys.executable, "-m", "venv", str(home)])
    check([str(home / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", SPEC])


def command() -> list[str]:
    return [str(ensure_built("checkov", SPEC, _install) / "bin" / "checkov")]


def run_checkov(directory: Path) -> list[tuple[str, str, str]]:
    """Failed checks of `checkov -d DIR --framework kubernetes` as (check_id, resource, file)."""
    proc = subprocess.run([*command(), "-d", str(directory), "--framework", "kubernetes", "-o", "json",
                           "--quiet", "--compact", "--skip-download"],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=clean_env())
    if proc.returncode not in (0, 1) or not proc.stdout.strip():  # 1: findings were reported
        raise RuntimeError(f"checkov failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout)
    reports = report if isinstance(report, list) else [report]
    return sorted({(c["check_id"], c["resource"], c["file_path"])
                   for r in reports for c in r.get("results", {}).get("failed_checks", [])})
