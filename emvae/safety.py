"""What emvae never does to a user's files: overwrite an input, leave a half-written output
that looks complete, or follow a link planted where it writes a temporary file.

- :func:`atomic_output` writes every output through a temporary file created exclusively
  (``mkstemp``: never an existing path or a symlink) in the target's folder and renamed over
  the target only once complete; on any failure the temporary file is removed.
- :func:`refuse_inputs_as_outputs` stops a command before any work when one of its outputs is
  one of its inputs (:func:`emvae.io.input_files`; ``--force`` never overrides that).
- :func:`check_writable` and :func:`check_free_space` fail before the work, not after it.
- :func:`record_outputs` lists in each output folder's :data:`MANIFEST` the files emvae wrote
  there (with their run id and content digest); :func:`claim_outputs` refuses, by name and
  with or without ``--force``, to write over any other file: only emvae's own are replaced.
- :func:`run_lock` holds an exclusive lock on a run folder for a whole fit.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from emvae.errors import ConfigError, OutputError, OutputExistsError

__all__ = [
    "MANIFEST",
    "atomic_output",
    "check_free_space",
    "check_memory",
    "check_names",
    "check_writable",
    "claim_outputs",
    "foreign_outputs",
    "record_outputs",
    "refuse_existing",
    "refuse_inputs_as_outputs",
    "run_lock",
    "use_force",
]

#: In each folder emvae writes: the files it wrote there (relative name -> run id, sha256).
MANIFEST = ".emvae-outputs.json"
#: Checkpoint names emvae gives (a checkpoints folder holding only these is emvae's).
CHECKPOINT_NAME = re.compile(r"(last|epoch_\d+)\.pt")
#: The lock file a fit holds in its run folder (:func:`run_lock`).
LOCK = ".emvae-lock"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
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


def check_writable(folder: str | os.PathLike[str]) -> Path:
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


def check_free_space(folder: str | os.PathLike[str], need_bytes: int) -> None:
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


def available_memory() -> int:
    """Bytes of memory available to a new allocation (``MemAvailable``; all of it where
    /proc/meminfo is missing)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(need_bytes: int, what: str) -> None:
    """Refuse, in one line, work that would allocate more than the memory available."""
    free = available_memory()
    if need_bytes > free:
        raise ConfigError(
            f"{what} needs about {need_bytes / 2**30:.1f} GiB of memory; "
            f"{free / 2**30:.1f} GiB are available: ask for less"
        )


def _identity(p: Path) -> tuple[int, int] | None:
    try:
        st = p.stat()  # follows links: a link to an input is that input
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def refuse_inputs_as_outputs(
    outputs: Iterable[str | os.PathLike[str]], inputs: Iterable[str | os.PathLike[str]]
) -> None:
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
    from emvae.io.stack import split_image_name  # (emvae.io imports this module)

    files = {s[1] if (s := split_image_name(n)) else str(n) for n in names}
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


# ----------------------------------------------------------------------- which files are ours


def _digest(path: Path, size: int | None = None) -> str:
    """sha256 of ``path``'s content (of its first ``size`` bytes when given)."""
    h = hashlib.sha256()
    left = -1 if size is None else size
    with open(path, "rb") as f:
        while left:
            block = f.read(1 << 20 if left < 0 else min(left, 1 << 20))
            if not block:
                break
            h.update(block)
            left = left - len(block) if left > 0 else left
    return h.hexdigest()


