"""``fit()``: train a spatial-VAE on a stack, checkpoint every epoch, write the particle table.

No option parsing here: the CLI builds a :class:`RunConfig` and calls :func:`fit`.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from emvae.checkpoint import check_same_run, load_checkpoint, save_checkpoint
from emvae.config import DataConfig, RunConfig
from emvae.ctf import likelihood_ctf
from emvae.data import (
    StreamedImages,
    gather,
    load_images,
    normalize_,
    prefetched,
    resolve_device,
    should_stream,
    split_indices,
    stream_statistics,
    tensor_statistics,
)
from emvae.distributed import SINGLE, Dist
from emvae.distributed import from_env as distributed_from_env
from emvae.encode import encode, particle_table
from emvae.errors import ConfigError, EmvaeError, InputError, OutputExistsError
from emvae.io.stack import ImageStack
from emvae.io.star_export import Optics, export_table
from emvae.io.tables import write_table
from emvae.models import SpatialVAE
from emvae.objective import ElboTerms, posterior_elbo
from emvae.preprocess import Prepared, Preprocess, prepare_for
from emvae.progress import TrainingProgress, training_progress
from emvae.safety import atomic_output, check_free_space

TERMS = ("elbo", "error", "kl", "kl_z", "kl_theta", "kl_shift")


def term_names(zdim: int) -> tuple[str, ...]:
    """The per-epoch terms of metrics.csv: :data:`TERMS`, then the KL of each latent
    dimension (``kl_z1`` .. ``kl_zK``)."""
    return (*TERMS, *(f"kl_z{k + 1}" for k in range(zdim)))


def metric_columns(zdim: int) -> list[str]:
    """metrics.csv's columns (before any ``on_epoch`` figures)."""
    names = term_names(zdim)
    return ["epoch", *(f"train_{t}" for t in names), *(f"test_{t}" for t in names), "seconds"]


OUTPUTS = (
    "config.json",
    "metrics.csv",
    "particles.csv",
    "particles.h5",
    "particles.star",
    "checkpoints",
)
#: Folders of later commands that describe a run; a --force re-run retires them with it.
DERIVED = ("report", "montage")
#: Where a --force re-run trains until its outputs are complete (then they replace the old).
STAGING = ".emvae-replacing"


@dataclass
class FitResult:
    model: SpatialVAE
    config: RunConfig
    out_dir: Path
    table: pd.DataFrame
    history: list[dict[str, float]]
    star_layout: str = "3.1"  # RELION layout of particles.star


