"""``fit()``: train a spatial-VAE on a stack's particles, checkpoint every epoch, write the
particle table.

No option parsing here (the CLI builds a :class:`RunConfig` and a :class:`Particles` and calls
:func:`fit`), no file formats (:mod:`emvae.particles` reads and writes the particles,
:mod:`emvae.run` the run directory).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch

from emvae import run
from emvae._version import __version__
from emvae.classseed import class_pull_weight, flag_junk, seed_classes
from emvae.config import ModelConfig, RunConfig
from emvae.ctf import likelihood_ctf
from emvae.data import (
    StreamedImages,
    default_pass_memory_mb,
    gather,
    keep_freed_memory,
    prefetched,
    reader_count,
    resolve_device,
    split_indices,
)
from emvae.distributed import SINGLE, Dist
from emvae.distributed import from_env as distributed_from_env
from emvae.encode import elbo_pass, encode
from emvae.errors import EmvaeError
from emvae.io.stack import ImageStack
from emvae.models import SpatialVAE
from emvae.models.vae import RotationBins
from emvae.objective import ElboTerms, log_hyperprior, posterior_elbo, weighted_elbo
from emvae.particles import Particles, check_same
from emvae.progress import TeeProgress, TrainingProgress, training_progress
from emvae.runlog import RunLog, run_log
from emvae.safety import check_free_space, check_writable, run_lock
from emvae.stages import parse_stages, size_at, table_size

TERMS = ("elbo", "error", "kl", "kl_z", "kl_theta", "kl_shift")


def term_names(cfg: ModelConfig) -> tuple[str, ...]:
    """The per-epoch terms of metrics.csv: :data:`TERMS`, ``kl_deform`` (the affine / spline
    parameters' KL, with ``--pose`` other than rigid), ``kl_class`` (the class's KL, with
    ``--classes`` > 1), then the KL of each latent dimension (``kl_z1`` .. ``kl_zK``)."""
    deform = ("kl_deform",) if cfg.pose != "rigid" else ()
    kl_class = ("kl_class",) if cfg.classes > 1 else ()
    return (*TERMS, *deform, *kl_class, *(f"kl_z{k + 1}" for k in range(cfg.zdim)))


def metric_columns(cfg: ModelConfig) -> list[str]:
    """metrics.csv's columns (before any ``on_epoch`` figures)."""
    names = term_names(cfg)
    return ["epoch", *(f"train_{t}" for t in names), *(f"test_{t}" for t in names), "seconds"]


@dataclass
class FitResult:
    """What :func:`fit` returns: the trained model, the resolved configuration, the run folder,
    the particle table (empty on ranks other than 0), the metrics rows and the STAR layout."""

    model: SpatialVAE
    config: RunConfig
    out_dir: Path
    table: pd.DataFrame
    history: list[dict[str, float]]
    star_layout: str = "3.1"  # RELION layout of particles.star


