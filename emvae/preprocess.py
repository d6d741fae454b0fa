"""Preprocessing applied once, as images are read: centre crop, Fourier downsampling, contrast
inversion, per-image normalisation. :func:`write_cache` streams a whole stack through it into an
HDF5 (or MRCS) file in bounded memory; ``fit`` memory-maps that file afterwards.

Order: crop (input pixels) -> downsample to ``size`` -> invert -> normalise (output pixels).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import scipy.fft

from emvae.config import GALAXY_CROP, GALAXY_JITTER, GALAXY_SIZE
from emvae.errors import ConfigError, InputError
from emvae.io.pictures import window_starts
from emvae.io.stack import ImageStack, image_name
from emvae.safety import atomic_output, check_free_space, refuse_existing

#: Per-image normalisations (--norm).
Normalize = Literal["none", "background", "image"]
NORMALIZE: tuple[str, ...] = get_args(Normalize)
CHUNK = 1024  # images per preprocessing chunk (memory: about 4 * CHUNK * D_in^2 * 4 bytes)


@dataclass
class Preprocess:
    """What is done to every image before training (stored in the run's config).

    size: output box D in pixels (Fourier downsampling; None keeps the size).
    crop: centre window in input pixels, cut before downsampling (None: whole image);
        ``jitter`` moves each window by a random integer in [-jitter, jitter] px (``seed``).
    invert: multiply by -1 (dark particles on a bright background -> bright on dark).
    normalize: ``background``: per image (and channel), subtract the mean and divide by the
        standard deviation of the pixels farther than ``bg_radius`` px from the centre
        (default 3/4 of the half box); ``image``: the same over all pixels; ``none``.
    clip: clip to [0, 1] at the end (set for 8-bit pictures, whose Fourier resampling
        overshoots [0, 1] slightly near sharp edges, which a Bernoulli likelihood refuses).
    """

    size: int | None = None
    crop: int | None = None
    jitter: int = 0
    seed: int = 0
    invert: bool = False
    normalize: str = "none"
    bg_radius: float | None = None
    clip: bool = False  # clip to [0, 1] last (pictures: resampling overshoots a little)

    def validate(self) -> None:
        """Refuse settings out of range, one line naming the option."""
        if self.size is not None and self.size < 2:
            raise ConfigError(f"-D/--downsample must be at least 2, got {self.size}")
        if self.crop is not None and self.crop < 2:
            raise ConfigError(f"--crop must be at least 2, got {self.crop}")
        if self.jitter < 0:
            raise ConfigError(f"--jitter must be >= 0, got {self.jitter}")
        if self.normalize not in NORMALIZE:
            raise ConfigError(
                f"unknown --normalize {self.normalize!r}; choose one of {', '.join(NORMALIZE)}"
            )

    @property
    def active(self) -> bool:
        """Whether these settings change the images at all."""
        return self != Preprocess(seed=self.seed)

    @classmethod
    def for_input(
        cls,
        kind: str,
        size: int | None = None,
        crop: int | None = None,
        jitter: int | None = None,
        **kwargs: Any,
    ) -> Preprocess:
        """Settings with the defaults of an input kind (:func:`emvae.io.input_kind`): pictures
        get the Galaxy Zoo window (crop 207, jitter 12 px, -D 64) and clipping; ``crop=0``
        means no crop."""
        if kind == "pictures":
            crop = GALAXY_CROP if crop is None else crop
            jitter = GALAXY_JITTER if jitter is None else jitter
            size = GALAXY_SIZE if size is None else size
            kwargs.setdefault("clip", True)
        return cls(size=size, crop=crop or None, jitter=jitter or 0, **kwargs)

    @classmethod
    def for_inputs(
        cls, specs: Sequence[str | os.PathLike[str]] | str | os.PathLike[str], **options: Any
    ) -> Preprocess:
        """:meth:`for_input` for the kind of the first of ``specs`` (as the readers take them)."""
        from emvae.io import input_kind

        first = specs if isinstance(specs, (str, os.PathLike)) else (list(specs) or ["?"])[0]
        return cls.for_input(input_kind(first), **options)

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain values (config.json's data section, the cache's attributes)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Preprocess:
        """Settings from :meth:`to_dict`'s form (None: the defaults)."""
        return cls(**(d or {}))


@dataclass
class Prepared:
    """A stack as the model sees it: ``apply`` maps a chunk of input images ``(B, C, D_in,
    D_in)`` with their 0-based stack indices to ``(B, C, D, D)`` float32.

    scale: input pixels per output pixel; offsets ``(N, 2)``: where the output box's centre lies
    in each input picture, relative to its centre, in input pixels (+x right, +y up), or None
    when the centres coincide. Shifts reported to the user are ``scale * s + offset``.
    """

    size: int
    channels: int
    scale: float
    offsets: np.ndarray | None
    apply: Callable[[np.ndarray, np.ndarray], np.ndarray]


def prepare(stack: ImageStack, pre: Preprocess) -> Prepared:
    """Plan the preprocessing of ``stack`` (nothing is read)."""
    pre.validate()
    n_in = stack.size
    crop = None if stack.windowed else pre.crop  # windowed: the reader cut them already
    if crop is not None and crop > n_in:
        raise ConfigError(f"--crop {crop} is larger than the {n_in}-px images of {stack.source}")
    starts = own = None
    c = n_in
    if crop is not None:
        sizes = np.full((len(stack), 2), n_in)
        starts, own, c = window_starts(sizes, crop, pre.jitter, pre.seed, stack.source)
    size = pre.size or c
    if size > c:
        raise ConfigError(f"-D {size} is larger than the {c}-px images; emvae only downsamples")
    if size != c:  # the resampled box's centre sits (1 - c/size)/2 px off the window's centre
        s = c / size
        centre = np.broadcast_to(np.array([(1 - s) / 2, -(1 - s) / 2]), (len(stack), 2))
        own = centre if own is None else own + centre
    offsets = stack.offsets
    if own is not None:
        offsets = stack.scale * own + (0 if offsets is None else offsets)
    if offsets is not None and not np.any(offsets):
        offsets = None
    scale = stack.scale * c / size
    radius = pre.bg_radius if pre.bg_radius is not None else 0.75 * size / 2
    background = ~circle(size, radius) if pre.normalize == "background" else None
    if background is not None and not background.any():
        raise ConfigError(f"--bg-radius {radius:g} leaves no background pixels in a {size}-px box")

    def apply(chunk: np.ndarray, idx: np.ndarray) -> np.ndarray:
        x = np.asarray(chunk, dtype=np.float32)
        if starts is not None:
            x = _cut(x, starts[idx], c)
        if size != c:
            x = fourier_downsample(x, size)
        if pre.invert:
            x = -x
        if pre.normalize != "none":
            x = normalize_images(x, background)
        if pre.clip:
            x = np.clip(x, 0.0, 1.0)
        return np.ascontiguousarray(x, dtype=np.float32)

    offsets = None if offsets is None else np.array(offsets, dtype=np.float64)
    return Prepared(size, stack.channels, scale, offsets, apply)


def prepare_for(stack: ImageStack, settings: dict[str, Any] | None) -> Prepared:
    """Plan the preprocessing a run recorded (``DataConfig.preprocess``) for ``stack``: none
    when the stack is an emvae cache made with those settings, an error when made with others.
    """
    pre = Preprocess.from_dict(settings)
    if stack.preprocessed is None:
        return prepare(stack, pre)
    if Preprocess.from_dict(stack.preprocessed) != pre:
        raise ConfigError(
            f"{stack.source} was preprocessed with {_describe(stack.preprocessed)}, but the "
            f"run expects {_describe(pre.to_dict())}"
        )
    return prepare(stack, Preprocess(seed=pre.seed))


def _describe(settings: dict[str, Any]) -> str:
    d = Preprocess.from_dict(settings)
    parts = [
        f"{k}={v}" for k, v in d.to_dict().items() if k != "seed" and v != getattr(Preprocess(), k)
    ]
    return ", ".join(parts) or "no preprocessing"


def fourier_downsample(images: np.ndarray, size: int) -> np.ndarray:
    """Band-limit and resample ``(..., n, n)`` images to ``(..., size, size)``.

    Keeps the ``size x size`` lowest spatial frequencies (those a ``size``-px box can hold) and
    scales by ``(size / n)^2`` so the mean is unchanged. Output pixel j samples input position
    ``j * n / size``: pixel 0 stays pixel 0 and RELION's centre ``n // 2`` maps to ``size // 2``
    (for even sizes). Computed with real FFTs in float32 (float64 input stays float64).
    """
    n = images.shape[-1]
    if size == n:
        return images
    if size > n:
        raise ValueError("fourier_downsample only reduces the size")
    f = scipy.fft.rfft2(images, workers=-1)
    rows = np.r_[0 : (size + 1) // 2, n - size // 2 : n]
    f = f[..., rows, : size // 2 + 1]
    out: np.ndarray = scipy.fft.irfft2(f, s=(size, size), workers=-1)
    out *= (size / n) ** 2
    return out


def normalize_images(images: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
    """Per image and channel: ``(x - mean) / std`` over the pixels selected by ``where``
    (``(D, D)`` bool) or over all pixels. A constant image is only centred."""
    flat = images.reshape(*images.shape[:2], -1)
    sel = flat if where is None else flat[..., where.ravel()]
    mean = sel.mean(-1, keepdims=True, dtype=np.float64)
    std = sel.std(-1, keepdims=True, dtype=np.float64)
    std[std == 0] = 1.0
    result: np.ndarray = ((flat - mean) / std).astype(np.float32).reshape(images.shape)
    return result


def circle(size: int, radius: float) -> np.ndarray:
    """``(size, size)`` bool: pixels within ``radius`` px of the box centre ((size-1)/2)."""
    r = np.arange(size) - (size - 1) / 2
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius**2


def _cut(x: np.ndarray, starts: np.ndarray, c: int) -> np.ndarray:
    """Windows ``(B, C, c, c)`` of ``x`` ``(B, C, H, W)`` starting at ``starts`` ``(B, 2)``
    (row, column), gathered in one indexing operation."""
    if (starts == starts[0]).all():
        r, col = starts[0]
        return x[..., r : r + c, col : col + c]
    span = np.arange(c)
    rows = (starts[:, 0, None] + span)[:, :, None]  # (B, c, 1)
    cols = (starts[:, 1, None] + span)[:, None, :]  # (B, 1, c)
    picked = x[np.arange(len(x))[:, None, None], :, rows, cols]  # (B, c, c, C)
    return np.moveaxis(picked, -1, 1)


def iter_chunks(
    stack: ImageStack, prepared: Prepared, chunk: int = CHUNK
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, processed images)`` over the whole stack, ``chunk`` images at a time,
    reading the next chunk from disk while the current one is processed."""
    from concurrent.futures import ThreadPoolExecutor

    starts = range(0, len(stack), chunk)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = [pool.submit(_read, stack, s, chunk) for s in starts[:1]]
        for start in starts:
            raw = pending.pop().result()
            if start + chunk < len(stack):  # read the next chunk while this one is processed
                pending.append(pool.submit(_read, stack, start + chunk, chunk))
            idx = np.arange(start, start + len(raw))
            out = prepared.apply(raw, idx)
            _check_finite(stack, out, start)
            yield start, out


def _read(stack: ImageStack, start: int, chunk: int) -> np.ndarray:
    """Images ``start:start+chunk`` as a writable in-memory array (a memory-mapped slice is
    copied here, in the reading thread)."""
    x = stack.images[start : start + chunk]
    own = isinstance(x, np.ndarray) and x.flags.writeable and not isinstance(x, np.memmap)
    return x if own else np.array(x)


#: An image whose values stray this many times the typical image's spread from the typical
#: level is damaged (one such image sets the stack's normalisation and flattens every other).
OUTLIER_FACTOR = 1e6


def _check_finite(stack: ImageStack, chunk: np.ndarray, start: int) -> None:
    """Refuse NaN/Inf and absurd values (e.g. 3e38 in a stack of unit-scale images), naming
    the first image that holds them."""
    flat = chunk.reshape(len(chunk), -1)
    ok = np.isfinite(flat).all(axis=1)
    if not ok.all():
        raise InputError(
            stack.source,
            f"{_which(stack, start + int(np.argmin(ok)))} contains NaN or infinite values",
        )
    level = np.median(flat.mean(axis=1, dtype=np.float64))
    spread = np.median(flat.std(axis=1, dtype=np.float64))
    if len(flat) > 1 and spread > 0:
        peak = np.maximum(flat.max(axis=1) - level, level - flat.min(axis=1))
        bad = peak > OUTLIER_FACTOR * spread
        if bad.any():
            k = int(np.argmax(bad))
            raise InputError(
                stack.source,
                f"{_which(stack, start + k)} holds values from {flat[k].min():.3g} to "
                f"{flat[k].max():.3g}, {peak[k] / spread:.2g} times the spread of a typical "
                "image: a damaged image? leave it out with --ind (a list of the indices to keep)",
            )


def _which(stack: ImageStack, k: int) -> str:
    """'image k (index i)': 1-based, and the 0-based index in the input that ``--ind`` takes,
    with its name when that says more."""
    name = stack.names[k]
    index = int(stack.rows[k]) if stack.rows is not None else k
    named = "" if name == image_name(k + 1, stack.source) else f", {name}"
    return f"image {k + 1} (index {index}{named})"


def write_cache(
    stack: ImageStack,
    pre: Preprocess,
    out: str | os.PathLike[str],
    *,
    force: bool = False,
    chunk: int = CHUNK,
    advance: Callable[[int], None] | None = None,
) -> Path:
    """Preprocess every image of ``stack`` into ``out`` (``.h5`` or ``.mrcs``), streaming.

    Memory stays near ``chunk`` input images (plus the next one being read), whatever the stack
    size. The HDF5 cache keeps the image names, input rows, window offsets and settings, so
    ``fit``/``encode`` map results back to the original input; an MRCS cache is a plain stack
    (one channel only) with the new pixel size in its header.
    """
    from emvae.io.arrays import H5_SUFFIXES, create_cache, finish_cache
    from emvae.io.mrc import MRC_SUFFIXES

    path = Path(out)
    refuse_existing(path, force)
    suffix = path.suffix.lower()
    if stack.preprocessed is not None:
        raise ConfigError(f"{stack.source} is already an emvae cache")
    prepared = prepare(stack, pre)
    n, c, d = len(stack), prepared.channels, prepared.size
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        if suffix in H5_SUFFIXES:
            check_free_space(path.parent, n * c * d * d * 4)
            f, ds = create_cache(tmp, n, c, d)
            with f:
                for start, x in iter_chunks(stack, prepared, chunk):
                    ds[start : start + len(x)] = x
                    if advance:
                        advance(len(x))
                finish_cache(f, stack, pre.to_dict(), prepared, stack.likelihood)
        elif suffix in MRC_SUFFIXES:
            if c != 1:
                raise ConfigError(f"{path}: MRC holds one channel; write {c}-channel images to .h5")
            from emvae.io.mrc import new_stack_mmap

            with new_stack_mmap(tmp, path, n, d) as mrc:
                for start, x in iter_chunks(stack, prepared, chunk):
                    mrc.data[start : start + len(x)] = x[:, 0]
                    if advance:
                        advance(len(x))
                if stack.apix:
                    mrc.voxel_size = stack.apix * prepared.scale
                mrc.reset_header_stats()
        else:
            raise ConfigError(f"{path}: write the cache as .h5 or .mrcs")
    return path