def fit(
    stack: ImageStack,
    config: RunConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    on_epoch: Callable[[int, SpatialVAE, Any], dict[str, float]] | None = None,
) -> FitResult:
    """Train (or resume training) and write every output into ``out_dir``.

    Outputs: ``config.json``, ``metrics.csv`` (one row per epoch: train/test ELBO, error
    = -log-likelihood, KL terms, nats per image), ``checkpoints/last.pt`` (every epoch) and
    ``checkpoints/epoch_NNNN.pt`` (every ``checkpoint_every`` epochs), ``particles.csv`` and
    ``particles.h5`` (see :func:`emvae.encode.particle_table`), and ``particles.star`` (the
    same poses for RELION, see :func:`write_particles_star`).

    ``resume`` continues from ``checkpoints/last.pt`` with the stored configuration (only the
    number of epochs may change), reproducing the uninterrupted run exactly. Without ``resume``
    an ``out_dir`` holding emvae outputs is refused unless ``force``.

    Launched by ``torchrun``, every process trains its share of each global batch
    (:mod:`emvae.distributed`) and only rank 0 writes. A stack too large for memory is streamed
    from disk batch by batch (``TrainConfig.stream``).

    ``on_epoch(epoch, model, data)``, if given, runs after each epoch's evaluation (``data``:
    the normalised images in input order) and its figures are added to that epoch's row of
    ``metrics.csv`` (the encoder benchmark tracks pose recovery this way).
    """
    out = Path(out_dir)
    work = _work_dir(out, force, resume)  # out, or the staging folder of a --force re-run
    device = resolve_device(config.train.device)
    ctx = distributed_from_env(device.type)
    if ctx.active and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    progress = progress and ctx.main
    ckpt = None
    if resume:
        if work == out and _has_last(out / STAGING):
            raise EmvaeError(
                f"{out}: holds an interrupted --force re-run in {out / STAGING}; continue that "
                f"one with --resume --force, or delete that folder to resume the old run"
            )
        ckpt = load_checkpoint(work / "checkpoints" / "last.pt") if _has_last(work) else None
        if ckpt is None:
            raise EmvaeError(f"{out}: nothing to resume (no checkpoints/last.pt)")
        check_same_run(ckpt, work / "checkpoints" / "last.pt", work / "config.json")
        epochs = config.train.epochs
        config = RunConfig.from_dict(ckpt["config"])
        config.train.epochs = max(epochs, ckpt["epoch"])
        _check_same_data(stack, config)
    else:
        config.run_id = config.run_id or uuid.uuid4().hex
        if not config.data.n_images:  # a library call without the data section
            config.data = make_data_config(stack, config.model.likelihood)
        if ctx.main:
            _prepare_output(out, work, force)
    ctx.barrier()
    config.validate()
    config.resolve()
    prepared = prepare_for(stack, config.data.preprocess)
    _check_stack(stack, prepared, config)
    cfg, tcfg = config.model, config.train

    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    amp = autocast_for(device, tcfg.amp)

    torch.manual_seed(tcfg.seed)
    model = SpatialVAE(cfg).to(device)
    net = model  # what the training step calls: the model, or its DDP wrapper
    if ctx.active:
        ids = [device.index] if device.type == "cuda" else None
        # the content encoder gets no gradient while z is held at 0 (the z-delay)
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=ids, find_unused_parameters=model.content is not None
        )
    optimizer = torch.optim.Adam(model.parameters(), lr=tcfg.lr)
    rng = torch.Generator(device=device)
    rng.manual_seed(tcfg.seed)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        rng.set_state(ckpt["rng"])
        test_idx = ckpt["split"].numpy()
        train_idx = np.setdiff1d(np.arange(len(stack)), test_idx)
        history = list(ckpt["history"])
        first_epoch = int(ckpt["epoch"])
    else:
        train_idx, test_idx = split_indices(len(stack), tcfg.test_fraction, tcfg.seed)
        history = []
        first_epoch = 0
    if ctx.main:  # room for the checkpoints and tables, before the first epoch
        weights = 3 * 4 * sum(p.numel() for p in model.parameters())  # + Adam's two moments
        copies = tcfg.epochs // tcfg.checkpoint_every - first_epoch // tcfg.checkpoint_every
        check_free_space(work, weights * (copies + 2) + 1000 * len(stack))
    with training_progress(progress) as bar:
        if should_stream(prepared, len(stack), tcfg.stream):
            if ckpt is None:
                _measure(stack, stream_statistics(stack, prepared), config.data, cfg.likelihood)
            data = StreamedImages(stack, prepared, config.data.mean, config.data.std)
        else:
            data = load_images(stack, device, prepared, bar.task("reading images", len(stack)))
            if ckpt is None:
                _measure(stack, tensor_statistics(data), config.data, cfg.likelihood)
            normalize_(data, config.data.mean, config.data.std)
        ctf = likelihood_ctf(stack, config, prepared.scale, data, device)
        if ctx.main:
            _write_json(work / "config.json", config)
        train_dev = torch.from_numpy(train_idx).to(data.device)
        test_dev = torch.from_numpy(test_idx).to(data.device)
        bar.start(first_epoch, tcfg.epochs)
        for epoch in range(first_epoch + 1, tcfg.epochs + 1):
            t0 = time.perf_counter()
            use_z = epoch > tcfg.z_delay
            train = _train_epoch(
                net,
                optimizer,
                data,
                train_dev,
                config,
                device,
                rng,
                use_z,
                amp,
                bar,
                epoch,
                ctx,
                ctf,
            )
            test = evaluate(
                model, data, test_dev, config, device, tcfg.seed + epoch, use_z, ctx, ctf
            )
            row = {
                "epoch": epoch,
                **{f"train_{k}": v for k, v in train.items()},
                **{f"test_{k}": v for k, v in test.items()},
                "seconds": time.perf_counter() - t0,
            }
            if on_epoch is not None:
                row.update(on_epoch(epoch, model, data))
            history.append(row)
            if not ctx.main:
                continue
            _write_metrics(work / "metrics.csv", history, cfg.zdim)
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "config": config.to_dict(),
                "epoch": epoch,
                "rng": rng.get_state(),
                "split": torch.from_numpy(test_idx),
                "history": history,
            }
            save_checkpoint(work / "checkpoints" / "last.pt", state)
            if epoch % tcfg.checkpoint_every == 0:
                shutil.copyfile(
                    work / "checkpoints" / "last.pt",
                    work / "checkpoints" / f"epoch_{epoch:04d}.pt",
                )
            bar.epoch_end(
                f"epoch {epoch}: train ELBO {train['elbo']:.2f}, test ELBO "
                f"{test['elbo']:.2f}, error {test['error']:.2f}, KL {test['kl']:.2f}"
                + ("" if use_z else " (z held at 0)")
            )
        advance = bar.task("encoding", len(stack))
        enc = encode(
            model,
            data,
            device,
            batch_size=max(tcfg.batch_size, 256),
            seed=tcfg.seed,
            advance=advance,
            ctx=ctx,
            ctf=ctf,
        )
    split = np.full(len(stack), "train", dtype=object)
    split[test_idx] = "test"
    if not ctx.main:  # wait for rank 0's outputs, so that every process leaves together
        ctx.barrier()
        return FitResult(model, config, out, pd.DataFrame(), history)
    table = particle_table(
        cfg,
        enc,
        stack.names,
        config.data.apix,
        split,
        prepared.scale,
        prepared.offsets,
        stack.rows,
    )
    write_table(table, work / "particles.csv")
    write_table(table, work / "particles.h5", config.run_id)
    star = write_particles_star(table, stack, config.data, work / "particles.star")
    if work != out:
        _replace_run(work, out)
    # the other ranks wait here: a process that exits while its peers still hold the group
    # open can abort in gloo's teardown (test_distributed saw SIGABRT 1 time in 10)
    ctx.barrier()
    return FitResult(model, config, out, table, history, star)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX); elsewhere bf16 autocast
    is slower than float32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_for(device: torch.device, enabled: bool = True):
    """bf16 autocast (float32 master weights) on CUDA, and on CPUs with native bf16; else a
    no-op context."""
    if enabled and (device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16())):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def write_particles_star(
    table: pd.DataFrame, stack: ImageStack, data: DataConfig, path: Path
) -> str:
    """``particles.star`` next to the table: the input STAR's rows and columns (when the input
    was one) with emvae's poses; RELION 3.1 layout, or 3.0 (origins in pixels) when the pixel
    size is unknown. Returns the layout written."""
    star = stack.star_version is not None
    return export_table(
        table,
        path,
        data.input_size or int(stack.input_size or stack.size),
        data.apix,
        stack.metadata if star else None,
        stack.optics if star else None,
        defaults=_cryosparc_optics(stack.metadata) if not star else None,
    )


