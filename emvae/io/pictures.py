"""Folders (or globs) of JPEG / PNG pictures, e.g. Galaxy Zoo, through Pillow.

Pictures may differ in size: each is cut to a ``crop x crop`` window about its centre, moved by
a random ``jitter`` (drawn once per picture from ``seed``), as the paper does for Galaxy Zoo.
"""

from __future__ import annotations

import glob
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from emvae.errors import InputError
from emvae.io.stack import ImageStack, image_name

PICTURE_SUFFIXES = (".jpg", ".jpeg", ".png")
# FITS files under a compression suffix: gzipped, or tile-compressed by fpack (".fz").
PACKED_FITS_SUFFIXES = (
    ".fits.gz",
    ".fit.gz",
    ".fts.gz",
    ".fits.fz",
    ".fit.fz",
    ".fts.fz",
    ".fz",
)
_GREY = {"1", "L", "I", "I;16", "I;16B", "I;16L", "F", "LA"}


def list_files(spec: str | os.PathLike[str], suffixes: tuple[str, ...]) -> list[Path]:
    """The files a folder or a glob pattern names whose suffix is in ``suffixes``, sorted."""
    text = str(spec)
    if any(ch in text for ch in "*?["):
        found = [Path(f) for f in glob.glob(text)]
    else:
        p = Path(text)
        if not p.exists():
            raise InputError(p, "no such file or directory")
        found = list(p.iterdir()) if p.is_dir() else [p]
    files = sorted(f for f in found if f.is_file() and file_suffix(f) in suffixes)
    if not files:
        raise InputError(text, f"no {'/'.join(s.lstrip('.') for s in suffixes)} files here")
    return files


def file_suffix(p: Path) -> str:
    """The suffix that names a format (``.fits`` for ``x.fits.gz`` and ``x.fits.fz``), lower
    case."""
    name = p.name.lower()
    return ".fits" if name.endswith(PACKED_FITS_SUFFIXES) else p.suffix.lower()


def window_starts(
    sizes: np.ndarray, crop: int | None, jitter: int = 0, seed: int = 0, what: str = "image"
) -> tuple[np.ndarray, np.ndarray, int]:
    """Where each image's ``crop x crop`` window starts, and where its centre lies.

    sizes: ``(N, 2)`` (height, width) in pixels. The window is centred on pixel
    ``(H // 2, W // 2)`` (RELION's centre, kept by cropping) and moved by a random integer in
    ``[-jitter, jitter]`` per axis, limited to stay inside the image.
    Returns (starts ``(N, 2)`` (row, column), offsets ``(N, 2)`` of the window's centre from the
    image's centre in pixels, +x right, +y up, and the window size).
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if crop is None:
        if not (sizes == sizes[0]).all() or sizes[0, 0] != sizes[0, 1]:
            shown = ", ".join(sorted({f"{w}x{h}" for h, w in sizes[:1000]})[:5])
            raise InputError(
                what,
                f"images differ in size or are not square ({shown}); "
                "give --crop N to cut a common N x N window",
            )
        crop = int(sizes[0, 0])
    small = sizes.min(1) < crop
    if small.any():
        i = int(np.argmax(small))
        raise InputError(
            what, f"image {i + 1} is {sizes[i, 1]}x{sizes[i, 0]}, smaller than the {crop}-px crop"
        )
    base = sizes // 2 - crop // 2
    move = np.zeros_like(sizes)
    if jitter > 0:
        move = np.random.default_rng(seed).integers(-jitter, jitter + 1, size=sizes.shape)
    starts = np.clip(base + move, 0, sizes - crop)
    centre = starts + (crop - 1) / 2 - (sizes - 1) / 2  # (row, column) of the window centre
    offsets = np.stack([centre[:, 1], -centre[:, 0]], axis=1)
    return starts, offsets, crop


class PictureSource:
    """Decoded, windowed pictures ``(N, C, crop, crop)`` float32 in [0, 1], decoded on read."""

    def __init__(self, files: list[Path], channels: int, starts: np.ndarray, crop: int) -> None:
        self.files, self.starts, self.crop = files, starts, crop
        self.shape = (len(files), channels, crop, crop)
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: int | slice | np.ndarray) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            result: np.ndarray = self[np.array([key])][0]
            return result
        idx = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key)
        out = np.empty((len(idx), *self.shape[1:]), dtype=np.float32)
        c = self.crop

        def one(j: int) -> None:  # Pillow decodes without holding the GIL
            i = idx[j]
            r, col = self.starts[i]
            out[j] = decode(self.files[i], self.shape[1])[:, r : r + c, col : col + c]

        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            list(pool.map(one, range(len(idx))))
        return out


#: Pictures larger than this many pixels are refused (``EMVAE_MAX_PICTURE_PIXELS`` raises it).
MAX_PIXELS = int(os.environ.get("EMVAE_MAX_PICTURE_PIXELS", 50_000_000))
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I")


def _too_large(path: Path, size: str) -> InputError:
    return InputError(
        path,
        f"{size} is more than the {MAX_PIXELS} pixels a picture may have here (set "
        f"EMVAE_MAX_PICTURE_PIXELS to raise the limit)",
    )


def _open_picture(path: Path) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError:
        raise _too_large(path, "the picture") from None
    if im.width * im.height > MAX_PIXELS:
        im.close()
        raise _too_large(path, f"{im.width}x{im.height}")
    return im


def decode(path: Path, channels: int) -> np.ndarray:
    """One picture as ``(C, H, W)`` float32 in [0, 1] (8- or 16-bit: each scaled by its own
    bit depth, also among pictures of the other depth), alpha dropped."""
    try:
        with _open_picture(path) as im:
            im.load()
            if im.mode in _SIXTEEN_BIT:  # grey: never through 8-bit RGB (that saturates)
                a = np.asarray(im).astype(np.float32) / 65535.0
                a = np.repeat(a[np.newaxis], channels, 0)
                return a
            im = im.convert("RGB" if channels == 3 else "L")
            a = np.asarray(im)
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
        raise InputError(path, f"unreadable image ({e})") from None
    a = a.astype(np.float32) / 255.0
    return a[np.newaxis] if a.ndim == 2 else np.moveaxis(a, -1, 0)


def read_pictures(
    spec: str | os.PathLike[str], crop: int | None = None, jitter: int = 0, seed: int = 0
) -> ImageStack:
    """JPEG/PNG files of a folder, a glob or one file, as a stack (RGB kept as 3 channels;
    all-grey pictures give 1 channel). Only headers are read here; pixels on demand."""
    files = list_files(spec, PICTURE_SUFFIXES)
    sizes, modes = [], set()
    for f in files:
        try:
            with _open_picture(f) as im:
                sizes.append((im.height, im.width))
                modes.add(im.mode)
        except (OSError, UnidentifiedImageError) as e:
            raise InputError(f, f"unreadable image ({e})") from None
    channels = 1 if modes <= _GREY else 3
    starts, offsets, c = window_starts(np.array(sizes), crop, jitter, seed, str(spec))
    moved = crop is not None and (np.abs(offsets) > 0).any()
    return ImageStack(
        images=PictureSource(files, channels, starts, c),
        names=[image_name(1, f) for f in files],
        apix=None,
        source=str(spec),
        format=f"{len(files)} JPEG/PNG pictures ({'RGB' if channels == 3 else 'grey'})",
        offsets=offsets if moved else None,
        likelihood="bernoulli",
    )
