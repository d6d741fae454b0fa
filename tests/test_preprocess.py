"""Fourier downsampling, crops, normalisation, the streamed cache and the frame of shifts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emvae.config import ModelConfig
from emvae.data import load_images
from emvae.io import open_stack, write_mrc
from emvae.models import SpatialVAE
from emvae.objective import elbo_terms
from emvae.preprocess import Preprocess, circle, fourier_downsample, prepare, write_cache


def _smooth(n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A periodic function with frequencies below size/2, sampled on n and on size pixels at
    input positions j * n / size (the grid Fourier downsampling promises)."""

    def f(x, y):  # x, y in input pixels; period n
        w = 2 * np.pi / n
        return 1.5 + np.cos(w * 3 * x) + 0.5 * np.sin(w * (2 * x + 5 * y)) - 0.3 * np.cos(w * 7 * y)

    j = np.arange(n)
    k = np.arange(size) * n / size
    return f(j[None, :], j[:, None]), f(k[None, :], k[:, None])


@pytest.mark.parametrize("n, size", [(64, 32), (64, 24), (63, 21), (50, 17)])
def test_fourier_downsampling_is_band_limited_resampling(n, size):
    full, expected = _smooth(n, size)
    got = fourier_downsample(full[None, None], size)[0, 0]
    assert np.abs(got - expected).max() < 1e-9
    noise = np.random.default_rng(0).normal(3.0, 1.0, size=(4, 1, n, n))
    assert np.allclose(fourier_downsample(noise, size).mean((2, 3)), noise.mean((2, 3)))


def test_float32_downsampling_stays_float32():
    x = np.random.default_rng(0).normal(size=(2, 1, 32, 32)).astype(np.float32)
    assert fourier_downsample(x, 16).dtype == np.float32