def _cryosparc_optics(meta: pd.DataFrame | None) -> Optics | None:
    """Voltage, Cs and amplitude contrast of a cryoSPARC input (``ctf/*`` fields), if any."""
    fields = ("ctf/accel_kv", "ctf/cs_mm", "ctf/amp_contrast")
    if meta is None or not set(fields) <= set(meta.columns) or len(meta) == 0:
        return None
    return Optics(*(float(f"{float(meta[f].iloc[0]):.6g}") for f in fields))


def _train_epoch(
    model,
    optimizer,
    data,
    train_idx,
    config: RunConfig,
    device,
    rng,
    use_z,
    amp,
    bar: TrainingProgress,
    epoch: int,
    ctx: Dist = SINGLE,
    ctf: torch.Tensor | None = None,
) -> dict[str, float]:
    cfg, tcfg = config.model, config.train
    model.train()
    n = train_idx.shape[0]
    perm = torch.randperm(n, generator=rng, device=device).to(train_idx.device)
    augment = cfg.rotation and tcfg.augment_rotation
    names = term_names(cfg.zdim)
    sums = torch.zeros(len(names), device=device, dtype=torch.float64)
    n_steps = math.ceil(n / tcfg.batch_size)
    bar.epoch_start(epoch, n_steps)
    batches = [
        train_idx[perm[k * tcfg.batch_size : (k + 1) * tcfg.batch_size]] for k in range(n_steps)
    ]
    parts = [ctx.part(len(b)) for b in batches]
    images = prefetched(data, [b[p] for b, p in zip(batches, parts, strict=True)], device)
    for step, (idx, part, x) in enumerate(zip(batches, parts, images, strict=False)):
        share = (part, len(idx)) if ctx.active else None
        mine = None if ctf is None else ctf[idx[part].to(ctf.device)]
        terms = training_step(
            model, optimizer, x, rng, use_z=use_z, augment=augment, amp=amp, share=share, ctf=mine
        )
        sums += _term_sums(terms)
        if step % 10 == 0 or step == n_steps - 1:
            done = min((step + 1) * tcfg.batch_size, n)
            bar.step(f"ELBO {sums[0].item() / done:.1f}")
        else:
            bar.step()
    means = (ctx.all_sum(sums) / n).tolist()
    if not all(math.isfinite(v) for v in means):
        raise EmvaeError(
            f"training diverged in epoch {epoch} (the ELBO is not finite); try a lower --lr"
        )
    return dict(zip(names, means, strict=True))