def _manifest(folder: Path) -> dict[str, dict[str, str]]:
    """``folder``'s manifest ({} when there is none or it is unreadable: nothing is ours)."""
    try:
        files = json.loads((folder / MANIFEST).read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return files if isinstance(files, dict) else {}


def record_outputs(
    folder: str | os.PathLike[str], names: Iterable[str], run_id: str = "", *, growing: bool = False
) -> None:
    """Record the files ``names`` (relative to ``folder``) as emvae's: their content digest and
    ``run_id`` go into ``folder``'s :data:`MANIFEST` (written atomically). ``growing``: files
    emvae only ever appends to (``run.log``): their size is recorded too, and such a file
    stays emvae's while it begins with the content recorded (lines appended after the last
    record, by a fit that was then interrupted, do not make it foreign)."""
    d = Path(folder)
    files = _manifest(d)
    for name in names:
        if (d / name).is_file():
            entry = {"run_id": run_id, "sha256": _digest(d / name)}
            if growing:
                entry["size"] = str((d / name).stat().st_size)
            files[str(name)] = entry
    with atomic_output(d / MANIFEST) as tmp:
        tmp.write_text(json.dumps({"files": files}, indent=1, sort_keys=True) + "\n")


def _foreign(folder: Path, name: str, files: dict[str, dict[str, str]]) -> list[str]:
    """``name`` (or, for a folder, the files under it) unless emvae wrote it: in the folder's
    manifest with the same content; for a folder, each file in the manifest of the folder
    that holds it (``analyze/epoch_0010/`` has its own), or, in checkpoints, of the
    checkpoint names emvae gives."""
    p = folder / name
    if p.is_dir() and not p.is_symlink():  # each folder inside has its own manifest
        inner = _manifest(p)
        found = []
        for f in sorted(p.iterdir()):
            rel = f.name
            if rel == MANIFEST or (name == "checkpoints" and CHECKPOINT_NAME.fullmatch(rel)):
                continue
            found += [f"{name}/{x}" for x in _foreign(p, rel, inner)]
        return found
    entry = files.get(name)
    try:
        size = int(entry["size"]) if isinstance(entry, dict) and "size" in entry else None
        ours = (
            not p.is_symlink()
            and isinstance(entry, dict)
            and (size is None or p.stat().st_size >= size)
            and entry["sha256"] == _digest(p, size)
        )
    except (OSError, KeyError, ValueError):
        ours = False
    return [] if ours else [name]


def foreign_outputs(folder: str | os.PathLike[str], names: Iterable[str]) -> list[str]:
    """Those of ``names`` (or of the files under them) that exist in ``folder`` and that
    emvae did not write (not in its manifest with the same content: the user's own, or
    changed since)."""
    d = Path(folder)
    files = _manifest(d)
    present = [n for n in names if (d / n).exists() or (d / n).is_symlink()]
    return [x for n in present for x in _foreign(d, n, files)]


def use_force(what: str, to: str = "overwrite") -> OutputExistsError:
    """The refusal of outputs that exist: ``what`` (where, and what is there), then the one
    hint every command gives."""
    return OutputExistsError(f"{what}; use --force to {to}")


def refuse_existing(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], force: bool = False
) -> None:
    """Refuse outputs that exist (or are links), unless ``force``: one error naming them."""
    if force:
        return
    many = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    existing = [str(p) for p in map(Path, many) if p.exists() or p.is_symlink()]
    if existing:
        raise use_force(f"{', '.join(existing)}: exists")


def claim_outputs(
    folder: str | os.PathLike[str], names: Iterable[str], force: bool, what: str = "outputs"
) -> None:
    """Refuse to write ``names`` into ``folder`` over files emvae did not write (always, by
    name), and over emvae's own ``what`` unless ``force``."""
    d = Path(folder)
    names = list(names)
    foreign = foreign_outputs(d, names)
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise OutputExistsError(
            f"{d}: holds {shown}, which emvae did not write (or which changed "
            f"since); emvae never replaces such files, with or without --force: move them "
            f"or choose another output folder"
        )
    existing = [n for n in names if (d / n).exists()]
    if existing and not force:
        raise use_force(f"{d}: already holds emvae {what} ({', '.join(existing)})", "replace them")


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on the run ``folder`` (a :data:`LOCK` file holding this
    process's id) until the block ends; another process holding it: one line naming its id."""
    d = Path(folder)
    path = d / LOCK
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise OutputError(f"{d}: cannot write here ({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pid = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutputExistsError(
                f"{d}: another emvae fit (process {pid}) is writing this run; wait for it to "
                f"end, or choose another output folder"
            ) from None
        try:  # the file a finishing fit removed between our open and flock: try again
            same = os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino
        except OSError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)