def test_crop_keeps_relion_centre_and_background_normalisation(tmp_path):
    imgs = np.random.default_rng(0).normal(5.0, 2.0, size=(3, 1, 20, 20)).astype(np.float32)
    imgs[:, 0, 10, 10] = 100.0  # RELION's centre pixel W // 2
    write_mrc(tmp_path / "s.mrcs", imgs[:, 0])
    s = open_stack(tmp_path / "s.mrcs")
    for crop in (12, 13):
        out = prepare(s, Preprocess(crop=crop)).apply(s.images[:], np.arange(3))
        assert out[0, 0, crop // 2, crop // 2] == 100.0
    pre = Preprocess(normalize="background", bg_radius=6, invert=True)
    out = prepare(s, pre).apply(s.images[:], np.arange(3))
    bg = ~circle(20, 6)
    assert np.allclose(out[:, 0][:, bg].mean(1), 0, atol=1e-5)
    assert np.allclose(out[:, 0][:, bg].std(1), 1, atol=1e-5)
    assert (out[:, 0, 10, 10] < -10).all()  # inverted: the bright centre is now dark


def test_chunked_cache_equals_in_memory_bit_for_bit(tmp_path):
    imgs = np.random.default_rng(1).normal(size=(37, 30, 30)).astype(np.float32)
    write_mrc(tmp_path / "s.mrcs", imgs, apix=1.2)
    s = open_stack(tmp_path / "s.mrcs")
    pre = Preprocess(size=14, crop=28, jitter=2, seed=5, normalize="background")
    whole = prepare(s, pre).apply(s.images[:], np.arange(37))
    # the jittered windows are the slices window_starts names, image by image
    from emvae.io.pictures import window_starts

    starts, _, _ = window_starts(np.full((37, 2), 30), 28, 2, 5)
    assert len({tuple(r) for r in starts}) > 1
    cut = prepare(s, Preprocess(crop=28, jitter=2, seed=5)).apply(s.images[:], np.arange(37))
    for k, (r, c) in enumerate(starts):
        assert np.array_equal(cut[k, 0], imgs[k, r : r + 28, c : c + 28])
    for chunk in (5, 37):
        write_cache(s, pre, tmp_path / f"c{chunk}.h5", chunk=chunk)
        cached = open_stack(tmp_path / f"c{chunk}.h5")
        assert np.array_equal(cached.images[:], whole)
    write_cache(s, pre, tmp_path / "c.mrcs", chunk=6)
    mrcs = open_stack(tmp_path / "c.mrcs")
    assert np.array_equal(mrcs.images[:], whole)
    assert mrcs.apix == pytest.approx(1.2 * 28 / 14)
    cached = open_stack(tmp_path / "c5.h5")
    assert isinstance(cached.images, np.memmap)
    assert cached.names == s.names and cached.apix == pytest.approx(1.2)
    assert cached.preprocessed == pre.to_dict() and cached.input_size == 30
    # the cache remembers the frame: same scale and offsets as preprocessing on the fly
    direct, again = prepare(s, pre), prepare(cached, Preprocess())
    assert again.scale == direct.scale == 2.0
    assert np.array_equal(again.offsets, direct.offsets)
    t = load_images(cached, torch.device("cpu"))
    assert torch.equal(t, torch.from_numpy(whole))


def _blob(size: int, x: float, y: float, sigma: float) -> np.ndarray:
    """A Gaussian at (x, y) px from the box centre (size-1)/2, +x right, +y up."""
    c = (size - 1) / 2
    col, row = np.meshgrid(np.arange(size), np.arange(size))
    return np.exp(-((col - c - x) ** 2 + (c - row - y) ** 2) / (2 * sigma**2))


def _centroid(img: np.ndarray) -> np.ndarray:
    size = img.shape[-1]
    c = (size - 1) / 2
    col, row = np.meshgrid(np.arange(size), np.arange(size))
    w = img / img.sum()
    return np.array([(w * (col - c)).sum(), (w * (c - row)).sum()])


@pytest.mark.parametrize("n, crop, size", [(64, None, 32), (60, 41, 20), (65, 50, 25)])
def test_shift_frame_maps_model_pixels_back_to_input_pixels(tmp_path, n, crop, size):
    """scale * (position in the model box) + offset = position in the input image.

    This pins the sign and the half-pixel terms that cropping and Fourier downsampling add."""
    pos = np.array([[3.0, -5.0], [-4.5, 2.0]])
    imgs = np.stack([_blob(n, x, y, 3.0) for x, y in pos]).astype(np.float32)
    write_mrc(tmp_path / "s.mrcs", imgs)
    s = open_stack(tmp_path / "s.mrcs")
    prep = prepare(s, Preprocess(size=size, crop=crop))
    out = prep.apply(s.images[:], np.arange(2))
    for k in range(2):
        back = prep.scale * _centroid(out[k, 0]) + (0 if prep.offsets is None else prep.offsets[k])
        assert np.allclose(back, pos[k], atol=0.02), (back, pos[k])


def test_mask_limits_the_likelihood_to_the_circle():
    cfg = ModelConfig(
        image_size=12,
        zdim=1,
        gen_hidden=16,
        enc_hidden=16,
        mask_radius_px=4,
        theta_posterior="gaussian",
    )
    model = SpatialVAE(cfg)
    inside = circle(12, 4).ravel()
    assert model.pixel_index.tolist() == np.flatnonzero(inside).tolist()
    x = torch.randn(3, 1, 12, 12)
    y = x.clone()
    y.view(3, -1)[:, ~torch.from_numpy(inside)] += 50.0  # change pixels outside the mask
    torch.manual_seed(0)
    q = model.encode(x)
    z, pose = model.sample(q, torch.Generator().manual_seed(1))
    params = model.decode(z, pose)
    assert params.shape == (3, int(inside.sum()), 1)
    a = elbo_terms(cfg, model.pixels(x), params, q.z_mu, q.z_logstd, q.pose_mu, q.pose_logstd)
    b = elbo_terms(cfg, model.pixels(y), params, q.z_mu, q.z_logstd, q.pose_mu, q.pose_logstd)
    assert torch.equal(a.log_lik, b.log_lik)
    assert model.canonical(z).shape == (3, 144, 1)  # montages still see the whole box