def training_step(
    model: SpatialVAE,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    rng: torch.Generator | None = None,
    use_z: bool = True,
    augment: bool = True,
    amp=None,
    share: tuple[slice, int] | None = None,
    ctf: torch.Tensor | None = None,
) -> ElboTerms:
    """One optimiser step on a batch ``x`` ``(B, C, D, D)`` already on the model's device.

    With ``augment`` (and rotation inference) the inference network sees each image rotated by
    a random angle in [0, 2 pi). The model runs under ``amp`` (an autocast context, or None);
    the ELBO is computed in float32. Returns the batch's ELBO terms (detached use only).

    ``share = (part, total)``: ``x`` is the ``part`` of a global batch of ``total`` images that
    this process computes (see :mod:`emvae.distributed`; ``model`` is then wrapped in
    DistributedDataParallel). Random numbers are drawn for the whole global batch and sliced,
    and the loss is scaled so that the averaged gradient is the global batch's.

    ``ctf`` ``(B, 10)``: each image's CTF parameters (:mod:`emvae.ctf`), applied to its
    rendering in the likelihood.
    """
    net = model
    core = getattr(model, "module", model)
    cfg = core.config
    part, total = share if share is not None else (slice(0, x.shape[0]), x.shape[0])
    gamma = None
    if augment and cfg.rotation:
        gamma = (torch.rand(total, generator=rng, device=x.device) * (2 * math.pi))[part]
    eps = torch.randn(total, core.n_latent, generator=rng, device=x.device)[part]
    world = 1 if share is None else torch.distributed.get_world_size()
    weight = world / total
    n = x.shape[0]
    if n == 0:  # no share of a tiny last batch: a zero-weight stand-in keeps the all-reduce
        x, eps, weight = x.new_zeros(1, *x.shape[1:]), eps.new_zeros(1, eps.shape[1]), 0.0
        gamma = None if gamma is None else gamma.new_zeros(1)
        ctf = None
    with amp if amp is not None else contextlib.nullcontext():
        q, params = net(x, gamma, eps, use_z)
    terms = posterior_elbo(cfg, core.pixels(x), params.float(), q.float(), use_z, ctf)
    optimizer.zero_grad(set_to_none=True)
    (-terms.elbo.sum() * weight).backward()
    optimizer.step()
    if n == 0:
        return ElboTerms(
            terms.log_lik[:0],
            terms.kl_z[:0],
            terms.kl_theta[:0],
            terms.kl_shift[:0],
            terms.kl_z_dims[:0],
        )
    return terms


