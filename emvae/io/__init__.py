"""Readers and writers. :func:`read_stack` picks the reader by suffix; :func:`open_stack`
combines several inputs, ``.txt`` lists and ``--ind`` subsets."""

from __future__ import annotations

import dataclasses
import os
import pickle
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emvae.config import physical
from emvae.errors import InputError
from emvae.io.arrays import H5_SUFFIXES, NPY_SUFFIXES, read_hdf5, read_npy, split_h5_path
from emvae.io.cryosparc import CS_SUFFIXES, read_cryosparc
from emvae.io.fits import FITS_SUFFIXES, PACKED_FITS_SUFFIXES, read_fits, split_fits_path
from emvae.io.mrc import MRC_SUFFIXES, read_mrc, write_mrc
from emvae.io.pictures import PICTURE_SUFFIXES, file_suffix, read_pictures
from emvae.io.stack import ImageStack, Rows, split_image_name
from emvae.io.star import STAR_SUFFIXES, read_star, resolve_stack
from emvae.io.tables import read_table, write_table

LIST_SUFFIXES = (".txt",)
KNOWN = (
    MRC_SUFFIXES
    + STAR_SUFFIXES
    + CS_SUFFIXES
    + NPY_SUFFIXES
    + H5_SUFFIXES
    + FITS_SUFFIXES
    + (".fits.fz", ".fits.gz")
    + PICTURE_SUFFIXES
    + LIST_SUFFIXES
)


def kind_by_suffix(spec: str | os.PathLike[str]) -> str | None:
    """What :func:`input_kind` makes of ``spec``'s suffix alone (None: no reader's suffix)."""
    text = str(spec)
    h5, _ = split_h5_path(text)
    if h5.suffix.lower() in H5_SUFFIXES:
        return "hdf5"
    name, _ = split_fits_path(text)
    lower = name.lower()
    if lower.endswith(PACKED_FITS_SUFFIXES) or Path(lower).suffix in FITS_SUFFIXES:
        return "fits"
    suffix = Path(lower).suffix
    for kind, suffixes in (
        ("mrc", MRC_SUFFIXES),
        ("star", STAR_SUFFIXES),
        ("cs", CS_SUFFIXES),
        ("npy", NPY_SUFFIXES),
        ("pictures", PICTURE_SUFFIXES),
        ("list", LIST_SUFFIXES),
    ):
        if suffix in suffixes:
            return kind
    return None


def input_kind(spec: str | os.PathLike[str]) -> str:
    """``mrc``, ``star``, ``cs``, ``npy``, ``hdf5``, ``fits``, ``pictures`` or ``list``: by
    suffix, else a folder's files."""
    kind = kind_by_suffix(spec)
    if kind is not None:
        return kind
    text = str(spec)
    suffix = Path(split_fits_path(text)[0].lower()).suffix
    p = Path(text)
    if p.is_dir():
        entries = {file_suffix(f) for f in p.iterdir() if f.is_file()}
        has_fits = bool(entries & set(FITS_SUFFIXES))
        has_pictures = bool(entries & set(PICTURE_SUFFIXES))
        if has_fits and has_pictures:
            raise InputError(p, "holds both FITS files and pictures; name them with a glob")
        if has_fits or has_pictures:
            return "fits" if has_fits else "pictures"
        raise InputError(p, "holds no JPEG, PNG or FITS files")
    if not p.exists() and not any(ch in text for ch in "*?["):
        raise InputError(p, "no such file")
    raise InputError(
        p,
        f"unknown suffix {suffix or '(none)'!r}; emvae reads {', '.join(KNOWN)}, "
        "folders of pictures or FITS files, and file.h5:/dataset",
    )


def spec_file(spec: str | os.PathLike[str]) -> Path:
    """The file an input spec names: ``file.h5:/dataset`` and ``file.fits[EXT]`` name a file."""
    h5, _ = split_h5_path(str(spec))
    if h5.suffix.lower() in H5_SUFFIXES:
        return h5
    return Path(split_fits_path(str(spec))[0])


