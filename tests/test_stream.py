"""Training on batches streamed from disk gives the fit that training in memory gives."""

from __future__ import annotations

import numpy as np
import pytest

from emvae import Particles, Preprocess, RunConfig, fit, open_stack, write_cache
from emvae.config import ModelConfig, TrainConfig
from emvae.data import StreamedImages, should_stream
from emvae.preprocess import prepare


def _fit(stack, out, stream, pre=None):
    cfg = RunConfig(
        model=ModelConfig(
            image_size=stack.size if pre is None else 8, zdim=1, gen_hidden=16, enc_hidden=16
        ),
        train=TrainConfig(epochs=2, batch_size=20, lr=1e-3, device="cpu", stream=stream),
    )
    return fit(Particles.of(stack, preprocess=pre), cfg, out, progress=False)


def test_streamed_fit_equals_in_memory_fit(tiny_stack, tmp_path):
    stack = open_stack(tiny_stack)
    pre = Preprocess(size=8, normalize="image")  # preprocessing applied per batch when streamed
    a = _fit(stack, tmp_path / "memory", "off", pre)
    b = _fit(stack, tmp_path / "stream", "on", pre)
    assert a.config.data.mean == pytest.approx(b.config.data.mean, abs=1e-6)
    for col in ("theta_deg", "shift_x_px", "z1", "elbo"):
        assert np.allclose(a.table[col], b.table[col], atol=1e-3), col


def test_streaming_from_a_cache_and_the_auto_rule(tiny_stack, tmp_path):
    stack = open_stack(tiny_stack)
    write_cache(stack, Preprocess(), tmp_path / "c.h5")
    cache = open_stack(tmp_path / "c.h5")
    prepared = prepare(cache, Preprocess())
    streamed = StreamedImages(cache, prepared, 1.0, 2.0)
    got = streamed.read(np.array([5, 1]))
    assert np.allclose(got.numpy(), (stack.images[np.array([5, 1])] - 1.0) / 2.0)
    assert not should_stream(prepared, len(cache))  # 60 tiny images fit in memory
    assert should_stream(prepared, 10**12)  # a trillion do not
    assert should_stream(prepared, 1, "on") and not should_stream(prepared, 10**12, "off")
