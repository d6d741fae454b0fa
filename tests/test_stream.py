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
    # a CPU fit keeps a stack in memory up to IN_MEMORY_BYTES, whatever the machine's RAM
    from emvae.data import IN_MEMORY_BYTES, memory_bytes

    per_image = 4 * prepared.channels * prepared.size**2
    many = IN_MEMORY_BYTES // per_image + 1
    assert should_stream(prepared, many)
    if memory_bytes() > 2 * IN_MEMORY_BYTES:  # (else half the RAM is the smaller bound)
        assert not should_stream(prepared, many - 1)
    assert not should_stream(prepared, many, device="cuda") or memory_bytes() < 2 * many * per_image


@pytest.mark.parametrize("readers", [0, 1, 2])
def test_streamed_batches_come_in_order_whatever_the_readers(tiny_stack, readers):
    """The DataLoader's worker processes hand over exactly the batches asked for, in order
    (preprocessed and normalised as they are read), as the in-memory gather gives them."""
    import torch

    from emvae.data import gather, prefetched

    stack = open_stack(tiny_stack)
    prepared = prepare(stack, Preprocess(size=8))
    streamed = StreamedImages(stack, prepared, 0.5, 2.0)
    memory = (torch.from_numpy(prepared.apply(stack.images[:], np.arange(len(stack)))) - 0.5) / 2
    rng = np.random.default_rng(3)
    batches = [torch.from_numpy(rng.choice(len(stack), 7, replace=False)) for _ in range(5)]
    got = list(prefetched(streamed, batches, torch.device("cpu"), readers))
    assert len(got) == 5
    for b, x in zip(batches, got, strict=True):
        assert torch.allclose(x, gather(memory, b, torch.device("cpu")), atol=1e-6)


def test_reader_count_defaults(monkeypatch):
    """One reader beside CPU training; with CUDA one per spare core, at most 4; as asked."""
    import multiprocessing
    import os

    import torch

    from emvae.data import reader_count

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    if "fork" not in multiprocessing.get_all_start_methods():
        assert reader_count(3, cpu) == 0
        return
    assert reader_count(None, cpu) == 1
    assert reader_count(3, cpu) == 3 and reader_count(0, gpu) == 0
    for cores, expected in ((1, 1), (2, 1), (3, 2), (16, 4)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid, n=cores: set(range(n)))
        assert reader_count(None, gpu) == expected, cores


def test_bench_loader_times_every_reader(tiny_stack):
    """``emvae bench loader`` reads the stack through the thread baseline and each DataLoader
    worker count asked for, and names them all."""
    from conftest import runner
    from emvae_cli.main import app

    r = runner.invoke(
        app, ["bench", "loader", str(tiny_stack), "-D", "8", "--batch", "8", "--batches", "2"]
    )
    assert r.exit_code == 0, r.output
    rows = [line.split() for line in r.output.splitlines() if "images/s" in line]
    names = [" ".join(row[:-2]) for row in rows]
    assert names == [
        "thread, 1 batch ahead",
        "DataLoader, 0 workers",
        "DataLoader, 1 worker",
        "DataLoader, 2 workers",
    ]
    assert all(float(row[-2]) > 0 for row in rows)
