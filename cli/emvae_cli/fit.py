"""``emvae fit`` and ``emvae encode``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from emvae.config import (
    PASS_MEMORY_MB,
    POSE_SEARCH_DEG,
    SMALL_IMAGE_PX,
    SMALL_WIDTH,
    WIDTH,
    Activation,
    ClassGenerator,
    Compile,
    CtfMode,
    CtfPad,
    DataConfig,
    Encoder,
    EncoderCtf,
    Generator,
    Likelihood,
    ModelConfig,
    Pose,
    Prior,
    RotationBins,
    Stream,
    ThetaPosterior,
    ThetaPrior,
    TrainConfig,
    ZEncoder,
)
from emvae.example import EXAMPLE_OPTIONS
from emvae.fitting import encode_particles, fit_from_options
from emvae.preprocess import Normalize
from emvae.stages import FINE_IMAGES
from emvae_cli import inputs as opt
from emvae_cli.common import (
    DEVICE,
    DEVICE_HELP,
    SEED_MAX,
    arg,
    command_line,
    default,
    err_console,
    field_option,
    user_errors,
)

M, T = ModelConfig, TrainConfig
EncoderChoice = Literal["auto", Encoder]
CtfChoice = Literal["auto", CtfMode]

WIDTH_DEFAULT = f"{SMALL_WIDTH} up to {SMALL_IMAGE_PX} px, {WIDTH} above"


def _h(text: str, name: str) -> str:
    """Help ``text`` with the default of ``name`` (a ModelConfig or TrainConfig field), and
    ``--example``'s value when it sets one."""
    d = default(M if name in M.__dataclass_fields__ else T, name)
    d = WIDTH_DEFAULT if d is None and name.endswith("_hidden") else d
    ex = f"; --example: {EXAMPLE_OPTIONS[name]}" if name in EXAMPLE_OPTIONS else ""
    return f"{text} (default {d}{ex})"


