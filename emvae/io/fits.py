"""FITS images through ``astropy.io.fits``: one file, several HDUs, or a folder of files.

Which HDU: ``file.fits[EXT]`` (a number or an EXTNAME, as in cfitsio) or, by default, every
HDU holding an image. A 2-D HDU is one image; a 3-D HDU ``(bands, H, W)`` is one image whose
bands are channels. BSCALE/BZERO are applied by astropy. NaN pixels are replaced by the median
of the image's finite pixels and a note says how many. Arrays are used as stored: row 0 is the
first row in the file (the bottom one in ds9), as for MRC.

Tile-compressed images (``fpack``'s ``.fits.fz``: a ``CompImageHDU`` after an empty primary
HDU) and gzipped files (``.fits.gz``) are read the same way; astropy decompresses them.

Pixel scale: when an image HDU's header holds a celestial WCS whose axes are the image's x and
y axes, the scale on the sky (``astropy.wcs`` projection-plane scales, which take CDELT, PC or a
rotated CD matrix into account) is recorded as ``ImageStack.arcsec_per_px``. It is left unset,
with a note, when the two axes' scales differ (non-square pixels) or the images disagree.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.nddata import Cutout2D
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales

from emvae.errors import InputError
from emvae.io.pictures import PACKED_FITS_SUFFIXES, list_files, window_starts
from emvae.io.stack import ImageStack, image_name, split_image_name

FITS_SUFFIXES = (".fits", ".fit", ".fts")
__all__ = [
    "FITS_SUFFIXES",
    "PACKED_FITS_SUFFIXES",
    "ImageHeader",
    "celestial_wcs",
    "cutout_slices",
    "image_headers",
    "read_fits",
    "sky_pixel_scale",
]
_EXT = re.compile(r"^(?P<file>.+?)\[(?P<ext>[^\]]+)\]$")
# Two pixel scales agree (square pixels; images of one survey) within this relative difference.
_SCALE_RTOL = 1e-3


class _Image(NamedTuple):
    label: str
    data: np.ndarray  # (bands, H, W) float32
    arcsec: float | None  # sky pixel scale from the HDU's WCS
    why_not: str | None  # why a celestial WCS gave no scale
    compressed: bool


def split_fits_path(spec: str) -> tuple[str, str | None]:
    """``"a.fits[SCI]"`` -> ("a.fits", "SCI")."""
    m = _EXT.match(spec)
    return (m["file"], m["ext"]) if m else (spec, None)


def read_fits(
    spec: str | os.PathLike[str], crop: int | None = None, jitter: int = 0, seed: int = 0
) -> ImageStack:
    """The images of a FITS file (``file.fits[EXT]`` for one HDU) or of a folder/glob of FITS
    files (the first image HDU of each), read into memory and cut to a common window."""
    text = str(spec)
    name, ext = split_fits_path(text)
    path = Path(name)
    if path.is_dir() or any(ch in name for ch in "*?"):
        files = list_files(name, FITS_SUFFIXES)
        hdus = [_image_hdus(f, None)[0] for f in files]
        names = [image_name(1, f) for f in files]
    else:
        if not path.exists():
            raise InputError(path, "no such file")
        hdus = _image_hdus(path, ext)
        names = [image_name(k + 1, f"{path}[{h.label}]") for k, h in enumerate(hdus)]
    arrays = [h.data for h in hdus]
    bands = {a.shape[0] for a in arrays}
    if len(bands) > 1:
        raise InputError(text, f"images have different numbers of bands {sorted(bands)}")
    sizes = np.array([a.shape[1:] for a in arrays])
    starts, offsets, c = window_starts(sizes, crop, jitter, seed, text)
    images = np.empty((len(arrays), bands.pop(), c, c), dtype=np.float32)
    for k, (a, start) in enumerate(zip(arrays, starts, strict=True)):
        rows, cols = cutout_slices(a.shape[1:], start, c)
        images[k] = a[:, rows, cols]
    notes = _fill_nan(images, text)
    arcsec, why_not = _common_scale(hdus, names)
    if why_not:
        notes.append(f"{text}: no pixel scale on the sky ({why_not}); shifts in pixels only")
    packed = ", tile-compressed" if any(h.compressed for h in hdus) else ""
    return ImageStack(
        images=images,
        names=names,
        apix=None,
        source=text,
        format=f"FITS ({len(arrays)} image{'s' if len(arrays) > 1 else ''}{packed})",
        arcsec_per_px=arcsec,
        arcsec_from="FITS WCS" if arcsec is not None else None,
        offsets=offsets if (np.abs(offsets) > 0).any() else None,
        notes=notes,
    )


def cutout_slices(shape: tuple[int, ...], start: np.ndarray, size: int) -> tuple[slice, slice]:
    """The ``(rows, columns)`` slices of the ``size x size`` window whose first pixel is
    ``start = (row, column)`` in an image of ``shape = (H, W)``, as astropy's ``Cutout2D``
    cuts it (``mode="strict"``: a window that leaves the image is an error, not padding).

    Cutout2D takes the window's centre in (x, y) pixel coordinates and starts the window at
    ``ceil(centre - size / 2)``, so the centre ``start + (size - 1) / 2`` gives ``start`` back
    for odd and even sizes alike (pinned by a test).
    """
    centre = (float(start[1]) + (size - 1) / 2, float(start[0]) + (size - 1) / 2)  # (x, y)
    cut = Cutout2D(np.broadcast_to(np.float32(0), shape), centre, size, mode="strict", copy=False)
    slices: tuple[slice, slice] = cut.slices_original
    return slices


def celestial_wcs(header: fits.Header) -> tuple[WCS | None, str | None]:
    """The celestial WCS of an image HDU's ``header``, on the image's x and y pixel axes.

    Returns ``(wcs, None)`` with ``wcs`` the 2-axis celestial part (``WCS.celestial``: SIP and
    other distortions kept; pixel coordinates 0-based, x the column and y the row of the
    array as stored, as astropy counts them); ``(None, None)`` when the header has no
    celestial WCS (a plain image); ``(None, why)`` when it has one that cannot serve (not on
    the image's x/y axes, or unreadable). The one reader of image WCSs in emvae: the pixel
    scale (:func:`sky_pixel_scale`) and the sky catalogue (:mod:`emvae.catalog`) both use it.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FITSFixedWarning and friends: the header is as it is
        try:
            wcs = WCS(header)
            if not wcs.has_celestial:
                return None, None
            if sorted((wcs.wcs.lng, wcs.wcs.lat)) != [0, 1]:
                return None, "its celestial WCS axes are not the image's x and y axes"
            return wcs.celestial, None
        except Exception as e:  # any failure of a WCS costs what needs it, not the images
            return None, _wcs_failure(e)


def _wcs_failure(e: Exception) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    return f"its WCS could not be read: {type(e).__name__}: {first}"


def sky_pixel_scale(header: fits.Header) -> tuple[float | None, str | None]:
    """The pixel scale in arcsec per pixel that ``header``'s celestial WCS gives.

    Returns ``(scale, None)``; ``(None, None)`` when the header has no celestial WCS (a plain
    image: nothing to say); ``(None, why)`` when it has one that gives no single scale for the
    image's pixels (unreadable, celestial axes not the image's x/y, non-square pixels). The
    scale is the length of a pixel's side on the projection plane at the reference point, so a
    rotated CD matrix gives the same number as the CDELT it rotates; it is rounded to 12
    significant digits (0.36, not 0.36000000000000004).
    """
    cel, why = celestial_wcs(header)
    if cel is None:
        return None, why
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            units = [u.Unit(str(c) or "deg") for c in cel.wcs.cunit]  # wcslib states degrees
            sx, sy = (
                float((v * unit).to_value(u.arcsec))
                for v, unit in zip(proj_plane_pixel_scales(cel), units, strict=True)
            )
        except Exception as e:  # any failure of a WCS costs the scale only, not the images
            return None, _wcs_failure(e)
    if not (np.isfinite([sx, sy]).all() and sx > 0 and sy > 0):
        return None, f"its WCS gives pixel scales {sx:.6g} x {sy:.6g} arcsec"
    if abs(sx - sy) > _SCALE_RTOL * max(sx, sy):
        return None, f"its pixels are not square on the sky ({sx:.6g} x {sy:.6g} arcsec)"
    return float(f"{(sx + sy) / 2:.12g}"), None


class ImageHeader(NamedTuple):
    """Where an image of a particle table came from in its FITS file."""

    path: Path
    label: str  # the HDU, as the image's name gives it
    header: fits.Header
    shape: tuple[int, int]  # (H, W) of the whole image in the file, before any crop


def image_headers(names: Iterable[str]) -> list[ImageHeader]:
    """The FITS header and size of each image a particle table names, as :func:`read_fits`
    names them: ``k@file[HDU]`` (the k-th image of a file, in HDU ``HDU``: an EXTNAME or a
    number; also what ``file.fits[HDU]`` gave) or ``1@file`` (the first image HDU of a file of a
    folder or glob). Each file is opened once and only headers are read. Raises
    :class:`InputError` naming the file when it is gone or no longer holds that image."""
    parsed = []
    for name in names:
        split = split_image_name(name)
        if split is None:
            raise InputError(name, "is not the name of an image of a FITS file (k@file[HDU])")
        file, ext = split_fits_path(split[1])
        parsed.append((split[0], Path(file), ext))
    found: dict[tuple[int, Path, str | None], ImageHeader] = {}
    for path in dict.fromkeys(p for _, p, _ in parsed):
        if not path.is_file():
            raise InputError(path, "no such file (the run's input; is this the folder it ran in?)")
        with _open(path) as hdul:
            chosen = _choose(hdul, None, path)
            for k, ext in dict.fromkeys((k, e) for k, p, e in parsed if p == path):
                if ext is None or (0 < k <= len(chosen) and chosen[k - 1][0] == ext):
                    if not 0 < k <= len(chosen):
                        raise InputError(path, f"holds {len(chosen)} images, not an image {k}")
                    label, hdu = chosen[k - 1]
                else:  # read as file.fits[EXT]: the one HDU named
                    label, hdu = _choose(hdul, ext, path)[0]
                h, w = (int(n) for n in hdu.shape[-2:])
                found[(k, path, ext)] = ImageHeader(path, label, hdu.header.copy(), (h, w))
    return [found[key] for key in parsed]


def _common_scale(hdus: list[_Image], names: list[str]) -> tuple[float | None, str | None]:
    """The images' one pixel scale, or (None, why) when some have none or they disagree."""
    if all(h.arcsec is None and h.why_not is None for h in hdus):
        return None, None  # no WCS anywhere: FITS read as before, without a word
    for h, name in zip(hdus, names, strict=True):
        if h.arcsec is None:
            return None, f"{name}: {h.why_not or 'no celestial WCS'}"
    scales = np.array([h.arcsec for h in hdus], dtype=np.float64)
    if scales.max() - scales.min() > _SCALE_RTOL * scales.max():
        lo, hi = scales.min(), scales.max()
        return None, f"the images' scales differ, {lo:.6g} to {hi:.6g} arcsec/px"
    return float(scales[0]), None


def _open(path: Path) -> fits.HDUList:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fits.open(path, memmap=False)
    except (OSError, ValueError, TypeError) as e:
        raise InputError(path, f"not a readable FITS file ({e})") from None


def _choose(hdul: fits.HDUList, ext: str | None, path: Path) -> list[tuple[str, Any]]:
    """``(label, HDU)`` of the HDU named ``ext``, or of every image HDU, in file order."""
    if ext is not None:
        key: int | str = int(ext) if ext.lstrip("-").isdigit() else ext
        try:
            return [(ext, hdul[key])]
        except (KeyError, IndexError):
            raise InputError(path, f"has no HDU {ext!r} ({_describe(hdul)})") from None
    chosen = [
        (_label(h, i), h) for i, h in enumerate(hdul) if h.is_image and h.header.get("NAXIS", 0) > 0
    ]
    if not chosen:
        raise InputError(path, f"holds no image, only {_describe(hdul)}")
    return chosen


def _image_hdus(path: Path, ext: str | None) -> list[_Image]:
    """The chosen HDU, or every image HDU: label, ``(bands, H, W)`` float32 array, scale."""
    with _open(path) as hdul:
        out = []
        for label, h in _choose(hdul, ext, path):
            if not h.is_image or h.data is None:
                raise InputError(path, f"HDU {label} is not an image ({_describe(hdul)})")
            a = np.asarray(h.data, dtype=np.float32)
            if a.ndim == 2:
                a = a[np.newaxis]
            if a.ndim != 3:
                raise InputError(path, f"HDU {label} has {a.ndim} axes; expected 2 or 3")
            arcsec, why_not = sky_pixel_scale(h.header)
            out.append(_Image(label, a, arcsec, why_not, isinstance(h, fits.CompImageHDU)))
    return out


def _label(hdu: Any, index: int) -> str:
    """How an image names its HDU: its EXTNAME, else its number (the primary HDU, and
    astropy's default name for a tile-compressed HDU without one, are numbers)."""
    return hdu.name if hdu.name not in ("", "PRIMARY", "COMPRESSED_IMAGE") else str(index)


def _describe(hdul: fits.HDUList) -> str:
    return "; ".join(
        f"{i}: {type(h).__name__}{' ' + repr(h.name) if h.name else ''}"
        f"{'' if h.header.get('NAXIS', 0) else ' without data'}"
        for i, h in enumerate(hdul)
    )


def _fill_nan(images: np.ndarray, source: str) -> list[str]:
    """NaN/infinite pixels of ``images`` (N, bands, H, W) -> their image's median, in place."""
    bad = ~np.isfinite(images)
    hit = np.flatnonzero(bad.any(axis=(1, 2, 3)))  # the images to fill
    for k in hit:
        good = images[k][~bad[k]]
        if good.size == 0:
            raise InputError(source, f"image {k + 1} has no finite pixels")
        images[k][bad[k]] = np.median(good)
    if not hit.size:
        return []
    return [
        f"{int(bad.sum())} NaN/infinite pixels in {hit.size} image(s) of {source} were filled "
        "with the median of each image's finite pixels"
    ]
