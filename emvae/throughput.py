"""Training-step throughput and the generator's achieved FLOP/s (``emvae bench throughput``).

The generator's cost is counted analytically (matrix products only; element-wise work and the
encoder are not counted). Per image, with P pixels evaluated, H hidden units, L hidden layers,
K latent dimensions, O outputs per pixel and F Fourier features (0 for raw coordinates), one
forward pass is

    G = P (2*2F + 2(2 + 2F)H + 2(L-1)H^2 + 2HO) + 2KH
        (features 2 -> F per pixel; first layer split: 2 + 2F -> H per pixel, K -> H once per
         image; then H -> H, then H -> O)

and a training step costs about 3G per generator pass (the backward pass does two products per
forward one): one pass per image with a Gaussian rotation posterior, k (the hypotheses) with
rotation bins.

The configurations are the paper's models (its MLP encoder with the Gaussian rotation
posterior and shared z, raw coordinates), so that the figures compare with the paper's code.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from emvae.config import EM_WIDTH, GALAXY_ENC_WIDTH, WIDTH, ModelConfig, TrainConfig
from emvae.data import StreamedImages, keep_freed_memory, prefetched, resolve_device
from emvae.errors import ConfigError
from emvae.io import open_stack
from emvae.io.arrays import read_npy
from emvae.models import SpatialVAE
from emvae.preprocess import Preprocess, prepare
from emvae.train import training_step

PAPER: dict[str, Any] = {
    "theta_posterior": "gaussian",
    "z_encoder": "shared",
    "fourier_features": 0,
}
CONFIGS: dict[str, dict[str, Any]] = {  # the paper's three settings
    "em": {
        "image_size": 40,
        "channels": 1,
        "gen_hidden": EM_WIDTH,
        "enc_hidden": EM_WIDTH,
        "zdim": 2,
        **PAPER,
    },
    "mnist": {
        "image_size": 28,
        "channels": 1,
        "gen_hidden": WIDTH,
        "enc_hidden": WIDTH,
        "zdim": 2,
        "likelihood": "bernoulli",
        "theta_prior": "gaussian",
        "theta_prior_std_deg": 45.0,
        **PAPER,
    },
    "galaxy": {
        "image_size": 64,
        "channels": 3,
        "gen_hidden": WIDTH,
        "enc_hidden": GALAXY_ENC_WIDTH,
        "zdim": 20,
        "likelihood": "bernoulli",
        "shift_prior_px": 8.0,
        **PAPER,
    },
    # emvae fit's own defaults on a 64-px cryo-EM stack (equivariant encoder, rotation bins)
    "fit": {"image_size": 64, "channels": 1},
}
# dense bf16 peak (TFLOP/s, without sparsity) of GPUs emvae is run on
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}


def generator_flops(cfg: ModelConfig, pixels: int | None = None) -> float:
    """Forward FLOPs of one generator pass for one image (formula in the module docstring),
    at ``pixels`` rendered pixels (default: the whole box, ``image_size**2``; a coarse stage
    or a mask renders fewer)."""
    p, h, k, o = pixels or cfg.image_size**2, cfg.gen_hidden, cfg.zdim, cfg.n_out
    n_layers = cfg.gen_layers
    assert h is not None and n_layers is not None  # filled in by ModelConfig.__post_init__
    if cfg.generator == "vanilla":
        return 2.0 * (k * h + (n_layers - 1) * h * h + h * p * o)
    if cfg.generator == "broadcast":  # 3 x 3 convs over the grid, then a 1 x 1 conv
        return p * (18.0 * (2 + k) * h + 18.0 * (n_layers - 1) * h * h + 2.0 * h * o)
    f = cfg.fourier_features
    per_pixel = 4.0 * f + 2.0 * (2 + 2 * f) * h + 2.0 * (n_layers - 1) * h * h + 2.0 * h * o
    return p * per_pixel + 2.0 * k * h


@dataclass
class Measurement:
    """One timing of :func:`measure`: the configuration, device, precision and batch, and the
    images/s, the generator's GFLOP/s and its fraction of the device's peak (None: unknown)."""

    config: str
    device: str
    precision: str
    batch: int
    images_per_s: float
    gflop_per_s: float
    peak_fraction: float | None

    def json(self) -> str:
        """The measurement as one JSON line."""
        return json.dumps(self.__dict__)


def device_name(dev: torch.device) -> str:
    """The device as reports name it: the GPU's model, or the CPU and its threads."""
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def sync(dev: torch.device) -> None:
    """Wait for the work queued on ``dev`` (a GPU's), so that a clock read after it counts it."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def check_pixel_fraction(ctf: bool, pixel_fraction: float) -> None:
    """Refuse timing the CTF on a fraction of the pixels, as fit does (RunConfig.validate)."""
    if ctf and pixel_fraction < 1:
        raise ConfigError("--pixel-fraction: the CTF needs every pixel of the rendering")


def measure(
    name: str,
    dev: torch.device,
    precision: str = "fp32",
    batch: int = 100,
    steps: int = 5,
    warmup: int = 2,
    compile_model: bool = False,
    stream: bool = False,
    ctf: bool = False,
    hidden: int | None = None,
    zdim: int | None = None,
    pixel_fraction: float = TrainConfig.pixel_fraction,
) -> Measurement:
    """Time full training steps (augmentation, encoder, generator, ELBO, backward, Adam) on
    random data resident on ``dev``, or (``stream``) read batch by batch from a memory-mapped
    file by fit's streaming reader (``emvae fit --stream on``); with ``ctf``, each
    rendering is multiplied by its particle's CTF in the likelihood (``--ctf on``). ``hidden``
    (both networks' width) and ``zdim`` replace the configuration's, e.g. to time the same work
    as another program (``../shared/tools/ref_step_time.py --hidden --zdim``);
    ``pixel_fraction`` < 1: the likelihood on that random fraction of the pixels
    (``fit --pixel-fraction``)."""
    check_pixel_fraction(ctf, pixel_fraction)
    sizes = {"gen_hidden": hidden, "enc_hidden": hidden, "zdim": zdim}
    sizes = {k: v for k, v in sizes.items() if v is not None}
    cfg = ModelConfig(**{**CONFIGS[name], **sizes, **({"ctf": "on"} if ctf else {})})
    cfg.validate()  # e.g. the CTF needs the Gaussian likelihood
    if dev.type == "cpu":
        keep_freed_memory()  # as fit does
    model = SpatialVAE(cfg).to(dev)
    params = _ctf_params(batch, dev) if ctf else None
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(batch, cfg.channels, cfg.image_size, cfg.image_size, device=dev)
    amp = torch.autocast(dev.type, dtype=torch.bfloat16) if precision == "bf16" else None
    # torch.compile returns an OptimizedModule for a module (its annotation says a callable)
    net = cast(torch.nn.Module, torch.compile(model)) if compile_model else model
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision != "fp32"
    with contextlib.ExitStack() as stack:
        batches = _batches(x, dev, steps + warmup, stack) if stream else None
        for k in range(warmup + steps):
            if k == warmup:
                sync(dev)
                t0 = time.perf_counter()
            x_k = next(batches) if batches is not None else x
            training_step(
                net, opt, x_k, augment=True, amp=amp, ctf=params, pixel_fraction=pixel_fraction
            )
        sync(dev)
    dt = (time.perf_counter() - t0) / steps
    ips = batch / dt
    passes = cfg.n_hypotheses
    gflops = 3 * passes * generator_flops(cfg) * pixel_fraction * ips / 1e9  # pixels drawn
    peak = None
    if dev.type == "cuda" and precision == "bf16":
        name_ = torch.cuda.get_device_name(dev)
        tf = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name_), None)
        peak = gflops / (tf * 1e3) if tf else None
    label = precision + (", streamed" if stream else "") + (", CTF" if ctf else "")
    label += f", {pixel_fraction:g} px" if pixel_fraction < 1 else ""
    return Measurement(name, device_name(dev), label, batch, ips, gflops, peak)


def _ctf_params(batch: int, dev: torch.device) -> torch.Tensor:
    """``(batch, 10)`` CTF parameters (:data:`emvae.ctf.COLUMNS`): defocus 1-2.5 um,
    astigmatic, 300 kV, Cs 2.7 mm, amplitude contrast 0.1, 2 A/px."""
    g = torch.Generator().manual_seed(0)
    df = 1e4 + 1.5e4 * torch.rand(batch, generator=g, dtype=torch.float64)
    angle = 180 * torch.rand(batch, generator=g, dtype=torch.float64)
    fixed = torch.tensor([300.0, 2.7, 0.1, 0.0, 0.0, 1.0, 2.0], dtype=torch.float64)
    return torch.cat([torch.stack([df, df - 500, angle], 1), fixed.expand(batch, 7)], 1).to(dev)


def _batches(
    x: torch.Tensor, dev: torch.device, n: int, stack: contextlib.ExitStack
) -> Iterator[torch.Tensor]:
    """``n`` random batches like ``x`` read from a memory-mapped .npy (deleted afterwards)."""
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
    b = x.shape[0]
    rows = max(4 * b, 4096)
    np.save(folder / "x.npy", np.random.default_rng(0).random((rows, *x.shape[1:]), np.float32))
    images = read_npy(folder / "x.npy")
    data = StreamedImages(images, prepare(images, Preprocess()))
    rng = np.random.default_rng(1)
    idx = [torch.from_numpy(rng.choice(rows, b, replace=False)) for _ in range(n)]
    return prefetched(data, idx, dev)


def _thread_reader(data: Any, batches: list[Any], device: torch.device) -> Iterator[torch.Tensor]:
    """The reader fit used until 2026-12 (one batch read ahead in a thread), kept as the
    baseline of :func:`loader_rates`."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(data.read, batches[0])
        for k in range(len(batches)):
            x = pending.result()
            if k + 1 < len(batches):
                pending = pool.submit(data.read, batches[k + 1])
            yield x.to(device, non_blocking=True)


def loader_rates(
    stack: Any,
    prepared: Any,
    batch: int = 256,
    n_batches: int = 20,
    workers: tuple[int, ...] = (0, 1, 2),
    train: bool = False,
    seed: int = 0,
) -> list[tuple[str, float]]:
    """Images/s of streaming ``stack`` (preprocessed as ``prepared`` plans) in random batches:
    a reading thread one batch ahead (the reader fit had before) against fit's
    :func:`emvae.data.prefetched`, a ``torch.utils.data.DataLoader`` with each number of
    ``workers`` (forked processes; 0 reads in the loop), two batches ahead per worker.

    ``train``: each batch also goes through a training step of fit's default model at the
    prepared size (CPU), so the figure includes how loading and training share the cores;
    without it, loading alone (a GPU's case, where the step is short). One untimed batch first.
    """
    dev = torch.device("cpu")
    rng = np.random.default_rng(seed)
    n = len(stack)
    idx = [np.sort(rng.choice(n, min(batch, n), replace=False)) for _ in range(n_batches + 1)]
    step = None
    if train:
        model = SpatialVAE(ModelConfig(image_size=prepared.size, channels=prepared.channels))
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)

        def step(x: torch.Tensor) -> None:
            training_step(model, opt, x, augment=True, amp=contextlib.nullcontext())

    def timed(batches: Iterator[torch.Tensor]) -> float:
        it = iter(batches)
        first = next(it)
        if step is not None:
            step(first)
        t0 = time.perf_counter()
        count = 0
        for x in it:
            count += x.shape[0]
            if step is not None:
                step(x)
        return count / (time.perf_counter() - t0)

    data = StreamedImages(stack, prepared)
    rows = [("thread, 1 batch ahead", timed(_thread_reader(data, idx, dev)))]
    tensors = [torch.from_numpy(i) for i in idx]
    for w in workers:
        name = f"DataLoader, {w} worker{'s' if w != 1 else ''}"
        rows.append((name, timed(prefetched(data, tensors, dev, readers=w))))
    return rows