@user_errors
def fit(
    ctx: typer.Context,
    stacks: list[str] | None = typer.Argument(None, help=opt.INPUTS_HELP, show_default=False),
    out: Path = typer.Option(..., "-o", "--out", help="Output directory."),
    example: bool = typer.Option(
        False,
        "--example",
        help="Generate a small synthetic stack with known poses in OUT/example and fit it (a few "
        "minutes on a laptop CPU).",
    ),
    zdim: int | None = field_option(M, "zdim", _h("Unstructured latent dims.", "zdim"), unset=True),
    epochs: int | None = field_option(
        T, "epochs", _h("Total number of epochs.", "epochs"), "-n", "--epochs", unset=True
    ),
    batch_size: int | None = field_option(
        T, "batch_size", _h("Images per step.", "batch_size"), "-b", "--batch-size", unset=True
    ),
    lr: float | None = field_option(T, "lr", _h("Adam learning rate.", "lr"), unset=True),
    seed: int = field_option(
        T, "seed", "Random seed (initialisation, split, sampling).", min=0, max=SEED_MAX
    ),
    device: str = typer.Option(DEVICE, "--device", help=DEVICE_HELP),
    rotation: bool = field_option(M, "rotation", "Infer rotation.", "--rotation/--no-rotation"),
    translation: bool = field_option(
        M, "translation", "Infer translation.", "--translation/--no-translation"
    ),
    theta_prior: ThetaPrior = field_option(
        M, "theta_prior", "uniform (paper eq. 3, mean not penalised) or gaussian."
    ),
    theta_prior_std_deg: float = field_option(
        M, "theta_prior_std_deg", "Rotation prior width s_theta, degrees.", "--theta-prior-std"
    ),
    shift_prior_px: float = field_option(M, "shift_prior_px", "Translation prior std, pixels."),
    likelihood: Likelihood | None = field_option(
        M,
        "likelihood",
        "gaussian (normalised images; default) or bernoulli ([0,1] pixels; default for pictures).",
        unset=True,
    ),
    learn_noise: bool = field_option(M, "learn_noise", "Gaussian: learn a per-pixel noise std."),
    z_delay: int | None = field_option(
        T,
        "z_delay",
        "Epochs with z held at 0 at the start, while the poses settle (default: 0 with "
        "the equivariant encoder, whose poses settle in the first epoch; 5 with mlp/conv "
        "rotation bins; 2 otherwise; at least 5 with --pose affine or affine-tps).",
        unset=True,
    ),
    augment_rotation: bool = field_option(
        T,
        "augment_rotation",
        "Random rotation of the inference network's input (only with rotation inference).",
        "--augment/--no-augment",
    ),
    test_fraction: float = field_option(T, "test_fraction", "Held-out fraction for the test ELBO."),
    generator: Generator = field_option(
        M,
        "generator",
        "spatial (coordinate MLP), vanilla (baseline VAE), or broadcast (Spatial "
        "Broadcast decoder: z tiled over the rotated, shifted coordinate grid, then a CNN).",
    ),
    prior: Prior = field_option(
        M,
        "prior",
        "Prior on z: standard N(0, I), or hyperprior (N(0, diag(s^2)) with s learned per "
        "dimension under an inverse-gamma hyperprior on s^2; docs/usage.md).",
    ),
    pose: Pose = field_option(
        M,
        "pose",
        "Pose latents: rigid (rotation, shift), affine (plus log-scales along the object's axes "
        "and a shear, under a fitted Gaussian prior), tps (rigid plus a thin-plate spline on a "
        "--tps-grid grid of control points), affine-tps (both); docs/usage.md.",
    ),
    affine_prior_std: float = field_option(
        M,
        "affine_prior_std",
        "--pose affine: initial std of the prior on log s_x, log s_y and the shear "
        "(dimensionless; the prior's mean and stds are then fitted).",
    ),
    tps_grid: int = field_option(M, "tps_grid", "--pose tps: g x g control points."),
    tps_prior_px: float = field_option(
        M, "tps_prior_px", "--pose tps: prior std of each control point's displacement, pixels."
    ),
    gen_hidden: int | None = field_option(
        M,
        "gen_hidden",
        _h("Generator width (broadcast: conv channels, 64).", "gen_hidden"),
        unset=True,
    ),
    gen_layers: int | None = field_option(
        M,
        "gen_layers",
        "Generator hidden layers (broadcast: 3x3 conv layers; default 2, broadcast 4).",
        unset=True,
    ),
    fourier_features: int = field_option(
        M,
        "fourier_features",
        "Spatial generator: random Fourier features of the coordinates (0: the paper's "
        "raw coordinates).",
    ),
    fourier_scale: float = field_option(
        M, "fourier_scale", "Std of the Fourier features' frequencies, cycles per pixel."
    ),
    encoder: EncoderChoice = field_option(
        M,
        "encoder",
        "Inference network: equivariant (group convolution over rotation bins), conv, or mlp (the "
        "paper's); auto: equivariant with rotation bins under the uniform prior, else mlp.",
    ),
    z_encoder: ZEncoder = field_option(
        M,
        "z_encoder",
        "aligned (z from a network on the image turned and shifted back by the inferred "
        "pose: z cannot encode the pose) or shared (the pose network also outputs z: the "
        "paper's; with --theta-posterior gaussian).",
    ),
    theta_posterior: ThetaPosterior = field_option(
        M,
        "theta_posterior",
        "Rotation posterior: bins (R rotation bins, the most probable summed exactly; "
        "mlp/conv encoders run on R rotated copies), gaussian (the paper's), or auto (bins "
        "with the uniform rotation prior).",
    ),
    rotation_bins: RotationBins = field_option(
        M, "rotation_bins", "Rotation bins R (the equivariant encoder's rotations)."
    ),
    hypotheses: int = field_option(
        M,
        "hypotheses",
        "Rotation bins: most probable bins summed exactly in the ELBO (2..R; "
        "each costs one generator pass).",
    ),
    pose_search: float | None = field_option(
        M,
        "pose_search",
        "Search each particle's rotation within +-DEG of the pose network's under the "
        "generator when the tables are written (angles at most 4 degrees apart, 5 at the "
        "default, each rendered at 24 px at most); "
        f"0: off. Default: {POSE_SEARCH_DEG:g} above 48 px, off at 48 px and below.",
        unset=True,
        min=0,
    ),
    classes: int = field_option(
        M,
        "classes",
        "Discrete classes K (views, complexes): a class per particle inferred with its "
        "rotation (table columns class, class_prob; RELION's rlnClassNumber), z continuous "
        "within each; each class costs --hypotheses generator passes. 1: no classes.",
        min=1,
    ),
    class_generator: ClassGenerator = field_option(
        M,
        "class_generator",
        "--classes: one generator reading the class's one-hot (shared), or one body per class "
        "after a shared coordinate layer (separate; the spatial generator).",
    ),
    class_balance: float = field_option(
        T,
        "class_balance",
        "--classes: weight (nats per image) of the batch's class balance at the first epoch, "
        "falling to 0 halfway through the run (keeps every class in use while they form).",
        min=0.0,
    ),
    class_seed: int | None = field_option(
        T,
        "class_seed",
        "--classes: at the end of this epoch the classes are seeded apart by k-means of the "
        "images aligned by their poses (junk left out); 0: never. Default: a quarter of the "
        "epochs (none in runs under 8 epochs).",
        min=0,
        show_default=False,
    ),
    class_pull: float = field_option(
        T,
        "class_pull",
        "--classes: weight (nats per image) of the pull towards the seeded classes after "
        "--class-seed, falling to 0 halfway through the epochs left.",
        min=0.0,
    ),
    junk_out: int | None = field_option(
        T,
        "junk_out",
        "At the end of this epoch the particles the junk score flags (junk >= 0.5; at the "
        "--class-seed epoch, those the seeding left without a class) stop training the "
        "model; the test set and the tables keep every particle; 0: never. Default: 1 with "
        "--classes, else 0.",
        min=0,
        show_default=False,
    ),
    enc_channels: int | None = field_option(
        M,
        "enc_channels",
        _h("Conv/equivariant encoder: feature maps per layer (per rotation).", "enc_channels"),
        unset=True,
    ),
    enc_hidden: int | None = field_option(
        M, "enc_hidden", _h("Encoder width.", "enc_hidden"), unset=True
    ),
    enc_layers: int | None = field_option(
        M, "enc_layers", _h("Encoder hidden layers.", "enc_layers"), unset=True
    ),
    activation: Activation = field_option(M, "activation", "Nonlinearity of the hidden layers."),
    normalize: bool = field_option(
        DataConfig,
        "normalize",
        "Gaussian: standardise the stack to mean 0, std 1.",
        "--normalize/--no-normalize",
    ),
    mask_radius_px: float | None = field_option(
        M,
        "mask_radius_px",
        "Likelihood over pixels within this radius (model px) only.",
        "--mask-radius",
        unset=True,
    ),
    ctf: CtfChoice = typer.Option(
        "auto",
        "--ctf",
        help="Model each particle's CTF: on (the likelihood compares each image with the "
        "rendering times its CTF), phase-flip (flip the images' phases once), off; auto: on "
        "when the input carries CTF parameters (STAR rlnDefocusU, .cs ctf/df1_A, --ctf-params).",
    ),
    ctf_pad: CtfPad = field_option(M, "ctf_pad", "Zero-pad renderings to this x the box."),
    encoder_ctf: EncoderCtf = field_option(
        M,
        "encoder_ctf",
        "With --ctf on, the pose and z networks see each image multiplied by its CTF "
        "(multiply), phase-flipped by it (flip) or as recorded (raw).",
    ),
    ctf_params: Path | None = field_option(
        DataConfig,
        "ctf_params",
        "CSV of CTF parameters, one row per image in input order (with --ind: of the whole input, "
        "or of the selected images): defocus_u_A, defocus_v_A, defocus_angle_deg, voltage_kV, "
        "cs_mm, amplitude_contrast (phase_shift_deg, bfactor_A2, scale optional).",
        unset=True,
    ),
    datadir: str | None = opt.DATADIR,
    ind: str | None = opt.IND,
    apix: float | None = opt.APIX,
    size: int | None = opt.SIZE,
    crop: int | None = opt.CROP,
    jitter: int | None = opt.JITTER,
    invert: bool = opt.INVERT,
    norm: Normalize = opt.NORM,
    bg_radius: float | None = opt.BG_RADIUS,
    checkpoint_every: int = field_option(
        T, "checkpoint_every", "Keep a numbered checkpoint every N epochs."
    ),
    amp: bool = field_option(
        T, "amp", "bf16 autocast on CUDA (and CPUs with AMX, where it pays).", "--amp/--no-amp"
    ),
    pixel_fraction: float = field_option(
        T,
        "pixel_fraction",
        "Training steps compare each batch on this random fraction of the pixels (an unbiased "
        "estimate of the likelihood, cheaper per step); evaluation and the table use every pixel.",
    ),
    beta: float = field_option(
        T,
        "beta",
        "Weight of z's KL in the objective (beta-VAE; 1: the ELBO). metrics.csv keeps the "
        "true ELBO and adds the weighted objective.",
    ),
    pose_beta: float = field_option(
        T, "pose_beta", "Weight of the rotation and translation KLs in the objective (1: the ELBO)."
    ),
    stages: str | None = field_option(
        T,
        "stages",
        "Coarse-to-fine: SIZE:EPOCHS pairs trained on Fourier-cropped copies before the rest of "
        "the run at full size (32:40,64:5), or off. Default: off up to 48 px; above, without "
        "-n, 24 px for about 90,000 images (3-40 epochs) then one epoch at full size; with -n, "
        "24 px for about 80% of the epochs, then half the box (from 96 px), then the full box.",
        show_default=False,
    ),
    fine_images: int | None = field_option(
        T,
        "fine_images",
        "Full-size epochs after coarse stages train on at most N images (a random subset each "
        f"epoch; 0: all). Default: {FINE_IMAGES} when fit chooses the schedule (no -n), else 0.",
        show_default=False,
    ),
    fine_train: str = field_option(
        T,
        "fine_train",
        "What the stages after the first train: generator (the pose and z networks keep what "
        "the first stage taught them) or all.",
    ),
    encoder_size: int | None = field_option(
        M,
        "encoder_size",
        "The pose and z networks see a copy of each image of this many px (the same at every "
        "stage). Default: the box up to 48 px, 32 above.",
        show_default=False,
    ),
    pass_memory_mb: int | None = field_option(
        T,
        "pass_memory_mb",
        "Memory for the generator's activations in one pass, MB: a batch that needs more is "
        "rendered in several passes whose gradients are summed (the same step). Default: "
        f"{PASS_MEMORY_MB} on a CPU, a quarter of the GPU's memory on CUDA.",
        "--pass-memory",
        min=1,
        show_default=False,
    ),
    compile: Compile = field_option(
        T,
        "compile",
        "torch.compile the model: off, default, reduce-overhead (CUDA graphs), max-autotune "
        "(inductor's modes; the first steps of each size compile), or aot_eager (a tracing "
        "check, no faster).",
    ),
    stream: Stream = field_option(
        T,
        "stream",
        "Read batches from disk: on, off, or auto (when the stack exceeds half the RAM).",
    ),
    readers: int | None = field_option(
        T,
        "readers",
        "Processes reading a streamed stack (default: 1 on a CPU, up to 4 with CUDA; "
        "0 reads in the training loop).",
        min=0,
        show_default=False,
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue OUT from its last checkpoint to its stored number of epochs (stored "
        "settings; only --epochs may change).",
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite emvae outputs in OUT."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress display."),
) -> None:
    """Train a spatial-VAE on a particle stack; write poses and latents per particle."""
    summary = fit_from_options(
        stacks, out, ctx.params, example=example, resume=resume, force=force,
        command=command_line(ctx), progress=not quiet,
        say=lambda note: err_console.print(note, highlight=False),
    )  # fmt: skip
    if summary is None:  # not rank 0 of a torchrun job: rank 0 reports
        return
    warnings, wrote = summary
    for line in warnings:
        err_console.print(line, highlight=False, soft_wrap=True, style="bold")
    err_console.print(wrote, highlight=False)


@user_errors
def encode(
    checkpoint: Path = typer.Argument(..., help="A checkpoint (.pt) or a run directory."),
    stacks: list[str] = typer.Argument(..., help=opt.INPUTS_HELP, show_default=False),
    out: Path = typer.Option(..., "-o", "--out", help="Table to write: .csv or .h5."),
    batch_size: int = typer.Option(
        arg(encode_particles, "batch_size"), "-b", "--batch-size", min=1, help="Images per batch."
    ),
    device: str = typer.Option(DEVICE, "--device", help=DEVICE_HELP),
    seed: int = field_option(
        T, "seed", "Seed of the per-particle ELBO sample.", min=0, max=SEED_MAX
    ),
    datadir: str | None = opt.DATADIR,
    ind: str | None = opt.IND,
    apix: float | None = opt.APIX,
    force: bool = typer.Option(False, "--force", help="Overwrite OUT."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress display."),
) -> None:
    """Poses and latents of images under a trained model (table + STAR file).

    The same table as fit writes, and the same poses as a STAR file beside it; the model's
    preprocessing is applied again."""
    n, star, layout = encode_particles(
        checkpoint, stacks, out, batch_size=batch_size, device=device, seed=seed,
        datadir=datadir, ind=ind, apix=apix, force=force, progress=not quiet,
    )  # fmt: skip
    err_console.print(f"wrote {out} ({n} particles) and {star} (RELION {layout})", highlight=False)
