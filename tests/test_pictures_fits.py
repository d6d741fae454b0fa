"""JPEG/PNG folders (Galaxy Zoo) and FITS images."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from PIL import Image

from emvae.errors import InputError
from emvae.io import open_stack
from emvae.io.pictures import window_starts
from emvae.preprocess import Preprocess, prepare


def _rgb(size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def test_png_folder_keeps_rgb_and_scales_to_unit_range(tmp_path):
    pics = [_rgb(20, k) for k in range(3)]
    for k, a in enumerate(pics):
        Image.fromarray(a).save(tmp_path / f"g{k}.png")
    s = open_stack(tmp_path)
    assert s.images.shape == (3, 3, 20, 20) and s.likelihood == "bernoulli"
    got = s.images[:]
    assert np.array_equal(got[1], np.moveaxis(pics[1], -1, 0) / np.float32(255))
    assert s.names[2].endswith("g2.png")


def test_grey_pictures_give_one_channel(tmp_path):
    for k in range(2):
        Image.fromarray(_rgb(10, k)[..., 0]).save(tmp_path / f"g{k}.png")
    assert open_stack(tmp_path).images.shape == (2, 1, 10, 10)


def test_jittered_window_offsets_point_at_the_window_centre(tmp_path):
    """The reported offset (+x right, +y up) is where the window's centre lies in the picture."""
    a = np.zeros((40, 30, 3), dtype=np.uint8)
    a[21, 13] = 255  # a marked pixel: row 21, column 13 (inside every possible window)
    Image.fromarray(a).save(tmp_path / "p.png")
    s = open_stack(tmp_path / "p.png", crop=20, jitter=4, seed=3)
    ((r, c),) = np.argwhere(s.images[0][0] > 0.5)
    # the mark relative to the picture's centre (14.5, 19.5), +x right, +y up ...
    mark = np.array([13 - 14.5, -(21 - 19.5)])
    # ... equals its position relative to the window's centre plus the window's offset
    assert np.allclose(np.array([c - 9.5, -(r - 9.5)]) + s.offsets[0], mark)
    starts, _, _ = window_starts(np.array([[40, 30]]), 20, 4, 3)
    assert not np.array_equal(starts[0], [10, 5])  # this seed moves the window


def test_two_jittered_folders_keep_every_window_offset(tmp_path):
    """Concatenated inputs keep each image's offset (it corrects the reported shifts)."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        for k in range(2):
            Image.fromarray(_rgb(40, k)).save(tmp_path / folder / f"g{k}.png")
    one = open_stack(tmp_path / "a", crop=20, jitter=4, seed=3)
    both = open_stack([tmp_path / "a", tmp_path / "b"], crop=20, jitter=4, seed=3)
    assert both.offsets is not None and both.offsets.shape == (4, 2)
    assert np.array_equal(both.offsets[:2], one.offsets) and both.windowed
    assert list(both.rows) == [0, 1, 2, 3] and both.names[3].endswith("b/g1.png")


def test_galaxy_defaults_give_64px_windows(tmp_path):
    for k in range(2):
        Image.fromarray(_rgb(424, k)).save(tmp_path / f"g{k}.jpg")
    pre = Preprocess.for_input("pictures")
    assert (pre.crop, pre.jitter, pre.size, pre.clip) == (207, 12, 64, True)
    s = open_stack(tmp_path, crop=pre.crop, jitter=pre.jitter)
    assert s.images.shape == (2, 3, 207, 207)
    out = prepare(s, pre).apply(s.images[:], np.arange(2))
    assert out.shape == (2, 3, 64, 64) and out.min() >= 0 and out.max() <= 1


def test_picture_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no JPEG, PNG or FITS files"):
        open_stack(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(InputError, match=r"x.jpg: unreadable image"):
        open_stack(bad)
    trunc = tmp_path / "trunc"
    trunc.mkdir()
    Image.fromarray(_rgb(64, 0)).save(trunc / "t.jpg", quality=95)
    data = (trunc / "t.jpg").read_bytes()
    (trunc / "t.jpg").write_bytes(data[: len(data) // 2])
    s = open_stack(trunc)  # headers are fine; the pixels are not
    with pytest.raises(InputError, match=r"t.jpg: unreadable image"):
        s.images[:]
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(_rgb(20, 0)).save(mixed / "a.png")
    Image.fromarray(_rgb(24, 0)).save(mixed / "b.png")
    with pytest.raises(InputError, match="differ in size.*--crop"):
        open_stack(mixed)
    assert open_stack(mixed, crop=16).images.shape == (2, 3, 16, 16)


def test_fits_scaling_cubes_hdus_and_nan(tmp_path):
    raw = np.arange(64, dtype=np.int16).reshape(8, 8)
    hdu = fits.PrimaryHDU(raw)
    hdu.header["BSCALE"], hdu.header["BZERO"] = 0.5, 100.0
    hdu.writeto(tmp_path / "scaled.fits")
    s = open_stack(tmp_path / "scaled.fits")
    assert np.allclose(s.images[0, 0], raw * 0.5 + 100.0)  # BSCALE/BZERO honoured

    cube = np.random.default_rng(0).normal(size=(3, 10, 10)).astype(np.float32)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(cube, name="BANDS")]).writeto(
        tmp_path / "cube.fits"
    )
    s = open_stack(tmp_path / "cube.fits")
    assert s.images.shape == (1, 3, 10, 10) and np.array_equal(s.images[0], cube)
    assert np.array_equal(open_stack(f"{tmp_path / 'cube.fits'}[BANDS]").images[0], cube)

    nan = np.ones((6, 6), np.float32)
    nan[1, 2] = np.nan
    nan[0, 0] = 3.0
    fits.PrimaryHDU(nan).writeto(tmp_path / "nan.fits")
    s = open_stack(tmp_path / "nan.fits")
    assert s.images[0, 0, 1, 2] == 1.0  # the median of the finite pixels
    assert s.notes and "1 NaN/infinite pixels" in s.notes[0]


def test_fits_table_only_and_missing_hdu_are_refused(tmp_path):
    table = fits.BinTableHDU.from_columns([fits.Column(name="a", format="E", array=[1.0])])
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(tmp_path / "cat.fits")
    with pytest.raises(InputError, match="cat.fits: holds no image, only .*BinTableHDU"):
        open_stack(tmp_path / "cat.fits")
    with pytest.raises(InputError, match="has no HDU 'SCI'"):
        open_stack(f"{tmp_path / 'cat.fits'}[SCI]")
