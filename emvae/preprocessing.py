"""What ``emvae preprocess`` does: the input opened for its preprocessing, the output checked,
every image streamed through the preprocessing into a cache (:func:`emvae.preprocess.write_cache`)
and the line it prints at the end (:func:`preprocess_stack`).

Its own module because it opens the input as :mod:`emvae.particles` does (cutting pictures to
their windows as they are read), and :mod:`emvae.particles` draws on :mod:`emvae.preprocess`."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from emvae.io import input_files
from emvae.particles import open_images
from emvae.preprocess import CHUNK, Normalize, Preprocess, write_cache
from emvae.progress import training_progress
from emvae.safety import check_writable, refuse_inputs_as_outputs


def preprocess_stack(
    inputs: Sequence[str],
    out: str | os.PathLike[str],
    *,
    datadir: str | None = None,
    ind: str | None = None,
    apix: float | None = None,
    size: int | None = None,
    crop: int | None = None,
    jitter: int | None = None,
    seed: int = 0,
    invert: bool = False,
    normalize: Normalize = "none",
    bg_radius: float | None = None,
    chunk: int = CHUNK,
    force: bool = False,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> str:
    """``emvae preprocess``: ``inputs`` (with ``datadir``, ``ind``, ``apix`` as the readers
    take them) prepared as :class:`Preprocess` says (``size`` px, the output box; ``crop`` and
    ``jitter``, input px; ``seed``; ``invert``; ``normalize``; ``bg_radius``, output px; None:
    the input kind's default, :meth:`Preprocess.for_input`) into the cache ``out`` (.h5 or
    .mrcs), ``chunk`` images at a time (at least 1), over an existing ``out`` with ``force``.

    The input's notes go to ``say`` (``note: ...``), one line each, before any check of the
    output; returns the line that names the cache, its number of images and the rate
    (images/s, wall clock of the writing)."""
    out = Path(out)
    pre = Preprocess.for_inputs(
        inputs, size=size, crop=crop, jitter=jitter, seed=seed, invert=invert,
        normalize=normalize, bg_radius=bg_radius,
    )  # fmt: skip
    stack = open_images(inputs, pre, datadir, ind, apix)
    for note in stack.notes:
        say(f"note: {note}")
    refuse_inputs_as_outputs([out], input_files(stack.inputs, stack.names))
    check_writable(out.parent)
    t0 = time.perf_counter()
    with training_progress(progress) as bar:
        advance = bar.task("preprocessing", len(stack))
        write_cache(stack, pre, out, force=force, chunk=max(1, chunk), advance=advance)
    dt = time.perf_counter() - t0
    return f"wrote {out} ({len(stack)} images, {len(stack) / dt:.0f} images/s)"