def fit(
    particles: Particles | ImageStack,
    config: RunConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    on_epoch: Callable[[int, SpatialVAE, Any], dict[str, float]] | None = None,
    notes: Sequence[str] = (),
    last: dict[str, Any] | None = None,
) -> FitResult:
    """Train (or resume training) on ``particles`` and write every output into ``out_dir``.

    ``particles``: a :class:`Particles` (or an opened stack, taken with its input's defaults
    unless ``config.data`` already describes it); its data section becomes ``config.data``.

    Outputs (:mod:`emvae.run`): ``config.json``, ``metrics.csv`` (one row per epoch:
    train/test ELBO, error = -log-likelihood, KL terms, nats per image), ``checkpoints/last.pt``
    (every epoch) and ``checkpoints/epoch_NNNN.pt`` (every ``checkpoint_every`` epochs),
    ``particles.csv`` and ``particles.h5`` (:meth:`Particles.table`), ``particles.star``
    (the same poses for RELION, :meth:`Particles.write_star`), and ``run.log``
    (:mod:`emvae.runlog`: the command, ``notes`` (lines the caller printed about the input),
    and every progress line, timestamped; appended to by a resume).

    ``resume`` continues from ``checkpoints/last.pt`` with the stored configuration (only the
    number of epochs may change), reproducing the uninterrupted run exactly; ``last``: that
    checkpoint when the caller has read it already (:func:`emvae.run.read_last`), so that it is
    read once. Without ``resume`` an ``out_dir`` holding emvae outputs is refused unless
    ``force``.

    Launched by ``torchrun``, every process trains its share of each global batch
    (:mod:`emvae.distributed`) and only rank 0 writes. A stack too large for memory is streamed
    from disk batch by batch (``TrainConfig.stream``).

    ``on_epoch(epoch, model, data)``, if given, runs after each epoch's evaluation (``data``:
    the normalised images in input order) and its figures are added to that epoch's row of
    ``metrics.csv`` (the encoder benchmark tracks pose recovery this way).
    """
    out = Path(out_dir)
    if int(os.environ.get("RANK", "0")):  # torchrun: only rank 0 writes (and locks)
        return _fit(particles, config, out, resume, force, progress, on_epoch, notes, last)
    check_writable(out)
    with run_lock(out):  # a second fit into the same folder refuses, naming this process
        return _fit(particles, config, out, resume, force, progress, on_epoch, notes, last)


