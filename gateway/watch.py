"""Reload on file changes: the one watch loop behind policy and agents-file hot reload."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Awaitable, Callable

import watchfiles

Relevant = Callable[[watchfiles.Change, str], bool]

# inotify watches the directory a path resolved to when the watch began. When a symlink on
# the path is swapped (git-sync v4's `current` link to a new worktree), the old directory
# gets no events, or only its deletion, and every later commit would go unseen. So the
# resolved path is re-checked this often (a few lstat calls), and a swap restarts the watch.
LINK_CHECK_S = 1.0


async def reload_on_change(path: Path, relevant: Relevant, reload: Callable[[], Awaitable[object]],
                           stop: asyncio.Event, log: logging.Logger, what: str,
                           link_check_s: float = LINK_CHECK_S) -> None:
    """Await `reload()` after each batch of relevant changes below `path`, and after each swap
    of a symlink on `path` to a new target, until `stop` is set.

    A reload that raises is logged and watching goes on; a watcher that fails (the
    directory vanished) is logged, and watching resumes only if a link swap brings a new
    directory. Whatever is loaded stays active.
    """
    while not stop.is_set():
        target = os.path.realpath(path)
        swapped = asyncio.Event()  # set by a swap, or by `stop`
        checker = asyncio.create_task(_until_swapped(path, target, stop, swapped, link_check_s))
        try:
            try:
                async for _changes in watchfiles.awatch(path, watch_filter=relevant, stop_event=swapped):
                    await _reload(reload, log, what)
            except Exception:
                log.exception("%s watcher for %s stopped", what, path)
                await swapped.wait()
        finally:
            checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await checker
        if not stop.is_set():
            log.info("%s: %s now resolves to %s; watching it", what, path, os.path.realpath(path))
            await _reload(reload, log, what)


async def _reload(reload: Callable[[], Awaitable[object]], log: logging.Logger, what: str) -> None:
    try:
        await reload()
    except Exception:
        log.exception("%s reload failed", what)


async def _until_swapped(path: Path, target: str, stop: asyncio.Event, swapped: asyncio.Event,
                         every: float) -> None:
    try:
        while os.path.realpath(path) == target:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
                return
    finally:
        swapped.set()
