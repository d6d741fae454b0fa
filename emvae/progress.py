"""Progress of long loops: epochs with an ETA, the batches of an epoch, one-off loops.

On a terminal, Rich bars that redraw in place. Elsewhere (a cluster job's log, ``> log``),
plain lines: one per epoch with a timestamp, and a start and an end line for each one-off loop
(reading, encoding, preprocessing), never a redrawn frame. ``EMVAE_PROGRESS`` chooses:
``auto`` (the default: bars when the console is a terminal), ``live`` (bars always) or
``plain`` (lines always). Rich's own ``TTY_COMPATIBLE`` and ``FORCE_COLOR`` decide what counts
as a terminal.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

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
from typing_extensions import override

from emvae.errors import ConfigError

#: The environment variable that overrides the choice between bars and lines.
PROGRESS_ENV = "EMVAE_PROGRESS"
PROGRESS_MODES = ("auto", "live", "plain")
#: Within an epoch, plain lines report the images done at least this often (seconds).
REPORT_EVERY_S = 60.0

Advance = Callable[..., None]


class TrainingProgress:
    """The progress of a fit: no display at all (``--quiet``); :class:`LiveProgress` and
    :class:`PlainProgress` show it."""

    def start(self, first_epoch: int, total_epochs: int) -> None:
        """Epochs ``first_epoch + 1 .. total_epochs`` are about to run."""

    def epoch_start(self, epoch: int, n_steps: int, n_images: int = 0) -> None:
        """Epoch ``epoch`` begins; it takes ``n_steps`` optimiser steps over ``n_images``
        images (0: not said)."""

    def step(self, stats: str = "") -> None:
        """One step of the current epoch is done (``stats``: the running figures)."""

    def epoch_end(self, epoch: int, stats: str) -> None:
        """Epoch ``epoch`` is done; ``stats`` sums it up in one line."""

    def task(self, description: str, total: int) -> Advance:
        """A one-off loop of ``total`` items (e.g. encoding); returns a callable that advances
        it by ``n`` items (default 1)."""
        return lambda n=1: None

    def line(self, text: str) -> None:
        """A line of its own (a note, a warning), shown with the progress."""

    def close(self) -> None:
        """The display ends normally (not called after an error)."""


class TeeProgress(TrainingProgress):
    """Every call goes to each of ``targets`` in turn (the display and the run's log)."""

    def __init__(self, *targets: TrainingProgress) -> None:
        self._targets = targets

    @override
    def start(self, first_epoch: int, total_epochs: int) -> None:
        for t in self._targets:
            t.start(first_epoch, total_epochs)

    @override
    def epoch_start(self, epoch: int, n_steps: int, n_images: int = 0) -> None:
        for t in self._targets:
            t.epoch_start(epoch, n_steps, n_images)

    @override
    def step(self, stats: str = "") -> None:
        for t in self._targets:
            t.step(stats)

    @override
    def epoch_end(self, epoch: int, stats: str) -> None:
        for t in self._targets:
            t.epoch_end(epoch, stats)

    @override
    def task(self, description: str, total: int) -> Advance:
        advances = [t.task(description, total) for t in self._targets]

        def advance(n: int = 1) -> None:
            for a in advances:
                a(n)

        return advance

    @override
    def line(self, text: str) -> None:
        for t in self._targets:
            t.line(text)

    @override
    def close(self) -> None:
        for t in self._targets:
            t.close()


class LiveProgress(TrainingProgress):
    """Rich bars: the epochs (overall ETA) and the batches of the current epoch."""

    def __init__(self, progress: Progress) -> None:
        self._p = progress
        self._epochs: TaskID | None = None
        self._steps: TaskID | None = None

    @override
    def start(self, first_epoch: int, total_epochs: int) -> None:
        self._epochs = self._p.add_task(
            "epochs", total=total_epochs, completed=first_epoch, stats=""
        )

    @override
    def epoch_start(self, epoch: int, n_steps: int, n_images: int = 0) -> None:
        if self._steps is not None:
            self._p.remove_task(self._steps)
        self._steps = self._p.add_task(f"epoch {epoch}", total=n_steps, stats="")
        self._per_step = n_images / n_steps if n_steps and n_images else 0.0

    @override
    def step(self, stats: str = "") -> None:
        assert self._steps is not None, "epoch_start() comes first"
        task = self._p.tasks[self._p.task_ids.index(self._steps)]
        speed = task.speed  # steps/s, Rich's running estimate
        if speed and self._per_step:
            stats = f"{speed * self._per_step:.0f} images/s  {stats}".rstrip()
        self._p.update(self._steps, advance=1, stats=stats)

    @override
    def epoch_end(self, epoch: int, stats: str) -> None:
        assert self._epochs is not None, "start() comes first"
        line = f"epoch {epoch}: {stats}"
        self._p.update(self._epochs, advance=1, stats=line)
        self._p.console.print(line)

    @override
    def task(self, description: str, total: int) -> Advance:
        tid = self._p.add_task(description, total=total, stats="")
        return lambda n=1: self._p.update(tid, advance=n)

    @override
    def line(self, text: str) -> None:
        self._p.console.print(text, markup=False, highlight=False, emoji=False, soft_wrap=True)


@dataclass
class _Loop:
    """A one-off loop under way: what it is, its size, the items done, when it began."""

    description: str
    total: int
    done: int
    t0: float
    said: float = 0.0  # when its last progress line was printed


class PlainProgress(TrainingProgress):
    """Lines for a log file: ``2026-12-01 17:52:03  epoch 3/20  <stats>  (12.3 s, ETA
    0:03:05)`` per epoch; within a long epoch, at least every :data:`REPORT_EVERY_S` seconds,
    ``epoch 3/20: 4000/18000 images, 55 images/s, epoch ETA 0:04:15, run ETA 1:02:00``;
    ``<what>: N to do`` and ``<what>: N done in T s (R/s)`` around a one-off loop (and
    ``<what>: K/N, R/s, ETA 0:02:10`` within it as often). No carriage
    returns, no escape codes, no wrapping."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._clock = time.perf_counter
        self._total = 0
        self._first = 0
        self._t_start = 0.0
        self._t_epoch = 0.0
        self._loop: _Loop | None = None
        self._epoch = 0
        self._steps = (0, 0)  # (done, total) steps of the current epoch
        self._images = 0
        self._t_said = 0.0

    @override
    def line(self, text: str) -> None:
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        self._console.print(
            f"{stamp}  {text}", markup=False, highlight=False, emoji=False, soft_wrap=True
        )

    @override
    def start(self, first_epoch: int, total_epochs: int) -> None:
        self._end_loop()
        self._first, self._total = first_epoch, total_epochs
        self._t_start = self._t_epoch = self._clock()

    @override
    def epoch_start(self, epoch: int, n_steps: int, n_images: int = 0) -> None:
        self._end_loop()
        self._t_epoch = self._t_said = self._clock()
        self._epoch, self._steps, self._images = epoch, (0, n_steps), n_images

    @override
    def step(self, stats: str = "") -> None:
        done, total = self._steps[0] + 1, self._steps[1]
        self._steps = (done, total)
        now = self._clock()
        if now - self._t_said < REPORT_EVERY_S or done >= total or total <= 0:
            return
        self._t_said = now
        spent = now - self._t_epoch
        epoch_left = spent * (total - done) / done
        run_left = epoch_left + (spent + epoch_left) * (self._total - self._epoch)
        if self._images:
            images = round(self._images * done / total)
            what = f"{images}/{self._images} images, {images / spent:.0f} images/s"
        else:
            what = f"{done}/{total} steps, {done / spent:.2f} steps/s"
        self.line(
            f"epoch {self._epoch}/{self._total}: {what}, epoch ETA "
            f"{datetime.timedelta(seconds=round(epoch_left))}, run ETA "
            f"{datetime.timedelta(seconds=round(run_left))}"
        )

    @override
    def epoch_end(self, epoch: int, stats: str) -> None:
        now = self._clock()
        timing = f"{now - self._t_epoch:.1f} s"
        left = self._total - epoch
        if left > 0 and epoch > self._first:
            eta = (now - self._t_start) / (epoch - self._first) * left
            timing += f", ETA {datetime.timedelta(seconds=round(eta))}"
        self.line(f"epoch {epoch}/{self._total}  {stats}  ({timing})")

    @override
    def task(self, description: str, total: int) -> Advance:
        self._end_loop()
        t0 = self._clock()
        loop = self._loop = _Loop(description, total, 0, t0, t0)
        self.line(f"{description}: {total} to do")

        def advance(n: int = 1) -> None:
            loop.done += n
            if loop is not self._loop:
                return
            if loop.done >= loop.total:
                self._end_loop()
                return
            now = self._clock()
            if now - loop.said >= REPORT_EVERY_S and loop.done > 0:
                loop.said = now
                rate = loop.done / (now - loop.t0)
                left = datetime.timedelta(seconds=round((loop.total - loop.done) / rate))
                self.line(f"{description}: {loop.done}/{loop.total}, {rate:.0f}/s, ETA {left}")

        if total <= 0:
            self._end_loop()
        return advance

    def _end_loop(self) -> None:
        """The end line of the one-off loop under way, if any."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        dt = self._clock() - loop.t0
        if loop.done >= loop.total:
            rate = f" ({loop.done / dt:.0f}/s)" if dt > 0 and loop.done else ""
            self.line(f"{loop.description}: {loop.done} done in {dt:.1f} s{rate}")
        else:
            done = f"{loop.done}/{loop.total}"
            self.line(f"{loop.description}: stopped at {done} after {dt:.1f} s")

    @override
    def close(self) -> None:
        self._end_loop()


def progress_mode(console: Console) -> str:
    """The display for ``console``: "live" (Rich bars) or "plain" (lines); ``EMVAE_PROGRESS``
    decides, else whether ``console`` writes to a terminal."""
    mode = os.environ.get(PROGRESS_ENV, "").strip().lower() or "auto"
    if mode not in PROGRESS_MODES:
        raise ConfigError(f"{PROGRESS_ENV}={mode!r}: choose one of {', '.join(PROGRESS_MODES)}")
    return ("live" if console.is_terminal else "plain") if mode == "auto" else mode


@contextmanager
def training_progress(
    enabled: bool = True, console: Console | None = None
) -> Iterator[TrainingProgress]:
    """The progress display (on stderr unless ``console`` says otherwise); ``enabled=False``:
    none."""
    if not enabled:
        yield TrainingProgress()
        return
    console = console or Console(stderr=True, soft_wrap=True)
    if progress_mode(console) == "plain":
        plain = PlainProgress(console)
        yield plain
        plain.close()
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[stats]}"),
        console=console,
    )
    with progress:
        yield LiveProgress(progress)  # its close() has nothing to end: the block ends the bars
