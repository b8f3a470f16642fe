"""The two ways a pod's policy volume changes under a running gateway, reproduced on disk.

- `ConfigMapVolume`: kubelet's AtomicWriter. Files live in a hidden timestamped directory,
  `..data` links to it, and each top-level name is a link through `..data`
  (`portcullis -> ..data/portcullis`). An update writes a new timestamped directory,
  swaps `..data` by renaming a temporary link over it, then removes the old directory.
- `GitSyncRoot`: git-sync v4 (`--root=R --link=current`). Each commit is checked out in
  `R/.worktrees/<sha>`, `R/current` is swapped to it by renaming `R/tmp-link` over it, and
  the old worktree is removed.

Both swaps are one atomic `rename(2)` of a symlink, as the real ones are.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Mapping

Files = Mapping[str, bytes]  # relative posix path -> content


def read_tree(src: Path) -> dict[str, bytes]:
    return {p.relative_to(src).as_posix(): p.read_bytes() for p in sorted(src.rglob("*")) if p.is_file()}


def edit_json(files: Files, name: str, change: Callable[[Any], None]) -> dict[str, bytes]:
    """A copy of `files` with the JSON document `name` changed in place by `change`."""
    doc = json.loads(files[name])
    change(doc)
    return {**files, name: json.dumps(doc, indent=2).encode()}


def _write(root: Path, files: Files) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


class ConfigMapVolume:
    def __init__(self, mount: Path) -> None:
        self.mount = mount
        mount.mkdir(parents=True, exist_ok=True)

    def write(self, files: Files) -> None:
        data_link = self.mount / "..data"
        old = os.readlink(data_link) if data_link.is_symlink() else None
        stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime()) + f"{time.monotonic_ns() % 10**9:09d}"
        _write(self.mount / stamp, files)
        tmp = self.mount / "..data_tmp"
        os.symlink(stamp, tmp)
        os.replace(tmp, data_link)
        tops = {name.split("/", 1)[0] for name in files}
        for top in tops:
            link = self.mount / top
            if not link.is_symlink():
                os.symlink(f"..data/{top}", link)
        if old is not None:
            shutil.rmtree(self.mount / old)
        for entry in self.mount.iterdir():
            if not entry.name.startswith("..") and entry.name not in tops:
                entry.unlink()


class GitSyncRoot:
    def __init__(self, root: Path, link: str = "current") -> None:
        self.root = root
        self.link = root / link
        (root / ".worktrees").mkdir(parents=True, exist_ok=True)

    def publish(self, files: Files) -> str:
        """Check out a 'commit' holding `files` and swap the link to it; returns its sha."""
        digest = hashlib.sha1()
        for name in sorted(files):
            digest.update(name.encode() + b"\0" + files[name])
        sha = digest.hexdigest()
        worktree = self.root / ".worktrees" / sha
        _write(worktree, files)
        (worktree / ".git").write_text(f"gitdir: {self.root}/.git/worktrees/{sha}\n")
        old = os.readlink(self.link) if self.link.is_symlink() else None
        tmp = self.root / "tmp-link"
        os.symlink(f".worktrees/{sha}", tmp)
        os.replace(tmp, self.link)
        if old is not None and old != f".worktrees/{sha}":
            shutil.rmtree(self.root / old)
        return sha