def input_files(specs: Iterable[str | os.PathLike[str]], names: Iterable[str] = ()) -> list[Path]:
    """Every file a command reads: the inputs as named, and the stacks that ``k@path`` image
    names point at (resolved beside each input and from the working directory)."""
    named = [spec_file(s) for s in specs]
    files = list(named)
    for s in {split[1] for n in names if (split := split_image_name(n))}:
        files.append(Path(s))
        files.extend(f.parent / s for f in named)
    return files


def read_stack(
    spec: str | os.PathLike[str],
    datadir: str | os.PathLike[str] | None = None,
    crop: int | None = None,
    jitter: int | None = None,
    seed: int = 0,
) -> ImageStack:
    """Open one input lazily, choosing the reader by suffix (see :func:`input_kind`).

    ``crop``/``jitter`` cut each picture or FITS image to a common window as it is read
    (None: whole images); other formats ignore them here (see
    :class:`emvae.preprocess.Preprocess`, which also holds the Galaxy Zoo defaults).
    """
    kind = input_kind(spec)
    if kind in ("mrc", "npy", "hdf5"):
        return {"mrc": read_mrc, "npy": read_npy, "hdf5": read_hdf5}[kind](spec)
    if kind in ("star", "cs", "list"):
        return {"star": read_star, "cs": read_cryosparc, "list": read_list}[kind](spec, datadir)
    read_windows = read_pictures if kind == "pictures" else read_fits
    stack = read_windows(spec, crop or None, jitter or 0, seed)
    stack.windowed = True
    return stack


def read_list(
    path: str | os.PathLike[str], datadir: str | os.PathLike[str] | None = None
) -> ImageStack:
    """A ``.txt`` file naming one stack per line (relative to the list's folder, or in
    ``datadir``), as cryoDRGN reads them. Blank lines and ``#`` comments are skipped."""
    p = Path(path)
    if not p.exists():
        raise InputError(p, "no such file")
    lines = [ln.split("#", 1)[0].strip() for ln in p.read_text().splitlines()]
    entries = [(k + 1, ln) for k, ln in enumerate(lines) if ln]
    if not entries:
        raise InputError(p, "lists no stacks")
    stacks = []
    for line, entry in entries:
        candidates = resolve_stack(entry, p.parent, datadir)  # confined to datadir, as STAR
        found = next((c for c in candidates if c.exists()), None)
        if found is None:
            looked = ", ".join(str(c) for c in dict.fromkeys(candidates))
            raise InputError(p, f"line {line}: stack {entry} not found (looked for {looked})")
        if input_kind(found) == "list":
            raise InputError(p, f"line {line}: lists of lists are not read")
        stacks.append(read_stack(found, datadir))
    stack = concat_stacks(stacks, str(p))
    stack.format = f"list of {len(stacks)} stack(s): {stacks[0].format}"
    return stack


def concat_stacks(stacks: list[ImageStack], source: str) -> ImageStack:
    """One stack of several, in order; they must hold images of one size and channel count.

    Per-image fields (names, metadata, window offsets, notes) are joined; the rest comes from
    the first stack, except what the stacks disagree on (pixel size, preprocessing: None).
    ``rows`` are positions in the concatenation.
    """
    if len(stacks) == 1:
        return stacks[0]
    shapes = {s.images.shape[1:] for s in stacks}
    if len(shapes) > 1:
        shown = ", ".join(f"{s.source}: {s.channels}x{s.size}^2" for s in stacks[:4])
        raise InputError(source, f"mixed image sizes across stacks ({shown})")
    first = stacks[0]
    same_apix = len({s.apix for s in stacks}) == 1
    same_arcsec = len({s.arcsec_per_px for s in stacks}) == 1
    same_prep = all(s.preprocessed == first.preprocessed for s in stacks)
    metas = [s.metadata for s in stacks]
    offsets = [s.offsets for s in stacks if s.offsets is not None]
    return dataclasses.replace(
        first,
        images=Rows.concat([s.images for s in stacks]),
        names=[n for s in stacks for n in s.names],
        apix=first.apix if same_apix else None,
        apix_from=first.apix_from if same_apix else None,
        arcsec_per_px=first.arcsec_per_px if same_arcsec else None,
        arcsec_from=first.arcsec_from if same_arcsec else None,
        source=source,
        rows=None,
        metadata=None if any(m is None for m in metas) else pd.concat(metas, ignore_index=True),
        offsets=np.concatenate(offsets) if len(offsets) == len(stacks) else None,
        preprocessed=first.preprocessed if same_prep else None,
        input_size=first.input_size if same_prep else None,
        scale=first.scale if same_prep else 1.0,
        notes=[n for s in stacks for n in s.notes],
        windowed=all(s.windowed for s in stacks),
        inputs=[i for s in stacks for i in s.inputs],
    )


