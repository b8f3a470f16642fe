"""Policy hot reload through the symlink swaps Kubernetes volumes make (tests/support/volumes.py).

A ConfigMap volume swaps its `..data` link; git-sync v4 swaps its `current` link to a new
worktree and deletes the old one. Each edit must reach the running gateway: a new revision in
/metrics and in the policy_revision of the next audit rows, for every swap, not only the first.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import chart
from tests.support.fleet import policy_files
from tests.support.harness import KEYS, REPO, Gateway
from tests.support.volumes import ConfigMapVolume, GitSyncRoot, edit_json, read_tree
from tests.support.waiting import eventually

DATA = "portcullis/config/data.json"


def revision(gw: Gateway) -> str:
    m = re.search(r'portcullis_policy_info\{revision="([0-9a-f]*)"\}', httpx.get(gw.url + "/metrics").text)
    assert m, "no portcullis_policy_info in /metrics"
    return m.group(1)


def row_revision(gw: Gateway) -> str:
    r = httpx.post(gw.url + "/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"},
                   headers={"authorization": f"Bearer {KEYS['observer']}"})
    assert r.status_code == 200, r.text
    return gw.audit_row(r.headers["x-request-id"])["policy_revision"]


def edits(base: dict[str, bytes], n: int, data: str = DATA) -> list[dict[str, bytes]]:
    """`n` successive policy sets, each with tier 0's request limit changed (a new revision)."""
    def limit(rpm: int) -> Any:
        return lambda d: d["tiers"]["0"]["obligations"].__setitem__("requests_per_minute", rpm)
    return [edit_json(base, data, limit(100 + i)) for i in range(n)]


def assert_each_swap_reloads(gw: Gateway, swaps: list[Any]) -> None:
    seen = [revision(gw)]
    assert row_revision(gw) == seen[0]
    for swap in swaps:
        swap()
        new = eventually(lambda: (r := revision(gw)) not in seen and r, "the swapped-in set's revision",
                         interval=0.1)
        assert row_revision(gw) == new  # the audit rows carry it too
        seen.append(new)
    assert len(set(seen)) == len(swaps) + 1


def git_sync_layout(sub_path: str) -> tuple[Path, str]:
    """From the chart rendered with git-sync: its root and link, and the gateway's policy.dir
    relative to that root (`current` or `current/<subPath>`)."""
    rendered = chart.render(chart.fleet_values(gitSync={"enabled": True, "repo": "https://git.example/p.git",
                                                        "subPath": sub_path}))
    env = {e["name"]: e.get("value") for e in chart.container(rendered, "git-sync")["env"]}
    root = Path(env["GITSYNC_ROOT"])
    assert root.as_posix() == chart.POLICIES_DIR and chart.mounts(rendered, "git-sync")[chart.POLICIES_DIR]
    policy_dir = Path(chart.gateway_config(rendered)["policy"]["dir"])
    return policy_dir.relative_to(root), env["GITSYNC_LINK"]


@pytest.mark.parametrize("subdir", ["", "policies"], ids=["repo-root", "repo-subdir"])
def test_git_sync_link_swaps_each_reach_the_gateway(make_gateway, tmp_path: Path, subdir: str):
    rel, link = git_sync_layout(subdir)
    base = {f"{subdir}/{k}" if subdir else k: v for k, v in read_tree(REPO / "policies_rego").items()}
    data = f"{subdir}/{DATA}" if subdir else DATA
    root = GitSyncRoot(tmp_path / "git", link)
    root.publish(base)
    gw = make_gateway(policy_dir=root.root / rel, policy__hot_reload=True)  # /policies/current[/subPath]
    assert_each_swap_reloads(gw, [lambda s=s: root.publish(s) for s in edits(base, 2, data)])
    assert len(list((root.root / ".worktrees").iterdir())) == 1  # old worktrees really were removed


def test_configmap_data_link_swaps_each_reach_the_gateway(make_gateway, tmp_path: Path):
    rendered = chart.render(chart.fleet_values())
    assert chart.gateway_config(rendered)["policy"]["dir"] == chart.POLICIES_DIR
    base = policy_files(rendered)  # the chart's policies ConfigMap, keys at their item paths
    volume = ConfigMapVolume(tmp_path / "policies")
    volume.write(base)  # nested paths: the top-level `portcullis` is a link through ..data
    assert (volume.mount / "portcullis").is_symlink()
    gw = make_gateway(policy_dir=volume.mount, policy__hot_reload=True)
    assert_each_swap_reloads(gw, [lambda s=s: volume.write(s) for s in edits(base, 2)])
