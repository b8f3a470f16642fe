"""The replay's progress bar on stderr (rich), or nothing when stderr is not a terminal.

A pipe or a CI log gets no control sequences: the report on stdout is the only output
there. Updates are cheap calls the reader makes every few thousand rows.
"""
from __future__ import annotations

from typing import IO, Any, Self


class Quiet:
    """No progress at all (--quiet, or stderr is not a TTY)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def phase(self, description: str, total: int | None = None) -> None:
        return None

    def update(self, completed: int) -> None:
        return None


class Bar(Quiet):
    """rich's Progress, one task per phase (reading rows, evaluating inputs)."""

    def __init__(self, stream: IO[str]) -> None:
        from rich.console import Console  # imported only when a bar is shown
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                  MofNCompleteColumn(), TimeElapsedColumn(),
                                  console=Console(file=stream), transient=True)
        self._task: Any = None

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def phase(self, description: str, total: int | None = None) -> None:
        if self._task is not None:
            self._progress.update(self._task, visible=False)
        self._task = self._progress.add_task(description, total=total)

    def update(self, completed: int) -> None:
        if self._task is not None:
            self._progress.update(self._task, completed=completed)


def progress_for(stream: IO[str], quiet: bool) -> Quiet:
    return Bar(stream) if not quiet and stream.isatty() else Quiet()
