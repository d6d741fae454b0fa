"""The training step is ready for a GPU, as far as a CPU can show it: no host synchronisation
inside the step, the same shapes at every full batch (CUDA-graph capture), the k rotation
hypotheses rendered in one batched generator pass, a torch.compile path that gives the eager
step's loss, and pinned memory with non-blocking copies in the reader when the device is
CUDA."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from emvae import data as data_mod
from emvae.config import ModelConfig, TrainConfig
from emvae.errors import ConfigError
from emvae.hostsync import HostSyncCounter, optimizer_counters
from emvae.models import SpatialVAE
from emvae.throughput import _ctf_params
from emvae.train import compiled, training_step


def _model(size: int, render: int | None = None, **options) -> SpatialVAE:
    """fit's default model for a ``size``-px box (encoder view, widths and all), rendering at
    ``render`` px (a coarse-to-fine stage)."""
    torch.manual_seed(0)
    model = SpatialVAE(ModelConfig(image_size=size, **options))
    if render is not None and render != size:
        model.set_render_size(render)
    return model


def _batch(size: int, b: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 1, size, size, generator=torch.Generator().manual_seed(seed))


def test_the_counter_sees_what_would_stall_a_gpu():
    t = torch.arange(6.0)
    with HostSyncCounter() as h:
        t.sum().item()
        if t.max() > 2:  # a Python branch on a value
            pass
        float(t[0])
        t[t > 2]  # boolean mask: data-dependent shape
        torch.nonzero(t)
        t.tolist()
        t.cpu()
        torch.tensor([1.0, 2.0])  # host data into a tensor
        t * 2 + 1  # none
    assert h.total == 8, h.counts
    step = torch.zeros(())
    with HostSyncCounter(ignore=[step]) as h:
        step.item()
    assert h.total == 0


@pytest.mark.parametrize(
    "size, render, ctf",
    [(24, None, False), (64, 32, True), (64, 64, False), (64, 32, False)],
    ids=["24px", "64px-stage32-ctf", "64px-full", "64px-stage32"],
)
def test_no_host_sync_inside_fits_default_training_step(size, render, ctf):
    model = _model(size, render, **({"ctf": "on"} if ctf else {}))
    assert model.binned  # fit's default: the equivariant encoder's rotation bins
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    params = _ctf_params(6, torch.device("cpu")) if ctf else None
    rng = torch.Generator().manual_seed(0)
    x = _batch(size)
    training_step(model, opt, x, rng, ctf=params)  # Adam's state exists from here on
    with HostSyncCounter(ignore=optimizer_counters(opt)) as h:
        terms = training_step(model, opt, x, rng, ctf=params, pixel_fraction=0.5)
    assert h.total == 0, dict(h.counts)
    assert torch.isfinite(terms.elbo).all()


class _Shapes(TorchDispatchMode):
    """The sequence of (operation, output shapes) run under it."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        shapes = tuple(tuple(o.shape) for o in outs if isinstance(o, torch.Tensor))
        self.log.append((str(func), shapes))
        return out


def test_full_batches_run_the_same_shapes_every_step():
    """What a CUDA graph needs: two steps on different images (different rotation bins
    chosen, different pixels drawn) run the same operations on the same shapes."""
    model = _model(64, 32, ctf="on")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = torch.Generator().manual_seed(0)
    params = _ctf_params(6, torch.device("cpu"))
    training_step(model, opt, _batch(64, seed=1), rng, ctf=params)
    logs = []
    for seed in (2, 3):
        with _Shapes() as s:
            training_step(model, opt, _batch(64, seed=seed), rng, ctf=params, pixel_fraction=0.5)
        logs.append(s.log)
    assert len(logs[0]) > 100 and logs[0] == logs[1]


def test_the_k_hypotheses_are_rendered_in_one_generator_pass():
    model = _model(24, hypotheses=2)
    calls: list[tuple[int, ...]] = []
    hook = model.generator.register_forward_hook(
        lambda mod, args, out: calls.append(tuple(args[0].shape))
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    training_step(model, opt, _batch(24, b=5), torch.Generator().manual_seed(0))
    hook.remove()
    # one call, every image x hypothesis in its batch dimension: (B * k, N, 2)
    assert calls == [(5 * 2, 24 * 24, 2)]


def test_a_compiled_step_gives_the_eager_steps_loss():
    """torch.compile through dynamo and AOT autograd (the aot_eager backend: the graphs
    inductor would compile, built in seconds; inductor itself took about 2 minutes on 2 CPU
    cores for this model, too slow for the suite)."""

    def losses(mode: str) -> list[float]:
        model = _model(16, gen_hidden=16, enc_hidden=16, enc_channels=4)
        net = compiled(model, mode)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        rng = torch.Generator().manual_seed(0)
        out = []
        for seed in (1, 2, 3):
            t = training_step(net, opt, _batch(16, b=8, seed=seed), rng)
            out.append(float(t.elbo.sum()))
        return out

    eager = losses("off")
    assert losses("aot_eager") == pytest.approx(eager, rel=1e-5)
    assert compiled(torch.nn.Linear(2, 2), "off").__class__ is torch.nn.Linear
    with pytest.raises(ConfigError, match="--compile"):
        TrainConfig(compile="fast").validate()


def test_batches_for_cuda_are_pinned_and_copied_without_waiting(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert data_mod.loader_options(2, cuda)["pin_memory"] is True
    assert data_mod.loader_options(2, cpu)["pin_memory"] is False
    assert data_mod.loader_options(2, cuda, pin=False)["pin_memory"] is False
    calls: list[str] = []

    def pin(self):
        calls.append("pin")
        return self

    def to(self, *args, **kwargs):
        calls.append(f"to non_blocking={kwargs.get('non_blocking')}")
        return self

    x = torch.zeros(2, 1, 4, 4)
    assert data_mod.to_device(x, cpu) is x and not calls  # a CPU batch stays as it is
    with monkeypatch.context() as m:
        m.setattr(torch.Tensor, "pin_memory", pin)
        m.setattr(torch.Tensor, "is_pinned", lambda self: False)
        m.setattr(torch.Tensor, "to", to)
        data_mod.to_device(x, cuda)
    assert calls == ["pin", "to non_blocking=True"]


def test_the_streamed_reader_path_runs_on_a_cpu(tmp_path):
    """fit's reader with worker processes (the code path a GPU uses, without the pinning)."""
    import numpy as np

    from emvae.io.arrays import read_npy
    from emvae.preprocess import Preprocess, prepare

    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((40, 8, 8), np.float32))
    stack = read_npy(tmp_path / "x.npy")
    streamed = data_mod.StreamedImages(stack, prepare(stack, Preprocess()))
    idx = [torch.arange(k, k + 10) for k in (0, 10, 20)]
    with contextlib.closing(data_mod.prefetched(streamed, idx, torch.device("cpu"), 1)) as it:
        batches = list(it)
    assert [tuple(b.shape) for b in batches] == [(10, 1, 8, 8)] * 3
