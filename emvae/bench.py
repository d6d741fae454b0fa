"""Validation benchmarks (paper sections 4.2-4.4): MNIST family, simulated particles (Table 1),
Galaxy Zoo. Each runner writes its data once, fits with the library's :func:`emvae.fit`, and
writes a results table (CSV + Markdown) and figures into its output folder.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import torch

from emvae.config import (
    GALAXY_ENC_WIDTH,
    GALAXY_SIZE,
    SMALL_WIDTH,
    WIDTH,
    ModelConfig,
    RunConfig,
    TrainConfig,
)
from emvae.data import load_images, normalize_, resolve_device
from emvae.encode import Encoding, encode
from emvae.errors import ConfigError
from emvae.example import EXAMPLE_OPTIONS
from emvae.geometry import image_to_model_pose, model_to_image_pose, wrap_radians
from emvae.io.stack import ImageStack, image_key, image_name
from emvae.latents import latent_columns
from emvae.models import SpatialVAE
from emvae.models.vae import images_to_pixels
from emvae.particles import Particles
from emvae.plotstyle import STYLE, figure, save
from emvae.train import FitResult, fit

# the three models of paper Fig. 2
MODELS = {
    "vanilla": {"generator": "vanilla", "rotation": False, "translation": False},
    "fixed": {"generator": "spatial", "rotation": False, "translation": False},
    "spatial": {"generator": "spatial", "rotation": True, "translation": True},
    # the Spatial Broadcast decoder (seed 001/002) with the same pose inference
    "broadcast": {"generator": "broadcast", "rotation": True, "translation": True},
}
# theta prior std (degrees) of the full model: pi/8 on MNIST, pi/4 on the transformed sets
THETA_PRIOR_DEG = {"mnist": 22.5, "rotated": 45.0, "rotated_translated": 45.0}
# test -ELBO (nats) at epoch 200 in the published reproduction of Bepler et al. 2019 (Donchev,
# Simon & Ippolito; compared in docs/benchmarks.md, "MNIST family")
PUBLISHED = {
    ("rotated", "vanilla", 2): 187.5,
    ("rotated", "spatial", 2): 161.5,
    ("rotated", "vanilla", 5): 154.0,
    ("rotated", "spatial", 5): 142.2,
    ("rotated", "vanilla", 10): 126.9,
    ("rotated", "spatial", 10): 129.6,
    ("rotated_translated", "vanilla", 2): 188.3,
    ("rotated_translated", "spatial", 2): 160.2,
    ("mnist", "vanilla", 2): 139.6,
    ("mnist", "spatial", 2): 135.2,
    ("rotated", "fixed", 2): 189.7,
}


def array_stack(images: np.ndarray, name: str) -> ImageStack:
    """An in-memory ``(N, D, D)`` or ``(N, C, D, D)`` array as a stack."""
    x = images[:, None] if images.ndim == 3 else images
    return ImageStack(
        images=x,
        names=[image_name(k, name) for k in range(1, len(x) + 1)],
        apix=None,
        source=name,
        format="array",
    )


def mnist_data(
    data_dir: Path, cache: Path, name: str, n_train: int | None, canvas: int | None, seed: int = 0
) -> dict[str, np.ndarray]:
    """The variant ``name`` of MNIST, generated once into ``cache/{name}_{canvas}.npz``."""
    from emvae.mnist import load_mnist, make_dataset

    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{name}_c{canvas or 28}_s{seed}.npz"
    if not path.exists():
        raw = load_mnist(data_dir)
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(raw["train_images"]))  # the 10k subset is grouped by digit
        arrays: dict[str, Any] = {}  # train, train_labels, train_theta, ..., test_shift
        for part, rows, part_seed in (("train", order, seed), ("test", slice(None), seed + 1)):
            x, theta, shift = make_dataset(raw[f"{part}_images"][rows], name, part_seed, canvas)
            arrays |= {part: x, f"{part}_labels": raw[f"{part}_labels"][rows]}
            arrays |= {f"{part}_theta": theta, f"{part}_shift": shift}
        np.savez_compressed(path, **arrays)
    with np.load(path) as f:
        data = {k: f[k] for k in f.files}
    if n_train is not None:
        for k in ("train", "train_labels", "train_theta", "train_shift"):
            data[k] = data[k][:n_train]
    return data


def _config(
    size: int,
    channels: int,
    zdim: int,
    model: dict[str, Any],
    epochs: int,
    hidden: int,
    enc_hidden: int,
    device: str,
    seed: int,
    **extra: Any,
) -> RunConfig:
    train = {k: extra.pop(k) for k in list(extra) if k in TrainConfig.__dataclass_fields__}
    return RunConfig(
        model=ModelConfig(
            image_size=size,
            channels=channels,
            zdim=zdim,
            gen_hidden=hidden,
            enc_hidden=enc_hidden,
            **model,
            **extra,
        ),
        train=TrainConfig(epochs=epochs, device=device, seed=seed, **train),
    )


def simulated(sim: Path, **options: Any) -> tuple[ImageStack, pd.DataFrame]:
    """The stack and ``truth.csv`` of the ``emvae simulate`` folder ``sim``, simulated first
    (``options``: :func:`emvae.simulate.write_simulation`'s) when it is not there yet."""
    from emvae.io import read_stack
    from emvae.simulate import write_simulation

    if not (sim / "particles.mrcs").exists():
        write_simulation(sim, **options)
    return read_stack(sim / "particles.mrcs"), pd.read_csv(sim / "truth.csv")


@torch.no_grad()
def heldout_encoding(model: SpatialVAE, images: np.ndarray, device: str, seed: int = 0) -> Encoding:
    """Per-image one-sample ELBO and z means of held-out images."""
    dev = resolve_device(device)
    data = load_images(array_stack(images, "test"), dev)
    normalize_(data, 0.0, 1.0)
    return encode(model, data, dev, batch_size=500, seed=seed)


def linear_probe(
    z_train: np.ndarray, y_train: np.ndarray, z_test: np.ndarray, y_test: np.ndarray
) -> float | None:
    """Accuracy of a linear SVM (scikit-learn's LinearSVC, standardised z) trained on the
    training set's z and tested on the test set's (seed 004, Table 1); None without sklearn."""
    try:
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import LinearSVC
    except ImportError:
        return None
    clf = make_pipeline(StandardScaler(), LinearSVC(C=1.0, max_iter=5000))
    clf.fit(z_train, y_train)
    return float((clf.predict(z_test) == y_test).mean())


def kmeans_accuracy(z: np.ndarray, labels: np.ndarray, k: int = 10, seed: int = 0) -> float | None:
    """Accuracy of k-means clusters (``k``, seeded) of z ``(N, K)`` against ``labels`` ``(N,)``
    after Hungarian matching of clusters to labels (:func:`emvae.analyze.hungarian_accuracy`);
    None without scikit-learn."""
    from emvae.analyze import cluster, hungarian_accuracy

    try:
        import sklearn  # noqa: F401
    except ImportError:
        return None
    return hungarian_accuracy(labels, cluster(z, min(k, len(z)), "kmeans", seed))


def run_mnist(
    data_dir: str | Path,
    out: str | Path,
    datasets: Sequence[str] = ("mnist", "rotated", "rotated_translated"),
    models: Sequence[str] = ("vanilla", "fixed", "spatial"),
    zdims: Sequence[int] = (2, 3, 5, 10),
    epochs: int = 200,
    hidden: int = WIDTH,
    n_train: int | None = None,
    canvas: int = 56,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
    encoders: Sequence[str] = ("mlp",),
    lr: float = 1e-4,
    cluster: bool = False,
    betas: tuple[float, ...] = (1.0,),
) -> pd.DataFrame:
    """Paper section 4.2 / Fig. 2: test ELBO of each dataset x model x Z-D (Bernoulli, Adam
    1e-4, batch 100, 2 x ``hidden`` tanh), trained on the training images, evaluated on the
    10,000 test images; the linear-SVM probe on z; Fig. 3 manifolds at Z-D = 2.

    ``encoders``: the inference networks to fit the spatial model with (rows labelled
    ``spatial/conv``, ``spatial/equivariant``); the equivariant encoder needs the uniform
    rotation prior (s = 180 deg) where the paper used N(0, 45 deg^2) on the rotated sets.

    ``canvas``: the field of rotated + translated MNIST (the paper does not give it). With
    shifts of 14 px std a 28-px field loses most digits; 56 px keeps a digit whole for shifts
    up to 14 px (one std) and keeps most of it beyond. MNIST and rotated MNIST stay 28 px.

    ``cluster``: also ``kmeans_accuracy``, k-means (k = 10) on the test images' z against
    their digits after the best matching of clusters to digits (:func:`kmeans_accuracy`).

    ``betas``: the weight of z's KL (``--beta``; rows labelled ``model/beta4`` for beta 4).
    Every row also gives ``kl_z1..``: each latent dimension's KL from the N(0, 1) prior on the
    test images (nats; near 0: an unused dimension)."""
    from emvae import montage as mt
    from emvae.figures import tiles

    out = Path(out)
    rows = []
    for name in datasets:
        field = canvas if name == "rotated_translated" else None
        data = mnist_data(Path(data_dir), out / "data", name, n_train, field, seed)
        size = data["train"].shape[-1]
        stack = array_stack(data["train"], f"{name}-train")
        # the full model's rotation prior (the equivariant encoder keeps the uniform one)
        gaussian = {"theta_prior": "gaussian", "theta_prior_std_deg": THETA_PRIOR_DEG[name]}
        variants = [
            (m, e, b)
            for m in models
            for e in (encoders if MODELS[m]["rotation"] else ("mlp",))
            for b in betas
        ]
        for model_name, encoder, beta in variants:
            label = model_name if encoder == "mlp" else f"{model_name}/{encoder}"
            label += "" if beta == 1 else f"/beta{beta:g}"
            slug = label.replace("/", "_")
            for zdim in zdims:
                extra = {"encoder": encoder, "lr": lr, "beta": beta}
                if MODELS[model_name]["rotation"] and encoder != "equivariant":
                    extra |= gaussian
                cfg = _config(
                    size, 1, zdim, MODELS[model_name], epochs, hidden, hidden, device, seed,
                    likelihood="bernoulli", shift_prior_px=1.4, z_delay=0, augment_rotation=False,
                    test_fraction=0.02, **extra,
                )  # fmt: skip
                run_dir = out / "runs" / f"{name}_{slug}_z{zdim}"
                t0 = time.perf_counter()
                particles = Particles.of(stack, "bernoulli")
                result = fit(particles, cfg, run_dir, force=True, progress=progress)
                seconds = time.perf_counter() - t0
                test = heldout_encoding(result.model, data["test"], device, seed)
                train = heldout_encoding(result.model, data["train"], device, seed)
                svm = linear_probe(train.z_mu, data["train_labels"], test.z_mu, data["test_labels"])
                kmeans = kmeans_accuracy(test.z_mu, data["test_labels"]) if cluster else None
                rows.append(
                    {
                        "dataset": name,
                        "model": label,
                        "zdim": zdim,
                        "test_neg_elbo": float(-test.elbo.mean()),
                        "published_neg_elbo": (
                            PUBLISHED.get((name, model_name, zdim)) if beta == 1 else None
                        ),
                        "svm_accuracy": svm,
                        **({"kmeans_accuracy": kmeans} if cluster else {}),
                        **_kl_per_dimension(test),
                        "epochs": epochs,
                        "n_train": len(data["train"]),
                        "seconds": seconds,
                    }
                )
                if zdim == 2:
                    tiles.save_png(mt.manifold(result.model, 15), out / f"fig3_{name}_{slug}.png")
                _write_results(pd.DataFrame(rows), out, "mnist")
    table = pd.DataFrame(rows)
    plot_fig2(table, out / "fig2.png")
    return table


def _kl_per_dimension(enc: Encoding) -> dict[str, float]:
    """Each z dimension's mean KL(q(z_k | y) || N(0, 1)) over the encoded images, nats."""
    mu, std = enc.z_mu.astype(np.float64), enc.z_std.astype(np.float64)
    kl = 0.5 * (mu**2 + std**2 - 1.0) - np.log(std)
    return {f"kl_z{k + 1}": float(v) for k, v in enumerate(kl.mean(0))}


def plot_fig2(table: pd.DataFrame, path: Path) -> Path:
    """Test -ELBO against Z-D, one panel per dataset, one line per model (paper Fig. 2)."""
    names = list(dict.fromkeys(table["dataset"]))
    with matplotlib.rc_context(STYLE):
        fig, axes = figure(4 * len(names), 3.4, 1, len(names))
        for ax, name in zip(axes, names, strict=True):
            part = table[table["dataset"] == name]
            for model_name, g in part.groupby("model", sort=False):
                ax.plot(g["zdim"], g["test_neg_elbo"], "o-", label=model_name)
            ax.set_title(name)
            ax.set_xlabel("Z-D")
            ax.set_ylabel("test -ELBO (nats)")
        axes[0].legend()
        return save(fig, path)


def markdown_table(columns: Sequence[object], cells: Iterable[Sequence[object]]) -> list[str]:
    """The lines of a Markdown table: a header of ``columns``, then a row per entry of
    ``cells``."""
    head = ["| " + " | ".join(map(str, columns)) + " |", "|" + "---|" * len(columns)]
    return head + ["| " + " | ".join(map(str, row)) + " |" for row in cells]


def _write_results(table: pd.DataFrame, out: Path, name: str) -> None:
    """``{name}_results.csv`` and ``.md`` (floats to 4 digits, None and NaN left blank)."""
    table.to_csv(out / f"{name}_results.csv", index=False, float_format="%.4g")
    cells = [
        [
            "" if v is None or (isinstance(v, float) and np.isnan(v))
            else f"{v:.4g}" if isinstance(v, float)
            else v
            for v in r
        ]
        for _, r in table.iterrows()
    ]  # fmt: skip
    lines = markdown_table(list(table.columns), cells)
    (out / f"{name}_results.md").write_text("\n".join(lines) + "\n")


def run_particles(
    out: str | Path,
    n: int = 10000,
    size: int = 40,
    snr: float = 1.0,
    epochs: int = 100,
    hidden: int = WIDTH,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Paper section 4.3 / Table 1: spatial-VAE (1-D z, rotation + translation, uniform
    rotation prior) vs vanilla VAEs with 1-D and 2-D z on simulated hinge particles; Pearson of
    z with the conformation and circular correlation of theta with the true rotation."""
    from emvae.reference import compare, match

    out = Path(out)
    options = {"n": n, "size": size, "snr": snr, "shift_std_px": 2.0, "seed": seed, "apix": 1.0}
    stack, truth = simulated(out / "simulation", **options)
    rows = []
    for label, model, zdim in (
        ("spatial-VAE", "spatial", 1),
        ("vanilla VAE", "vanilla", 1),
        ("vanilla VAE", "vanilla", 2),
    ):
        cfg = _config(
            size, 1, zdim, MODELS[model], epochs, hidden, hidden, device, seed, shift_prior_px=2.0,
            theta_prior="uniform",
        )  # fmt: skip
        run_dir = out / "runs" / f"{model}_z{zdim}"
        t0 = time.perf_counter()
        result = fit(Particles.of(stack), cfg, run_dir, force=True, progress=progress)
        agreement = compare(*match(result.table, truth))
        z = agreement["latent"]
        rotation = agreement["rotation"] if model == "spatial" else {}  # the vanilla VAE has none
        rows.append(
            {
                "model": label,
                "zdim": zdim,
                "z_vs_conformation_pearson": max(
                    (abs(v["conformation"]["pearson"]) for v in z.values()), default=np.nan
                ),
                "theta_circular_correlation": rotation.get("circular_correlation", np.nan),
                "theta_median_error_deg": rotation.get("median_error_deg", np.nan),
                "test_elbo": result.history[-1]["test_elbo"],
                "epochs": epochs,
                "seconds": time.perf_counter() - t0,
            }
        )
        _write_results(pd.DataFrame(rows), out, "particles")
    return pd.DataFrame(rows)


def run_galaxies(
    pictures: str | Path,
    out: str | Path,
    zdim: int = 20,
    size: int = GALAXY_SIZE,
    epochs: int = 300,
    hidden: int = WIDTH,
    enc_hidden: int = GALAXY_ENC_WIDTH,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Paper section 4.4 / Fig. 5: RGB spatial-VAE on Galaxy Zoo pictures (crop 207 with
    +-12 px jitter, reduced to ``size``), uniform rotation prior, translation prior 8 px at 64 px
    (scaled with ``size``), Bernoulli likelihood; prior samples and training pictures."""
    from emvae import montage as mt
    from emvae.figures import tiles
    from emvae.preprocess import Preprocess

    out = Path(out)
    pre = Preprocess.for_input("pictures", size=size, seed=seed)
    particles = Particles.open(pictures, preprocess=pre, likelihood="bernoulli")
    stack = particles.stack
    cfg = _config(
        size, stack.channels, zdim, MODELS["spatial"], epochs, hidden, enc_hidden, device, seed,
        likelihood="bernoulli", shift_prior_px=8.0 * size / 64,
    )  # fmt: skip
    t0 = time.perf_counter()
    result = fit(particles, cfg, out / "run", force=True, progress=progress)
    tiles.save_png(mt.prior_samples(result.model.cpu(), 8, 8, seed), out / "fig5_prior_samples.png")
    observed = particles.images(np.arange(min(64, len(stack))))
    grid = observed[: (len(observed) // 8) * 8].reshape(-1, 8, *observed.shape[1:])
    tiles.save_png(grid, out / "fig5_training_pictures.png")
    summary = {
        "pictures": len(stack),
        "size": size,
        "zdim": zdim,
        "epochs": epochs,
        "test_elbo": result.history[-1]["test_elbo"],
        "train_elbo": result.history[-1]["train_elbo"],
        "seconds": time.perf_counter() - t0,
    }
    (out / "galaxies_results.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


ENCODERS = ("mlp", "conv", "equivariant")


def encoder_options(spec: str) -> dict[str, Any]:
    """An encoder of the benchmark: ``equivariant``, ``mlp``, ``conv`` (rotation bins), or
    ``mlp/gaussian``, ``conv/gaussian`` (the paper's Gaussian rotation posterior)."""
    name, _, posterior = spec.partition("/")
    if name not in ENCODERS or posterior not in ("", "gaussian", "bins"):
        raise ConfigError(
            f"unknown encoder {spec!r}: give equivariant, mlp, conv, mlp/gaussian or conv/gaussian"
        )
    return {"encoder": name, "theta_posterior": posterior or "auto"}


def pose_recovery(
    model: SpatialVAE,
    data: torch.Tensor,
    truth: pd.DataFrame,
    batch: int = 100,
    ctf: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Recovery figures of a model on ``data`` ``(N, 1, D, D)`` (normalised, input order) against
    a simulation's ``truth`` (same order), from posterior means (no sampling):
    ``theta_circ_corr`` (|circular correlation| with the consensus-frame rotation),
    ``theta_median_error_deg`` (after the best global offset) and the same error in the body's
    frame (``theta_median_error_body_deg``), ``z_conformation_pearson`` (the best |Pearson| of
    a z dimension with the conformation), ``z_spread_over_std`` (that dimension's spread of
    posterior means over its median posterior std: below 0.1 it is unused), ``shift_pearson``
    (mean signed Pearson of the x and y shifts, model pixels), ``theta_prob_median`` (rotation
    bins only); with a ``defocus_um`` column, ``z_defocus_pearson`` (the best |Pearson| of a z
    dimension with the defocus). ``ctf`` ``(N, 10)``: the images' CTFs, for a model whose
    encoder needs them (``ModelConfig.encoder_needs_ctf``)."""
    from emvae.metrics import angular_error_deg, circular_correlation, pearson

    enc = encode(model, data, next(model.parameters()).device, batch, ctf=ctf, elbo=False)
    cfg = model.config
    pose = torch.from_numpy(enc.pose_mu).double()
    shift = pose[:, 1:3] if cfg.translation else torch.zeros(len(pose), 2, dtype=torch.float64)
    theta_deg, shift_px = model_to_image_pose(pose[:, 0], shift, cfg.image_size)
    theta = theta_deg.numpy()
    true = truth["theta_deg"].to_numpy(float)
    rs = [abs(pearson(enc.z_mu[:, k], truth["conformation"])) for k in range(cfg.zdim)]
    best = int(np.nanargmax(rs)) if rs and not np.isnan(rs).all() else 0
    shift_rs = [pearson(shift_px[:, k].numpy(), truth[f"shift_{a}_px"]) for k, a in enumerate("xy")]
    out = {}
    if "defocus_um" in truth and cfg.zdim:  # z should follow the molecule, not the microscope
        out["z_defocus_pearson"] = max(
            abs(pearson(enc.z_mu[:, k], truth["defocus_um"])) for k in range(cfg.zdim)
        )
    out |= {
        "theta_circ_corr": abs(circular_correlation(np.radians(theta), np.radians(true))),
        "theta_median_error_deg": angular_error_deg(theta, true)[0],
        "z_conformation_pearson": max(rs, default=float("nan")),
        "z_spread_over_std": float(
            enc.z_mu[:, best].std() / np.median(enc.z_std[:, best]) if cfg.zdim else np.nan
        ),
        # signed: the shifts as the table reports them against the true shifts
        "shift_pearson": float(np.mean(shift_rs)),
    }
    if "theta_body_deg" in truth:
        body = truth["theta_body_deg"].to_numpy(float)
        out["theta_median_error_body_deg"] = angular_error_deg(theta, body)[0]
    if "conformation" in truth:
        out["theta_median_error_frames_deg"] = error_in_frames(
            theta, true, truth["conformation"].to_numpy(float)
        )
    if enc.theta_prob is not None:
        out["theta_prob_median"] = float(np.median(enc.theta_prob))
    return out


def error_in_frames(
    theta_deg: np.ndarray, true_deg: np.ndarray, conformation: np.ndarray, bins: int = 5
) -> float:
    """Median angular error (degrees) in each conformation's own frame: the particles split
    into ``bins`` equal-count conformation bins, each bin's errors taken after its own best
    offset (a flexible molecule's in-plane frame is a gauge each conformation sets for itself),
    then the median over all particles."""
    from emvae.metrics import angular_error_deg

    edges = np.quantile(conformation, np.linspace(0, 1, bins + 1))
    which = np.clip(np.searchsorted(edges, conformation, side="right") - 1, 0, bins - 1)
    errors = []
    for b in range(bins):
        pick = which == b
        if pick.sum() < 2:
            continue
        offset = angular_error_deg(theta_deg[pick], true_deg[pick])[1]
        d = np.radians(theta_deg[pick] - true_deg[pick] - offset)
        errors.append(np.degrees(np.abs(wrap_radians(d))))
    return float(np.median(np.concatenate(errors))) if errors else float("nan")


# --- mixtures: classes and junk against a simulation's truth (issue 39, examples/score_mixture.py)

#: :func:`table_recovery`'s figures, in order.
RECOVERY = (
    "z_conformation_pearson",
    "theta_median_error_deg",
    "theta_median_error_frames_deg",
    "shift_pearson",
)


@dataclass
class MixtureScore:
    """:func:`mixture_recovery`'s figures.

    ``agreement``: ``class_ari`` (adjusted Rand index of the table's ``class`` with the true
    class over the real particles; NaN without a ``class`` column), ``class_accuracy`` (the
    share of real particles in the predicted class matched to their true class,
    :func:`emvae.analyze.hungarian_accuracy`), ``kmeans_k``, ``kmeans_ari`` and
    ``kmeans_accuracy`` (the same for k-means on the z columns; NaN when not asked for),
    ``particles``, ``real``, ``junk`` (counts) and ``true_classes`` (among the real ones).
    ``junk``: one row ``all`` then one per junk kind (each kind against the real particles):
    ``n`` (junk images), ``junk_auc`` (ROC AUC of the table's ``junk`` score; NaN without
    one) and ``elbo_auc`` (of the negated ``elbo``; NaN without one).
    ``classes``: one row per true class (real particles only, grouped by the true class):
    ``n`` and :func:`table_recovery`'s figures.
    """

    agreement: dict[str, float]
    junk: pd.DataFrame
    classes: pd.DataFrame


def truth_rows(table: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """The rows of a simulation's ``truth`` (truth.csv: one row per input image, in input
    order) for each row of a run's particle ``table``, in the table's order (index reset):
    by ``input_row`` (the row's position in the input, so in truth.csv), else by ``image``
    name (:func:`emvae.io.stack.image_key`: folders and index padding aside), else by position
    (the two must then be as long). A :class:`ValueError` when a row has no truth."""
    if "input_row" in table:
        rows = table["input_row"].to_numpy(np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(truth)):
            raise ValueError(
                f"the table names input row {int(rows.max())} but the truth has {len(truth)} "
                f"rows: a truth.csv of another stack?"
            )
        return truth.iloc[rows].reset_index(drop=True)
    if "image" in table and "image" in truth:
        keys = pd.Series(np.arange(len(truth)), index=[image_key(n) for n in truth["image"]])
        wanted = [image_key(n) for n in table["image"]]
        missing = [w for w in wanted if w not in keys.index]
        if missing:
            raise ValueError(f"the truth has no image {image_name(*missing[0])}")
        return truth.iloc[keys.loc[wanted].to_numpy()].reset_index(drop=True)
    if len(table) != len(truth):
        raise ValueError(f"{len(table)} table rows against {len(truth)} truth rows")
    return truth.reset_index(drop=True)


def table_recovery(table: pd.DataFrame, truth: pd.DataFrame) -> dict[str, float]:
    """:func:`pose_recovery`'s figures from a particle ``table``'s posterior means (its
    ``theta_deg``, ``shift_x_px``/``shift_y_px`` and z columns) against ``truth`` rows in
    the same order: ``z_conformation_pearson`` (the best |Pearson r| of a z dimension with the
    conformation), ``theta_median_error_deg`` (after the best offset: the rows' own frame),
    ``theta_median_error_frames_deg`` (:func:`error_in_frames`: each conformation bin its own
    offset) and ``shift_pearson`` (mean Pearson r of the x and y shifts). NaN where undefined
    (no z, a constant column, fewer than 2 rows)."""
    from emvae.metrics import angular_error_deg, pearson

    nan = float("nan")
    conformation = truth["conformation"].to_numpy(np.float64)
    rs = [abs(pearson(table[z].to_numpy(), conformation)) for z in latent_columns(table)]
    finite = [r for r in rs if np.isfinite(r)]
    theta = table["theta_deg"].to_numpy(np.float64)
    true = truth["theta_deg"].to_numpy(np.float64)
    shift = [
        pearson(table[f"shift_{a}_px"].to_numpy(), truth[f"shift_{a}_px"].to_numpy()) for a in "xy"
    ]
    enough = len(table) >= 2
    return {
        "z_conformation_pearson": max(finite) if finite else nan,
        "theta_median_error_deg": angular_error_deg(theta, true)[0] if enough else nan,
        "theta_median_error_frames_deg": (
            error_in_frames(theta, true, conformation) if enough else nan
        ),
        "shift_pearson": float(np.mean(shift)) if enough else nan,
    }


def detection_auc(is_junk: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of ``score`` ``(N,)`` (higher: more likely junk) against ``is_junk`` ``(N,)``
    bool (scikit-learn's ``roc_auc_score``): 1 ranks every junk image above every particle,
    0.5 is chance; NaN when either kind is missing."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(is_junk, dtype=bool)
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, np.asarray(score, dtype=np.float64)))


def mixture_recovery(
    table: pd.DataFrame, truth: pd.DataFrame, kmeans: int | None = None, seed: int = 0
) -> MixtureScore:
    """How a fit of a simulated mixture recovers its truth (:class:`MixtureScore`).

    ``table``: a run's particle table (``Run.table()``); ``truth``: the simulation's truth.csv
    (:func:`emvae.simulate.mixture_truth`'s ``class``, 0-based, and ``junk``; a stack without
    them is one class and no junk), matched to the table by :func:`truth_rows`. Real
    particles are those with truth ``junk`` 0. ``class_ari`` compares the table's ``class``
    column (any labels: the ARI does not care how classes are numbered) with the true class
    over the real particles. k-means (:func:`emvae.analyze.cluster`: 10 initialisations,
    ``seed``) on all the table's z columns, junk included as a user would cluster them, with
    ``kmeans`` clusters (default: the number of true classes when the table has no ``class``
    column; none otherwise), scored over the real particles the same way. Per-class figures
    are grouped by the true class, never the predicted one, so each class's theta error is
    taken in that class's own frame (its own offset) whatever the fit called it.
    """
    from sklearn.metrics import adjusted_rand_score

    from emvae.analyze import cluster, hungarian_accuracy

    table = table.reset_index(drop=True)
    truth = truth_rows(table, truth)
    n = len(table)
    true_junk = (
        truth["junk"].to_numpy(np.int64) != 0 if "junk" in truth else np.zeros(n, dtype=bool)
    )
    real = ~true_junk
    true_class = truth["class"].to_numpy(np.int64) if "class" in truth else np.zeros(n, np.int64)
    classes = np.unique(true_class[real])
    nan = float("nan")
    scores = ("class_ari", "class_accuracy", "kmeans_k", "kmeans_ari", "kmeans_accuracy")
    agreement: dict[str, float] = {
        "particles": n,
        "real": int(real.sum()),
        "junk": int(true_junk.sum()),
        "true_classes": len(classes),
        **dict.fromkeys(scores, nan),  # each filled in below where it applies
    }
    if "class" in table and real.any():
        fitted = table["class"].to_numpy()[real]
        agreement["class_ari"] = float(adjusted_rand_score(true_class[real], fitted))
        agreement["class_accuracy"] = hungarian_accuracy(true_class[real], fitted)
    zs = latent_columns(table)
    k = kmeans if kmeans is not None else (None if "class" in table else len(classes))
    if k and zs and real.any():
        labels = cluster(table[zs].to_numpy(np.float64), k, "kmeans", seed)
        agreement["kmeans_k"] = k
        agreement["kmeans_ari"] = float(adjusted_rand_score(true_class[real], labels[real]))
        agreement["kmeans_accuracy"] = hungarian_accuracy(true_class[real], labels[real])
    kind = (
        truth["junk_kind"].astype(str).to_numpy()
        if "junk_kind" in truth
        else np.where(true_junk, "junk", "none")
    )
    junk_rows = []
    for name in ["all", *sorted(set(kind[true_junk]))]:
        pick = real | (true_junk if name == "all" else kind == name)
        row = {"junk_kind": name, "n": int((pick & true_junk).sum())}
        for col, score, sign in (("junk_auc", "junk", 1.0), ("elbo_auc", "elbo", -1.0)):
            row[col] = (
                detection_auc(true_junk[pick], sign * table[score].to_numpy()[pick])
                if score in table
                else nan
            )
        junk_rows.append(row)
    class_rows = []
    for c in classes:
        pick = real & (true_class == c)
        figures = table_recovery(table[pick], truth[pick])
        class_rows.append({"true_class": int(c), "n": int(pick.sum()), **figures})
    return MixtureScore(
        agreement,
        pd.DataFrame(junk_rows).set_index("junk_kind"),
        pd.DataFrame(class_rows, columns=["true_class", "n", *RECOVERY]).set_index("true_class"),
    )


@dataclass
class EncoderRuns:
    """What every fit of the encoder benchmark shares: the epochs, the generator's (and MLP
    heads') width, z's dimensions, the rotation bins and hypotheses, the group convolutions'
    channels, Adam's rate, the batch and the epochs with z held at 0 (None: fit's)."""

    epochs: int = 30
    hidden: int = SMALL_WIDTH
    zdim: int = 1
    rotation_bins: int = 8
    hypotheses: int = 2
    enc_channels: int = ModelConfig.enc_channels
    lr: float = 1e-3
    batch_size: int = 50
    z_delay: int | None = None


def run_encoders(
    out: str | Path,
    n: int = 4000,
    size: int = 40,
    snrs: tuple[float, ...] = (1.0, 0.3),
    encoders: tuple[str, ...] = ("equivariant", "mlp", "mlp/gaussian"),
    objects: tuple[str, ...] = ("hinge",),
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
    **runs: Any,
) -> pd.DataFrame:
    """Pose and conformation recovery per epoch for each inference network (see
    :func:`encoder_options`) on ``emvae simulate`` stacks of each object (:data:`OBJECTS`;
    ``random:SEED`` for a random one) and SNR (uniform rotations, N(0, 1 px^2) shifts), with the
    same generator (2 x ``hidden`` tanh, ``zdim``-D z, likelihood within a 19/40-box radius) and
    the same epochs: ``runs`` names the fields of :class:`EncoderRuns` (what every fit shares)
    that differ from its defaults (``emvae bench encoders`` gives them all).

    Writes ``encoders_per_epoch.csv`` (one row per object x snr x encoder x epoch) and
    ``encoders_results.{csv,md}`` (the last epoch, the first epoch reaching circular
    correlation 0.95 and the first with |r| of z >= 0.9)."""
    from emvae.simulate import get_object

    out, r = Path(out), EncoderRuns(**runs)
    rows: list[dict[str, Any]] = []
    final: list[dict[str, Any]] = []
    options = {spec: encoder_options(spec) for spec in encoders}
    for object_name in objects:
        name, _, object_seed = object_name.partition(":")
        particle = get_object(name, int(object_seed or 0))
        for snr in snrs:
            sim = out / f"simulation_{object_name.replace(':', '')}_snr{snr:g}"
            stack, truth = simulated(
                sim, n=n, size=size, snr=snr, shift_std_px=1.0, seed=seed, apix=1.0, obj=particle
            )
            for spec in encoders:
                label = {"object": object_name, "snr": snr, "encoder": spec}
                cfg = _config(
                    size, 1, r.zdim, MODELS["spatial"], r.epochs, r.hidden, r.hidden, device, seed,
                    rotation_bins=r.rotation_bins, hypotheses=r.hypotheses,
                    enc_channels=r.enc_channels, lr=r.lr, batch_size=r.batch_size,
                    z_delay=r.z_delay, shift_prior_px=2.0, mask_radius_px=size * 19 / 40,
                    **options[spec],
                )  # fmt: skip
                run = f"{object_name}_snr{snr:g}_{spec}".replace(":", "").replace("/", "-")
                t0 = time.perf_counter()
                result, per_epoch = _scored_fit(
                    stack, truth, cfg, out / "runs" / run, label, progress
                )
                seconds = time.perf_counter() - t0
                for row, hist in zip(per_epoch, result.history, strict=True):
                    row.update(test_elbo=hist["test_elbo"], seconds=hist["seconds"])
                rows += per_epoch
                pd.DataFrame(rows).to_csv(out / "encoders_per_epoch.csv", index=False)
                final.append(
                    {
                        **per_epoch[-1],  # the label first, then the last epoch's figures
                        "first_epoch_circ_corr_0.95": _first(per_epoch, "theta_circ_corr", 0.95),
                        "first_epoch_z_0.9": _first(per_epoch, "z_conformation_pearson", 0.9),
                        "total_seconds": seconds,
                    }
                )
                _write_results(pd.DataFrame(final), out, "encoders")
    return pd.DataFrame(rows)


def _scored_fit(
    stack: ImageStack,
    truth: pd.DataFrame,
    config: RunConfig,
    run_dir: Path,
    label: dict[str, Any],
    progress: bool,
    wall: bool = False,
) -> tuple[FitResult, list[dict[str, Any]]]:
    """:func:`emvae.fit` of ``config`` to ``stack`` in ``run_dir``, the model scored against the
    simulation's ``truth`` after each epoch (:func:`pose_recovery`, also in metrics.csv): the
    fit's result and a row per epoch, ``label``, ``epoch`` and the figures. ``wall``: each row
    also gives ``seconds``, the wall time since the start with the scoring excluded, and
    metrics.csv gets no figures."""
    rows: list[dict[str, Any]] = []
    t0, scoring = time.perf_counter(), 0.0  # scoring: seconds spent scoring, not training

    def track(epoch: int, model: SpatialVAE, data: Any) -> dict[str, Any]:
        nonlocal scoring
        s0 = time.perf_counter()
        fig = pose_recovery(model, data, truth)
        seconds = {"seconds": s0 - t0 - scoring} if wall else {}
        rows.append({**label, "epoch": epoch, **seconds, **fig})
        scoring += time.perf_counter() - s0
        return {} if wall else fig

    result = fit(
        Particles.of(stack), config, run_dir, force=True, progress=progress, on_epoch=track
    )
    return result, rows


def _first(rows: list[dict[str, Any]], key: str, threshold: float) -> int | None:
    """The first epoch whose ``key`` reaches ``threshold`` and stays there to the end."""
    first = None
    for row in rows:
        first = (first or row["epoch"]) if row[key] >= threshold else None
    return first


def generator_steps(
    images: np.ndarray,
    truth: pd.DataFrame,
    config: ModelConfig,
    steps: int = 1000,
    batch: int = 50,
    lr: float = 1e-3,
    every: int = 10,
    n_eval: int = 500,
    seed: int = 0,
) -> dict[str, Any]:
    """How many Adam steps a generator alone needs to draw the particles better than their mean
    image, given the *true* poses and the true conformation as z (so nothing but the generator
    is learnt).

    images ``(N, 1, D, D)`` or ``(N, D, D)``, standardised as ``fit`` does; truth: the
    simulation's table (``theta_deg``, ``shift_x_px``, ``shift_y_px`` in the consensus frame,
    ``conformation``).
    The squared error per image (sum over pixels) on ``n_eval`` held-out images is recorded
    every ``every`` steps and after the last. Returns ``steps_to_beat_mean`` (None if never),
    ``mean_image_error`` and ``curve`` (list of ``(step, error)``)."""
    torch.manual_seed(seed)
    x = torch.as_tensor(images, dtype=torch.float32)
    x = x[:, None] if x.dim() == 3 else x
    theta, shift = image_to_model_pose(
        torch.tensor(truth["theta_deg"].to_numpy(np.float64)),
        torch.tensor(truth[["shift_x_px", "shift_y_px"]].to_numpy(np.float64)),
        config.image_size,
    )
    pose = torch.cat([theta[:, None], shift], 1).float()
    c = truth["conformation"].to_numpy(np.float64)
    z = torch.tensor((c - c.mean()) / c.std(), dtype=torch.float32)[:, None]
    z = z.repeat(1, config.zdim) if config.zdim else z[:, :0]
    y = images_to_pixels(x)  # (N, D*D, 1)
    n = len(x)
    held = torch.arange(n - min(n_eval, n // 2), n)
    train = torch.arange(0, held[0].item())
    mean_error = float(((y[held] - y[train].mean(0)) ** 2).sum((1, 2)).mean())
    model = SpatialVAE(config)
    opt = torch.optim.Adam(model.generator.parameters(), lr=lr)
    rng = torch.Generator().manual_seed(seed)
    curve, first = [], None

    def error() -> float:
        with torch.no_grad():
            return float(((model.decode(z[held], pose[held]) - y[held]) ** 2).sum((1, 2)).mean())

    for step in range(1, steps + 1):
        idx = train[torch.randint(len(train), (batch,), generator=rng)]
        loss = ((model.decode(z[idx], pose[idx]) - y[idx]) ** 2).sum((1, 2)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % every == 0 or step == steps:
            e = error()
            curve.append((step, e))
            if first is None and e < mean_error:
                first = step
    return {"steps_to_beat_mean": first, "mean_image_error": mean_error, "curve": curve}


def run_time_to_result(
    out: str | Path,
    n: int = 4000,
    size: int = 28,
    snr: float = 1.0,
    epochs: int = 20,
    encoders: tuple[str, ...] = ("auto", "mlp"),
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
    obj: str = "hinge",
    hidden: int | None = None,
    pixel_fraction: float = TrainConfig.pixel_fraction,
    generator: str = ModelConfig.generator,
    beta: float = TrainConfig.beta,
    log: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Wall time until ``emvae fit``'s defaults give the right answer on an ``emvae simulate``
    stack (``n`` particles of ``size`` px at ``snr``; uniform rotations, N(0, 2^2 px^2) shifts,
    one conformational factor of object ``obj``): per epoch, the seconds since the fit started
    (reading the images included, the scoring after each epoch excluded), θ's circular
    correlation and the best |Pearson r| of a z dimension with the conformation, for each pose
    network in ``encoders`` ("auto": fit's default). Writes ``time_to_result_per_epoch.csv``
    and ``time_to_result_results.{csv,md}`` (the first epoch, and minute, from which θ ≥ 0.95
    and z ≥ 0.9 hold to the end). Levers: ``hidden`` sets both networks' width (fit's
    ``--gen-hidden``/``--enc-hidden``; None: fit's choice for the box), ``pixel_fraction``
    fit's ``--pixel-fraction``; ``generator`` and ``beta`` compare decoders and the β-VAE
    weight on the same stack (fit's ``--generator``, ``--beta``). ``log`` (when given) gets a
    line per pose network at the end: from which epoch (and minute) each threshold holds."""
    from emvae.simulate import get_object

    out = Path(out)
    name, _, object_seed = obj.partition(":")
    sim = out / f"simulation_{obj.replace(':', '')}_{n}_{size}px_snr{snr:g}"
    particle = get_object(name, int(object_seed or 0))
    stack, truth = simulated(sim, n=n, size=size, snr=snr, seed=seed, obj=particle)
    rows: list[dict[str, Any]] = []
    final: list[dict[str, Any]] = []
    lines = []
    widths: dict[str, Any] = {"gen_hidden": hidden, "enc_hidden": hidden}
    thresholds = (("theta_circ_corr", 0.95, "θ"), ("z_conformation_pearson", 0.9, "z"))
    levers: dict[str, Any] = {"pixel_fraction": pixel_fraction, "beta": beta}
    for encoder in encoders:
        config = RunConfig(
            model=ModelConfig(image_size=size, encoder=encoder, generator=generator, **widths),
            train=TrainConfig(epochs=epochs, device=device, seed=seed, **levers),
        )
        label = {"encoder": config.model.encoder + (" (default)" if encoder == "auto" else "")}
        run_dir = out / "runs" / label["encoder"].split()[0]
        _, per_epoch = _scored_fit(stack, truth, config, run_dir, label, progress, wall=True)
        rows += per_epoch
        pd.DataFrame(rows).to_csv(out / "time_to_result_per_epoch.csv", index=False)
        summary = {**label, "particles": n, "size_px": size, "snr": snr}
        reached = []
        for key, threshold, sign in thresholds:
            first = _first(per_epoch, key, threshold)
            minutes = None if first is None else per_epoch[first - 1]["seconds"] / 60
            summary[f"first_epoch_{key}_{threshold}"] = first
            summary[f"minutes_to_{key}_{threshold}"] = minutes
            when = "not reached" if first is None else f"from epoch {first} ({minutes:.1f} min)"
            reached.append(f"{sign} >= {threshold} {when}")
        lines.append(f"{label['encoder']}: {', '.join(reached)}")
        summary["seconds_per_epoch"] = float(
            np.median(np.diff([0.0] + [r["seconds"] for r in per_epoch]))
        )
        final.append(summary)
        _write_results(pd.DataFrame(final), out, "time_to_result")
    if log is not None:
        for line in lines:
            log(line)
    return pd.DataFrame(final)


def run_generator(
    fourier: Sequence[int] = (64, 0),
    seeds: Sequence[int] = (0, 1),
    steps: int = 1000,
    hidden: int = int(EXAMPLE_OPTIONS["gen_hidden"]),
    lr: float = 1e-3,
    batch: int = 50,
    log: Callable[[str], None] = print,
) -> None:
    """``emvae bench generator``: :func:`generator_steps` on the embedded example for each
    count of Fourier features (0: raw coordinates) and initialisation seed, a generator
    ``hidden`` wide. Each result goes to ``log`` as a row of a Markdown table, and each error
    curve into ``generator_fF_sS.csv`` (step, error) in the working folder."""
    from emvae.example import EXAMPLE_STACK
    from emvae.simulate import simulate_particles

    spec = {k: v for k, v in EXAMPLE_STACK.items() if k != "apix"}
    images, truth = simulate_particles(**spec)
    images = (images - images.mean()) / images.std()
    size = images.shape[-1]
    log(
        "| Fourier features | seed | steps to beat the mean image | error at the end / mean image |"
    )
    log("|---|---|---|---|")
    for f in fourier:
        for seed in seeds:
            cfg = ModelConfig(image_size=size, zdim=1, gen_hidden=hidden, fourier_features=f)
            r = generator_steps(images, truth, cfg, steps, batch, lr, seed=seed)
            end = r["curve"][-1][1] / r["mean_image_error"]
            log(f"| {f} | {seed} | {r['steps_to_beat_mean'] or f'> {steps}'} | {end:.3f} |")
            np.savetxt(
                f"generator_f{f}_s{seed}.csv",
                np.array(r["curve"]),
                delimiter=",",
                header="step,error",
                comments="",
            )
