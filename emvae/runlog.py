"""``run.log``: every line a fit prints, with its time, in the run directory.

What the progress display shows as bars or lines (reading, each epoch's ELBO and timing, the
encoding), the command that started the fit, the notes on its input and the warnings it ends
with, one timestamped line each (``2026-12-06 04:10:00  epoch 3/20  train ELBO ...``), as
:class:`emvae.progress.PlainProgress` writes them for a log. The file is only ever appended
to: ``fit --resume`` adds its lines after the first run's. It is recorded in the run folder's
manifest as a growing file (:func:`emvae.safety.record_outputs`), so that a fit refuses a
``run.log`` it did not write, and a log that an interrupted fit left longer than recorded is
still emvae's.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from rich.console import Console

from emvae.progress import PlainProgress
from emvae.safety import record_outputs

#: The log's name in a run directory.
LOG = "run.log"


class RunLog:
    """``folder/run.log`` opened for appending; :attr:`progress` writes the progress lines
    into it, :meth:`line` any other line. :meth:`close` records the file in the manifest."""

    def __init__(self, folder: str | os.PathLike[str], run_id: str = "") -> None:
        self.folder = Path(folder)
        self.run_id = run_id
        path = self.folder / LOG
        if path.is_symlink():  # the folder's checks refuse it first; never write through one
            raise OSError(f"{path}: is a link")
        self._file = open(path, "a", encoding="utf-8", buffering=1)
        console = Console(
            file=self._file, color_system=None, force_terminal=False, width=10_000, emoji=False
        )
        self.progress = PlainProgress(console)
        record_outputs(self.folder, [LOG], run_id, growing=True)

    def line(self, text: str) -> None:
        """One timestamped line (several for a text with line breaks)."""
        for part in str(text).splitlines() or [""]:
            self.progress.line(part)

    def close(self) -> None:
        """Close the file and record its content as emvae's."""
        if self._file.closed:
            return
        self._file.close()
        record_outputs(self.folder, [LOG], self.run_id, growing=True)


@contextlib.contextmanager
def run_log(
    folder: str | os.PathLike[str], run_id: str = "", enabled: bool = True
) -> Iterator[RunLog | None]:
    """The run's log for the block (None when not ``enabled``: not the main process). An
    exception that ends the block is logged as the line ``stopped: ...`` before it goes on."""
    if not enabled:
        yield None
        return
    log = RunLog(folder, run_id)
    try:
        yield log
        log.progress.close()
    except BaseException as e:
        log.progress.close()
        why = "interrupted" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
        log.line(f"stopped: {why}")
        raise
    finally:
        log.close()


def append_log(folder: str | os.PathLike[str], lines: Iterable[str], run_id: str = "") -> None:
    """Append ``lines`` (timestamped) to ``folder``'s run.log, e.g. what a command printed
    after :func:`emvae.train.fit` returned."""
    with run_log(folder, run_id) as log:
        assert log is not None
        for text in lines:
            log.line(text)