def _fit(
    particles: Particles | ImageStack,
    config: RunConfig,
    out: Path,
    resume: bool,
    force: bool,
    progress: bool,
    on_epoch: Callable[[int, SpatialVAE, Any], dict[str, float]] | None,
    notes: Sequence[str] = (),
    last: dict[str, Any] | None = None,
) -> FitResult:
    """:func:`fit`, once the run folder is locked."""
    work = run.work_dir(out, force, resume)  # out, or the staging folder of a --force re-run
    device = resolve_device(config.train.device)
    if device.type == "cpu":
        keep_freed_memory()
    ctx = distributed_from_env(device.type)
    if ctx.active and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    progress = progress and ctx.main
    ckpt = None
    stack = particles.stack if isinstance(particles, Particles) else particles
    command = config.command  # this call's (a resume takes the stored config's)
    if resume:
        ckpt = run.resume_point(out, work, last)
        epochs = config.train.epochs
        config = RunConfig.from_dict(ckpt["config"])
        config.train.epochs = max(epochs or config.train.epochs or 0, ckpt["epoch"])
        check_same(stack, config.data)
        particles = Particles.described(stack, config.data)
    else:
        if not isinstance(particles, Particles) and config.data.n_images:
            particles = Particles.described(stack, config.data)
        elif not isinstance(particles, Particles):
            particles = Particles.of(stack, config.model.likelihood)
        particles.check_trainable()
        config.run_id = config.run_id or uuid.uuid4().hex
        config.data = particles.data
        if ctx.main:
            run.prepare_output(out, work, force)
    ctx.barrier()
    with run_log(work, config.run_id, enabled=ctx.main) as log:
        config.validate()
        config.resolve()
        if log is not None:
            _log_start(log, config, command, ckpt, notes, device)
        particles.check_model(config.model)
        cfg, tcfg = config.model, config.train
        n_epochs = tcfg.epochs
        assert n_epochs is not None  # resolved

        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        amp = autocast_for(device, tcfg.amp)
        eval_amp = evaluation_autocast(device, tcfg.amp)

        torch.manual_seed(tcfg.seed)
        model = SpatialVAE(cfg).to(device)
        if tcfg.pass_memory_mb is None:  # stored in config.json: a resume keeps it
            tcfg.pass_memory_mb = default_pass_memory_mb(device)
        model.pass_memory_mb = tcfg.pass_memory_mb
        net: torch.nn.Module = model  # what the training step calls: the model, or its DDP wrapper
        if ctx.active:
            ids = [device.index] if device.type == "cuda" else None
            # the content encoder gets no gradient while z is held at 0 (the z-delay), nor the
            # pose and z networks in the stages after the first (--fine-train generator)
            unused = model.content is not None or tcfg.stages not in (None, "", "off")
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=ids, find_unused_parameters=unused
            )
        net = compiled(net, tcfg.compile)
        optimizer = torch.optim.Adam(model.parameters(), lr=tcfg.lr)
        rng = torch.Generator(device=device).manual_seed(tcfg.seed)
        n = len(particles)
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            rng.set_state(ckpt["rng"])
            test_idx = ckpt["split"].numpy()
            train_idx = np.setdiff1d(np.arange(n), test_idx)
            history = list(ckpt["history"])
            first_epoch = int(ckpt["epoch"])
            seeds = ckpt.get("class_seeds")  # (N,) after --class-seed's epoch
            junk = ckpt.get("junk_out")  # (N,) bool after --junk-out's epoch
        else:
            train_idx, test_idx = split_indices(n, tcfg.test_fraction, tcfg.seed)
            history, first_epoch, seeds, junk = [], 0, None, None
        if ctx.main:  # room for the checkpoints and tables, before the first epoch
            weights = 3 * 4 * sum(p.numel() for p in model.parameters())  # + Adam's two moments
            copies = n_epochs // tcfg.checkpoint_every - first_epoch // tcfg.checkpoint_every
            check_free_space(work, weights * (copies + 2) + 1000 * n)
        with training_progress(progress) as display:
            bar = display if log is None else TeeProgress(display, log.progress)
            data = particles.load(device, cfg.likelihood, tcfg.stream, bar)
            data, ctf = likelihood_ctf(particles.ctf(cfg.ctf), cfg.ctf, data, device)
            if ctx.main:
                run.write_config(work, config)
            train_dev = torch.from_numpy(train_idx).to(data.device)
            test_dev = torch.from_numpy(test_idx).to(data.device)
            bar.start(first_epoch, n_epochs)
            stages = parse_stages(tcfg.stages or "off", cfg.image_size)
            big = max(tcfg.batch_size, 256)  # the batches of class seeding and encoding
            for epoch in range(first_epoch + 1, n_epochs + 1):
                t0 = time.perf_counter()
                size = size_at(stages, cfg.image_size, epoch)
                if size != model.render_size:
                    model.set_render_size(size)
                # after the first stage the pose and z networks may keep what it taught them
                later = bool(stages) and size != stages[0][0]
                model.inference_frozen = later and tcfg.fine_train == "generator"
                use_z = epoch > (tcfg.z_delay or 0)  # RunConfig.resolve set it
                seeds_dev = None if seeds is None else seeds.to(device)
                step = Step(net, optimizer, config, device, rng, use_z, amp, ctx, ctf, seeds_dev)
                # a full-size epoch after coarse stages may train on a subset (--fine-images)
                fine = bool(stages) and size == cfg.image_size and bool(tcfg.fine_images)
                limit = tcfg.fine_images if fine else None
                if junk is not None:  # the flagged junk trains no more (--junk-out)
                    kept = train_idx[~junk.numpy()[train_idx]]
                    train_dev = torch.from_numpy(kept).to(data.device)
                train = _train_epoch(step, data, train_dev, bar, epoch, limit)
                test = evaluate(
                    model, data, test_dev, config, device, tcfg.seed + epoch, use_z, ctx, ctf,
                    eval_amp,
                )  # fmt: skip
                row = {
                    "epoch": epoch,
                    **{f"train_{k}": v for k, v in train.items()},
                    **{f"test_{k}": v for k, v in test.items()},
                    "seconds": time.perf_counter() - t0,
                }
                if stages:  # the box of the epoch's coarse-to-fine stage; the ELBO is per that box
                    row["stage_px"] = size
                if tcfg.weighted:  # what was maximised, beside the true ELBO
                    for part, t in (("train", train), ("test", test)):
                        kl_pose = t["kl_theta"] + t["kl_shift"] + t.get("kl_deform", 0.0)
                        row[f"{part}_objective"] = weighted_elbo(
                            t["elbo"], t["kl_z"], kl_pose, tcfg.beta, tcfg.pose_beta
                        )
                row.update(prior_columns(model))
                seeded = ""
                if epoch == tcfg.class_seed and cfg.classes > 1:
                    found = seed_classes(model, data, device, big, tcfg.seed, ctf, eval_amp, ctx)
                    seeds = torch.from_numpy(found)
                    sizes = np.bincount(found[found >= 0], minlength=cfg.classes)
                    seeded = "; classes seeded: " + ", ".join(str(v) for v in sizes)
                if epoch == tcfg.junk_out:
                    if seeds is not None and epoch == tcfg.class_seed:
                        junk = seeds < 0  # the seeding's junk: no class, no training
                    else:
                        enc = encode(
                            model, data, device, big, tcfg.seed, ctx=ctx, ctf=ctf, amp=eval_amp,
                            search=False, use_z=use_z,
                        )  # fmt: skip
                        junk = torch.from_numpy(flag_junk(enc, ctx))
                    out_now = int(junk[torch.from_numpy(train_idx)].sum())
                    if len(train_idx) - out_now < tcfg.batch_size:  # nothing left to train on
                        seeded += f"; junk not left out: it is {out_now} of {len(train_idx)}"
                        junk = None
                    else:
                        seeded += f"; junk left out of training: {out_now} of {len(train_idx)}"
                if on_epoch is not None:
                    row.update(on_epoch(epoch, model, data))
                history.append(row)
                if not ctx.main:
                    continue
                run.write_metrics(work, history, metric_columns(cfg), config.run_id)
                state = {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "config": config.to_dict(),
                    "epoch": epoch,
                    "rng": rng.get_state(),
                    "split": torch.from_numpy(test_idx),
                    "history": history,
                }
                if seeds is not None:
                    state["class_seeds"] = seeds
                if junk is not None:
                    state["junk_out"] = junk
                run.write_checkpoint(work, state, keep=epoch % tcfg.checkpoint_every == 0)
                bar.epoch_end(
                    epoch,
                    f"train ELBO {train['elbo']:.2f}, test ELBO "
                    f"{test['elbo']:.2f}, error {test['error']:.2f}, KL {test['kl']:.2f}"
                    + ("" if use_z else " (z held at 0)")
                    + seeded,
                )
            model.inference_frozen = False  # the model fit returns trains as a whole
            if model.render_size != cfg.image_size:  # the model fit returns renders the box
                model.set_render_size(cfg.image_size)
            advance = bar.task("encoding", n)
            px = table_size(config)  # the box of the table's ELBO
            enc = encode(
                model, data, device, big, tcfg.seed, advance, ctx=ctx, ctf=ctf, amp=eval_amp,
                elbo_px=px,
            )  # fmt: skip
        split = np.full(n, "train", dtype=object)
        split[test_idx] = "test"
        if not ctx.main:  # wait for rank 0's outputs, so that every process leaves together
            ctx.barrier()
            return FitResult(model, config, out, pd.DataFrame(), history)
        table = particles.table(cfg, enc, split)
        star = run.write_particles(work, table, particles, config.run_id)
    if work != out:
        run.replace_run(work, out)
    # the other ranks wait here: a process that exits while its peers still hold the group
    # open can abort in gloo's teardown (test_distributed saw SIGABRT 1 time in 10)
    ctx.barrier()
    return FitResult(model, config, out, table, history, star)


