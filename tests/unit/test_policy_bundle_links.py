"""Reading a policy directory through symlinks, as Kubernetes volumes present it."""
from __future__ import annotations

import os
from pathlib import Path

from adapters.policy.bundle import collect
from tests.support.harness import REPO
from tests.support.volumes import ConfigMapVolume, read_tree


def test_a_configmap_volume_reads_as_the_same_set_with_the_same_revision(tmp_path: Path) -> None:
    volume = ConfigMapVolume(tmp_path / "policies")
    volume.write(read_tree(REPO / "policies_rego"))
    assert (volume.mount / "portcullis").is_symlink()  # portcullis -> ..data/portcullis
    mounted, plain = collect(volume.mount), collect(REPO / "policies_rego")
    assert [name for name, _ in mounted.modules] == [name for name, _ in plain.modules]
    assert not any(name.startswith(".") for name, _ in mounted.modules)  # ..data internals skipped
    assert mounted.revision == plain.revision  # every replica (and an OPA sidecar) agrees


def test_a_link_cycle_is_read_once(tmp_path: Path) -> None:
    policies = tmp_path / "p"
    policies.mkdir()
    (policies / "a.rego").write_text("package a\n\nx := 1\n")
    os.symlink("..", policies / "up")  # p/up -> tmp_path, which holds p again
    os.symlink(".", policies / "self")
    assert [name for name, _ in collect(policies).modules] == ["a.rego"]
