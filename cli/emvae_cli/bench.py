"""``emvae simulate`` and ``emvae bench mnist|particles|galaxies``."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import typer

from emvae import bench as bn
from emvae import throughput as tp
from emvae.config import Generator, RotationBins
from emvae.errors import ConfigError
from emvae.gpucheck import SECTIONS, run_gpu_check
from emvae.mnist import DATASETS
from emvae.simulate import OBJECTS
from emvae.simulating import simulate_stack
from emvae_cli.common import DEVICE, DEVICE_HELP, SEED_MAX, arg, default, err_console, user_errors

# members from OBJECTS, which mypy cannot see: a str Enum for Typer's choices
Particle = enum.Enum("Particle", {name: name for name in OBJECTS}, type=str)  # type: ignore[misc]
HINGE = Particle(arg(simulate_stack, "obj"))  # --object's default

bench_app = typer.Typer(
    rich_markup_mode=None,  # help as plain text: [brackets] kept, no <bool> metavars
    help="Validation benchmarks of the paper (MNIST family, simulated particles, Galaxy Zoo).",
    no_args_is_help=True,
)


def _csv(values: Iterable[object]) -> str:
    return ",".join(str(v) for v in values)


def _lib(fn: Callable[..., Any], name: str, *flags: str, **options: Any) -> Any:
    """A Typer option whose default is parameter ``name`` of library function ``fn`` (a tuple
    as comma-separated text), so that the CLI repeats no default."""
    value = arg(fn, name)
    return typer.Option(_csv(value) if isinstance(value, tuple) else value, *flags, **options)


@user_errors
def simulate(
    out: Path = typer.Argument(..., help="Folder to write particles.mrcs/.star and truth.csv."),
    n: int = _lib(simulate_stack, "n", "-n", "--n", help="Number of particles."),
    size: int = _lib(simulate_stack, "size", "--size", help="Box size, px."),
    snr: float = _lib(simulate_stack, "snr", "--snr", help="Signal variance / noise variance."),
    shift_std: float = _lib(simulate_stack, "shift_std", "--shift-std", help="Shift std, px."),
    apix: float = _lib(simulate_stack, "apix", "--apix", help="Pixel size, A."),
    defocus: str | None = typer.Option(
        None,
        "--ctf",
        show_default=False,
        help="Apply each particle's CTF: a defocus in um (1.5), or a range drawn per particle "
        "(0.8:2.5); 300 kV, Cs 2.7 mm, amplitude contrast 0.1.",
    ),
    astigmatism: float = typer.Option(
        arg(simulate_stack, "astigmatism"),
        "--astigmatism",
        min=0,
        help="With --ctf: defocus U - V in um, at random angles.",
    ),
    seed: int = _lib(simulate_stack, "seed", "--seed", min=0, max=SEED_MAX, help="Random seed."),
    obj: Particle = typer.Option(
        HINGE,
        "--object",
        help="The molecule: hinge (an arm swings 90 degrees), clamp (a lid closes a C), slide "
        "(a domain slides along an L), random (drawn from --object-seed).",
    ),
    object_seed: int = typer.Option(
        arg(simulate_stack, "object_seed"),
        "--object-seed",
        help="Seed of the random object (with --object random).",
    ),
    scale_std: float = typer.Option(
        arg(simulate_stack, "scale_std"),
        "--scale-std",
        min=0,
        help="Each particle magnified by exp(N(0, S^2)) (std of the log-scale; truth.csv gets "
        "scale_x, scale_y).",
    ),
    stretch_std: float = typer.Option(
        arg(simulate_stack, "stretch_std"),
        "--stretch-std",
        min=0,
        help="Each particle stretched along its own x and y axes by exp(+t), exp(-t), "
        "t ~ N(0, T^2).",
    ),
    bend_std: float = typer.Option(
        arg(simulate_stack, "bend_std"),
        "--bend-std",
        min=0,
        help="Each particle bent: the point (x, y) of the molecule moves to (x, y + b x^2), "
        "coordinates in half-boxes, b ~ N(0, B^2) (truth.csv gets bend; test data for --pose tps).",
    ),
    structure: list[Path] | None = typer.Option(
        None,
        "--structure",
        show_default=False,
        help="Project an atomic model instead (PDB or mmCIF, through gemmi): its protein and "
        "nucleic-acid atoms as Gaussians weighted by atomic number. --object is then ignored. "
        "Repeat for a mixture: one class per model.",
    ),
    structure2: Path | None = typer.Option(
        None,
        "--structure2",
        show_default=False,
        help="With --structure: a second model of the same molecule; the conformation morphs "
        "linearly from the first (0) to this one (1), superposed on the first.",
    ),
    domain: list[str] | None = typer.Option(
        None,
        "--domain",
        show_default=False,
        help="With --structure: residues CHAIN:FIRST-LAST that turn about a hinge as the "
        "conformation goes from 0 to 1 (repeat for a domain of several ranges).",
    ),
    hinge_deg: float = typer.Option(
        arg(simulate_stack, "hinge_deg"),
        "--hinge-deg",
        help="With --domain: the turn at conformation 1, degrees (> 0 closes).",
    ),
    view: str = typer.Option(
        arg(simulate_stack, "view"),
        "--view",
        help="With --structure: ROT,TILT,PSI in degrees (RELION's ZYZ Euler angles), or auto "
        "(the view in which the motion shows most).",
    ),
    tilt_deg: float = typer.Option(
        arg(simulate_stack, "tilt_deg"),
        "--tilt-deg",
        min=0,
        help="With --structure: each particle's view tilted out of plane by N(0, T^2) degrees "
        "about a random in-plane axis (truth.csv gets tilt_deg, tilt_axis_deg).",
    ),
    classes: int = typer.Option(
        arg(simulate_stack, "classes"),
        "--classes",
        min=1,
        help="A mixture of K molecules: --object and the next ones of its family (hinge, "
        "clamp, slide, then random from --object-seed on); with --structure, K views of one "
        "model (or give --structure once per class). truth.csv gets class (0..K-1), junk, "
        "junk_kind.",
    ),
    class_weights: str | None = typer.Option(
        None,
        "--class-weights",
        show_default=False,
        help="With --classes: the classes' shares, comma-separated (0.5,0.3,0.2; default equal).",
    ),
    junk: float = typer.Option(
        arg(simulate_stack, "junk"),
        "--junk",
        min=0,
        max=0.99,
        help="Fraction of junk images (exact count, random places), split equally between "
        "--junk-kinds; same CTF and noise as the particles.",
    ),
    junk_kinds: str = typer.Option(
        arg(simulate_stack, "junk_kinds"),
        "--junk-kinds",
        help="Junk: noise (no signal), ice (broad blobs), fragment (part of a particle), "
        "neighbour (a second particle overlapping the box).",
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT's files."),
) -> None:
    """Simulated particles with known poses and conformations.

    A 2-D molecule with one conformational degree of freedom (or, with --structure, the
    projection of an atomic model whose domain turns or which morphs into a second model),
    uniform rotations, Gaussian shifts, noise, optional CTF; truth in emvae's pose conventions
    (relative to the consensus view, and in the body's frame)."""
    lines = simulate_stack(
        out, n=n, size=size, snr=snr, shift_std=shift_std, apix=apix, defocus=defocus,
        astigmatism=astigmatism, seed=seed, obj=obj.value, object_seed=object_seed,
        scale_std=scale_std, stretch_std=stretch_std, bend_std=bend_std,
        structure=structure or (), structure2=structure2, domains=domain or (),
        hinge_deg=hinge_deg, view=view, tilt_deg=tilt_deg, classes=classes,
        class_weights=class_weights, junk=junk, junk_kinds=junk_kinds, force=force,
    )  # fmt: skip
    for line in lines:
        err_console.print(line, highlight=False)


def _numbers(text: str, kind: Callable[[str], Any] = float) -> tuple[Any, ...]:
    """The comma-separated ``kind`` (``int`` or ``float``) in ``text``; else a ConfigError."""
    try:
        return tuple(kind(v) for v in text.split(",") if v)
    except ValueError:
        what = "integers" if kind is int else "numbers"
        raise ConfigError(f"expected comma-separated {what}, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    """The non-empty comma-separated names in ``text``."""
    return tuple(v for v in text.split(",") if v)


@bench_app.command("mnist")
@user_errors
def mnist(
    data: Path = typer.Option(
        ..., "--data", help="MNIST IDX folder (train-images-idx3-ubyte etc., .gz or not)."
    ),
    out: Path = typer.Option(Path("runs/bench_mnist"), "-o", "--out", help="Output folder."),
    datasets: str = typer.Option(
        _csv(arg(bn.run_mnist, "datasets")),
        "--datasets",
        help=f"Comma-separated MNIST variants: {', '.join(DATASETS)}.",
    ),
    models: str = typer.Option(
        _csv(arg(bn.run_mnist, "models")),
        "--models",
        help=f"Comma-separated models: {', '.join(bn.MODELS)} (the first three: the paper's; "
        "broadcast: the Spatial Broadcast decoder with the same pose inference).",
    ),
    zdims: str = _lib(bn.run_mnist, "zdims", "--zdims"),
    epochs: int = _lib(bn.run_mnist, "epochs", "-n", "--epochs"),
    hidden: int = _lib(bn.run_mnist, "hidden", "--hidden", help="Width of both networks."),
    n_train: int | None = typer.Option(None, "--n-train", help="Use the first N training images."),
    canvas: int = _lib(
        bn.run_mnist, "canvas", "--canvas", help="Field of rotated+translated MNIST, px."
    ),
    device: str = typer.Option(DEVICE, "--device", help=DEVICE_HELP),
    encoders: str = typer.Option(
        _csv(arg(bn.run_mnist, "encoders")),
        "--encoders",
        help="Inference networks of the spatial model: mlp, conv, equivariant.",
    ),
    lr: float = _lib(bn.run_mnist, "lr", "--lr", help="Adam learning rate (the paper's: 1e-4)."),
    cluster: bool = typer.Option(
        arg(bn.run_mnist, "cluster"),
        "--cluster",
        help="Also k-means (k = 10) on z vs the digits, after Hungarian matching.",
    ),
    betas: str = typer.Option(
        _csv(arg(bn.run_mnist, "betas")),
        "--betas",
        help="Comma-separated weights of z's KL (fit --beta); a row each.",
    ),
    quiet: bool = typer.Option(False, "-q", "--quiet"),
) -> None:
    """Paper Fig. 2 / 3: test ELBO per dataset x model x Z-D, manifolds, linear-SVM probe.

    With --cluster: the accuracy of k-means on z (k = 10, Hungarian-matched to the digits)."""
    table = bn.run_mnist(
        data, out, datasets.split(","), models.split(","), _numbers(zdims, int), epochs, hidden,
        n_train, canvas, device, progress=not quiet, encoders=tuple(encoders.split(",")), lr=lr,
        cluster=cluster, betas=_numbers(betas),
    )  # fmt: skip
    err_console.print(f"wrote {out / 'mnist_results.md'} ({len(table)} fits)", highlight=False)


@bench_app.command("particles")
@user_errors
def particles(
    out: Path = typer.Option(Path("runs/bench_particles"), "-o", "--out"),
    n: int = _lib(bn.run_particles, "n", "-n", "--n", help="Simulated particles."),
    size: int = _lib(bn.run_particles, "size", "--size"),
    snr: float = _lib(bn.run_particles, "snr", "--snr"),
    epochs: int = _lib(bn.run_particles, "epochs", "--epochs"),
    hidden: int = _lib(bn.run_particles, "hidden", "--hidden"),
    device: str = typer.Option(DEVICE, "--device", help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "-q", "--quiet"),
) -> None:
    """Paper Table 1: spatial-VAE (1-D z) vs vanilla VAEs (1-D, 2-D z) on simulated particles."""
    table = bn.run_particles(out, n, size, snr, epochs, hidden, device, progress=not quiet)
    err_console.print(f"wrote {out / 'particles_results.md'} ({len(table)} fits)", highlight=False)


@bench_app.command("galaxies")
@user_errors
def galaxies(
    data: Path = typer.Option(..., "--data", help="Folder of Galaxy Zoo JPEGs."),
    out: Path = typer.Option(Path("runs/bench_galaxies"), "-o", "--out"),
    zdim: int = _lib(bn.run_galaxies, "zdim", "--zdim"),
    size: int = _lib(bn.run_galaxies, "size", "-D", "--size"),
    epochs: int = _lib(bn.run_galaxies, "epochs", "--epochs"),
    hidden: int = _lib(bn.run_galaxies, "hidden", "--hidden"),
    enc_hidden: int = _lib(bn.run_galaxies, "enc_hidden", "--enc-hidden"),
    device: str = typer.Option(DEVICE, "--device", help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "-q", "--quiet"),
) -> None:
    """Paper Fig. 5: RGB spatial-VAE on Galaxy Zoo pictures; prior samples."""
    summary = bn.run_galaxies(
        data, out, zdim, size, epochs, hidden, enc_hidden, device, progress=not quiet
    )
    wrote = f"wrote {out / 'fig5_prior_samples.png'}; test ELBO {summary['test_elbo']:.1f}"
    err_console.print(wrote, highlight=False)


@bench_app.command("encoders")
@user_errors
def encoders(
    out: Path = typer.Option(Path("runs/bench_encoders"), "-o", "--out"),
    n: int = _lib(bn.run_encoders, "n", "-n", "--n", help="Particles per simulated stack."),
    size: int = _lib(bn.run_encoders, "size", "--size"),
    snrs: str = _lib(bn.run_encoders, "snrs", "--snr", help="Comma-separated SNRs."),
    which: str = typer.Option(
        _csv(arg(bn.run_encoders, "encoders")),
        "--encoders",
        help="Comma-separated: equivariant, mlp, conv (rotation bins), mlp/gaussian, "
        "conv/gaussian (the paper's rotation posterior).",
    ),
    objects: str = typer.Option(
        _csv(arg(bn.run_encoders, "objects")),
        "--objects",
        help="Comma-separated simulated molecules: hinge, clamp, slide, random:SEED.",
    ),
    epochs: int = typer.Option(default(bn.EncoderRuns, "epochs"), "--epochs"),
    hidden: int = typer.Option(
        default(bn.EncoderRuns, "hidden"), "--hidden", help="Generator (and MLP head) width."
    ),
    zdim: int = typer.Option(default(bn.EncoderRuns, "zdim"), "--zdim", help="Latent dimensions."),
    z_delay: int | None = typer.Option(
        None, "--z-delay", show_default=False, help="Epochs with z held at 0 (default: fit's)."
    ),
    rotation_bins: RotationBins = typer.Option(
        default(bn.EncoderRuns, "rotation_bins"), "--rotation-bins"
    ),
    hypotheses: int = typer.Option(default(bn.EncoderRuns, "hypotheses"), "--hypotheses"),
    enc_channels: int = typer.Option(default(bn.EncoderRuns, "enc_channels"), "--enc-channels"),
    lr: float = typer.Option(default(bn.EncoderRuns, "lr"), "--lr"),
    batch_size: int = typer.Option(default(bn.EncoderRuns, "batch_size"), "-b", "--batch-size"),
    device: str = typer.Option(DEVICE, "--device", help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "-q", "--quiet"),
) -> None:
    """Rotation and conformation recovery per epoch for each inference network and object."""
    table = bn.run_encoders(
        out, n, size, _numbers(snrs), _names(which), _names(objects), device, progress=not quiet,
        epochs=epochs, hidden=hidden, zdim=zdim, rotation_bins=rotation_bins,
        hypotheses=hypotheses, enc_channels=enc_channels, lr=lr, batch_size=batch_size,
        z_delay=z_delay,
    )  # fmt: skip
    wrote = f"wrote {out / 'encoders_results.md'} and encoders_per_epoch.csv ({len(table)} epochs)"
    err_console.print(wrote, highlight=False)


@bench_app.command("generator")
@user_errors
def generator(
    out: Path = typer.Option(Path("runs/bench_generator"), "-o", "--out"),
    fourier: str = typer.Option(
        _csv(arg(bn.run_generator, "fourier")),
        "--fourier-features",
        help="Comma-separated Fourier feature counts (0: raw x, y).",
    ),
    seeds: str = _lib(
        bn.run_generator, "seeds", "--seeds", help="Comma-separated initialisation seeds."
    ),
    steps: int = _lib(bn.run_generator, "steps", "--steps", min=1, help="Adam steps per run."),
    hidden: int = _lib(
        bn.run_generator, "hidden", "--hidden", min=1, help="Generator width (the example's)."
    ),
    lr: float = _lib(bn.run_generator, "lr", "--lr"),
    batch_size: int = _lib(bn.run_generator, "batch", "-b", "--batch-size", min=1),
) -> None:
    """Steps a generator alone needs to beat the mean image on the embedded example, given the
    true poses and conformation (how fast it can learn what z would tell it)."""
    fourier_features, init_seeds = _numbers(fourier, int), _numbers(seeds, int)
    bn.run_generator(fourier_features, init_seeds, steps, hidden, lr, batch_size, typer.echo)


@bench_app.command("time-to-result")
@user_errors
def time_to_result(
    out: Path = typer.Option(Path("runs/bench_time_to_result"), "-o", "--out"),
    n: int = _lib(bn.run_time_to_result, "n", "-n", "--n", help="Particles."),
    size: int = _lib(bn.run_time_to_result, "size", "--size", help="Box, px."),
    snr: float = _lib(bn.run_time_to_result, "snr", "--snr"),
    epochs: int = _lib(bn.run_time_to_result, "epochs", "--epochs"),
    encoders: str = typer.Option(
        _csv(arg(bn.run_time_to_result, "encoders")),
        "--encoders",
        help="Comma-separated pose networks: auto (fit's default), equivariant, conv, mlp.",
    ),
    obj: str = _lib(
        bn.run_time_to_result, "obj", "--object", help="hinge, clamp, slide, random:SEED."
    ),
    device: str = _lib(bn.run_time_to_result, "device", "--device", help=DEVICE_HELP),
    hidden: int | None = typer.Option(
        None, "--hidden", min=1, help="Both networks' width (default: fit's choice for the box)."
    ),
    pixel_fraction: float = typer.Option(
        arg(bn.run_time_to_result, "pixel_fraction"),
        "--pixel-fraction",
        help="fit's --pixel-fraction (likelihood on this fraction).",
    ),
    generator: Generator = typer.Option(
        arg(bn.run_time_to_result, "generator"), "--generator", help="fit's --generator."
    ),
    beta: float = _lib(
        bn.run_time_to_result, "beta", "--beta", help="fit's --beta (weight of z's KL)."
    ),
    quiet: bool = typer.Option(False, "-q", "--quiet"),
) -> None:
    """Wall time until fit's defaults find the poses (θ circ. corr. >= 0.95) and the
    conformation (|r| of z >= 0.9) on a simulated stack, epoch by epoch."""
    bn.run_time_to_result(
        out, n, size, snr, epochs, _names(encoders), device,
        progress=not quiet, obj=obj, hidden=hidden, pixel_fraction=pixel_fraction,
        generator=generator, beta=beta, log=typer.echo,
    )  # fmt: skip
    err_console.print(f"wrote {out / 'time_to_result_results.md'}", highlight=False)


@bench_app.command("throughput")
@user_errors
def throughput(
    config: str = typer.Option(
        _csv(arg(tp.measure_all, "names")),
        "--config",
        help="em, mnist, galaxy (the paper's), fit (fit's, 64 px).",
    ),
    device: str = typer.Option(DEVICE, "--device", help=DEVICE_HELP),
    precision: str = _lib(tp.measure_all, "precisions", "--precision", help="fp32 and/or bf16."),
    batch: str = _lib(tp.measure_all, "batches", "--batch", help="Batch sizes."),
    steps: int = _lib(
        tp.measure_all, "steps", "--steps", help="Timed steps (after 2 warm-up steps)."
    ),
    compile_model: bool = typer.Option(False, "--compile", help="torch.compile the model."),
    stream: bool = typer.Option(
        False, "--stream", help="Also time batches streamed from a memory-mapped file."
    ),
    ctf: bool = typer.Option(
        False, "--ctf", help="Also time steps with the CTF in the likelihood (--ctf on)."
    ),
    hidden: int | None = typer.Option(
        None, "--hidden", min=1, help="Hidden width of both networks (default: the config's)."
    ),
    zdim: int | None = typer.Option(
        None, "--zdim", min=0, help="Latent dimensions (default: the config's)."
    ),
    pixel_fraction: float = typer.Option(
        arg(tp.measure, "pixel_fraction"),
        "--pixel-fraction",
        help="Likelihood on this random fraction of the pixels.",
    ),
) -> None:
    """Training-step images/s and the generator's GFLOP/s.

    FLOPs are counted analytically (formula in emvae/throughput.py); a table, then one JSON
    line per measurement."""
    rows = tp.measure_all(
        list(_names(config)), device, precision.split(","), _numbers(batch, int), steps,
        stream=stream, ctf=ctf, log=typer.echo, compile_model=compile_model,
        hidden=hidden, zdim=zdim, pixel_fraction=pixel_fraction,
    )  # fmt: skip
    for m in rows:
        typer.echo(m.json())


@bench_app.command("loader")
@user_errors
def loader(
    stack: str = typer.Argument(..., help="A particle stack (any input fit reads)."),
    downsample: int | None = typer.Option(
        None, "-D", "--downsample", help="Fourier-downsample to this box, px (as fit -D)."
    ),
    batch: int = _lib(tp.loader_report, "batch", "--batch", min=1, help="Images per batch."),
    batches: int = _lib(
        tp.loader_report, "n_batches", "--batches", min=1, help="Timed batches per reader."
    ),
    workers: str = _lib(
        tp.loader_report, "workers", "--workers", help="DataLoader worker counts to time."
    ),
    train: bool = typer.Option(
        False, "--train", help="Also run a CPU training step per batch (fit's default model)."
    ),
) -> None:
    """Streaming read rate, images/s: a thread reading one batch ahead (fit's former reader)
    against fit's DataLoader with 0, 1, 2… worker processes, on random batches of STACK
    preprocessed as fit would."""
    for line in tp.loader_report(stack, downsample, batch, batches, _numbers(workers, int), train):
        typer.echo(line)


@bench_app.command("gpu")
@user_errors
def gpu(
    out: Path = typer.Option(..., "-o", "--out", help="Folder for gpu_check.jsonl and .md."),
    device: str = typer.Option(DEVICE, "--device", help=DEVICE_HELP),
    tiny: bool = typer.Option(
        False,
        "--tiny",
        help="Tiny sizes, a few steps: a smoke run in seconds (figures mean nothing).",
    ),
    sections: str = typer.Option(
        ",".join(SECTIONS), "--sections", help="Which sections to run, in this order."
    ),
    work: Path | None = typer.Option(
        None,
        "--work",
        help="Folder for the simulated stack (0.8 GB) and the fits' runs (default: OUT).",
        show_default=False,
    ),
) -> None:
    """The prepared check for a lent GPU: step images/s (fit at 64 and 128 px, the paper's em;
    fp32, TF32, bf16; batch 100 and the largest that fits), the generator's TFLOP/s against a
    bf16 matrix product measured in the same run, the streaming reader, time to result on
    50,000 x 64 px, torchrun against a plain fit. Each section has its own time budget; every
    result is written as it comes (docs/benchmarks.md, "GPU")."""
    run_gpu_check(out, device, tiny, _names(sections), log=typer.echo, work=work)
    typer.echo(f"wrote {out / 'gpu_check.md'} and {out / 'gpu_check.jsonl'}")
