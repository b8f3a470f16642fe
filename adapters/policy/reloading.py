"""What both policy backends (regorus, opa) do the same way around a reload of the policy directory."""
from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Awaitable, Callable

import watchfiles

from gateway.watch import reload_on_change

log = logging.getLogger("portcullis.policy")

OnReload = Callable[[str | None, Exception | None], None]


def is_policy_change(_: watchfiles.Change, path: str) -> bool:
    """A policy or data file, or `..data` and its timestamped targets: a ConfigMap volume's swap."""
    return path.endswith((".rego", ".json")) or os.path.basename(path).startswith("..")


def notify(on_reload: OnReload | None, revision: str | None, exc: Exception | None) -> None:
    """Tell the listener (metrics) about a reload; a faulty listener must not stop reloads."""
    if on_reload is None:
        return
    try:
        on_reload(revision, exc)
    except Exception:
        log.exception("policy on_reload callback failed")


async def watch_policies(policy_dir: Path, reload: Callable[[], Awaitable[object]], stop: asyncio.Event) -> None:
    await reload_on_change(policy_dir, is_policy_change, reload, stop, log, "policy")