def _log_start(
    log: RunLog,
    config: RunConfig,
    command: str,
    ckpt: dict[str, Any] | None,
    notes: Sequence[str],
    device: torch.device,
) -> None:
    """run.log's first lines for this call: how it was started, what it fits, the notes."""
    how = "fit" if ckpt is None else f"fit --resume from epoch {int(ckpt['epoch'])}"
    log.line(f"emvae {__version__} {how}: {command or '(emvae.fit called from Python)'}")
    log.line(
        f"run {config.run_id[:8]}: {config.data.n_images} images of {config.model.image_size} px, "
        f"zdim {config.model.zdim}, {config.train.epochs} epochs, device {device}"
    )
    t = config.train
    if t.stages and t.stages != "off":
        subset = f" on {t.fine_images} images an epoch" if t.fine_images else ""
        log.line(
            f"schedule: {t.stages} (px:epochs) on Fourier-cropped copies, then "
            f"{config.model.image_size} px{subset}"
        )
    for note in notes:
        log.line(note)


def cpu_has_bf16(flags: str | None = None) -> bool:
    """Whether bf16 autocast pays on this CPU: it needs AMX tiles. Without bf16 instructions it
    is emulated (11x slower than float32 on an AVX2 EPYC); with AVX-512 BF16 but no AMX it was
    still slower than float32 at the paper's 40-px network (12.1 against 17.3 images/s on a
    2-core Xeon) and only even at fit's 64-px one (docs/benchmarks.md)."""
    if flags is None:  # ``flags``: the text of /proc/cpuinfo (read when not given)
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    return "amx_bf16" in flags.split()


