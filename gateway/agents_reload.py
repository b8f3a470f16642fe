"""Hot reload of the agents file (`identity.hot_reload`): watch, validate, swap.

Like a policy reload: the edited file is read and validated off the event loop,
checked against what the settings name (`check`), and swapped into the shared
AgentDirectory in one assignment. A file that fails any step is rejected and the
directory keeps what it had. Every outcome is logged and reported to
`on_reload("ok" | "rejected")`. Requests already past identity keep the agent
they resolved; the next request sees the new file.
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Callable

import watchfiles

from gateway.directory import AgentDirectory
from gateway.agents_file import load_agents
from gateway.configbase import ConfigError
from gateway.watch import reload_on_change

log = logging.getLogger("portcullis.agents")

Check = Callable[[AgentDirectory], None]  # raises ConfigError for a directory that may not go live
OnReload = Callable[[str], None]


def _read(path: Path) -> AgentDirectory:
    return AgentDirectory.from_file(load_agents(path))


class AgentsReloader:
    def __init__(self, path: Path, directory: AgentDirectory, *, hot_reload: bool,
                 check: Check | None = None, on_reload: OnReload | None = None) -> None:
        self._path = Path(path)
        self._directory = directory
        self._hot_reload = hot_reload
        self._check = check
        self._on_reload = on_reload
        self._lock = asyncio.Lock()
        self._stop: asyncio.Event | None = None
        self._watcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._hot_reload and self._watcher is None:
            self._stop = asyncio.Event()
            self._watcher = asyncio.create_task(self._watch(self._stop), name="agents-watcher")
            await asyncio.sleep(0)  # let awatch register its watch before requests arrive

    async def reload(self) -> bool:
        """Read the file again; True when it went live, False when it was rejected."""
        async with self._lock:
            try:
                candidate = await asyncio.to_thread(_read, self._path)
                if self._check is not None:
                    self._check(candidate)
            except (ConfigError, OSError) as e:
                log.error("agents file %s rejected, keeping the previous one: %s", self._path, e)
                self._notify("rejected")
                return False
            self._directory.replace(candidate)
        log.info("agents file %s reloaded: %d agents", self._path, len(candidate))
        self._notify("ok")
        return True

    async def aclose(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            if self._stop is not None:
                self._stop.set()
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    def _notify(self, result: str) -> None:
        if self._on_reload is not None:
            self._on_reload(result)

    async def _watch(self, stop: asyncio.Event) -> None:
        # The directory, not the file: editors and `mv` replace the file (a new inode), and a
        # Kubernetes ConfigMap swaps its `..data` symlink while agents.yaml stays a link to it.
        name = self._path.name

        def relevant(_: watchfiles.Change, changed: str) -> bool:
            base = Path(changed).name
            return base == name or base.startswith("..")

        await reload_on_change(self._path.parent, relevant, self.reload, stop, log, "agents file")
