"""Configuration dataclasses: the only place where defaults live.

A :class:`RunConfig` is stored in ``config.json`` and in every checkpoint, and is enough to
rebuild the model (:func:`emvae.models.build_model`) and to resume training.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from emvae.errors import ConfigError

# The values of the settings with a fixed set of them: the command line's options take these
# types (so --help lists them and a wrong value is refused with the list); the config fields
# stay plain strings and ints.
Generator = Literal["spatial", "vanilla", "broadcast"]
Prior = Literal["standard", "hyperprior"]
Pose = Literal["rigid", "affine", "tps", "affine-tps"]
Encoder = Literal["mlp", "conv", "equivariant"]
ZEncoder = Literal["aligned", "shared"]
ThetaPosterior = Literal["auto", "bins", "gaussian"]
Activation = Literal["tanh", "relu", "leaky_relu", "gelu", "silu"]
ThetaPrior = Literal["uniform", "gaussian"]
ThetaParam = Literal["vector", "linear"]
Likelihood = Literal["gaussian", "bernoulli"]
CtfMode = Literal["off", "on", "phase-flip"]
Stream = Literal["auto", "on", "off"]
# torch.compile of the model: off, a mode of the default (inductor) backend, or aot_eager
# (tracing and the autograd graphs without code generation: a check, no faster)
Compile = Literal["off", "default", "reduce-overhead", "max-autotune", "aot_eager"]
FineTrain = Literal["generator", "all"]
ClassGenerator = Literal["shared", "separate"]
RotationBins = Literal[4, 8, 16]
CtfPad = Literal[1, 2]
EncoderCtf = Literal["multiply", "flip", "raw"]

POSES: tuple[str, ...] = get_args(Pose)
ENCODERS: tuple[str, ...] = get_args(Encoder)


#: Images up to this many pixels across get the small networks (SMALL_WIDTH wide).
SMALL_IMAGE_PX = 48
SMALL_WIDTH = 128
WIDTH = 500  # the paper's 2 x 500 tanh MLPs (Bepler et al. 2019, sections 4.2-4.3)
EM_WIDTH = 1000  # the paper's networks for its EM data sets (2 x 1000)
GALAXY_ENC_WIDTH = 5000  # the paper's inference network for the galaxies
# Galaxy Zoo pictures: the 207-px centre crop of Dieleman et al. 2015 (ref. 28 of the paper),
# moved by up to +-12 px (their +-4 px after a 3x reduction), then reduced to 64 x 64.
GALAXY_CROP, GALAXY_JITTER, GALAXY_SIZE = 207, 12, 64
#: The Spatial Broadcast decoder's default channels and 3 x 3 conv layers (seed 001's layout:
#: four unstrided 3 x 3 convolutions of 64 channels, ReLU, then a 1 x 1 conv to the outputs)
BROADCAST_WIDTH = 64
BROADCAST_LAYERS = 4
MLP_LAYERS = 2


def default_width(image_size: int) -> int:
    """Default width of the generator and encoder MLPs when the inference networks see D x D
    images (``ModelConfig.encoder_px``: the image up to 48 px, a 32-px copy above): 128 up to
    48 px, 500 above. At 28 px, SNR 1 the 128-wide networks learn poses and conformation within 15
    epochs at a quarter of the 500-wide ones' time per epoch; at 40 px, SNR 0.3 they find the
    conformation in 10 minutes on 2 CPU cores, where the 500-wide ones had not in 17, at a
    fifth of their time per epoch (docs/benchmarks.md, "Time to a right answer")."""
    return SMALL_WIDTH if image_size <= SMALL_IMAGE_PX else WIDTH


def default_encoder_size(m: ModelConfig) -> int:
    """The inference networks' view (px): the image itself up to 48 px; above, a
    :data:`emvae.stages.ENCODER_PX`-px copy for the spatial generator's rigid and affine poses
    (coarse-to-fine, :mod:`emvae.stages`), so that the networks measured at small sizes are
    the ones used (docs/benchmarks.md, "Users' sizes")."""
    from emvae.stages import ENCODER_PX

    if m.image_size <= SMALL_IMAGE_PX or not m.coarse_to_fine:
        return m.image_size
    return ENCODER_PX


#: fit's --pose-search above 48 px, degrees (about twice the pose network's median error): at
#: 64 px (SNR 0.05, CTF) the network's angles are 4.2 deg (median, in the conformations'
#: frames) from the truth, the searched ones 2.9 deg (docs/benchmarks.md, "Users' sizes")
POSE_SEARCH_DEG = 8.0


def default_pose_search(m: ModelConfig) -> float:
    """The rotation search's half-width (degrees) when ``--pose-search`` is not given:
    :data:`POSE_SEARCH_DEG` above 48 px for rotation inference with the spatial generator's
    rigid or affine pose and the Gaussian likelihood, else 0 (off; at 48 px and below the
    networks' angles were measured within 2-3 degrees of the truth)."""
    on = m.image_size > SMALL_IMAGE_PX and m.rotation and m.coarse_to_fine
    return POSE_SEARCH_DEG if on and m.likelihood == "gaussian" else 0.0


def default_encoder(m: ModelConfig) -> str:
    """The equivariant encoder where it applies (rotation inferred over bins under the uniform
    prior, z from the aligned image), else the paper's mlp. On simulated particles it finds the
    rotations in the first epoch, the mlp in about five (docs/benchmarks.md)."""
    binned = m.theta_posterior != "gaussian" and m.z_encoder == "aligned"
    return "equivariant" if m.rotation and m.theta_prior == "uniform" and binned else "mlp"


@dataclass
class ModelConfig:
    """Architecture, priors and likelihood of one spatial-VAE (or baseline).

    All widths of priors are in user units: degrees for the rotation, pixels for shifts.
    """

    image_size: int  # D: images are D x D pixels
    channels: int = 1  # C: 1 for EM, 3 for RGB
    zdim: int = 2  # K: unstructured latent dimensions
    # "spatial" (coordinate MLP), "vanilla" (z -> all pixels) or "broadcast" (Spatial Broadcast
    # decoder: z tiled over the transformed coordinate grid, then a CNN)
    generator: str = "spatial"
    # prior on z: "standard" N(0, I), or "hyperprior": N(0, diag(s^2)) with s learned per
    # dimension under an inverse-gamma hyperprior on s^2 (emvae.objective, docs/usage.md)
    prior: str = "standard"
    hyper_shape: float = 1.0  # a of the hyperprior InvGamma(a, b) on s_k^2
    hyper_scale: float = 2.0  # b (the mode b / (a + 1) = 1: the standard prior's variance)
    # pose latents: "rigid" (rotation and shift, the paper's), "affine" (plus log-scales along
    # the object's axes and a shear), "tps" (rigid plus a thin-plate spline on a tps_grid^2
    # grid of control points), "affine-tps" (both); emvae.models.transform, docs/usage.md
    pose: str = "rigid"
    # affine: initial std of the prior on (log s_x, log s_y, shear); its mean and stds are then
    # fitted (seed 004's prior), starting from 0 and this value
    affine_prior_std: float = 0.2
    tps_grid: int = 3  # tps: g x g control points
    tps_prior_px: float = 1.0  # tps: prior std of each control point's displacement, pixels
    # pose network: "mlp" (the paper's), "conv" (plain CNN), "equivariant" (group convolution
    # over rotation bins); "auto": default_encoder's choice
    encoder: str = "auto"
    # z from a network on the image aligned by the inferred pose ("aligned"), or from the pose
    # network itself ("shared", the paper's; mlp and conv only)
    z_encoder: str = "aligned"
    # rotation posterior: "bins" (R rotation bins, the k most probable summed exactly),
    # "gaussian" (the paper's), "auto" (bins when rotation is inferred under the uniform prior)
    theta_posterior: str = "auto"
    # widths: None picks by image size (default_width: 128 up to 48 px, the paper's 500 above;
    # the broadcast decoder: BROADCAST_WIDTH channels)
    gen_hidden: int | None = None
    # hidden layers (broadcast: 3 x 3 conv layers); None: MLP_LAYERS, or BROADCAST_LAYERS
    gen_layers: int | None = None
    # spatial generator: random Fourier features of the coordinates (0: the paper's raw
    # coordinates) and the std of their frequencies in cycles per pixel
    fourier_features: int = 64
    fourier_scale: float = 0.125
    enc_hidden: int | None = None
    enc_layers: int = 2
    enc_channels: int = 8  # conv / equivariant: feature maps per layer (per rotation)
    rotation_bins: int = 8  # bins: R rotation bins (the group convolution's rotations)
    hypotheses: int = 2  # bins: the k most probable bins summed exactly in the ELBO
    # a local search of each particle's rotation under the generator when the tables are
    # written (emvae.search): the pose network's angle is moved to the best within
    # +-pose_search degrees; 0: off; None: default_pose_search
    pose_search: float | None = None
    # K discrete classes (views, complexes): a categorical latent c per particle, inferred
    # jointly with the rotation bin (q(c, bin | y), the k most probable bins of every class
    # summed exactly); the generator sees z and c's one-hot; 1: no class latent (the model
    # without it, exactly)
    classes: int = 1
    # --classes: one generator for all classes, reading the class's one-hot ("shared"), or
    # one body per class after a shared coordinate layer ("separate"; the spatial generator)
    class_generator: str = "shared"
    activation: str = "tanh"
    rotation: bool = True  # infer an in-plane rotation theta
    translation: bool = True  # infer a shift (dx, dy)
    theta_param: str = "vector"  # theta mean: "vector" (atan2 of 2 outputs) or "linear" (paper)
    theta_prior: str = "uniform"  # "uniform" (eq. 3, mean not penalised) or "gaussian"
    theta_prior_std_deg: float = 180.0  # s_theta; 180 deg = pi, the paper's value for eq. 3
    shift_prior_px: float = 2.0  # s_dx in pixels (the paper's EM value: N(0, 4 px^2))
    likelihood: str = "gaussian"
    learn_noise: bool = False  # Gaussian only: the generator also outputs a per-pixel log-std
    mask_radius_px: float | None = None  # likelihood over pixels within this radius only
    # the likelihood compares each image with the rendering times its CTF ("on"), or with the
    # plain rendering ("off"; "phase-flip": the images' phases were flipped once on loading)
    ctf: str = "off"
    ctf_pad: int = 1  # zero-pad the rendering to ctf_pad x the box before its FFT
    # --ctf on: the pose and z networks see each image's transform multiplied by its CTF
    # ("multiply": a matched filter, as a classical alignment's correlation with CTF-multiplied
    # references; every frequency's contrast has one sign whatever the defocus), with its
    # phases flipped ("flip"), or as recorded ("raw"; runs made before this option); the
    # likelihood compares the recorded image either way
    encoder_ctf: str = "multiply"
    # the pose and z networks see a copy of each image of this many pixels (emvae.stages:
    # the same copy at every stage of a coarse-to-fine fit); None: default_encoder_size
    encoder_size: int | None = None

    def __post_init__(self) -> None:
        if self.encoder == "auto":
            self.encoder = default_encoder(self)
        if self.encoder_size is None:
            self.encoder_size = default_encoder_size(self)
        if self.pose_search is None:
            self.pose_search = default_pose_search(self)
        width = default_width(self.encoder_size)
        broadcast = self.generator == "broadcast"
        if self.gen_hidden is None:
            self.gen_hidden = BROADCAST_WIDTH if broadcast else width
        if self.gen_layers is None:
            self.gen_layers = BROADCAST_LAYERS if broadcast else MLP_LAYERS
        if self.enc_hidden is None:
            self.enc_hidden = width

    def validate(self) -> None:
        """Raise :class:`ConfigError` if options are out of range or contradict each other."""
        _choice("generator", self.generator, Generator)
        _choice("prior", self.prior, Prior)
        _choice("pose", self.pose, Pose)
        if self.pose != "rigid":
            if self.generator == "vanilla":
                raise ConfigError(
                    "--pose affine/tps needs coordinates: the spatial or broadcast generator"
                )
            if not (self.affine_prior_std > 0 and self.tps_prior_px > 0):
                raise ConfigError("--affine-prior-std and --tps-prior-px must be > 0")
            if self.tps and not 2 <= self.tps_grid <= 8:
                raise ConfigError(f"--tps-grid must lie in 2..8, got {self.tps_grid}")
        if not (self.hyper_shape > 0 and self.hyper_scale > 0):
            raise ConfigError("the hyperprior's shape and scale must be > 0")
        if self.prior == "hyperprior" and self.zdim < 1:
            raise ConfigError("--prior hyperprior is a prior on z: it needs --zdim >= 1")
        _choice("encoder", self.encoder, Encoder)
        _choice("activation", self.activation, Activation)
        _choice("theta prior", self.theta_prior, ThetaPrior)
        _choice("theta parameterisation", self.theta_param, ThetaParam)
        _choice("likelihood", self.likelihood, Likelihood)
        _choice("z encoder", self.z_encoder, ZEncoder)
        _choice("rotation posterior", self.theta_posterior, ThetaPosterior)
        if self.image_size < 2:
            raise ConfigError(f"image size must be at least 2 pixels, got {self.image_size}")
        if self.channels < 1:
            raise ConfigError(f"channels must be at least 1, got {self.channels}")
        _at_least("--zdim", self.zdim, 0)
        for name in ("gen_hidden", "gen_layers", "enc_hidden", "enc_layers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 1")
        if self.theta_prior_std_deg <= 0 or self.shift_prior_px <= 0:
            raise ConfigError("prior widths (--theta-prior-std, --shift-prior-px) must be > 0")
        if self.generator == "vanilla":
            if self.rotation or self.translation:
                raise ConfigError(
                    "the vanilla generator has no coordinates to transform: "
                    "use it with --no-rotation --no-translation"
                )
            if self.zdim < 1:
                raise ConfigError("the vanilla generator needs --zdim >= 1")
        if self.mask_radius_px is not None and not self.mask_radius_px >= 1:
            raise ConfigError(f"--mask-radius must be >= 1 px, got {self.mask_radius_px}")
        search = self.pose_search or 0.0
        if not 0 <= search <= 45:
            raise ConfigError(f"--pose-search must lie in 0..45 degrees, got {search}")
        if search and not (self.rotation and self.coarse_to_fine):
            raise ConfigError(
                "--pose-search needs rotation inference and the spatial generator's rigid or "
                "affine pose (it renders at 24 px); give --pose-search 0"
            )
        if self.encoder == "equivariant":
            if not self.rotation:
                raise ConfigError(
                    "the equivariant encoder infers rotation; with --no-rotation use "
                    "--encoder conv or mlp"
                )
            if self.theta_prior != "uniform":
                raise ConfigError("the equivariant encoder uses the uniform rotation prior only")
            if self.theta_posterior == "gaussian":
                raise ConfigError("the equivariant encoder's rotation posterior is binned")
            if self.z_encoder == "shared":
                raise ConfigError("--z-encoder shared is for the mlp and conv encoders")
        if self.z_encoder == "shared" and self.binned:
            raise ConfigError(
                "--z-encoder shared goes with the Gaussian rotation posterior "
                "(--theta-posterior gaussian, or no rotation inference)"
            )
        if self.theta_posterior == "bins":
            if not self.rotation:
                raise ConfigError("--theta-posterior bins needs rotation inference")
            if self.theta_prior != "uniform":
                raise ConfigError("--theta-posterior bins needs the uniform rotation prior")
        if self.binned:
            if self.rotation_bins not in get_args(RotationBins):
                raise ConfigError(f"--rotation-bins must be 4, 8 or 16, got {self.rotation_bins}")
            if not 2 <= self.hypotheses <= self.rotation_bins:
                raise ConfigError(
                    f"--hypotheses must lie in 2..{self.rotation_bins} (the rotation bins), "
                    f"got {self.hypotheses}"
                )
        _at_least("--classes", self.classes, 1)
        if self.classes > 1 and not self.binned:
            raise ConfigError(
                "--classes is inferred with the rotation bins: it needs rotation inference "
                "under the uniform prior (not --theta-posterior gaussian)"
            )
        if self.classes > 1 and self.generator == "vanilla":
            raise ConfigError("--classes goes with the spatial or broadcast generator")
        _choice("--class-generator", self.class_generator, ClassGenerator)
        if self.class_generator == "separate" and self.generator != "spatial":
            raise ConfigError("--class-generator separate goes with the spatial generator")
        if self.fourier_features < 0 or not self.fourier_scale > 0:
            raise ConfigError("--fourier-features must be >= 0 and --fourier-scale > 0")
        _at_least("--enc-channels", self.enc_channels, 1)
        _choice("--ctf", self.ctf, CtfMode)
        if self.ctf != "off":
            if self.likelihood != "gaussian":
                raise ConfigError("--ctf needs the Gaussian likelihood (cryo-EM images)")
            if self.generator == "vanilla":
                raise ConfigError("--ctf goes with the spatial or broadcast generator")
        if self.ctf_pad not in get_args(CtfPad):
            raise ConfigError(f"--ctf-pad must be 1 or 2, got {self.ctf_pad}")
        _choice("--encoder-ctf", self.encoder_ctf, EncoderCtf)
        if self.learn_noise and self.likelihood != "gaussian":
            raise ConfigError("--learn-noise applies to the Gaussian likelihood only")
        if self.encoder_px != self.image_size:
            if not 8 <= self.encoder_px < self.image_size:
                raise ConfigError(
                    f"--encoder-size must lie in 8..{self.image_size} px (the box), "
                    f"got {self.encoder_px}"
                )
            if not self.coarse_to_fine:
                raise ConfigError(
                    "--encoder-size smaller than the box goes with the spatial generator and "
                    "the rigid or affine pose"
                )

    @property
    def coarse_to_fine(self) -> bool:
        """Whether this model can be trained on smaller copies of its images (:mod:`emvae.stages`):
        the spatial generator renders any grid; the spline's unwarping needs the full one."""
        return self.generator == "spatial" and not self.tps

    @property
    def encoder_px(self) -> int:
        """The box (px) the pose and z networks see."""
        return self.encoder_size or self.image_size

    @property
    def encoder_needs_ctf(self) -> bool:
        """Whether the pose and z networks see each image filtered by its CTF (``--ctf on``
        with ``encoder_ctf`` "multiply" or "flip"): they then need each image's CTF."""
        return self.ctf == "on" and self.encoder_ctf != "raw"

    @property
    def binned(self) -> bool:
        """Whether the rotation posterior is over bins (see ``theta_posterior``)."""
        if self.theta_posterior == "auto":
            return self.rotation and self.theta_prior == "uniform"
        return self.theta_posterior == "bins"

    @property
    def n_pose(self) -> int:
        """Number of rigid pose latents: 1 for theta, 2 for (dx, dy) (the affine and spline
        parameters follow them: :attr:`n_deform`)."""
        return int(self.rotation) + 2 * int(self.translation)

    @property
    def affine(self) -> bool:
        """Whether the pose has the affine part (log s_x, log s_y, shear)."""
        return self.pose in ("affine", "affine-tps")

    @property
    def tps(self) -> bool:
        """Whether the pose has the thin-plate spline."""
        return self.pose in ("tps", "affine-tps")

    @property
    def n_deform(self) -> int:
        """Pose latents beyond the rigid ones: 3 affine, 2 per control point of the spline."""
        return 3 * int(self.affine) + 2 * self.tps_grid**2 * int(self.tps)

    @property
    def tps_prior_std(self) -> float:
        """The spline's displacement prior std in internal coordinate units."""
        return self.tps_prior_px * self.pixel_to_unit

    @property
    def class_inputs(self) -> int:
        """The generator's latent inputs beyond z: the class's one-hot with ``classes`` > 1,
        none with one class."""
        return self.classes if self.classes > 1 else 0

    @property
    def n_hypotheses(self) -> int:
        """Renderings per image in a training pass: the k most probable rotation bins of each
        class (1 with a Gaussian rotation posterior)."""
        return self.hypotheses * self.classes if self.binned else 1

    @property
    def n_out(self) -> int:
        """Generator outputs per pixel: C means/logits, plus C log-stds with learned noise."""
        return self.channels * (2 if self.learn_noise else 1)

    @property
    def theta_prior_std(self) -> float:
        """s_theta in radians."""
        return math.radians(self.theta_prior_std_deg)

    @property
    def pixel_to_unit(self) -> float:
        """Size of one pixel in internal coordinate units, 2 / (D - 1) (docs/conventions.md,
        "Pixel coordinates (internal)")."""
        return 2.0 / (self.image_size - 1)

    @property
    def shift_prior_std(self) -> float:
        """s_dx in internal coordinate units."""
        return self.shift_prior_px * self.pixel_to_unit


#: Generator activations one forward/backward pass may hold (MB): a batch whose rendering
#: needs more is split into passes whose gradients are summed (SpatialVAE.images_per_pass).
PASS_MEMORY_MB = 1024

#: Default z-delay (epochs) per pose network: z is switched on once the poses have settled,
#: which takes the equivariant encoder about 2 epochs and the mlp/conv networks on rotated
#: copies about 5 (docs/benchmarks.md); the paper's is 2.
Z_DELAY = {"equivariant": 0, "mlp": 5, "conv": 5}
#: The least z-delay with an affine pose: without it z learns the particles' size before the
#: pose's scales do and keeps it (docs/benchmarks.md, "Affine pose").
AFFINE_Z_DELAY = 5


#: fit's number of epochs, unless the schedule above 48 px chooses it (RunConfig.resolve)
DEFAULT_EPOCHS = 50


@dataclass
class TrainConfig:
    """Optimisation settings: Adam, learning rate 1e-3 (the paper's 1e-4 needs about three times
    the epochs before the poses settle, and z only starts to carry the conformation after
    that), batch 32 (the paper's 100 makes a third of the steps per epoch for the same cost on
    a CPU, and z is learnt per step: 800 particles at 28 px reach z |r| 0.90 in 15 epochs
    against 35; 20,000 at 64 px 0.79 against 0.76 in five coarse epochs; docs/benchmarks.md)."""

    # None: DEFAULT_EPOCHS, or above 48 px with the default schedule one chosen by the
    # particle count (emvae.stages.default_schedule); RunConfig.resolve fills it in
    epochs: int | None = None
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    # z is held at 0 for this many epochs (paper section 4.3); None: Z_DELAY of the encoder
    z_delay: int | None = None
    augment_rotation: bool = True  # only used when rotation is inferred
    test_fraction: float = 0.1
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA (no effect on CPU)
    checkpoint_every: int = 10  # keep checkpoints/epoch_NNNN.pt every this many epochs
    stream: str = "auto"  # read batches from disk: on, off, auto (stack > half the RAM)
    # processes reading a streamed stack; None: 1 on a CPU, up to 4 with CUDA (data.reader_count)
    readers: int | None = None
    # training steps compare each batch on this random fraction of its pixels (an unbiased
    # estimate of the whole image's log-likelihood); evaluation and the table use every pixel
    pixel_fraction: float = 1.0
    # the weights of the KL of z and of the pose's KL in the objective (beta-VAE; 1: the ELBO);
    # metrics.csv reports the ELBO and, when either differs from 1, the weighted objective
    beta: float = 1.0
    pose_beta: float = 1.0
    # coarse-to-fine: "SIZE:EPOCHS,..." trained on Fourier-cropped copies before the rest of
    # the run at full size (emvae.stages), "off"; None: emvae.stages.auto_stages
    stages: str | None = None
    # full-size epochs of a coarse-to-fine run train on at most this many images (a random
    # subset of the training set each epoch; 0: all of them); None: emvae.stages.FINE_IMAGES
    # with the schedule fit chose itself, else 0
    fine_images: int | None = None
    # what the stages after the first train: "generator" (the pose and z networks, which see
    # the same small copy at every stage, keep what the first stage taught them), or "all"
    fine_train: str = "generator"
    # --classes: the weight (nats per image) of KL(mean q(class) over a batch || uniform) in
    # the training objective at the first epoch, falling linearly to 0 halfway through the
    # run: it keeps every class in use while the classes' images form (without it one class
    # takes every particle; docs/usage.md, "Classes")
    class_balance: float = 10.0
    # --classes: at the end of this epoch the classes are seeded apart (emvae.classseed:
    # k-means of the images aligned by their poses; the balance term stops there) and the
    # objective pulls q(class) towards the seeds with class_pull nats per image, falling to 0
    # halfway through the epochs left; 0: never; None: a quarter of the epochs (classes > 1,
    # runs of 8 epochs or more)
    class_seed: int | None = None
    class_pull: float = 10.0
    # at the end of this epoch the particles the junk score flags (junk >= 0.5; at the
    # class-seed epoch, the seeding's: emvae.classseed) leave the training set for the epochs after
    # it (the test set and the tables keep every particle); 0: never; None: 1 with
    # --classes > 1 (the earlier the junk leaves, the better z), else 0
    junk_out: int | None = None
    # memory for the generator's activations in one pass (MB): larger batches are rendered in
    # several passes, their gradients summed (the same step, bounded memory)
    # None: the device's (emvae.data.default_pass_memory_mb: PASS_MEMORY_MB on a CPU, a
    # quarter of a GPU's memory)
    pass_memory_mb: int | None = None
    # torch.compile the model (emvae.train.compiled): off, default, reduce-overhead (CUDA
    # graphs), max-autotune, aot_eager; the same step, to rounding
    compile: str = "off"

    @property
    def weighted(self) -> bool:
        """Whether the objective weights a KL (``beta`` or ``pose_beta`` not 1): not the ELBO."""
        return self.beta != 1.0 or self.pose_beta != 1.0

    def validate(self) -> None:
        """Refuse settings out of range, one line naming the option."""
        _at_least("--epochs", self.epochs, 1)
        _at_least("--fine-images", self.fine_images, 0)
        _at_least("--batch-size", self.batch_size, 1)
        if not self.lr > 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        _at_least("--z-delay", self.z_delay, 0)
        _at_least("--class-seed", self.class_seed, 0)
        _at_least("--junk-out", self.junk_out, 0)
        _at_least("--class-pull", self.class_pull, 0)
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"--test-fraction must lie in (0, 1), got {self.test_fraction}")
        if self.checkpoint_every < 1:
            raise ConfigError("--checkpoint-every must be >= 1")
        _choice("--stream", self.stream, Stream)
        _choice("--compile", self.compile, Compile)
        _choice("--fine-train", self.fine_train, FineTrain)
        if self.pass_memory_mb is not None and self.pass_memory_mb < 1:
            raise ConfigError(f"--pass-memory must be >= 1 MB, got {self.pass_memory_mb}")
        _at_least("--readers", self.readers, 0)
        if not 0 < self.pixel_fraction <= 1:
            raise ConfigError(f"--pixel-fraction must lie in (0, 1], got {self.pixel_fraction}")
        for flag, value in (("--beta", self.beta), ("--pose-beta", self.pose_beta)):
            if not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"{flag} must be a finite number >= 0, got {value}")