@torch.no_grad()
def evaluate(
    model: SpatialVAE,
    data,
    idx,
    config: RunConfig,
    device,
    seed: int,
    use_z: bool = True,
    ctx: Dist = SINGLE,
    ctf: torch.Tensor | None = None,
) -> dict[str, float]:
    """Mean ELBO terms (nats per image) over ``data[idx]``, no augmentation, seeded sample
    (shared across processes, each computing its part of every batch)."""
    model.eval()
    rng = torch.Generator(device=device)
    rng.manual_seed(seed)
    names = term_names(config.model.zdim)
    sums = torch.zeros(len(names), device=device, dtype=torch.float64)
    bs = max(config.train.batch_size, 256)
    for start in range(0, idx.shape[0], bs):
        batch = idx[start : start + bs]
        part = ctx.part(len(batch))
        eps = torch.randn(len(batch), model.n_latent, generator=rng, device=device)[part]
        x = gather(data, batch[part], device)
        q, params = model(x, None, eps, use_z)
        mine = None if ctf is None else ctf[batch[part].to(ctf.device)]
        terms = posterior_elbo(config.model, model.pixels(x), params, q, use_z, mine)
        sums += _term_sums(terms)
    ctx.all_sum(sums)
    return dict(zip(names, (sums / idx.shape[0]).tolist(), strict=True))


def _term_sums(terms: ElboTerms) -> torch.Tensor:
    """Batch sums of :func:`term_names`' terms, ``(len(names),)`` float64."""
    parts = (terms.elbo, -terms.log_lik, terms.kl, terms.kl_z, terms.kl_theta, terms.kl_shift)
    sums = torch.stack([p.detach().double().sum() for p in parts])
    return torch.cat([sums, terms.kl_z_dims.detach().double().sum(0)])


def make_data_config(
    stack: ImageStack,
    likelihood: str,
    apix: float | None = None,
    normalize: bool | None = None,
    preprocess: Preprocess | None = None,
    datadir: str | None = None,
    ind: str | None = None,
) -> DataConfig:
    """Describe the stack and how it is prepared (nothing is read; ``fit`` measures the
    normalisation on the preprocessed images).

    Gaussian likelihood: images are standardised (mean 0, std 1 over the stack) unless
    ``normalize=False``. Bernoulli: pixels must lie in [0, 1] and are not changed.
    """
    if len(stack) < 2:
        raise InputError(
            stack.source,
            f"holds {len(stack)} image; training needs at least 2 (one is held out for testing)",
        )
    if normalize is None or likelihood == "bernoulli":
        normalize = likelihood == "gaussian"
    pre = preprocess or Preprocess()
    if stack.preprocessed is not None:
        if pre.active:
            raise ConfigError(
                f"{stack.source} is already preprocessed by emvae preprocess; give the "
                "preprocessing options there, not here"
            )
        pre = Preprocess.from_dict(stack.preprocessed)
    prepared = prepare_for(stack, pre.to_dict())
    return DataConfig(
        fingerprint=fingerprint(stack),
        paths=list(stack.inputs) or [stack.source],
        n_images=len(stack),
        apix=apix if apix is not None else stack.apix,
        apix_from="--apix" if apix is not None else stack.apix_from,
        normalize=normalize,
        preprocess=pre.to_dict(),
        input_size=stack.input_size or stack.size,
        scale=prepared.scale,
        datadir=datadir if datadir is not None else stack.datadir,
        ind=ind if ind is not None else stack.ind,
    )


def _measure(stack: ImageStack, stats: tuple, dc: DataConfig, likelihood: str) -> None:
    """Fill ``dc.mean``/``dc.std`` from the preprocessed images' (mean, std, min, max)."""
    mean, std, lo, hi = stats
    if likelihood == "bernoulli":
        if lo < 0 or hi > 1:
            raise InputError(
                stack.source,
                f"pixel values span [{lo:.3g}, {hi:.3g}]; the "
                "Bernoulli likelihood needs values in [0, 1]",
            )
        dc.normalize = False
    if dc.normalize and not std > 0:
        raise InputError(stack.source, "every pixel has the same value; nothing to learn")
    dc.mean, dc.std = (mean, std) if dc.normalize else (0.0, 1.0)


