"""Test tools that live outside the project venv, built on first use under tests/.venvs/.

tests/.venvs/ is git-ignored. A tool directory is built once, under a file lock
(concurrent pytest processes build it once), and marked ready with the spec it was
built from: a later call with the same spec returns at once, a changed spec rebuilds.
Only the machine's configured package indexes (pip, npm) are used.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

VENVS = Path(__file__).resolve().parents[1] / ".venvs"
INSTALL_TIMEOUT_S = 600
_READY = ".portcullis-ready"


def ensure_built(name: str, spec: str, build: Callable[[Path], None]) -> Path:
    """tests/.venvs/<name>, built by `build(dir)` unless it is ready for `spec` already."""
    home = VENVS / name
    if _ready(home, spec):
        return home
    VENVS.mkdir(parents=True, exist_ok=True)
    with open(VENVS / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a racing process waits here, then finds it ready
        try:
            if not _ready(home, spec):
                started = time.monotonic()
                shutil.rmtree(home, ignore_errors=True)  # a half-built one from an interrupted run
                build(home)
                tmp = home / (_READY + ".tmp")
                tmp.write_text(spec + "\n")
                tmp.replace(home / _READY)  # the marker appears whole, and only once all is built
                print(f"built {home} ({spec}) in {time.monotonic() - started:.1f}s", file=sys.stderr)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return home


def _ready(home: Path, spec: str) -> bool:
    try:
        return (home / _READY).read_text().strip() == spec
    except OSError:
        return False


def clean_env() -> dict[str, str]:
    """This process's environment without the project venv's, for tools with their own."""
    return {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}


def check(cmd: list[str], cwd: Path | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, env=clean_env(), cwd=cwd)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
