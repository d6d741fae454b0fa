"""``emvae preprocess`` as one library call: :func:`emvae.preprocessing.preprocess_stack`."""

from __future__ import annotations

import re

import mrcfile
import numpy as np
import pytest

from emvae.errors import OutputExistsError
from emvae.io import open_stack
from emvae.preprocess import Preprocess, prepare
from emvae.preprocessing import preprocess_stack


def test_the_cache_holds_the_stack_prepared_and_the_line_names_it(tiny_stack, tmp_path):
    """The cache holds every image prepared as the options say (jittered windows, Fourier
    downsampling, background normalisation), with its names and settings; the returned line
    names the cache and its number of images; a stack without notes says nothing."""
    out, said = tmp_path / "c.h5", []
    line = preprocess_stack(
        [str(tiny_stack)], out, size=8, crop=14, jitter=1, seed=4, normalize="background",
        chunk=7, progress=False, say=said.append,
    )  # fmt: skip
    assert said == []
    assert re.fullmatch(rf"wrote {re.escape(str(out))} \(60 images, \d+ images/s\)", line)
    stack = open_stack(tiny_stack)
    pre = Preprocess(size=8, crop=14, jitter=1, seed=4, normalize="background")
    whole = prepare(stack, pre).apply(stack.images[:], np.arange(60))
    cached = open_stack(out)
    assert cached.images.shape == (60, 1, 8, 8)
    assert np.array_equal(cached.images[:], whole)
    assert cached.names == stack.names and cached.preprocessed == pre.to_dict()


def test_notes_come_before_the_output_is_checked(tiny_stack, tmp_path):
    """A cube MRC whose header marks a volume is read as images, with a note: handed to
    ``say`` before the output is refused (an input named as the output, even with force);
    ``chunk`` 0 is one image at a time."""
    with mrcfile.open(tiny_stack) as m:
        cube = np.array(m.data[:16])
    vol = tmp_path / "vol.mrc"
    with mrcfile.new(vol) as m:
        m.set_data(cube)  # a 3-D array: space group 1, a volume
    said: list[str] = []
    with pytest.raises(OutputExistsError, match="is an input of this command"):
        preprocess_stack([str(vol)], vol, force=True, progress=False, say=said.append)
    assert said == [
        f"note: {vol}: the header marks a 3-D volume (16 x 16 x 16, space group 1..230); "
        "its 16 z-sections are read as 16 images"
    ]
    out = tmp_path / "c.mrcs"
    line = preprocess_stack([str(vol)], out, chunk=0, progress=False, say=said.append)
    assert line.startswith(f"wrote {out} (16 images, ") and len(said) == 2
    with mrcfile.open(out) as m:
        assert np.array_equal(m.data, cube)
