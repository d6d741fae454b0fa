r"""cryoSPARC particle files (``.cs``): a table of ``blob/*``, ``ctf/*``, ... fields per particle.

Two layouts share the suffix, told apart by their first bytes:

* ``\x93NUMPY``: a NumPy structured array saved by ``np.save`` (the layout of the files in
  cryoSPARC job folders, and cryosparc-tools' default). Read with NumPy, without unpickling
  anything. Its header may be larger than NumPy's default limit of 10,000 bytes (particles that
  carry the fields of many 3-D classes), so a larger limit is given.
* ``\x95CSDAT``: cryosparc-tools' newer compressed column stream (``Dataset.save(...,
  format=CSDAT_FORMAT)``, its ``NEWEST_FORMAT``; also what a CryoSPARC server streams). Its
  layout is that library's (LZ4-compressed columns and a string heap) and is not documented,
  so it is read with ``cryosparc-tools`` when that is installed (``pip install
  'emvae[cryosparc]'``); without it, an error says what to install.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from emvae.errors import InputError
from emvae.io.stack import ImageStack, Rows, image_name
from emvae.io.star import open_stacks

CS_SUFFIXES = (".cs",)
_NEEDED = ("blob/path", "blob/idx")
NUMPY_MAGIC = b"\x93NUMPY"
CSDAT_MAGIC = b"\x95CSDAT"
# Largest .npy header read (bytes). NumPy's default, 10,000, refuses the header of a .cs file
# whose particles carry the fields of many 3-D classes; the header is parsed as a literal, never
# unpickled, so a larger bound is safe.
_MAX_HEADER = 1 << 24


def load_cs_table(path: str | os.PathLike[str]) -> np.ndarray:
    """The structured array of a cryoSPARC ``.cs`` file of either layout (see the module's
    docstring): one row per particle, fields as named in the file, strings as bytes."""
    p = Path(path)
    if not p.exists():
        raise InputError(p, "no such file")
    with open(p, "rb") as f:
        magic = f.read(6)
    if magic == CSDAT_MAGIC:
        return _load_csdat(p)
    if magic[1:] == CSDAT_MAGIC[1:]:
        raise InputError(
            p,
            f"is a cryoSPARC CSDAT dataset of a version emvae does not know (first byte "
            f"{magic[:1]!r}, not {CSDAT_MAGIC[:1]!r}); re-export the particles from cryoSPARC",
        )
    if magic != NUMPY_MAGIC:
        raise InputError(
            p, f"is not a cryoSPARC .cs file (it starts with {magic!r}: neither NumPy nor CSDAT)"
        )
    try:
        result: np.ndarray = np.load(p, allow_pickle=False, max_header_size=_MAX_HEADER)
        return result
    except ValueError as e:
        if "allow_pickle" in str(e) or "pickled" in str(e):
            raise InputError(
                p,
                "stores pickled Python objects, which emvae does not load; re-export the "
                "particles from cryoSPARC (its .cs files hold plain arrays)",
            ) from None
        raise InputError(p, f"not a readable cryoSPARC .cs file ({e})") from None
    except (OSError, EOFError) as e:
        raise InputError(p, f"not a readable cryoSPARC .cs file ({e})") from None


def _load_csdat(p: Path) -> np.ndarray:
    try:
        from cryosparc.dataset import Dataset
    except ImportError:
        raise InputError(
            p,
            "is a compressed cryoSPARC dataset (CSDAT format), which needs cryosparc-tools: "
            "pip install 'emvae[cryosparc]' (or pip install cryosparc-tools)",
        ) from None
    try:
        dataset = Dataset.load(p)
        records = dataset.to_records(fixed=True)
    except Exception as e:  # DatasetLoadError, or what a damaged stream makes the C code raise
        cause = e.__cause__ or e
        raise InputError(
            p, f"not a readable CSDAT dataset ({type(cause).__name__}: {cause})"
        ) from None
    plain = records.view(np.ndarray)  # a recarray of np.record rows -> what np.load gives
    result: np.ndarray = plain.view(np.dtype((np.void, plain.dtype)))
    return result


def read_cryosparc(
    path: str | os.PathLike[str], datadir: str | os.PathLike[str] | None = None
) -> ImageStack:
    """Particles of a cryoSPARC ``.cs`` file, in row order.

    ``blob/path`` (a leading ``>`` is dropped) is resolved like a STAR file's stacks, so the
    cryoSPARC project folder is usually the ``datadir``; ``blob/idx`` is 0-based; the pixel size
    is ``blob/psize_A``.
    """
    p = Path(path)
    table = load_cs_table(p)
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
        names=[image_name(i + 1, f) for i, f in zip(local, files, strict=True)],
        apix=apix,
        source=str(p),
        format="cryoSPARC .cs" + (" (CSDAT)" if _is_csdat(p) else ""),
        apix_from="cryoSPARC blob/psize_A" if apix else None,
        metadata=meta,
    )


def _is_csdat(p: Path) -> bool:
    with open(p, "rb") as f:
        return f.read(6) == CSDAT_MAGIC


def _path(b: bytes | str, p: Path, row: int) -> str:
    try:
        return b.decode() if isinstance(b, bytes) else str(b)
    except UnicodeDecodeError:
        raise InputError(p, f"row {row + 1}: blob/path {b!r} is not UTF-8 text") from None


def _column(values: np.ndarray) -> np.ndarray:
    r"""Byte-string fields as text (bytes that are not UTF-8 kept as \x escapes)."""
    if values.dtype.kind == "S":
        return np.array([v.decode(errors="backslashreplace") for v in values], dtype=object)
    return values
