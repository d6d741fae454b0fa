"""FITS images through ``astropy.io.fits``: one file, several HDUs, or a folder of files.

Which HDU: ``file.fits[EXT]`` (a number or an EXTNAME, as in cfitsio) or, by default, every
HDU holding an image. A 2-D HDU is one image; a 3-D HDU ``(bands, H, W)`` is one image whose
bands are channels. BSCALE/BZERO are applied by astropy. NaN pixels are replaced by the median
of the image's finite pixels and a note says how many. Arrays are used as stored: row 0 is the
first row in the file (the bottom one in ds9), as for MRC.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits

from emvae.errors import InputError
from emvae.io.pictures import list_files, window_starts
from emvae.io.stack import ImageStack

FITS_SUFFIXES = (".fits", ".fit", ".fts")
_EXT = re.compile(r"^(?P<file>.+?)\[(?P<ext>[^\]]+)\]$")


def split_fits_path(spec: str) -> tuple[str, str | None]:
    """``"a.fits[SCI]"`` -> ("a.fits", "SCI")."""
    m = _EXT.match(spec)
    return (m["file"], m["ext"]) if m else (spec, None)


def read_fits(
    spec: str | os.PathLike, crop: int | None = None, jitter: int = 0, seed: int = 0
) -> ImageStack:
    """The images of a FITS file (``file.fits[EXT]`` for one HDU) or of a folder/glob of FITS
    files (the first image HDU of each), read into memory and cut to a common window."""
    text = str(spec)
    name, ext = split_fits_path(text)
    path = Path(name)
    if path.is_dir() or any(ch in name for ch in "*?"):
        files = list_files(name, FITS_SUFFIXES)
        arrays, names = [], []
        for f in files:
            hdus = _image_hdus(f, None)
            arrays.append(hdus[0][1])
            names.append(f"1@{f}")
    else:
        if not path.exists():
            raise InputError(path, "no such file")
        hdus = _image_hdus(path, ext)
        arrays = [a for _, a in hdus]
        names = [f"{k + 1}@{path}[{label}]" for k, (label, _) in enumerate(hdus)]
    bands = {a.shape[0] for a in arrays}
    if len(bands) > 1:
        raise InputError(text, f"images have different numbers of bands {sorted(bands)}")
    sizes = np.array([a.shape[1:] for a in arrays])
    starts, offsets, c = window_starts(sizes, crop, jitter, seed, text)
    images = np.empty((len(arrays), bands.pop(), c, c), dtype=np.float32)
    for k, (a, (r, col)) in enumerate(zip(arrays, starts, strict=True)):
        images[k] = a[:, r : r + c, col : col + c]
    notes = _fill_nan(images, text)
    return ImageStack(
        images=images,
        names=names,
        apix=None,
        source=text,
        format=f"FITS ({len(arrays)} image{'s' if len(arrays) > 1 else ''})",
        offsets=offsets if (np.abs(offsets) > 0).any() else None,
        notes=notes,
    )


def _image_hdus(path: Path, ext: str | None) -> list[tuple[str, np.ndarray]]:
    """(label, ``(bands, H, W)`` float32 array) of the chosen HDU or of every image HDU."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hdul = fits.open(path, memmap=False)
    except (OSError, ValueError, TypeError) as e:
        raise InputError(path, f"not a readable FITS file ({e})") from None
    with hdul:
        if ext is not None:
            key: int | str = int(ext) if ext.lstrip("-").isdigit() else ext
            try:
                chosen = [(ext, hdul[key])]
            except (KeyError, IndexError):
                raise InputError(path, f"has no HDU {ext!r} ({_describe(hdul)})") from None
        else:
            chosen = [
                (h.name if h.name and h.name != "PRIMARY" else str(i), h)
                for i, h in enumerate(hdul)
                if h.is_image and h.header.get("NAXIS", 0) > 0
            ]
            if not chosen:
                raise InputError(path, f"holds no image, only {_describe(hdul)}")
        out = []
        for label, h in chosen:
            if not h.is_image or h.data is None:
                raise InputError(path, f"HDU {label} is not an image ({_describe(hdul)})")
            a = np.asarray(h.data, dtype=np.float32)
            if a.ndim == 2:
                a = a[np.newaxis]
            if a.ndim != 3:
                raise InputError(path, f"HDU {label} has {a.ndim} axes; expected 2 or 3")
            out.append((label, a))
    return out


def _describe(hdul) -> str:
    parts = []
    for i, h in enumerate(hdul):
        kind = type(h).__name__
        has = "" if h.header.get("NAXIS", 0) else " without data"
        parts.append(f"{i}: {kind}{' ' + repr(h.name) if h.name else ''}{has}")
    return "; ".join(parts)


def _fill_nan(images: np.ndarray, source: str) -> list[str]:
    bad = ~np.isfinite(images)
    if not bad.any():
        return []
    n_img = 0
    for k in range(len(images)):
        if bad[k].any():
            good = images[k][~bad[k]]
            if good.size == 0:
                raise InputError(source, f"image {k + 1} has no finite pixels")
            images[k][bad[k]] = np.median(good)
            n_img += 1
    return [
        f"{int(bad.sum())} NaN/infinite pixels in {n_img} image(s) of {source} were filled "
        "with the median of each image's finite pixels"
    ]