def autocast_for(
    device: torch.device, enabled: bool = True
) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast (float32 master weights) on CUDA, and on CPUs where it pays
    (:func:`cpu_has_bf16`); else a no-op context."""
    if enabled and (device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16())):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def evaluation_autocast(
    device: torch.device, enabled: bool = True
) -> contextlib.AbstractContextManager[Any] | None:
    """The autocast of fit's test ELBO and table ELBO: training's on a GPU (bf16); None on a
    CPU, where float32 renders the generator's cache-sized chunks faster (bf16 tanh is slow on
    CPUs: docs/benchmarks.md, "Users' sizes")."""
    return autocast_for(device, enabled) if device.type == "cuda" else None


@dataclass
class Step:
    """What one epoch's optimiser steps share: the network (the model or its DDP wrapper), the
    optimiser, the run's config, the device and generator, whether z is used, the autocast
    context, the process group, the particles' CTF parameters ``(N, 10)`` (or None) and,
    after ``--class-seed``, each particle's seeded class ``(N,)`` (-1: none; or None)."""

    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    config: RunConfig
    device: torch.device
    rng: torch.Generator
    use_z: bool
    amp: Any
    ctx: Dist = SINGLE
    ctf: torch.Tensor | None = None
    seeds: torch.Tensor | None = None