def loader_report(
    stack: str | os.PathLike[str],
    downsample: int | None = None,
    batch: int = 256,
    n_batches: int = 20,
    workers: tuple[int, ...] = (0, 1, 2),
    train: bool = False,
) -> list[str]:
    """``emvae bench loader``: the stack at ``stack`` (any input fit reads) opened and
    preprocessed as fit would (Fourier-downsampled to ``downsample`` px), its
    :func:`loader_rates` measured, and the lines that report them."""
    images = open_stack(stack)
    prepared = prepare(images, Preprocess(size=downsample))
    rows = loader_rates(images, prepared, batch, n_batches, workers, train)
    what = "with a training step" if train else "loading alone"
    return [f"{len(images)} images {images.size} px -> {prepared.size} px, {what}:"] + [
        f"  {name:32s} {rate:9.1f} images/s" for name, rate in rows
    ]


def measure_all(
    names: Sequence[str] = ("em", "mnist", "galaxy"),
    device: str | torch.device = "auto",
    precisions: Sequence[str] = ("fp32", "bf16"),
    batches: Sequence[int] = (100, 256),
    steps: int = 5,
    *,
    stream: bool = False,
    ctf: bool = False,
    log: Callable[[str], None] = print,
    **options: Any,
) -> list[Measurement]:
    """:func:`measure` for every configuration in ``names`` x precision x batch size, each
    plain, then streamed (``stream``), then with the CTF (``ctf``); one line to ``log`` per
    measurement as it comes. ``device``: a device, or its name (``auto``, ``cpu``, ``cuda:N``).
    ``options``: :func:`measure`'s other keywords."""
    check_pixel_fraction(ctf, options.get("pixel_fraction", TrainConfig.pixel_fraction))
    dev = resolve_device(device) if isinstance(device, str) else device
    unknown = set(names) - set(CONFIGS)
    if unknown:
        raise ConfigError(f"unknown --config {sorted(unknown)}; choose from {sorted(CONFIGS)}")
    variants = [(False, False)] + [(True, False)] * stream + [(False, True)] * ctf
    rows = []
    runs = itertools.product(names, precisions, batches, variants)  # in this order, nested
    for name, prec, b, (streamed, with_ctf) in runs:
        m = measure(name, dev, prec, b, steps, stream=streamed, ctf=with_ctf, **options)
        rows.append(m)
        peak = f"{100 * m.peak_fraction:.0f}%" if m.peak_fraction is not None else "-"
        log(
            f"{name:7s} {m.precision:14s} batch {b:4d}: {m.images_per_s:9.1f} images/s, "
            f"generator {m.gflop_per_s:9.1f} GFLOP/s, peak {peak}  [{m.device}]"
        )
    return rows
