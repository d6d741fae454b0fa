"""bf16 autocast does not change what is learned (compared with float32 on a short fit)."""

from __future__ import annotations

import numpy as np
import pytest

import emvae.train
from emvae import RunConfig, fit, read_stack
from emvae.config import ModelConfig, TrainConfig


def _fit(stack, out, amp):
    cfg = RunConfig(
        model=ModelConfig(image_size=16, zdim=1, gen_hidden=32, enc_hidden=32),
        train=TrainConfig(epochs=4, batch_size=20, lr=1e-3, device="cpu", amp=amp, z_delay=1),
    )
    return fit(stack, cfg, out, progress=False)


def test_bf16_and_fp32_fits_agree(tiny_stack, tmp_path, monkeypatch):
    stack = read_stack(tiny_stack)
    fp32 = _fit(stack, tmp_path / "fp32", amp=False)
    monkeypatch.setattr(emvae.train, "cpu_has_bf16", lambda: True)  # bf16 on any CPU
    bf16 = _fit(stack, tmp_path / "bf16", amp=True)
    a, b = fp32.history[-1], bf16.history[-1]
    assert b["test_elbo"] == pytest.approx(a["test_elbo"], rel=0.02)
    # the two posteriors of z agree: their means lie within a small part of a posterior's
    # width (measured 5 %; after 4 epochs z barely varies between particles yet, so a
    # correlation of the two fits' z would compare noise)
    dz = np.abs(fp32.table["z1"] - bf16.table["z1"])
    assert np.median(dz) < 0.25 * np.median(fp32.table["z1_std"])
    d = np.abs(np.mod(fp32.table["theta_deg"] - bf16.table["theta_deg"] + 180, 360) - 180)
    assert np.median(d) < 10.0
    assert bf16.history[-1]["test_elbo"] != a["test_elbo"]  # bf16 really ran


def test_bf16_on_a_cpu_only_with_amx():
    """AVX-512 BF16 alone ran bf16 autocast slower than float32 (docs/benchmarks.md)."""
    from emvae.train import cpu_has_bf16

    base = "flags : fpu sse avx2 avx512f"
    assert not cpu_has_bf16(base)
    assert not cpu_has_bf16(base + " avx512_bf16")
    assert cpu_has_bf16(base + " avx512_bf16 amx_bf16 amx_tile")


def test_the_allocator_setting_can_be_left_alone(monkeypatch):
    from emvae.data import keep_freed_memory

    monkeypatch.setenv("EMVAE_MALLOC", "system")
    assert keep_freed_memory() is False


def test_the_tables_elbo_renders_as_training_did_and_the_posteriors_stay_float32():
    """encode's ELBO pass runs the generator under the autocast it is given (fit passes its
    training's), the inference networks in float32: the posteriors are the float32 ones bit
    for bit, the ELBO differs by bf16's rounding only, and without a context nothing changes."""
    import contextlib

    import torch

    from emvae.encode import elbo_pass, encode
    from emvae.models import SpatialVAE
    from emvae.objective import posterior_elbo

    torch.manual_seed(0)
    model = SpatialVAE(ModelConfig(image_size=16, zdim=1, gen_hidden=32, enc_hidden=32)).eval()
    x = torch.randn(12, 1, 16, 16)
    eps = torch.randn(12, model.n_latent)
    with torch.no_grad():
        q, params = model(x, None, eps)  # the one-call path the table used before
        old = posterior_elbo(model.config, model.pixels(x), params, q).elbo
        _, same, _ = elbo_pass(model, x, eps, amp=contextlib.nullcontext())
        assert torch.equal(same.elbo, old)
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16)
    a = encode(model, x, torch.device("cpu"), batch_size=5)
    b = encode(model, x, torch.device("cpu"), batch_size=5, amp=bf16)
    for key in ("z_mu", "z_std", "pose_mu", "pose_std", "theta_prob"):
        assert np.array_equal(getattr(a, key), getattr(b, key)), key
    assert not np.array_equal(a.elbo, b.elbo)  # the rendering really ran in bf16
    assert np.abs(a.elbo - b.elbo).max() < 0.01 * np.abs(a.elbo).max()


def test_on_a_cpu_fit_renders_its_test_and_table_elbo_in_float32(tiny_stack, tmp_path, monkeypatch):
    """Training may run under bf16 autocast on the CPU, the evaluation does not: the test ELBO
    and the table's ELBO render in float32 (bf16 tanh is slow on CPUs; docs/benchmarks.md)."""
    seen = []
    for name in ("encode", "evaluate"):
        real = getattr(emvae.train, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            seen.append((_name, kwargs.get("amp", args[-1] if _name == "evaluate" else None)))
            return _real(*args, **kwargs)

        monkeypatch.setattr(emvae.train, name, spy)
    monkeypatch.setattr(emvae.train, "cpu_has_bf16", lambda: True)  # bf16 training on any CPU
    steps = []
    real_step = emvae.train.training_step
    monkeypatch.setattr(
        emvae.train, "training_step", lambda *a, **k: steps.append(k["amp"]) or real_step(*a, **k)
    )
    _fit(read_stack(tiny_stack), tmp_path / "bf16", amp=True)
    assert all(amp is not None for amp in steps)  # training: bf16
    assert {name for name, _ in seen} == {"encode", "evaluate"}
    assert all(amp is None for _, amp in seen), seen