def _train_epoch(
    s: Step,
    data: torch.Tensor | StreamedImages,
    train_idx: torch.Tensor,
    bar: TrainingProgress,
    epoch: int,
    limit: int | None = None,
) -> dict[str, float]:
    """One pass over ``data[train_idx]`` in a random order, or over the first ``limit`` images
    of that order (a random subset); mean ELBO terms per image."""
    cfg, tcfg, device, ctx = s.config.model, s.config.train, s.device, s.ctx
    s.net.train()
    n_all = train_idx.shape[0]
    perm = torch.randperm(n_all, generator=s.rng, device=device).to(train_idx.device)
    if limit is not None and limit < n_all:
        perm = perm[:limit]
    n = perm.shape[0]
    augment = cfg.rotation and tcfg.augment_rotation
    names = term_names(cfg)
    sums = torch.zeros(len(names), device=device, dtype=torch.float64)
    size = tcfg.batch_size
    n_steps = math.ceil(n / size)
    bar.epoch_start(epoch, n_steps, n)
    batches = [train_idx[perm[k * size : (k + 1) * size]] for k in range(n_steps)]
    parts = [ctx.part(len(b)) for b in batches]
    mine_idx = [b[p] for b, p in zip(batches, parts, strict=True)]
    images = prefetched(data, mine_idx, device, reader_count(tcfg.readers, device))
    running = RunningElbo(device)
    seeded = bool(tcfg.class_seed) and epoch > (tcfg.class_seed or 0)  # the seeds take over
    balance = 0.0 if seeded else class_balance_weight(tcfg.class_balance, epoch, tcfg.epochs or 1)
    pull = class_pull_weight(tcfg.class_pull, epoch, tcfg.class_seed or 0, tcfg.epochs or 1)
    for step, (idx, part, x) in enumerate(zip(batches, parts, images, strict=False)):
        share = (part, len(idx)) if ctx.active else None
        mine = None if s.ctf is None else s.ctf[idx[part].to(s.ctf.device, non_blocking=True)]
        target = None if s.seeds is None else s.seeds[idx[part].to(s.seeds.device)]
        terms = training_step(
            s.net, s.optimizer, x, s.rng, use_z=s.use_z, augment=augment, amp=s.amp, share=share,
            ctf=mine, pixel_fraction=tcfg.pixel_fraction, beta=tcfg.beta,
            pose_beta=tcfg.pose_beta, class_balance=balance, class_target=target,
            class_pull=pull, hyper_weight=1.0 / n_all,  # the data set's hyperprior share per image
        )  # fmt: skip
        sums += _term_sums(terms)
        if step % 10 == 0 or step == n_steps - 1:
            bar.step(running.read(sums[0], min((step + 1) * size, n)))
        else:
            bar.step()
    means = (ctx.all_sum(sums) / n).tolist()
    if not all(math.isfinite(v) for v in means):
        raise EmvaeError(
            f"training diverged in epoch {epoch} (the ELBO is not finite); try a lower --lr"
        )
    return dict(zip(names, means, strict=True))


def compiled(net: torch.nn.Module, mode: str = "off") -> torch.nn.Module:
    """``net`` under ``torch.compile`` (``TrainConfig.compile``): ``off`` returns it as it is;
    ``default``, ``reduce-overhead`` (CUDA graphs of the compiled graphs) and ``max-autotune``
    are the inductor backend's modes; ``aot_eager`` traces the forward and backward graphs
    without generating code (a check that the model compiles, fast to build). The model's
    forward (encode, sample, render) is compiled; the ELBO and the optimiser step run eagerly.
    A new render size (coarse-to-fine) or a short last batch compiles once more."""
    if mode == "off":
        return net
    if mode == "aot_eager":
        return cast(torch.nn.Module, torch.compile(net, backend="aot_eager"))
    return cast(torch.nn.Module, torch.compile(net, mode=mode))


def unwrapped(net: torch.nn.Module, ddp: bool = True) -> Any:
    """The module inside ``torch.compile``'s wrapper (``_orig_mod``) and, with ``ddp``,
    DistributedDataParallel's (``module``): the :class:`SpatialVAE` itself."""
    net = getattr(net, "_orig_mod", net)
    return getattr(net, "module", net) if ddp else net