def physical(what: str, value: float, path: object = None, zero_ok: bool = False) -> float:
    """A physical value (pixel size, voltage, Cs, ...) as given, once checked: a finite number
    above 0 (``zero_ok``: or 0). Every such value emvae reads or is given passes here; one
    line naming ``what`` (and the file ``path`` it came from, when given) otherwise."""
    v = float(value)
    if math.isfinite(v) and (v > 0 or (zero_ok and v == 0)):
        return v
    need = "a finite number >= 0" if zero_ok else "a finite number > 0"
    if path is not None:
        from emvae.errors import InputError

        raise InputError(path, f"{what} is {value}; it must be {need}")
    raise ConfigError(f"{what} must be {need}, got {value}")


def fields_of(cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``options`` that name fields of the config dataclass ``cls``."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in options.items() if k in names}


@dataclass
class DataConfig:
    """Where the images came from, how they were preprocessed and normalised for training.

    ``apix`` and ``input_size`` describe the *input* pixels; ``scale`` is input pixels per
    model pixel (``-D`` downsampling); ``preprocess`` holds :class:`emvae.preprocess.Preprocess`
    as a dict. ``mean``/``std`` are measured on the preprocessed stack (None until then).
    """

    paths: list[str] = field(default_factory=list)
    n_images: int = 0
    apix: float | None = None  # pixel size of the input images in Angstrom, None when unknown
    apix_from: str | None = None  # where it came from (see ImageStack.apix_from)
    arcsec_per_px: float | None = None  # sky images (FITS WCS): input pixel scale in arcsec
    normalize: bool = True  # subtract `mean`, divide by `std` (Gaussian likelihood)
    mean: float | None = None
    std: float | None = None
    preprocess: dict[str, Any] = field(default_factory=dict[str, Any])
    input_size: int = 0
    scale: float = 1.0
    datadir: str | None = None
    ind: str | None = None
    fingerprint: str = ""  # of the images' names and a few images (emvae.particles.fingerprint)
    ctf_params: str | None = None  # --ctf-params CSV (else the CTF comes from the STAR/.cs)


@dataclass
class RunConfig:
    """Everything needed to rebuild a model and to resume its training."""

    model: ModelConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    version: str = ""
    command: str = ""
    created: str = ""
    run_id: str = ""  # set when a fit starts; its tables and checkpoints carry the same id

    def validate(self) -> None:
        """Refuse settings out of range or that contradict each other (each section's checks)."""
        self.model.validate()
        self.train.validate()
        if self.train.pixel_fraction < 1 and self.model.ctf == "on":
            raise ConfigError("--pixel-fraction: the CTF needs every pixel of the rendering")

    def resolve(self) -> None:
        """Fill settings whose default depends on others (the epochs and the coarse-to-fine
        schedule: by the box and the particle count ``data.n_images``; the z-delay of the
        encoder and the pose) and check the schedule against the box."""
        from emvae.stages import FINE_IMAGES, auto_stages, default_schedule, parse_stages

        m, t = self.model, self.train
        auto = m.coarse_to_fine and m.likelihood == "gaussian"
        if t.epochs is None and t.stages is None and auto and m.image_size > 48:
            n_train = self.data.n_images - round(self.data.n_images * t.test_fraction)
            t.epochs, t.stages = default_schedule(n_train)
            t.fine_images = FINE_IMAGES if t.fine_images is None else t.fine_images
        t.epochs = DEFAULT_EPOCHS if t.epochs is None else t.epochs
        t.fine_images = 0 if t.fine_images is None else t.fine_images
        if t.stages is None:
            t.stages = auto_stages(m.image_size, t.epochs) if auto else "off"
        if parse_stages(t.stages, m.image_size):
            if not m.coarse_to_fine:
                raise ConfigError(
                    "--stages goes with the spatial generator and the rigid or affine pose"
                )
            if m.likelihood != "gaussian":
                raise ConfigError("--stages: coarse-to-fine needs the Gaussian likelihood")
        if t.class_seed is None:
            # a shorter run has no epochs to spare before the poses settle
            t.class_seed = t.epochs // 4 if m.classes > 1 and t.epochs >= 8 else 0
        if t.junk_out is None:
            t.junk_out = 1 if m.classes > 1 else 0
        if self.train.z_delay is None:
            rotating = self.model.rotation and self.model.binned
            delay = Z_DELAY[self.model.encoder] if rotating else 2
            self.train.z_delay = max(delay, AFFINE_Z_DELAY) if self.model.affine else delay

    def to_dict(self) -> dict[str, Any]:
        """Every section as plain JSON values, as config.json and checkpoints store it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Rebuild from :meth:`to_dict` output; unknown keys (from newer versions) are refused."""
        try:
            model, train = dict(d["model"]), dict(d.get("train", {}))
            # configs written before coarse-to-fine: the networks saw the whole image
            model.setdefault("encoder_size", model.get("image_size"))
            model.setdefault("encoder_ctf", "raw")  # written before --encoder-ctf: the raw image
            model.setdefault("pose_search", 0.0)  # written before --pose-search: no search
            train.setdefault("stages", "off")
            train.setdefault("fine_images", 0)
            train.setdefault("fine_train", "all")
            train.setdefault("class_seed", 0)  # configs written before the seeding
            train.setdefault("junk_out", 0)  # written before --junk-out: every particle trains
            return cls(
                model=ModelConfig(**model),
                train=TrainConfig(**train),
                data=DataConfig(**d.get("data", {})),
                **{k: d.get(k, "") for k in ("version", "command", "created", "run_id")},
            )
        except (KeyError, TypeError) as e:
            raise ConfigError(f"not an emvae configuration ({e})") from None


def read_config(path: str | os.PathLike[str]) -> RunConfig:
    """A run's ``config.json``; one :class:`InputError` line naming it when it is unreadable."""
    import json

    from emvae.errors import InputError

    p = Path(path)
    try:
        return RunConfig.from_dict(json.loads(p.read_text()))
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as e:
        raise InputError(p, f"not a readable emvae config.json ({_short(e)})") from None
    except ConfigError as e:
        raise InputError(p, str(e)) from None


def _short(e: BaseException) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


def _at_least(flag: str, value: float | None, low: int) -> None:
    """Refuse a setting below ``low`` (None: not set, accepted), one line naming ``flag``."""
    if value is not None and value < low:
        raise ConfigError(f"{flag} must be >= {low}, got {value}")


def _choice(name: str, value: str, kind: Any) -> None:
    """Refuse ``value`` unless it is one of the Literal type ``kind``'s values."""
    allowed = get_args(kind)
    if value not in allowed:
        raise ConfigError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
