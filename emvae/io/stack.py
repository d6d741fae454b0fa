"""The in-memory description of an image stack, whatever file(s) it came from.

Image data stay on disk until asked for: :class:`ImageStack` holds an *image source*, any object
with ``shape`` ``(N, C, D, D)``, ``dtype`` and ``__getitem__`` taking an int, a slice or an
integer array and returning a numpy array. numpy memory maps are sources; :class:`Rows`
combines several sources (the stacks a STAR file or a list names) and subsets of them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np
import pandas as pd
from numpy.typing import DTypeLike


@dataclass
class ImageStack:
    """Images plus where each one came from.

    images: image source of shape ``(N, C, D, D)`` (never modified).
    names: ``N`` strings ``"k@path"`` with k 1-based (RELION's convention), in input order; for
        a STAR file, its ``rlnImageName`` as written.
    apix: pixel size in Angstrom, or None when nothing says; ``apix_from`` says who said it
        ("MRC header", "STAR optics table", "STAR rows", "cryoSPARC blob/psize_A", "--apix",
        "emvae cache").
    arcsec_per_px: the pixel scale on the sky in arcsec per pixel (FITS images with a
        celestial WCS), or None; ``arcsec_from`` says who said it ("FITS WCS", "emvae cache").
        Never set together with ``apix``: :attr:`pixel_unit` tells which one describes the
        pixels.
    source: the file(s) the user named; ``format``: a short description of the format.
    rows: 0-based row of each image in the input (STAR/.cs row, or position in the stack list);
        differs from ``arange(N)`` after ``--ind``.
    metadata: the input STAR's particle rows (or the .cs fields) for these images, in order.
    optics: the STAR optics table (RELION 3.1), or None. ``star_version``: "3.0"/"3.1"/None.
    offsets: ``(N, 2)`` position of each image's centre in its original picture, pixels
        (+x right, +y up), when the reader cut a window out of larger pictures; else None.
    preprocessed: the :class:`emvae.preprocess.Preprocess` settings (as a dict) that already
        made these images (an emvae cache), else None. ``input_size``: the box before that.
    notes: things the reader did that the user should be told (NaN filling, ...).
    likelihood: the likelihood that suits these pixels ("bernoulli" for 8-bit pictures).
    windowed: True when the reader already cut the images out of larger pictures (crop).
    scale: input pixels per pixel of ``images`` (not 1 only for an emvae cache, whose ``apix``
        is still that of the input pixels).
    inputs: the inputs as the user named them (several for a concatenation); ``datadir`` and
        ``ind`` as given to :func:`emvae.io.open_stack` (so a run can open the same images).
    """

    images: Any
    names: Sequence[str]
    apix: float | None
    source: str
    format: str = "MRC"
    apix_from: str | None = None
    arcsec_per_px: float | None = None
    arcsec_from: str | None = None
    rows: np.ndarray | RowNumbers | None = None
    metadata: pd.DataFrame | None = None
    optics: pd.DataFrame | None = None
    star_version: str | None = None
    offsets: np.ndarray | None = None
    preprocessed: dict[str, Any] | None = None
    input_size: int | None = None
    notes: list[str] = field(default_factory=list)
    likelihood: str = "gaussian"
    windowed: bool = False
    scale: float = 1.0
    inputs: list[str] = field(default_factory=list)
    datadir: str | None = None
    ind: str | None = None

    def __post_init__(self) -> None:
        if self.rows is None:
            self.rows = RowNumbers(len(self.names))
        if self.apix is not None and self.apix_from is None:
            self.apix_from = "MRC header"

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def pixel_unit(self) -> str:
        """What one pixel is known in: "A" (``apix``), "arcsec" (``arcsec_per_px``) or "px"
        (nothing says)."""
        if self.apix is not None:
            return "A"
        return "arcsec" if self.arcsec_per_px is not None else "px"

    @property
    def pixel_scale(self) -> float | None:
        """Size of one input pixel in :attr:`pixel_unit` (None when that is "px")."""
        return self.apix if self.apix is not None else self.arcsec_per_px

    @property
    def size(self) -> int:
        """Box size D (images are D x D)."""
        return int(self.images.shape[-1])

    @property
    def channels(self) -> int:
        """Channels C of each image (1, or 3 for RGB pictures)."""
        return int(self.images.shape[1])

    def nbytes_float32(self) -> int:
        """Bytes the stack takes as float32 (what training holds in memory)."""
        return int(np.prod(self.images.shape, dtype=np.int64)) * 4

    def subset(self, indices: np.ndarray) -> ImageStack:
        """The images at 0-based ``indices`` (in that order), metadata following them."""
        idx = np.asarray(indices, dtype=np.int64)
        assert self.rows is not None  # filled in by __post_init__
        meta = None if self.metadata is None else self.metadata.iloc[idx].reset_index(drop=True)
        return dataclasses.replace(
            self,
            images=Rows.select(self.images, idx),
            names=[self.names[i] for i in idx],
            rows=self.rows[idx],
            metadata=meta,
            offsets=None if self.offsets is None else self.offsets[idx],
            notes=list(self.notes),
            inputs=list(self.inputs),
        )


# ----------------------------------------------------------------------------- image names


def image_name(k: int, path: str | os.PathLike[str], digits: int = 0) -> str:
    """The name ``"k@path"`` of the ``k``-th image (1-based, RELION's) of the stack ``path``,
    ``k`` zero-padded to ``digits`` (RELION writes 6)."""
    return f"{k:0{digits}d}@{path}"


def split_image_name(name: str) -> tuple[int, str] | None:
    """``"000012@dir/stack.mrcs"`` -> ``(12, "dir/stack.mrcs")``; None for a name without an
    index."""
    k, _, path = str(name).partition("@")
    try:
        return int(k), path
    except ValueError:
        return None


def split_image_names(names: pd.Series) -> tuple[pd.Series, pd.Series, pd.Series]:
    """:func:`split_image_name` for a column of names at once: ``(index, file, has_at)``.

    ``index`` is N of ``"N@file"`` as a float (NaN where N is not a number; 1 for a name
    without an ``@``: a whole single-image file), ``file`` the part after the ``@`` (the whole
    name without one), ``has_at`` whether the name has one.
    """
    split = names.str.split("@", n=1, expand=True)
    if split.shape[1] == 1:  # no row has an "@": each row is a whole single-image file
        ones = pd.Series(np.ones(len(names), dtype=np.int64))
        return ones, split[0], pd.Series(np.zeros(len(names), dtype=bool))
    has_at = split[1].notna()
    index = pd.to_numeric(split[0].where(has_at, "1"), errors="coerce")
    return index, split[1].where(has_at, split[0]), has_at


def image_key(name: str) -> tuple[int, str]:
    """``"000012@dir/stack.mrcs"`` -> ``(12, "stack.mrcs")``: the same image however its folder
    or index padding is written (a name without an index: image 1 of that file)."""
    split = split_image_name(name)
    return (split[0], Path(split[1]).name) if split else (1, Path(str(name)).name)


def image_label(name: str) -> str:
    """``"000012@dir/stack.mrcs"`` -> ``"12@"``: the short label figures print under an image
    (its index in its file, :func:`image_key`)."""
    return f"{image_key(name)[0]}@"


def same_image(a: str, b: str) -> bool:
    """Whether two ``k@path`` names are one image: the same :func:`image_key` (the folders and
    index padding may be spelt apart). Names without an index must be equal."""
    if split_image_name(a) is None or split_image_name(b) is None:
        return a == b
    return image_key(a) == image_key(b)


class StackNames(Sequence[str]):
    """The names ``"k@path"`` (k = 1..n) of a stack's images, made when asked for.

    A list would hold n strings from the moment a file is opened, so a header that claims 1e8
    images (a damaged or sparse file) would cost gigabytes before anything reads the data.
    """

    def __init__(self, path: str | os.PathLike[str], n: int) -> None:
        self.path, self.n = str(path), int(n)

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, key: int) -> str: ...
    @overload
    def __getitem__(self, key: slice) -> list[str]: ...
    def __getitem__(self, key: int | slice) -> str | list[str]:
        if isinstance(key, slice):
            return [self[i] for i in range(*key.indices(self.n))]
        k = int(key)
        if not -self.n <= k < self.n:
            raise IndexError(f"image {k} of {self.n}")
        return image_name(k % self.n + 1, self.path)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"StackNames({self.path!r}, {self.n})"


class RowNumbers(Sequence[int]):
    """``0, 1, ..., n - 1`` as a lazy stand-in for ``np.arange(n)`` (see :class:`StackNames`):
    indexing with an integer array gives that array back, as ``np.arange(n)[idx]`` would."""

    def __init__(self, n: int) -> None:
        self.n = int(n)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: int | slice | np.ndarray) -> np.ndarray:  # type: ignore[override]
        # (indexing gives an array, as np.arange(n)[key] does, not the int a Sequence gives)
        if isinstance(key, slice):
            return np.arange(self.n)[key]
        idx = np.asarray(key)
        if idx.size and (idx.min() < -self.n or idx.max() >= self.n):
            raise IndexError(f"row {int(idx.max())} of {self.n}")
        return np.where(idx < 0, idx + self.n, idx).astype(np.int64)

    def __array__(self, dtype: DTypeLike | None = None, copy: bool | None = None) -> np.ndarray:
        return np.arange(self.n, dtype=dtype or np.int64)


class Rows:
    """Image ``k`` is row ``local[k]`` of source ``parts[part[k]]``; read lazily.

    parts: sources of shape ``(n_i, C, D, D)`` (same C and D). Reads group the requested rows by
    source and ask each source once, for sorted unique rows (a slice when they are contiguous),
    which suits memory maps, HDF5 datasets and file readers alike.
    """

    def __init__(self, parts: list[Any], part: np.ndarray, local: np.ndarray) -> None:
        self.parts = parts
        self.part = np.asarray(part, dtype=np.int64)
        self.local = np.asarray(local, dtype=np.int64)
        self.shape = (len(self.part), *parts[0].shape[1:])
        dtypes = {np.dtype(p.dtype) for p in parts}
        self.dtype = dtypes.pop() if len(dtypes) == 1 else np.dtype(np.float32)

    @classmethod
    def concat(cls, parts: list[Any]) -> Rows:
        """Every image of each of ``parts`` (sources of ``(N, C, D, D)`` images), in order."""
        sizes = [int(p.shape[0]) for p in parts]
        part = np.repeat(np.arange(len(parts)), sizes)
        local = np.concatenate([np.arange(n) for n in sizes])
        return cls(parts, part, local)

    @classmethod
    def select(cls, source: Any, idx: np.ndarray) -> Rows:
        """The images ``idx`` (0-based) of ``source`` (a source, or :class:`Rows`), in order."""
        if isinstance(source, Rows):
            return cls(source.parts, source.part[idx], source.local[idx])
        return cls([source], np.zeros(len(idx), dtype=np.int64), idx)

    def __len__(self) -> int:
        return int(self.shape[0])

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            result: np.ndarray = self[np.array([key])][0]
            return result
        idx = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key)
        out = np.empty((len(idx), *self.shape[1:]), dtype=self.dtype)
        part, local = self.part[idx], self.local[idx]
        for k in np.unique(part):
            sel = np.flatnonzero(part == k)
            rows, inverse = np.unique(local[sel], return_inverse=True)
            out[sel] = read_rows(self.parts[k], rows)[inverse]
        return out


def read_rows(source: Any, rows: np.ndarray) -> np.ndarray:
    """``source[rows]`` for sorted unique ``rows``, as one slice when they are contiguous."""
    if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
        return np.asarray(source[int(rows[0]) : int(rows[-1]) + 1])
    return np.asarray(source[rows])


def image_shape(
    shape: tuple[int, ...], dtype: np.dtype[Any], path: str | os.PathLike[str], what: str
) -> tuple[int, int, int, int]:
    """``(N, C, D, D)`` for data of ``shape`` ``(D, D)``, ``(N, D, D)`` or ``(N, C, D, D)``;
    :class:`InputError` for anything else (wrong rank, empty, not square, not real numbers)."""
    from emvae.errors import InputError

    shape = tuple(int(n) for n in shape)
    full: tuple[int, ...] | None = {2: (1, 1, *shape), 3: (shape[0], 1, *shape[1:]), 4: shape}.get(
        len(shape)
    )
    if full is None:
        raise InputError(
            path, f"{what} has shape {shape}; expected (D, D), (N, D, D) or (N, C, D, D)"
        )
    if full[0] == 0 or 0 in full:
        raise InputError(path, "contains no images")
    if full[-1] != full[-2]:
        raise InputError(
            path,
            f"images are {full[-1]}x{full[-2]} (width x height); emvae needs square images",
        )
    if np.dtype(dtype).kind not in "iuf":
        raise InputError(path, f"{what} has dtype {dtype}; expected real numbers")
    return full[0], full[1], full[2], full[3]


def as_images(data: np.ndarray, path: str | os.PathLike[str], what: str = "data") -> np.ndarray:
    """View ``(D, D)``, ``(N, D, D)`` or ``(N, C, D, D)`` data as ``(N, C, D, D)``."""
    return data.reshape(image_shape(data.shape, data.dtype, path, what))
