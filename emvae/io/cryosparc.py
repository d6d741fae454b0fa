"""cryoSPARC particle files (``.cs``: a NumPy structured array with ``blob/*`` fields)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from emvae.errors import InputError
from emvae.io.stack import ImageStack, Rows
from emvae.io.star import open_stacks

CS_SUFFIXES = (".cs",)
_NEEDED = ("blob/path", "blob/idx")


def read_cryosparc(path: str | os.PathLike, datadir: str | os.PathLike | None = None) -> ImageStack:
    """Particles of a cryoSPARC ``.cs`` file, in row order.

    ``blob/path`` (a leading ``>`` is dropped) is resolved like a STAR file's stacks, so the
    cryoSPARC project folder is usually the ``datadir``; ``blob/idx`` is 0-based; the pixel size
    is ``blob/psize_A``.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(p, "no such file")
    try:
        table = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(p, f"not a readable cryoSPARC .cs file ({e})") from None
    names = getattr(table.dtype, "names", None) or ()
    missing = [f for f in _NEEDED if f not in names]
    if table.ndim != 1 or missing:
        raise InputError(p, f"is not a cryoSPARC particle file (no {', '.join(missing)} field)")
    if len(table) == 0:
        raise InputError(p, "holds no particles")
    files = np.array([_path(b, p, row).lstrip(">") for row, b in enumerate(table["blob/path"])])
    local = table["blob/idx"].astype(np.int64)
    part, sources = open_stacks(p, files, datadir)
    counts = np.array([len(s) for s in sources])
    beyond = (local >= counts[part]) | (local < 0)
    if beyond.any():
        row = int(np.argmax(beyond))
        raise InputError(
            p,
            f"row {row + 1}: blob/idx {local[row]} is outside {sources[part[row]].path} "
            f"({counts[part[row]]} images, 0-based)",
        )
    apix = None
    if "blob/psize_A" in names:
        ps = table["blob/psize_A"].astype(np.float64)
        if (ps > 0).all() and ps.max() - ps.min() <= 1e-4 * ps.max():
            apix = round(float(ps[0]), 6)
    scalar = [f for f in names if table.dtype[f].shape == ()]
    meta = pd.DataFrame({f: _column(table[f]) for f in scalar})
    return ImageStack(
        images=Rows(sources, part, local),
        names=[f"{i + 1}@{f}" for i, f in zip(local, files, strict=True)],
        apix=apix,
        source=str(p),
        format="cryoSPARC .cs",
        apix_from="cryoSPARC blob/psize_A" if apix else None,
        metadata=meta,
    )


def _path(b: bytes | str, p: Path, row: int) -> str:
    try:
        return b.decode() if isinstance(b, bytes) else str(b)
    except UnicodeDecodeError:
        raise InputError(p, f"row {row + 1}: blob/path {b!r} is not UTF-8 text") from None


def _column(values: np.ndarray) -> np.ndarray:
    """Byte-string fields as text (bytes that are not UTF-8 kept as \\x escapes)."""
    if values.dtype.kind == "S":
        return np.array([v.decode(errors="backslashreplace") for v in values], dtype=object)
    return values