class RunningElbo:
    """The running mean ELBO of the progress display, read without stalling a GPU.

    On CUDA the running sum is copied to pinned host memory without waiting and shown once the
    copy has landed (a few steps late), so the host never waits for the device within an
    epoch; on a CPU it is read at once (no device to wait for)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.text = ""
        self.pending: int | None = None  # images done when the copy in flight was started
        if self.cuda:
            self.host = torch.zeros((), dtype=torch.float64).pin_memory()
            self.event = torch.cuda.Event()

    def read(self, total: torch.Tensor, done: int) -> str:
        """``"ELBO x"``: the per-image mean of ``total`` (a 0-d tensor, nats summed over
        ``done`` images), or on CUDA the latest such figure already on the host."""
        if not self.cuda:
            return f"ELBO {total.item() / done:.1f}"
        if self.pending is not None and self.event.query():
            self.text = f"ELBO {self.host.item() / self.pending:.1f}"
            self.pending = None
        if self.pending is None:
            self.host.copy_(total, non_blocking=True)
            self.event.record()
            self.pending = done
        return self.text


def training_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    rng: torch.Generator | None = None,
    use_z: bool = True,
    augment: bool = True,
    amp: contextlib.AbstractContextManager[Any] | None = None,
    share: tuple[slice, int] | None = None,
    ctf: torch.Tensor | None = None,
    pixel_fraction: float = 1.0,
    beta: float = 1.0,
    pose_beta: float = 1.0,
    hyper_weight: float = 0.0,
    class_balance: float = 0.0,
    class_target: torch.Tensor | None = None,
    class_pull: float = 0.0,
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

    ``pixel_fraction`` < 1: the batch is rendered and compared on that random fraction of the
    pixels (one draw per step), the log-likelihood scaled by all over drawn (unbiased).

    ``beta``, ``pose_beta``: the weights of the z and pose KLs in the maximised objective
    (:func:`emvae.objective.weighted_elbo`); the returned terms are the ELBO's.

    ``hyper_weight``: with ``--prior hyperprior``, the objective per image also gains
    ``hyper_weight * log p(s^2)`` (:func:`emvae.objective.log_hyperprior`); with 1 / N (N
    training images) each step estimates (the data set's ELBO + log p(s^2)) / N without bias
    (s is a MAP estimate).

    ``class_balance``: with ``--classes``, the objective also loses ``class_balance`` times
    KL(the batch's mean q(class) || uniform) per image (:func:`class_balance_weight`);
    ``class_target`` ``(B,)``: each image's seeded class (-1: none), and the objective loses
    ``class_pull`` times -log q(target class | image) per image that has one
    (:mod:`emvae.classseed`).
    """
    core = unwrapped(model)
    ddp = unwrapped(model, ddp=False)  # the DDP wrapper (if any) under torch.compile's
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
        ctf = None if ctf is None else ctf.new_ones(1, ctf.shape[1])  # any CTF: x is 0
    subset, pixel_weight = None, 1.0
    if pixel_fraction < 1:
        subset = core.pixel_sample(pixel_fraction, rng)
        pixel_weight = (core.pixel_index.numel() if core.masked else core.n_pixels) / len(subset)
    optimizer.zero_grad(set_to_none=True)
    # the batch in passes small enough for memory (the generator's activations grow with the
    # pixels): gradients summed over the passes are the whole batch's
    step = core.images_per_pass(True, None if subset is None else len(subset))
    parts: list[ElboTerms] = []
    for start in range(0, x.shape[0], step):
        piece = slice(start, start + step)
        last = start + step >= x.shape[0]
        sync: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if isinstance(ddp, torch.nn.parallel.DistributedDataParallel) and not last:
            sync = ddp.no_sync()  # all-reduce the gradients once, after the last pass
        with sync:
            with amp if amp is not None else contextlib.nullcontext():
                g = None if gamma is None else gamma[piece]
                c = None if ctf is None else ctf[piece]
                q, params = model(x[piece], g, eps[piece], use_z, subset, c)
            y = core.pixels(x[piece], subset)
            terms = posterior_elbo(
                cfg, y, params.float(), q.float(), use_z, c, pixel_weight, core.stage
            )
            loss = -terms.objective(beta, pose_beta).sum() * weight
            if class_balance and q.bins is not None and q.bins.classes > 1:
                loss = loss + class_balance * len(y) * weight * batch_class_kl(q.bins.float())
            if class_pull and class_target is not None and q.bins is not None:
                loss = loss + class_pull * weight * seed_class_nll(q.bins, class_target[piece])
            if last and core.z_prior_logstd is not None and hyper_weight:
                loss = loss - hyper_weight * log_hyperprior(
                    core.z_prior_logstd, cfg.hyper_shape, cfg.hyper_scale
                )
            loss.backward()
        parts.append(terms.detached())
    optimizer.step()
    terms = ElboTerms.cat(parts)
    if n == 0:
        return terms.map(lambda t: t[:0])
    return terms


