"""The image's entrypoint, run from the installed package as the container would run it.

No image can be built here, so the test takes what the container would get from the chart:
the rendered gateway.yaml (container paths mapped to local ones, nothing else changed), the
agents file and the policies laid out as the kubelet mounts the chart's ConfigMaps (or as
git-sync checks a repository out), the Deployment's command and its Secret-backed
environment (real Redis and PostgreSQL). It runs that argv as a subprocess, waits for
/healthz, runs the Dockerfile's HEALTHCHECK command against it, sends governed requests,
updates the policies the way a ConfigMap update or a new commit does, and stops it with
SIGTERM as Kubernetes would.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
import pytest

from tests.support import pg
from tests.support.chart import (CONFIG_PATH, POLICIES_DIR, bundled_policies, configmap_volume, fleet_values,
                                 gateway_argv, gateway_config, gateway_env, git_sync_checkout, render,
                                 volume_files, write_local_config)
from tests.support.harness import KEYS
from tests.support.services import pg_dsn, redis_url, unique
from tests.support.waiting import eventually
from tests.support.redis_process import delete_prefix
from tests.unit.test_dockerfile import exec_form, stages, values

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def revision(base: str) -> str:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    (info,) = [s for f in text_string_to_metric_families(text) for s in f.samples if s.name == "portcullis_policy_info"]
    return info.labels["revision"]


def snapshot(root: Path, *writable: Path) -> dict[str, float]:
    """Every path under root with its mtime, except under the writable directories."""
    return {str(p): p.stat().st_mtime for p in root.rglob("*")
            if not any(w == p or w in p.parents for w in writable)}


GIT_SYNC = {"gitSync": {"enabled": True, "repo": "https://github.com/example/policies.git", "subPath": "rego"}}


class ConfigMapPolicies:
    """The chart's policies ConfigMap as the kubelet mounts it; an update swaps `..data`."""

    def __init__(self, rendered: dict, root: Path) -> None:
        self.files = volume_files(rendered, "policies")
        self.dir = configmap_volume(root, self.files)

    def update(self, files: dict[str, str]) -> None:
        configmap_volume(self.dir, files)


class GitSyncPolicies:
    """git-sync's root: the repository (the chart's policies under subPath) checked out behind
    the `current` link; a new commit is a new worktree and a swapped link."""

    def __init__(self, rendered: dict, root: Path) -> None:
        self.root, self.files = root, bundled_policies()
        self.sub = gateway_config(rendered)["policy"]["dir"].removeprefix(POLICIES_DIR + "/")
        assert self.sub == "current/rego"
        self.update(self.files)
        self.dir = root / self.sub

    def update(self, files: dict[str, str]) -> None:
        git_sync_checkout(self.root, {f"rego/{k}": v for k, v in files.items()})


@pytest.fixture(params=["configmap", "git-sync"])
def fleet(request, tmp_path, upstream, loop_thread):
    """Rendered fleet values with a key prefix and audit table of this run; cleaned up after."""
    url, dsn = redis_url(), pg_dsn()
    prefix, table = unique("portcullis:test:entry:"), unique("audit_entry_")
    rendered = render(fleet_values(upstream.url, config={"limits": {"key_prefix": prefix},
                                                         "audit": {"table": table}},
                                   **(GIT_SYNC if request.param == "git-sync" else {})))
    layout = (GitSyncPolicies if request.param == "git-sync" else ConfigMapPolicies)(rendered, tmp_path / "policies")
    yield rendered, layout, {"PORTCULLIS_REDIS_URL": url, "PORTCULLIS_PG_DSN": dsn}, table
    loop_thread.run(pg.drop_table(dsn, table))
    delete_prefix(url, prefix)


