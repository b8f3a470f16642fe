"""The Helm chart (charts/portcullis), rendered offline by the real Helm v4 library.

    rendered = render(fleet_values(upstream.url))      # {template path: [parsed YAML docs]}
    cfg = gateway_config(rendered)                     # the gateway.yaml the ConfigMap holds
    argv, env = gateway_argv(rendered), gateway_env(rendered)
    path = write_local_config(cfg, tmp, port=0, policy_dir=..., agents_file=...)

`write_local_config` maps the container's paths (the same constants the Dockerfile test
checks) onto local ones, so the rendered config boots on 127.0.0.1 unchanged otherwise.
"""
from __future__ import annotations

import copy
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import helm_python as helm
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "portcullis"
RELEASE = "portcullis"
NAMESPACE = "portcullis"

# The container layout, shared by the chart's mounts and the Dockerfile.
CONFIG_PATH = "/etc/portcullis/gateway.yaml"
AGENTS_DIR = "/etc/portcullis/agents"
AGENTS_PATH = f"{AGENTS_DIR}/agents.yaml"
POLICIES_DIR = "/policies"
DATA_DIR = "/var/lib/portcullis"
PORT = 8080
ENTRYPOINT = ["portcullis", "serve", "--config", CONFIG_PATH]

# Environment variable -> Secret key, as values.yaml names them.
SECRET_ENV = {"PORTCULLIS_REDIS_URL": "redis-url", "PORTCULLIS_PG_DSN": "pg-dsn",
              "OPENAI_API_KEY": "openai-api-key", "ANTHROPIC_API_KEY": "anthropic-api-key"}


def render(values: dict[str, Any] | None = None, *, name: str = RELEASE,
           namespace: str = NAMESPACE) -> dict[str, list[dict[str, Any]]]:
    """Manifests by template path (NOTES.txt left out; see `notes`), empty templates dropped."""
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values or {}, name=name, namespace=namespace)
    rendered = {}
    for path, text in out.items():
        if path.endswith("NOTES.txt"):
            continue
        docs = [d for d in yaml.safe_load_all(text) if d]
        if docs:
            rendered[path] = docs
    return rendered


def notes(values: dict[str, Any] | None = None) -> str:
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE)
    return next(text for path, text in out.items() if path.endswith("NOTES.txt"))


