"""Run an mcp 1.x SDK client (tests/support/mcp1_client.py) from tests that live on mcp 2.x.

The 1.x SDK cannot share a virtualenv with 2.x, so it gets its own at
tests/.venvs/mcp1, created on first use with `python -m venv` and plain pip (the
machine's configured package index; no network beyond it). Creation takes a file
lock, so concurrent pytest processes build it once; once a ready-marker records
the installed requirement, later calls return at once.

    result = run_client(url, [{"op": "list_tools"}], headers={"Authorization": "Bearer k"})

`run_client` blocks: call it from a sync test (the servers run on the
LoopThread), or `await arun_client(...)` from an async one. The result shape is
documented in tests/support/mcp1_client.py and matches tests/support/mcp2.py's run_ops.
"""
from __future__ import annotations

import asyncio
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VENVS = HERE.parent / ".venvs"
VENV = VENVS / "mcp1"
CLIENT_SCRIPT = HERE / "mcp1_client.py"
REQUIREMENT = "mcp>=1.20,<2"
_READY = VENV / ".portcullis-ready"
INSTALL_TIMEOUT_S = 600


def venv_python() -> Path:
    return VENV / "bin" / "python"


def _ready() -> bool:
    try:
        return _READY.read_text().strip() == REQUIREMENT and venv_python().exists()
    except OSError:
        return False


def ensure_venv() -> Path:
    """The 1.x venv's python, creating the venv first if it is missing or stale."""
    if _ready():
        return venv_python()
    VENVS.mkdir(parents=True, exist_ok=True)
    with open(VENVS / "mcp1.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a racing process waits here, then finds it ready
        try:
            if not _ready():
                _create()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return venv_python()


def _create() -> None:
    started = time.monotonic()
    shutil.rmtree(VENV, ignore_errors=True)  # a half-built venv from an interrupted run
    _check([sys.executable, "-m", "venv", str(VENV)])
    _check([str(venv_python()), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", REQUIREMENT])
    tmp = _READY.with_suffix(".tmp")
    tmp.write_text(REQUIREMENT + "\n")
    tmp.replace(_READY)  # the marker appears whole, and only once everything is installed
    print(f"created {VENV} with {REQUIREMENT} in {time.monotonic() - started:.1f}s", file=sys.stderr)


def _check(cmd: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def run_client(url: str, ops: list[dict[str, Any]], headers: dict[str, str] | None = None,
               timeout: float = 30.0) -> dict[str, Any]:
    """Run the ops with the 1.x client against `url`; the client's JSON result.

    Raises RuntimeError only when the client process itself fails (bad spec, crash,
    no JSON); a refused connection or HTTP error is reported in the result's "fatal".
    """
    python = ensure_venv()
    spec = {"url": url, "headers": headers or {}, "ops": ops, "timeout": timeout}
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    proc = subprocess.run([str(python), str(CLIENT_SCRIPT)], input=json.dumps(spec), capture_output=True,
                          text=True, timeout=timeout * 2 + 30, env=env, cwd=VENVS)
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
