"""A progress bar for the long passes of `prepare` (rich, on stderr), or nothing at all."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn


class Progress:
    """`stage(description, total)` starts a new bar (total None: a spinner), `advance(n)` moves it."""

    def __init__(self, enabled: bool):
        self._rich = None
        if enabled:
            self._rich = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), console=Console(stderr=True), transient=True)
        self._task = None

    def __enter__(self) -> Progress:
        if self._rich is not None:
            self._rich.start()
        return self

    def __exit__(self, *exc) -> bool:
        if self._rich is not None:
            self._rich.stop()
        return False

    def stage(self, description: str, total: int | None) -> None:
        if self._rich is None:
            return
        if self._task is not None:
            self._rich.remove_task(self._task)
        self._task = self._rich.add_task(description, total=total)

    def advance(self, n: int) -> None:
        if self._rich is not None and self._task is not None:
            self._rich.advance(self._task, n)
