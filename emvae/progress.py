"""Rich progress display for long loops (epochs with ETA, batches within an epoch)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class TrainingProgress:
    """Two bars: epochs (overall ETA) and batches of the current epoch."""

    def __init__(self, progress: Progress | None) -> None:
        self._p = progress
        self._epochs: TaskID | None = None
        self._steps: TaskID | None = None

    def start(self, first_epoch: int, total_epochs: int) -> None:
        if self._p is not None:
            self._epochs = self._p.add_task(
                "epochs", total=total_epochs, completed=first_epoch, stats=""
            )

    def epoch_start(self, epoch: int, n_steps: int) -> None:
        if self._p is None:
            return
        if self._steps is not None:
            self._p.remove_task(self._steps)
        self._steps = self._p.add_task(f"epoch {epoch}", total=n_steps, stats="")

    def step(self, stats: str = "") -> None:
        if self._p is not None:
            assert self._steps is not None, "epoch_start() comes first"
            self._p.update(self._steps, advance=1, stats=stats)

    def epoch_end(self, line: str) -> None:
        if self._p is None:
            return
        assert self._epochs is not None, "start() comes first"
        self._p.update(self._epochs, advance=1, stats=line)
        self._p.console.print(line)

    def task(self, description: str, total: int):
        """A bar for a one-off loop (e.g. encoding); returns a callable advancing it."""
        if self._p is None:
            return lambda n=1: None
        tid = self._p.add_task(description, total=total, stats="")
        return lambda n=1: self._p.update(tid, advance=n)


@contextmanager
def training_progress(
    enabled: bool = True, console: Console | None = None
) -> Iterator[TrainingProgress]:
    if not enabled:
        yield TrainingProgress(None)
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[stats]}"),
        console=console or Console(stderr=True),
    )
    with progress:
        yield TrainingProgress(progress)