def _check_stack(stack: ImageStack, prepared: Prepared, config: RunConfig) -> None:
    if config.model.image_size != prepared.size or config.model.channels != prepared.channels:
        raise ConfigError(
            f"the model is configured for {config.model.channels}x{config.model.image_size}^2 "
            f"images but {stack.source} gives {prepared.channels}x{prepared.size}^2"
        )
    if len(stack) < 2:
        raise InputError(stack.source, f"holds {len(stack)} image; training needs at least 2")


def fingerprint(stack: ImageStack) -> str:
    """A digest of the image names and of the first, middle and last images' pixels: another
    stack of the same count and size has another fingerprint (``--resume`` compares them)."""
    import hashlib

    h = hashlib.sha256("\n".join(stack.names).encode("utf-8", "surrogateescape"))
    n = len(stack)
    for i in sorted({0, n // 2, n - 1}):
        h.update(np.ascontiguousarray(stack.images[i : i + 1], dtype=np.float32).tobytes())
    return h.hexdigest()[:32]


def _check_same_data(stack: ImageStack, config: RunConfig) -> None:
    size = stack.input_size or stack.size
    if len(stack) != config.data.n_images or size != config.data.input_size:
        raise InputError(
            stack.source,
            f"does not match the run being resumed "
            f"({config.data.n_images} images of {config.data.input_size} px)",
        )
    if config.data.fingerprint and fingerprint(stack) != config.data.fingerprint:
        raise InputError(
            stack.source,
            "is not the stack the run being resumed was fitted on (same count and size, "
            "other images or names)",
        )


def _has_last(out: Path) -> bool:
    return (out / "checkpoints" / "last.pt").exists()


def check_output_dir(out: str | Path, force: bool = False) -> None:
    """Refuse an ``out`` that holds emvae outputs (unless ``force``) before any work is done."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: exists and is not a directory")
    existing = [name for name in OUTPUTS if (out / name).exists()]
    if existing and not force:
        hint = " or --resume to continue it" if _has_last(out) else ""
        raise OutputExistsError(
            f"{out}: already holds emvae outputs ({', '.join(existing)}); "
            f"use --force to overwrite{hint}"
        )


def _work_dir(out: Path, force: bool, resume: bool) -> Path:
    """Where a fit writes while it runs: ``out``, unless ``force`` replaces an existing run,
    which stays untouched until the new one is complete (:func:`_replace_run`)."""
    staging = out / STAGING
    if resume:
        return staging if force and _has_last(staging) else out
    if force and out.is_dir() and any((out / n).exists() for n in OUTPUTS):
        return staging
    return out


def _prepare_output(out: Path, work: Path, force: bool) -> None:
    check_output_dir(out, force)
    if (out / "checkpoints").is_symlink() or (work / "checkpoints").is_symlink():
        raise OutputExistsError(f"{out}: checkpoints is a link; emvae will not write through it")
    if work != out and work.exists():
        shutil.rmtree(work)  # an earlier interrupted --force re-run: emvae's own folder
    (work / "checkpoints").mkdir(parents=True, exist_ok=True)


def _replace_run(work: Path, out: Path) -> None:
    """Swap a complete --force re-run into ``out``: the old run's outputs (and the reports and
    montages made from it) are moved aside, the new ones renamed in, then the old deleted."""
    old = out / ".emvae-replaced"
    if old.exists():
        shutil.rmtree(old)
    old.mkdir()
    for name in (*OUTPUTS, *DERIVED):
        if (out / name).exists() or (out / name).is_symlink():
            os.replace(out / name, old / name)
        if (work / name).exists():
            os.replace(work / name, out / name)
    shutil.rmtree(old)
    shutil.rmtree(work)


def _write_json(path: Path, config: RunConfig) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(config.to_dict(), indent=2) + "\n")


def _write_metrics(path: Path, history: list[dict[str, float]], zdim: int) -> None:
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        columns = metric_columns(zdim)
        extra = [k for k in history[-1] if k not in columns]  # on_epoch's figures
        w = csv.DictWriter(f, fieldnames=[*columns, *extra])
        w.writeheader()
        for row in history:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
