"""What ``emvae fit`` does around :func:`emvae.train.fit`: the inputs and the
:class:`RunConfig` from the command's options, the checks before any work, and the lines it
prints at the end.

:func:`plan_fit` opens the inputs (a resume: the way the run being resumed opened them, from
its ``last.pt``, read here once and handed on to :func:`emvae.train.fit`) and assembles the
configuration; :func:`start_fit` checks the outputs and trains; :func:`fit_summary` words the
outcome; :func:`fit_from_options` is the three in a row, the whole of ``emvae fit``.
:func:`encode_particles` is ``emvae encode``: a trained model over other images.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emvae._version import __version__
from emvae.config import ModelConfig, RunConfig, TrainConfig, fields_of
from emvae.ctf import likelihood_ctf
from emvae.data import keep_freed_memory, resolve_device
from emvae.encode import encode
from emvae.errors import ConfigError
from emvae.example import EXAMPLE_OPTIONS, make_example
from emvae.io import input_files, write_table
from emvae.latents import latent_usage, unused_warning
from emvae.particles import Particles
from emvae.preprocess import Preprocess
from emvae.progress import training_progress
from emvae.run import (
    CHECKPOINTS,
    DERIVED,
    METRICS,
    OUTPUTS,
    check_output_dir,
    load_model,
    read_last,
)
from emvae.runlog import LOG, append_log
from emvae.safety import check_names, check_writable, refuse_existing, refuse_inputs_as_outputs
from emvae.stages import table_size
from emvae.train import FitResult, autocast_for, fit

#: The options that prepare the input images: ``emvae fit``'s name -> :class:`Preprocess`'s.
PREPROCESS = {
    "size": "size", "crop": "crop", "jitter": "jitter", "seed": "seed", "invert": "invert",
    "norm": "normalize", "bg_radius": "bg_radius",
}  # fmt: skip


@dataclass
class FitPlan:
    """A fit ready to start: its particles, configuration, and what to tell the user first."""

    particles: Particles
    config: RunConfig
    out: Path
    #: lines about the input ("note: ..."), printed before training and kept in run.log
    notes: list[str]
    resume: bool = False
    force: bool = False
    #: the checkpoint a resume continues from (None: a new run, or nothing to resume)
    last: dict[str, Any] | None = None


def plan_fit(
    inputs: Sequence[str] | None,
    out: str | Path,
    options: Mapping[str, Any],
    *,
    example: bool = False,
    resume: bool = False,
    force: bool = False,
    command: str = "",
) -> FitPlan:
    """Open the inputs and assemble the configuration of a fit into ``out``.

    ``options``: the command's options by name (None: not given), those of
    :class:`ModelConfig` and :class:`TrainConfig` under their field names, and the input's:
    ``datadir``, ``ind``, ``apix``, ``size``, ``crop``, ``jitter``, ``invert``, ``norm``,
    ``bg_radius``, ``likelihood``, ``normalize``, ``ctf_params``, ``ctf`` (auto, on,
    phase-flip, off), ``seed``. ``example``: fit the embedded example (written into
    ``out/example``), with its options (:data:`EXAMPLE_OPTIONS`) under the given ones.

    ``resume``: the inputs are opened as the run in ``out`` opened them (its ``last.pt``,
    read once and kept in the plan), and the number of epochs is the stored one unless
    ``options`` gives ``epochs``. ``command``: the shell line, for config.json.
    """
    if example == bool(inputs):
        raise ConfigError("give input images or --example (not both)")
    out = Path(out)
    preset = dict(EXAMPLE_OPTIONS) if example else {}  # under the given options
    if example:
        inputs = [str(make_example(out / "example", force=force or resume))]
    get = options.get
    last = read_last(out, force) if resume else None
    if last is not None:  # read the inputs the way the run being resumed did
        stored = RunConfig.from_dict(last["config"])
        if stored.train.epochs is not None:  # --resume without -n: the run's
            preset["epochs"] = stored.train.epochs
        datadir, ind = get("datadir") or stored.data.datadir, get("ind") or stored.data.ind
        particles = Particles.like(stored.data, inputs, datadir, ind, get("apix"))
    else:
        prep = {to: options[name] for name, to in PREPROCESS.items() if name in options}
        pre = Preprocess.for_inputs(inputs or [], **prep)
        particles = Particles.open(
            inputs or [], datadir=get("datadir"), ind=get("ind"), apix=get("apix"),
            preprocess=pre, likelihood=get("likelihood"), normalize=get("normalize"),
            ctf_params=get("ctf_params"),
        )  # fmt: skip
    images = particles.stack
    notes = [f"note: {note}" for note in images.notes]
    ctf_choice, why = particles.ctf_mode(get("ctf", "auto"))
    if why:
        notes.append(f"note: the CTF is not modelled: {why}")
    given = {**preset, **{k: v for k, v in options.items() if v is not None}}
    given.update(
        image_size=particles.size, channels=particles.channels, ctf=ctf_choice,
        likelihood=get("likelihood") or images.likelihood,
    )  # fmt: skip
    config = RunConfig(
        model=ModelConfig(**fields_of(ModelConfig, given)),
        train=TrainConfig(**fields_of(TrainConfig, given)),
        version=__version__,
        command=command,
        created=datetime.datetime.now().isoformat(timespec="seconds"),
    )
    return FitPlan(particles, config, out, notes, resume, force, last)


def start_fit(plan: FitPlan, progress: bool = True) -> FitResult:
    """Check the plan's outputs (never over its inputs; a writable folder; a new run: not
    over another run unless ``force``, a valid configuration, the CTF fields it needs), then
    train (:func:`emvae.train.fit`)."""
    images, out = plan.particles.stack, plan.out
    outputs = [out / name for name in (*OUTPUTS, *DERIVED)]
    refuse_inputs_as_outputs(outputs, input_files(images.inputs, images.names))
    check_names(images.names, images.source)
    check_writable(out)
    if not plan.resume:
        check_output_dir(out, plan.force)
        plan.config.validate()
        plan.particles.ctf(plan.config.model.ctf)  # a missing CTF field: one line, now
    return fit(
        plan.particles, plan.config, out, resume=plan.resume, force=plan.force,
        progress=progress, notes=plan.notes, last=plan.last,
    )  # fmt: skip


def fit_summary(result: FitResult) -> tuple[list[str], str]:
    """What a finished fit tells the user: (warnings: latents held at 0 throughout, or
    unused; the line naming every output written)."""
    out, t = result.out_dir, result.config.train
    warnings = []
    if result.config.model.zdim and t.z_delay is not None and t.z_delay >= (t.epochs or 0):
        warnings.append(
            f"warning: z was held at 0 for all {t.epochs} epochs (--z-delay {t.z_delay}): the "
            f"latents are untrained; fit longer or give a shorter --z-delay"
        )
    warning = unused_warning(latent_usage(result.table))
    if warning:
        warnings.append(warning)
    layout = result.star_layout
    wrote = (
        f"wrote {out / 'particles.csv'} ({len(result.table)} particles), "
        f"{out / 'particles.h5'}, {out / 'particles.star'} (RELION {layout}"
        f"{'' if layout == '3.1' else ': pixel size unknown, origins in px'}), "
        f"{out / METRICS}, {out / CHECKPOINTS}, {out / LOG}"
    )
    return warnings, wrote


def fit_from_options(
    inputs: Sequence[str] | None,
    out: str | Path,
    options: Mapping[str, Any],
    *,
    progress: bool = True,
    say: Callable[[str], None] = print,
    **how: Any,
) -> tuple[list[str], str] | None:
    """``emvae fit``, its options as the command line gives them (:func:`plan_fit`, which
    takes ``how``: ``example``, ``resume``, ``force``, ``command``): the fit planned, its
    notes on the input handed to ``say`` one line at a time before training, the fit run
    (:func:`start_fit`), and what it ends with worded (:func:`fit_summary`) and appended to
    ``out``'s run.log.

    Returns (the warnings, the line naming the outputs) for the caller to print, or None in
    a process other than rank 0 of a distributed job (rank 0 reports)."""
    plan = plan_fit(inputs, out, options, **how)
    for note in plan.notes:
        say(note)
    result = start_fit(plan, progress=progress)
    if result.table.empty:  # not rank 0 of a torchrun job
        return None
    warnings, wrote = fit_summary(result)
    append_log(plan.out, [*warnings, wrote], result.config.run_id)  # run.log: what is printed
    return warnings, wrote


def encode_particles(
    source: str | Path,
    inputs: Sequence[str],
    out: str | Path,
    *,
    batch_size: int = 256,
    device: str = "auto",
    seed: int = 0,
    datadir: str | None = None,
    ind: str | None = None,
    apix: float | None = None,
    force: bool = False,
    progress: bool = True,
) -> tuple[int, Path, str]:
    """``emvae encode``: the poses and latents of ``inputs`` under the model of ``source`` (a
    checkpoint or a run folder), prepared as that run prepared its own images, written as the
    table ``out`` (.csv or .h5) and a STAR file beside it.

    ``batch_size`` images per batch on ``device``; ``seed``: of the per-particle ELBO sample.
    Returns (number of particles, the STAR file, its RELION layout).
    """
    out = Path(out)
    star = out.with_suffix(".star")
    if out.suffix == ".star":
        raise ConfigError(f"{out}: name the table (.csv or .h5); the .star is written beside it")
    refuse_existing([out, star], force)
    dev = resolve_device(device)
    if dev.type == "cpu":
        keep_freed_memory()  # as fit does: the generator's passes reuse their memory
    model, config, _ = load_model(source, dev)
    particles = Particles.like(config.data, inputs, datadir, ind, apix)
    images = particles.stack
    refuse_inputs_as_outputs([out, star], [*input_files(images.inputs, images.names), source])
    check_names(images.names, images.source)
    check_writable(out.parent)
    particles.check_model(config.model)
    mode = config.model.ctf
    with training_progress(progress) as bar:
        data = particles.load(dev, bar=bar)
        data, ctf = likelihood_ctf(particles.ctf(mode), mode, data, dev)  # this input's own CTF
        advance = bar.task("encoding", len(images))
        amp = autocast_for(dev, config.train.amp)  # the ELBO rendered as in training
        size = table_size(config)  # as the fit's own table
        enc = encode(model, data, dev, batch_size, seed, advance, ctf=ctf, amp=amp, elbo_px=size)
    table = particles.table(config.model, enc)
    write_table(table, out)
    return len(table), star, particles.write_star(table, star)
