"""What emvae never does to a user's files: overwrite an input, leave a half-written output
that looks complete, or follow a link planted where it writes a temporary file.

- :func:`atomic_output` writes every output through a temporary file created exclusively
  (``mkstemp``: never an existing path or a symlink) in the target's folder and renamed over
  the target only once complete; on any failure the temporary file is removed.
- :func:`refuse_inputs_as_outputs` stops a command before any work when one of its outputs is
  one of its inputs (``--force`` never overrides that).
- :func:`check_writable` and :func:`check_free_space` fail before the work, not after it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from emvae.errors import OutputError, OutputExistsError

__all__ = [
    "atomic_output",
    "check_free_space",
    "check_names",
    "check_writable",
    "input_files",
    "refuse_inputs_as_outputs",
]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path``; rename it to ``path`` when the block ends
    without an exception, remove it otherwise. The temporary file is created exclusively with
    the permissions a plain ``open`` would give (mode ``0666 & ~umask``)."""
    p = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    except OSError as e:
        raise OutputError(f"{p.parent}: cannot write here ({e.strerror or e})") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, p)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def check_writable(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and prove a file can be written there; one line if not."""
    d = Path(folder)
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".emvae-write-test.", dir=d)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise OutputError(f"{d}: cannot write here ({e.strerror or e})") from None
    return d


def check_free_space(folder: str | os.PathLike, need_bytes: int) -> None:
    """Refuse to start when ``folder``'s file system has less than ``need_bytes`` free."""
    d = Path(folder)
    while not d.exists() and d != d.parent:
        d = d.parent
    free = shutil.disk_usage(d).free
    if free < need_bytes:
        raise OutputError(
            f"{folder}: only {free / 2**20:.1f} MiB free; this needs about "
            f"{need_bytes / 2**20:.1f} MiB"
        )


def _spec_file(spec: str) -> Path:
    """The file of an input spec: ``file.h5:/dataset`` and ``file.fits[EXT]`` name a file."""
    s = str(spec)
    if s.endswith("]") and "[" in s:
        s = s[: s.rindex("[")]
    head, sep, tail = s.rpartition(":")
    if sep and tail.startswith("/") and head:
        s = head
    return Path(s)


def input_files(specs: Iterable[str], names: Iterable[str] = ()) -> list[Path]:
    """Every file a command reads: the inputs as named, and the stacks that ``k@path`` image
    names point at (resolved beside each input and from the working directory)."""
    named = [_spec_file(s) for s in specs]
    files = list(named)
    for s in {n.partition("@")[2] for n in names if "@" in n}:
        files.append(Path(s))
        files.extend(f.parent / s for f in named)
    return files


def _identity(p: Path) -> tuple[int, int] | None:
    try:
        st = p.stat()  # follows links: a link to an input is that input
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def refuse_inputs_as_outputs(outputs: Iterable[str | os.PathLike], inputs: Iterable[Path]) -> None:
    """Raise when an output path is (or links to) one of the input files (one ``stat`` per
    input, so a STAR file naming thousands of stacks costs milliseconds)."""
    ins = [Path(i) for i in inputs]
    names = {os.path.abspath(i) for i in ins}
    ids = {k for k in map(_identity, ins) if k is not None}
    for out in outputs:
        o = Path(out)
        if os.path.abspath(o) in names or _identity(o) in ids:
            raise OutputExistsError(
                f"{o}: is an input of this command; emvae never writes over its inputs "
                f"(choose another output)"
            )


def check_names(names: Iterable[str], source: str) -> None:
    """Image names go into CSV, HDF5 and STAR files: refuse, before any work, file names that
    are not UTF-8 or hold a line break or tab (they would end a run in a crash, or break the
    STAR file RELION reads)."""
    files = {str(n).partition("@")[2] or str(n) for n in names}
    for f in sorted(files):
        try:
            f.encode("utf-8")
        except UnicodeEncodeError:
            shown = f.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            raise OutputError(
                f"{shown}: the file name is not valid UTF-8 and cannot be written to the "
                f"tables or STAR file; rename it ({source})"
            ) from None
        if any(c in f for c in "\n\r\t"):
            raise OutputError(
                f"{f!r}: the file name holds a line break or tab, which a STAR file cannot "
                f"hold; rename it ({source})"
            )