def class_balance_weight(start: float, epoch: int, epochs: int) -> float:
    """The weight of the classes' balance term in ``epoch`` (1-based) of ``epochs``: ``start``
    at the first, falling linearly to 0 at half the run (--classes; TrainConfig.class_balance)."""
    half = max(1.0, epochs / 2)
    return start * max(0.0, 1.0 - (epoch - 1) / half)


def seed_class_nll(bins: RotationBins, target: torch.Tensor) -> torch.Tensor:
    """The sum over the images of -log q(target class | image), nats (a scalar); ``target``
    ``(B,)`` 0-based, -1 for an image without one (it adds nothing)."""
    has = target >= 0
    log_q = bins.class_log_prob().float().gather(1, target.clamp_min(0)[:, None])[:, 0]
    return -(log_q * has).sum()


def batch_class_kl(bins: RotationBins) -> torch.Tensor:
    """KL(mean over the images of q(class | y) || uniform), nats, a scalar: 0 when the batch
    uses every class equally, log K when all its images are of one class."""
    mean = bins.class_log_prob().exp().mean(0)
    return (mean * (mean.clamp_min(1e-30).log() + math.log(bins.classes))).sum()


@torch.no_grad()
def prior_columns(model: SpatialVAE) -> dict[str, float]:
    """metrics.csv's columns of the learned prior (``--prior hyperprior``; none otherwise):
    ``log_hyperprior`` (log p(s^2), nats, once per data set) and ``prior_std_z1..K`` (s_k)."""
    ls = model.z_prior_logstd
    if ls is None:
        return {}
    cfg = model.config
    row = {"log_hyperprior": log_hyperprior(ls, cfg.hyper_shape, cfg.hyper_scale).item()}
    row.update({f"prior_std_z{k + 1}": v for k, v in enumerate(ls.exp().tolist())})
    return row


@torch.no_grad()
def evaluate(
    model: SpatialVAE,
    data: torch.Tensor | StreamedImages,
    idx: torch.Tensor,
    config: RunConfig,
    device: torch.device,
    seed: int,
    use_z: bool = True,
    ctx: Dist = SINGLE,
    ctf: torch.Tensor | None = None,
    amp: contextlib.AbstractContextManager[Any] | None = None,
) -> dict[str, float]:
    """Mean ELBO terms (nats per image) over ``data[idx]``, no augmentation, seeded sample
    (shared across processes, each computing its part of every batch); the generator renders
    under ``amp`` (:func:`emvae.encode.elbo_pass`)."""
    model.eval()
    rng = torch.Generator(device=device).manual_seed(seed)
    names = term_names(config.model)
    sums = torch.zeros(len(names), device=device, dtype=torch.float64)
    bs = max(config.train.batch_size, 256)
    step = model.images_per_pass(training=False)
    for start in range(0, idx.shape[0], bs):
        batch = idx[start : start + bs]
        part = ctx.part(len(batch))
        eps = torch.randn(len(batch), model.n_latent, generator=rng, device=device)[part]
        x = gather(data, batch[part], device)
        mine = None if ctf is None else ctf[batch[part].to(ctf.device)]
        for a in range(0, max(x.shape[0], 1), step):
            piece = slice(a, a + step)
            c = None if mine is None else mine[piece]
            _, terms, _ = elbo_pass(model, x[piece], eps[piece], c, use_z, amp)
            sums += _term_sums(terms)
    ctx.all_sum(sums)
    return dict(zip(names, (sums / idx.shape[0]).tolist(), strict=True))


def _term_sums(terms: ElboTerms) -> torch.Tensor:
    """Batch sums of :func:`term_names`' terms, ``(len(names),)`` float64."""
    parts = [terms.elbo, -terms.log_lik, terms.kl, terms.kl_z, terms.kl_theta, terms.kl_shift]
    parts += [t for t in (terms.kl_deform, terms.kl_class) if t is not None]
    sums = torch.stack([p.detach().double().sum() for p in parts])
    return torch.cat([sums, terms.kl_z_dims.detach().double().sum(0)])