def read_indices(path: str | os.PathLike[str], n: int) -> np.ndarray:
    """0-based image indices from ``.npy``, ``.txt`` (whitespace separated) or a cryoDRGN
    ``.pkl`` (a pickled integer array; nothing else is unpickled); each must be < ``n``."""
    p = Path(path)
    if not p.exists():
        raise InputError(p, "no such file")
    try:
        if p.suffix == ".npy":
            idx = np.load(p, allow_pickle=False)
        elif p.suffix == ".pkl":
            with open(p, "rb") as f:
                idx = _ArrayUnpickler(f).load()
        else:
            idx = np.loadtxt(p, dtype=np.int64, ndmin=1)
    except (ValueError, OSError, EOFError, pickle.UnpicklingError) as e:
        raise InputError(p, f"not a list of indices ({e})") from None
    idx = np.asarray(idx)
    if idx.ndim != 1 or idx.dtype.kind not in "iu":
        raise InputError(p, f"expected a 1-D list of integers, got {idx.dtype} {idx.shape}")
    if len(idx) == 0:
        raise InputError(p, "selects no images")
    if len(idx) > n:
        raise InputError(p, f"lists {len(idx)} indices but the stack holds {n} images")
    if len(np.unique(idx)) != len(idx):
        raise InputError(p, "lists an image more than once")
    bad = (idx < 0) | (idx >= n)
    if bad.any():
        raise InputError(
            p, f"index {int(idx[np.argmax(bad)])} is outside the stack (0-based, {n} images)"
        )
    return idx.astype(np.int64)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain lists only (cryoDRGN's index files)."""

    SAFE = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> Any:  # (pickle.Unpickler's type)
        if (module, name) in self.SAFE:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def open_stack(
    specs: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    datadir: str | os.PathLike[str] | None = None,
    ind: str | os.PathLike[str] | None = None,
    crop: int | None = None,
    jitter: int | None = None,
    seed: int = 0,
    apix: float | None = None,
) -> ImageStack:
    """Every input the user named, concatenated, subset by ``ind`` and with ``apix`` forced."""
    if isinstance(specs, (str, os.PathLike)):
        specs = [specs]
    if not specs:
        raise InputError("(no input)", "give at least one stack")
    stacks = [read_stack(s, datadir, crop, jitter, seed) for s in specs]
    stack = concat_stacks(stacks, " ".join(str(s) for s in specs))
    stack.windowed = all(s.windowed for s in stacks)
    stack.inputs = [str(s) for s in specs]
    if ind is not None:
        stack = stack.subset(read_indices(ind, len(stack)))
    stack.datadir = None if datadir is None else str(datadir)
    stack.ind = None if ind is None else str(ind)
    if apix is not None:
        stack.apix, stack.apix_from = physical("--apix", apix), "--apix"
        stack.arcsec_per_px = stack.arcsec_from = None  # the pixels are in Angstrom, then
    return stack


__all__ = [
    "ImageStack",
    "input_files",
    "input_kind",
    "open_stack",
    "read_indices",
    "read_mrc",
    "read_stack",
    "read_table",
    "spec_file",
    "write_mrc",
    "write_table",
]
