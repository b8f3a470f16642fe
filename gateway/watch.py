"""Reload on file changes: the one watch loop behind policy and agents-file hot reload."""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Awaitable, Callable

import watchfiles

Relevant = Callable[[watchfiles.Change, str], bool]


async def reload_on_change(path: Path, relevant: Relevant, reload: Callable[[], Awaitable[object]],
                           stop: asyncio.Event, log: logging.Logger, what: str) -> None:
    """Await `reload()` after each batch of relevant changes below `path`, until `stop` is set.

    A reload that raises is logged and watching goes on; a watcher that fails (the
    directory vanished) is logged and ends, and whatever is loaded stays active.
    """
    try:
        async for _changes in watchfiles.awatch(path, watch_filter=relevant, stop_event=stop):
            try:
                await reload()
            except Exception:
                log.exception("%s reload failed", what)
    except Exception:
        log.exception("%s watcher for %s stopped", what, path)
