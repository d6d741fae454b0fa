"""MRC / MRCS stacks through ``mrcfile``, memory-mapped."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import mrcfile
import numpy as np

from emvae.errors import InputError, OutputError
from emvae.io.stack import ImageStack, StackNames, as_images
from emvae.safety import atomic_output, check_free_space

MRC_SUFFIXES = (".mrc", ".mrcs", ".st", ".map")
_REAL_MODES = {0, 1, 2, 6, 12}


class MrcSource:
    """The images of one MRC file, ``(N, 1, D, D)``, read through a memory map when asked.

    The file is opened (and its header checked) once here, then reopened for each read, so a
    STAR file naming thousands of stacks never holds thousands of open files.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        p = Path(path)
        if not p.exists():
            raise InputError(p, "no such file")
        if p.is_dir():
            raise InputError(p, "is a directory, not an MRC file")
        self.path = p
        with _open(p) as mrc:
            data = as_images(mrc.data, p, "MRC data") if mrc.data is not None else None
            if data is None:
                raise InputError(p, "contains no images")
            self.shape = data.shape
            self.dtype = data.dtype
            self.mode = int(mrc.header.mode)
            # a cube whose header's space group (1..230) marks a volume, not named .mrcs
            # (many writers leave stacks at space group 1; RELION names stacks .mrcs)
            n, _, d, _ = data.shape
            self.volume = n == d > 1 and bool(mrc.is_volume()) and p.suffix.lower() != ".mrcs"
            apix = float(mrc.voxel_size.x)
        self.apix = apix if apix > 0 else None

    def __len__(self) -> int:
        return int(self.shape[0])

    def __getitem__(self, key: int | slice | np.ndarray) -> np.ndarray:
        with _open(self.path) as mrc:
            return np.array(as_images(mrc.data, self.path)[key])


def read_mrc(path: str | os.PathLike[str]) -> ImageStack:
    """Open an MRC file as a stack without reading its data.

    A 2-D file is one image; a 3-D file (stack or volume) is ``nz`` images of ``ny x nx``.
    The pixel size is the header's ``voxel_size.x`` (None when the header says 0).
    """
    src = MrcSource(path)
    notes = []
    if src.volume:
        n, _, d, _ = src.shape
        notes.append(
            f"{path}: the header marks a 3-D volume ({n} x {d} x {d}, space group 1..230); "
            f"its {n} z-sections are read as {n} images"
        )
    return ImageStack(
        images=src,
        names=StackNames(path, len(src)),
        apix=src.apix,
        source=str(path),
        format=f"MRC {'volume' if src.volume else ''} (mode {src.mode})".replace("  ", " "),
        notes=notes,
    )


def write_mrc(path: str | os.PathLike[str], images: np.ndarray, apix: float | None = None) -> None:
    """Write ``(N, D, D)`` images as a float32 MRCS stack (overwrites ``path``)."""
    data = np.ascontiguousarray(images, dtype=np.float32)
    with atomic_output(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # header statistics of data holding NaN
            mrc.set_data(data)
            mrc.set_image_stack()
            if apix:
                mrc.voxel_size = apix


@contextlib.contextmanager
def new_stack_mmap(tmp: Path, out: Path, n: int, d: int) -> Iterator[mrcfile.mrcmmap.MrcMemmap]:
    """A new float32 MRC stack of ``n`` ``d`` x ``d`` images at ``tmp`` (the temporary file of
    the output ``out``), memory-mapped for writing. Its disk blocks are reserved first: a full
    disk is one :class:`OutputError` now, not a SIGBUS in the middle of the write."""
    check_free_space(out.parent, n * d * d * 4 + 1024)
    with mrcfile.new_mmap(tmp, shape=(n, d, d), mrc_mode=2, overwrite=True) as mrc:
        try:
            fd = os.open(tmp, os.O_RDWR)
            try:
                os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
            finally:
                os.close(fd)
        except OSError as e:
            raise OutputError(
                f"{out}: cannot reserve {n * d * d * 4 / 2**20:.1f} MiB for it "
                f"({e.strerror or e}); free some space or write it elsewhere"
            ) from None
        mrc.set_image_stack()
        yield mrc


def _open(p: Path) -> mrcfile.mrcmemmap.MrcMemmap:
    """Open strictly; fall back to mrcfile's permissive mode for files that only lack the
    'MAP ' ID or a machine stamp (common in RELION-era stacks) but whose data block is intact."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mrc = mrcfile.mmap(p, mode="r")
    except (ValueError, OSError, EOFError, OverflowError) as e:  # OverflowError: nx < 0
        strict_error = _first_line(e)
        mrc = None
    if mrc is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mrc = mrcfile.mmap(p, mode="r", permissive=True)
        except (ValueError, OSError, EOFError, OverflowError):
            mrc = None
        if mrc is None or mrc.data is None or mrc.data.size == 0:
            if mrc is not None:
                mrc.close()
            raise InputError(p, f"not a readable MRC file ({strict_error})")
    mode = int(mrc.header.mode)
    if mode not in _REAL_MODES:
        mrc.close()
        raise InputError(p, f"MRC mode {mode} is not a real-valued image mode (0, 1, 2, 6, 12)")
    if mrc.data is None or mrc.data.size == 0:
        mrc.close()
        raise InputError(p, "contains no images")
    return mrc


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
