"""Run an mcp 1.x SDK client (tests/support/mcp1_client.py) from tests that live on mcp 2.x.

The 1.x SDK cannot share a virtualenv with 2.x, so it gets its own at
tests/.venvs/mcp1, created on first use with `python -m venv` and plain pip (the
machine's configured package index; no network beyond it), once (tool_envs.py).

    result = run_client(url, [{"op": "list_tools"}], headers={"Authorization": "Bearer k"})

`run_client` blocks: call it from a sync test (the servers run on the
LoopThread), or `await arun_client(...)` from an async one. The result shape is
documented in tests/support/mcp1_client.py and matches tests/support/mcp2.py's run_ops.
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.tool_envs import VENVS, check, clean_env, ensure_built

HERE = Path(__file__).resolve().parent
VENV = VENVS / "mcp1"
CLIENT_SCRIPT = HERE / "mcp1_client.py"
REQUIREMENT = "mcp>=1.20,<2"


def venv_python() -> Path:
    return VENV / "bin" / "python"


def ensure_venv() -> Path:
    """The 1.x venv's python, creating the venv first if it is missing or stale."""
    return ensure_built("mcp1", REQUIREMENT, _create) / "bin" / "python"


def _create(home: Path) -> None:
    check([sys.executable, "-m", "venv", str(home)])
    check([str(home / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           REQUIREMENT])


def run_client(url: str, ops: list[dict[str, Any]], headers: dict[str, str] | None = None,
               timeout: float = 30.0) -> dict[str, Any]:
    """Run the ops with the 1.x client against `url`; the client's JSON result.

    Raises RuntimeError only when the client process itself fails (bad spec, crash,
    no JSON); a refused connection or HTTP error is reported in the result's "fatal".
    """
    python = ensure_venv()
    spec = {"url": url, "headers": headers or {}, "ops": ops, "timeout": timeout}
    proc = subprocess.run([str(python), str(CLIENT_SCRIPT)], input=json.dumps(spec), capture_output=True,
                          text=True, timeout=timeout * 2 + 30, env=clean_env(), cwd=VENVS)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"mcp 1.x client failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError as e:
        raise RuntimeError(f"mcp 1.x client printed no JSON result:\n{proc.stdout}\n{proc.stderr}") from e


async def arun_client(url: str, ops: list[dict[str, Any]], headers: dict[str, str] | None = None,
                      timeout: float = 30.0) -> dict[str, Any]:
    return await asyncio.to_thread(run_client, url, ops, headers, timeout)