def test_entrypoint_serves_the_rendered_config_and_stops_on_sigterm(fleet, tmp_path, loop_thread) -> None:
    rendered, policies, secrets, table = fleet
    port = free_port()
    # The agents volume laid out as the kubelet lays out the chart's ConfigMap; the policies
    # as the ConfigMap or git-sync lays them out (the fixture).
    agents = configmap_volume(tmp_path / "agents", volume_files(rendered, "agents"))
    config = write_local_config(gateway_config(rendered), tmp_path, port=port,
                                agents_file=agents / "agents.yaml", policy_dir=policies.dir)
    data_dir, tmp_dir = tmp_path / "var-lib-portcullis", tmp_path / "tmp"  # the image's two volumes
    tmp_dir.mkdir()

    argv = gateway_argv(rendered)
    assert argv[0] == "portcullis" and argv[-1] == CONFIG_PATH
    argv = [str(VENV_BIN / argv[0]), *argv[1:-1], str(config)]
    # The environment the Deployment gives it: each variable from its Secret key.
    env_names = set(gateway_env(rendered))
    assert {"PORTCULLIS_REDIS_URL", "PORTCULLIS_PG_DSN"} <= env_names
    provider = {"OPENAI_API_KEY": "sk-provider-openai-secret", "ANTHROPIC_API_KEY": "sk-ant-provider-secret"}
    env = {"PATH": os.environ["PATH"], "HOME": str(data_dir), "TMPDIR": str(tmp_dir),
           **{k: v for k, v in {**secrets, **provider}.items() if k in env_names}}
    log = tmp_dir / "gateway.log"  # a file, not a pipe nobody drains while it runs

    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=data_dir)
    try:
        base = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            assert proc.poll() is None, f"the gateway exited ({proc.returncode}): {log.read_text()}"
            try:
                return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        eventually(healthy, "the entrypoint's gateway to answer /healthz", timeout=60)
        eventually(lambda: httpx.get(f"{base}/readyz", timeout=5).status_code == 200,
                   "the gateway to be ready (Redis, PostgreSQL, policies)", timeout=30)

        # The Dockerfile's HEALTHCHECK, as written, against this port.
        (hc,) = values(stages()[-1], "HEALTHCHECK")
        hc_argv = exec_form(hc.partition("CMD")[2].strip())
        probe = [sys.executable, *hc_argv[1:-1], hc_argv[-1].replace(":8080/", f":{port}/")]
        assert subprocess.run(probe, timeout=10).returncode == 0

        r = httpx.post(f"{base}/v1/chat/completions", timeout=10,
                       headers={"Authorization": f"Bearer {KEYS['builder']}"},
                       json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200, r.text
        rid = r.headers["x-request-id"]
        assert httpx.post(f"{base}/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": []},
                          timeout=10).status_code == 401  # no anonymous agent by default

        # A ConfigMap update (an atomic ..data swap) or a new commit (git-sync's link swap) is
        # picked up without a restart, which is why the pod template's checksums leave the
        # policies out.
        first = revision(base)
        data_json = "portcullis/config/data.json"
        edited = json.loads(policies.files[data_json])
        edited["cache_ttl_s"] += 1
        policies.update({**policies.files, data_json: json.dumps(edited)})
        eventually(lambda: revision(base) != first, "the policy revision to change after the update", timeout=30)
        before = snapshot(tmp_path, data_dir, tmp_dir)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    output = log.read_text(errors="replace")
    assert proc.returncode == 0, output
    # Flushed on SIGTERM: the request's row is in PostgreSQL.
    rows = loop_thread.run(pg.fetch(secrets["PORTCULLIS_PG_DSN"],
                                    f"SELECT agent_id, status FROM {table} WHERE request_id = $1", rid))
    assert rows == [{"agent_id": "builder", "status": 200}]
    # It wrote nothing outside its data directory (read-only root friendly).
    assert snapshot(tmp_path, data_dir, tmp_dir) == before
    assert any(data_dir.iterdir()), "nothing under the data directory (the heads file, at least)"
    # No secret reached its output.
    for secret in provider.values():
        assert secret not in output
