"""LiteLLM's proxy as a comparison target, in its own virtualenv under bench/.venvs/.

Pinned to 1.106.2. Why this exact version:
- litellm 1.107.0 was a compromised release; it is no longer served by the
  index (`pip index versions litellm` jumps from 1.107.0rc2 to 1.108.0, and
  `pip download litellm==1.107.0` finds nothing), and we stay below it so no
  resolver ever drifts near it;
- 1.106.x is what DESIGN.md's reference numbers were measured with;
- 1.106.3 to 1.106.10 require certifi>=2026.10.19, which the index here does
  not have, so 1.106.2 is the newest 1.106 release that installs;
- `--only-binary=litellm` installs the published wheel, never running a setup script.

It runs with one model on the fast upstream, no database, a master key, and
the bundled model cost map (LITELLM_LOCAL_MODEL_COST_MAP=True, no network fetch).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from bench import procs

VERSION = "1.106.2"
VENV = Path(__file__).resolve().parent / ".venvs" / "litellm"
MASTER_KEY = "sk-bench-litellm-master"


def _installed_version() -> str | None:
    py = VENV / "bin" / "python"
    if not py.exists():
        return None
    r = subprocess.run([str(py), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                       capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


def ensure_installed() -> Path:
    """The litellm executable, installing litellm[proxy]==VERSION first if needed (minutes)."""
    if _installed_version() != VERSION:
        print(f"installing litellm[proxy]=={VERSION} into {VENV} (once; takes a few minutes) ...",
              flush=True)
        if not (VENV / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        r = subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "--only-binary=litellm",
                            f"litellm[proxy]=={VERSION}"], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"installing litellm failed: {r.stderr.strip()[-800:]}")
    return VENV / "bin" / "litellm"


def start(workdir: Path, upstream_url: str, model: str) -> procs.Server:
    exe = ensure_installed()
    cfg = workdir / "litellm.yaml"
    cfg.write_text(yaml.safe_dump({
        "model_list": [{"model_name": model, "litellm_params": {
            "model": f"openai/{model}", "api_base": upstream_url + "/v1", "api_key": "sk-bench-upstream"}}],
        "litellm_settings": {"telemetry": False},
        "general_settings": {"master_key": MASTER_KEY},
    }))
    port = procs.free_port()
    env = {"LITELLM_MASTER_KEY": MASTER_KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "LITELLM_LOG": "ERROR"}
    server = procs.start("litellm", [str(exe), "--config", str(cfg), "--host", "127.0.0.1",
                                     "--port", str(port), "--num_workers", "1"],
                         port, workdir, cpus=procs.PROXY_CPU, env=env, cwd=workdir)
    procs.wait_ready(server, timeout_s=180, path="/health/liveliness")
    return server