def manifests(rendered: dict[str, list[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    for docs in rendered.values():
        yield from docs


def find(rendered: dict[str, list[dict[str, Any]]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [m for m in manifests(rendered)
             if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} manifests named {name or '(any)'}"
    return found[0]


def kinds(rendered: dict[str, list[dict[str, Any]]]) -> set[str]:
    return {m["kind"] for m in manifests(rendered)}


def gateway_config(rendered: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The gateway.yaml the chart's ConfigMap holds, parsed."""
    cm = find(rendered, "ConfigMap", f"{RELEASE}-config")
    return yaml.safe_load(cm["data"]["gateway.yaml"])


def pod_spec(rendered: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return find(rendered, "Deployment")["spec"]["template"]["spec"]


def container(rendered: dict[str, list[dict[str, Any]]], name: str = "gateway") -> dict[str, Any]:
    spec = pod_spec(rendered)
    every = spec["containers"] + spec.get("initContainers", [])
    found = [c for c in every if c["name"] == name]
    assert len(found) == 1, f"no container {name} in {[c['name'] for c in every]}"
    return found[0]


def gateway_argv(rendered: dict[str, list[dict[str, Any]]]) -> list[str]:
    c = container(rendered)
    return [*c.get("command", []), *c.get("args", [])]


def gateway_env(rendered: dict[str, list[dict[str, Any]]]) -> dict[str, tuple[str, str]]:
    """Environment variable -> (Secret name, key) of the gateway container (all come from Secrets)."""
    out = {}
    for e in container(rendered).get("env", []):
        ref = e["valueFrom"]["secretKeyRef"]
        out[e["name"]] = (ref["name"], ref["key"])
    return out


def mounts(rendered: dict[str, list[dict[str, Any]]], name: str = "gateway") -> dict[str, str]:
    """mountPath -> volume name of a container."""
    return {m["mountPath"]: m["name"] for m in container(rendered, name).get("volumeMounts", [])}


def agents_content(path: Path = REPO / "config" / "agents.yaml") -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def fleet_values(upstream_url: str = "http://127.0.0.1:9", **extra: Any) -> dict[str, Any]:
    """Chart values for a fleet whose upstreams are a local test upstream and whose agents are
    config/agents.yaml (the quickstart keys); everything else is the chart's defaults (Redis
    limits, PostgreSQL audit, fail closed). `extra` is merged into the top level."""
    values: dict[str, Any] = {
        "agents": {"content": agents_content()},
        "config": {
            "upstreams": {
                "openai": {"provider": "openai", "base_url": upstream_url, "api_key_env": "OPENAI_API_KEY"},
                "anthropic": {"provider": "anthropic", "base_url": upstream_url,
                              "api_key_env": "ANTHROPIC_API_KEY"},
            },
            "routes": [
                {"match": "gpt-*", "upstream": "openai", "models": ["gpt-4o-mini"]},
                {"match": "claude-*", "upstream": "anthropic", "models": ["claude-haiku-4-5"]},
            ],
        },
    }
    return _merge(values, extra)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def localize(cfg: dict[str, Any], data_dir: Path, *, policy_dir: Path, agents_file: Path,
             port: int = 0) -> dict[str, Any]:
    """The rendered config with the container's paths replaced by local ones: nothing else changes."""
    cfg = copy.deepcopy(cfg)
    assert cfg["identity"]["agents_file"] == AGENTS_PATH
    assert cfg["policy"]["dir"].startswith(POLICIES_DIR)
    cfg["server"]["host"] = "127.0.0.1"
    cfg["server"]["port"] = port
    cfg["identity"]["agents_file"] = str(agents_file)
    cfg["policy"]["dir"] = str(policy_dir)
    for section, key in (("audit", "path"), ("audit", "spool_path"), ("lifecycle", "path")):
        if key in cfg.get(section, {}):
            cfg[section][key] = str(data_dir / Path(cfg[section][key]).relative_to(DATA_DIR))
    cfg.setdefault("admin", {})["port"] = 0  # the admin listener's port, like server.port: free, local
    return cfg


def write_local_config(cfg: dict[str, Any], tmp: Path, *, policy_dir: Path, agents_file: Path,
                       port: int = 0, name: str = "gateway.yaml") -> Path:
    data = tmp / "var-lib-portcullis"
    data.mkdir(parents=True, exist_ok=True)
    path = tmp / name
    path.write_text(yaml.safe_dump(localize(cfg, data, policy_dir=policy_dir, agents_file=agents_file,
                                            port=port)))
    return path


def write_agents(rendered: dict[str, list[dict[str, Any]]], tmp: Path) -> Path:
    """The agents.yaml the chart's agents ConfigMap holds, written to `tmp`."""
    cm = find(rendered, "ConfigMap", f"{RELEASE}-agents")
    path = tmp / "agents.yaml"
    path.write_text(cm["data"]["agents.yaml"])
    return path


def configmap_volume(dst: Path, files: dict[str, str]) -> Path:
    """`files` (path -> text) laid out as the kubelet lays out a ConfigMap volume: the files in a
    hidden timestamped directory, `..data` linking to it, and each top-level entry a link
    through `..data`. Calling it again swaps the content atomically, as a ConfigMap update does."""
    dst.mkdir(parents=True, exist_ok=True)
    stamp = dst / time.strftime(f"..%Y_%m_%d_%H_%M_%S.{time.monotonic_ns() % 10**9:09d}")
    for rel, text in files.items():
        path = stamp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    data = dst / "..data"
    old = data.resolve() if data.is_symlink() else None
    tmp = dst / "..data_tmp"
    tmp.symlink_to(stamp.name)
    os.replace(tmp, data)  # the atomic swap
    for top in {rel.split("/")[0] for rel in files}:
        link = dst / top
        if not link.is_symlink():
            link.symlink_to(f"..data/{top}")
    if old is not None:
        shutil.rmtree(old)
    return dst


def volume_files(rendered: dict[str, list[dict[str, Any]]], volume: str) -> dict[str, str]:
    """path -> text of what a ConfigMap volume of the gateway's pod holds (items applied)."""
    source = next(v for v in pod_spec(rendered)["volumes"] if v["name"] == volume)["configMap"]
    cm = find(rendered, "ConfigMap", source["name"])
    items = source.get("items") or [{"key": k, "path": k} for k in cm["data"]]
    return {i["path"]: cm["data"][i["key"]] for i in items}


def git_sync_checkout(root: Path, files: dict[str, str]) -> Path:
    """`files` (repository path -> text) checked out as git-sync v4 does with `--root=root
    --link=current`: a new worktree under `.worktrees/`, then the `current` link swapped to it
    atomically and the previous worktree removed. Returns the link."""
    root.mkdir(parents=True, exist_ok=True)
    worktree = root / ".worktrees" / f"{time.time_ns():040x}"[-40:]  # stands in for the commit hash
    for rel, text in files.items():
        path = worktree / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    link = root / "current"
    old = link.resolve() if link.is_symlink() else None
    tmp = root / "tmp-link"
    tmp.symlink_to(worktree.relative_to(root))
    os.replace(tmp, link)
    if old is not None:
        shutil.rmtree(old)
    return link


def bundled_policies() -> dict[str, str]:
    """The chart's policies/ folder (what its ConfigMap holds), path -> text."""
    root = CHART / "policies"
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}
