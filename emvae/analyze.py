"""``emvae analyze``: the particles' latent space as a RELION user reads a 2-D classification.

PCA of the posterior means z, an optional UMAP, clusters in z (k-means or a Gaussian mixture)
numbered from 1 by size (cluster 1 the largest, like ``rlnClassNumber``), for each cluster the
generator's image at its centre (theta = 0, dx = 0: the "class average" of the model) and the
aligned average of its real particles, scatter plots coloured by cluster and by density, and
a walk along each principal component. A run fitted with ``--classes`` K > 1 is clustered by
its own classes (cluster c = the table's ``class`` c, method ``classes``; each class's image
is the generator of that class at the class's mean z, and the walks follow each class's first
principal component). Writes into ``RUN/analyze/``:

    clusters.csv        image, input_row, cluster[, cluster_prob (gmm)], PC1..PCK[, UMAP1,
                        UMAP2]: one row per particle, in the run table's order
    classes.mrcs        the generator at each cluster's centre, one image per cluster
    class_averages.mrcs each cluster's aligned average of its particles
    classes.star        the classes as RELION's run_model.star lists them (model_classes)
    analyze.json        k, method, seed, cluster sizes, explained variance, figures, notes
    *.png               the figures (docs/reports.md, "Latent analysis")

The functions above :func:`analyze_run` are pure (arrays in, arrays out).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from emvae.errors import ConfigError, EmvaeError, InputError
from emvae.figures import page, plots, tiles
from emvae.latents import latent_columns
from emvae.safety import claim_outputs, record_outputs

if TYPE_CHECKING:
    from torch import Tensor

    from emvae.config import RunConfig
    from emvae.io.stack import ImageStack
    from emvae.models import SpatialVAE
    from emvae.run import Run

METHODS = ("kmeans", "gmm")
#: The one line printed when ``--umap`` is asked for without umap-learn.
UMAP_HINT = "install umap-learn (pip install 'emvae[umap]')"
#: scikit-learn is a dependency of emvae: missing, the installation is broken.
SKLEARN_HINT = (
    "scikit-learn is missing: reinstall emvae (pip install emvae) or pip install scikit-learn"
)
#: Every file analyze_run may write; a re-run removes those it does not write again.
FILES = (
    "clusters.csv",
    "analyze.json",
    *(f.name for f in page.FIGURES if f.folder == "analyze/"),
    "classes.mrcs",
    "class_averages.mrcs",
    "classes.star",
)
#: Principal components walked in pc_trajectories.png, and steps along each.
MAX_TRAJECTORIES = 8
TRAJECTORY_STEPS = 9


# ----------------------------------------------------------------------------- pure functions


def pca(z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Principal components of ``z`` ``(N, K)`` (centred on its mean, by SVD).

    Returns ``scores`` ``(N, K)`` (coordinates of each row along each component, in z units),
    ``components`` ``(K, K)`` (row j: unit vector of component j in z, signed so that its
    largest-magnitude entry is positive; for K = 1 it is ``[1]``, so PC1 = z1 - mean) and
    ``explained`` ``(K,)`` (fraction of the total variance along each component, summing to 1;
    zeros when z does not vary). ``z = mean + scores @ components``."""
    x = np.asarray(z, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 1 or len(x) < 1:
        raise ConfigError(f"PCA needs z of shape (N, K >= 1), not {x.shape}")
    xc = x - x.mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    k = x.shape[1]
    if vt.shape[0] < k:  # fewer rows than dimensions: pad with zero-variance directions
        full = np.linalg.svd(xc, full_matrices=True)[2]
        vt, s = full, np.concatenate([s, np.zeros(k - len(s))])
    sign = np.sign(vt[np.arange(k), np.argmax(np.abs(vt), axis=1)])
    vt = vt * np.where(sign == 0, 1.0, sign)[:, None]
    var = s**2
    explained = var / var.sum() if var.sum() > 0 else np.zeros(k)
    return xc @ vt.T, vt, explained


def number_by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber cluster labels ``(N,)`` (any hashable values) 1, 2, ... by decreasing size;
    clusters of equal size keep the order in which their first member appears."""
    lab = np.asarray(labels)
    values, first, counts = np.unique(lab, return_index=True, return_counts=True)
    order = np.lexsort((first, -counts))  # by size, then first appearance
    new = np.empty(len(values), dtype=np.int64)
    new[order] = np.arange(1, len(values) + 1)
    return new[np.searchsorted(values, lab)]


def cluster(z: np.ndarray, k: int, method: str = "kmeans", seed: int = 0) -> np.ndarray:
    """Cluster the rows of ``z`` ``(N, K)`` into ``k`` groups: ``kmeans`` (scikit-learn
    KMeans, 10 initialisations) or ``gmm`` (GaussianMixture, full covariances, 5
    initialisations), seeded by ``seed``. Returns labels ``(N,)`` int64 in 1..k, numbered by
    size (:func:`number_by_size`); the same inputs give the same labels."""
    return cluster_posterior(z, k, method, seed)[0]


def cluster_posterior(
    z: np.ndarray, k: int, method: str = "kmeans", seed: int = 0
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`cluster`'s labels ``(N,)`` and, for ``gmm``, each particle's posterior
    probability of the cluster it is given ``(N,)`` (the mixture's responsibility; None for
    k-means, whose assignment is hard)."""
    x = np.asarray(z, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if method not in METHODS:
        raise ConfigError(f"unknown clustering method {method!r}; choose from {METHODS}")
    if not 1 <= k <= len(x):
        raise ConfigError(f"-k {k}: need 1 <= k <= the number of particles ({len(x)})")
    try:
        from sklearn.cluster import KMeans
        from sklearn.mixture import GaussianMixture
    except ImportError:
        raise ConfigError(SKLEARN_HINT) from None
    if method == "kmeans":
        labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)
        return number_by_size(labels), None
    gmm = GaussianMixture(n_components=k, n_init=5, random_state=seed, reg_covar=1e-5)
    resp = gmm.fit(x).predict_proba(x)
    labels = resp.argmax(1)  # GaussianMixture.predict
    return number_by_size(labels), resp[np.arange(len(x)), labels]


def hungarian_accuracy(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """Fraction of items whose predicted cluster maps to their true label under the best
    one-to-one matching of cluster names to label names (Hungarian algorithm,
    scipy.optimize.linear_sum_assignment on the contingency table). 1.0 for any renaming of
    the true labelling; clusters left unmatched (more clusters than labels) count as wrong."""
    from scipy.optimize import linear_sum_assignment

    t, p = np.asarray(labels_true), np.asarray(labels_pred)
    if t.shape != p.shape or t.ndim != 1:
        raise ValueError(f"labels of shapes {t.shape} and {p.shape}: need two equal 1-D arrays")
    if len(t) == 0:
        return float("nan")
    tv, ti = np.unique(t, return_inverse=True)
    pv, pi = np.unique(p, return_inverse=True)
    table = np.zeros((len(pv), len(tv)), dtype=np.int64)
    np.add.at(table, (pi, ti), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / len(t))


def umap_embedding(z: np.ndarray, seed: int = 0) -> np.ndarray:
    """UMAP of ``z`` ``(N, K)`` into 2-D ``(N, 2)`` (umap-learn, 15 neighbours or fewer for
    small N, seeded); :data:`UMAP_HINT` as a ConfigError when umap-learn is missing."""
    try:
        import umap
    except ImportError:
        raise ConfigError(UMAP_HINT) from None
    x = np.asarray(z, dtype=np.float64)
    reducer = umap.UMAP(n_components=2, n_neighbors=max(2, min(15, len(x) - 1)), random_state=seed)
    return np.asarray(reducer.fit_transform(x), dtype=np.float64)


def pc_path(
    z: np.ndarray, n_pcs: int | None = None, steps: int = TRAJECTORY_STEPS, span: float = 2.0
) -> np.ndarray:
    """z along each principal component of ``z`` ``(N, K)``: ``(P, steps, K)``, row j from
    ``-span`` to ``+span`` standard deviations of the PC-j scores about the mean of z (the
    other components at 0), mapped back to z; P = ``min(K, n_pcs)``."""
    x = np.asarray(z, dtype=np.float64)
    scores, components, _ = pca(x)
    p = x.shape[1] if n_pcs is None else min(n_pcs, x.shape[1])
    t = np.linspace(-span, span, steps)
    std = scores[:, :p].std(0)
    walk: np.ndarray = x.mean(0) + (t[None, :, None] * std[:, None, None]) * components[:p, None, :]
    return walk


def cluster_averages(
    stack: ImageStack, theta_deg: np.ndarray, shift_px: np.ndarray, labels: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The aligned average of each cluster's real particles: each image of ``stack`` (an
    :class:`emvae.io.ImageStack`, unprocessed, in the table's order) brought onto the
    canonical view by its pose (:func:`emvae.align.align_images`; ``theta_deg`` ``(N,)``,
    ``shift_px`` ``(N, 2)`` in the stack's pixels) and averaged over the particles of each
    cluster ``labels`` ``(N,)`` in 1..k. Returns ``(k, C, D, D)`` (the stack's units) and the
    counts ``(k,)``."""
    from emvae.align import align_images
    from emvae.preprocess import Preprocess, iter_chunks, prepare

    d, c = stack.size, stack.channels
    sums = torch.zeros(k, c, d, d, dtype=torch.float64)
    theta = torch.tensor(np.array(theta_deg, dtype=np.float64))
    shift = torch.tensor(np.array(shift_px, dtype=np.float64))
    lab = torch.tensor(np.array(labels, dtype=np.int64) - 1)
    for start, chunk in iter_chunks(stack, prepare(stack, Preprocess()), 1024):
        sel = slice(start, start + len(chunk))
        x = torch.tensor(np.asarray(chunk, dtype=np.float64))
        sums.index_add_(0, lab[sel], align_images(x, theta[sel], shift[sel]))
    counts = torch.bincount(lab, minlength=k).to(torch.float64)
    return (sums / counts.clamp(min=1)[:, None, None, None]).numpy(), counts.numpy()


# ----------------------------------------------------------------------------- a run


def analyze_run(
    run: str | os.PathLike[str] | Run,
    out: str | os.PathLike[str] | None = None,
    k: int = 4,
    method: str = "kmeans",
    umap: bool = False,
    seed: int = 0,
    force: bool = False,
    epoch: int | None = None,
) -> dict[str, Any]:
    """Analyse the latent space of ``run`` (a run directory or :class:`emvae.run.Run`) into
    ``out`` (default ``RUN/analyze``): the files of the module docstring. ``epoch``: of the
    checkpoint kept at that epoch instead of the run's final table (every particle encoded
    again under it, on the CPU; default folder ``RUN/analyze/epoch_NNNN``). Every file is
    written into a temporary folder beside ``out`` and moved in once all are complete,
    ``analyze.json`` last; files of an earlier analysis that this one does not write again
    are removed. Returns the content of ``analyze.json``. Files of those names that emvae did
    not write are refused; an earlier analysis is replaced in ``RUN/analyze``, and in ``out``
    only with ``force``.

    Raises ConfigError for a run without latent dimensions (zdim 0), for ``k`` outside
    1..N, and (``umap``) without umap-learn (:data:`UMAP_HINT`)."""
    from emvae.run import ANALYZE, Run, checkpoint_of

    r = run if isinstance(run, Run) else Run.open(run)
    config = r.config
    zdim = config.model.zdim
    if zdim == 0:
        raise ConfigError(
            f"{r.path}: the run has no latent dimensions (--zdim 0): nothing to analyse; "
            "fit with --zdim 1 or more"
        )
    if method not in METHODS:
        raise ConfigError(f"unknown --method {method!r}; choose from {', '.join(METHODS)}")
    if umap and zdim < 2:
        raise ConfigError("--umap needs at least 2 latent dimensions (this run has 1)")
    if umap:
        try:
            import umap as _umap  # noqa: F401
        except ImportError:
            raise ConfigError(UMAP_HINT) from None
    if epoch is None:
        table = r.table()
        n = len(table)
        dest = Path(out) if out is not None else r.path / ANALYZE
    else:
        checkpoint = checkpoint_of(r, epoch)  # a kept epoch, or one line naming them
        n = config.data.n_images
        dest = Path(out) if out is not None else r.path / ANALYZE / f"epoch_{epoch:04d}"
    if not 1 <= k <= n:
        raise ConfigError(f"-k {k}: need 1 <= k <= the number of particles ({n})")
    claim_outputs(dest, FILES, force or out is None, "analysis files")
    dest.mkdir(parents=True, exist_ok=True)
    if epoch is None:
        model, _, ckpt = r.model("cpu")
    else:
        model, table, ckpt = _epoch_table(r, checkpoint)
    zs = latent_columns(table)
    if len(zs) != zdim:
        raise InputError(r.path, f"particle table has {len(zs)} z columns; the run has {zdim}")
    z = table[zs].to_numpy(np.float64)

    scores, components, explained = pca(z)
    notes: list[str] = []
    n_classes = config.model.classes
    if n_classes > 1:  # the model's own classes, numbered as in the table
        k, method = n_classes, "classes"
        labels = table["class"].to_numpy(np.int64)
        prob = table["class_prob"].to_numpy(np.float64)
        empty = [c for c in range(1, k + 1) if not (labels == c).any()]
        if empty:
            notes.append(f"note: class {', '.join(map(str, empty))} of {k} holds no particle")
    else:
        labels, prob = cluster_posterior(z, k, method, seed)
        if int(labels.max()) < k:  # a mixture component that no particle prefers
            notes.append(f"note: only {int(labels.max())} of the {k} clusters hold particles")
            k = int(labels.max())
    sizes = np.bincount(labels, minlength=k + 1)[1:]
    centres = np.stack(
        [z[labels == c].mean(0) if sizes[c - 1] else z.mean(0) for c in range(1, k + 1)]
    )
    # the class each image is rendered as (0-based; the model's classes only)
    shown = torch.arange(k) if n_classes > 1 else None
    result: dict[str, Any] = {
        "run": str(r.path),
        "run_id": config.run_id,
        "epoch": int(ckpt["epoch"]),  # the checkpoint the clusters were made from
        "particles": len(z),
        "zdim": zdim,
        "k": k,
        "method": method,
        "seed": seed,
        "cluster_sizes": [int(s) for s in sizes],
        "cluster_fractions": [float(s / len(z)) for s in sizes],
        "cluster_centres_z": centres.round(6).tolist(),
        "explained_variance_ratio": [float(e) for e in explained],
        "pca_components": components.round(6).tolist(),
        "umap": False,
        "figures": [],
        "notes": notes,
    }
    pcs = {f"PC{j + 1}": scores[:, j] for j in range(zdim)}
    columns = {
        "image": table["image"].astype(str).to_numpy(),
        "input_row": table["input_row"].to_numpy(),
        "cluster": labels,
        **({} if prob is None else {"cluster_prob": prob}),
        **pcs,
    }
    embedding = None
    if umap:
        embedding = umap_embedding(z, seed)
        columns["UMAP1"], columns["UMAP2"] = embedding[:, 0], embedding[:, 1]
        result["umap"] = True

    staging = Path(tempfile.mkdtemp(prefix=".emvae-analyze.", dir=dest))
    try:
        figures = []
        pd.DataFrame(columns).to_csv(staging / "clusters.csv", index=False, float_format="%.6g")
        decoded = _decoded(model, torch.tensor(centres, dtype=torch.float32), shown)
        averages = _real_averages(r, table, labels, k, result["notes"])
        strip = class_labels(sizes)
        for images, figure in ((decoded, page.CLASS_GENERATOR), (averages, page.CLASS_AVERAGES)):
            if images is not None:
                png = tiles.save_png(images[None], staging / figure.name, scale=3, labels=strip)
                figures.append(png)
        result["class_files"] = write_classes(
            staging, decoded.numpy(), averages, sizes, centres, config, result["notes"]
        )
        planes: dict[str, tuple[np.ndarray, tuple[str, str]]] = {}  # file: points, axes
        if zdim == 1:
            figures.append(plots.clusters_1d(z[:, 0], labels, "z1", staging / page.Z_SCATTER.name))
        else:
            pcs_named = (f"PC1 ({explained[0]:.0%} of the variance)", f"PC2 ({explained[1]:.0%})")
            planes[page.Z_SCATTER.name] = (z[:, :2], ("z1", "z2"))
            planes[page.PCA_SCATTER.name] = (scores[:, :2], pcs_named)
        if embedding is not None:
            planes[page.UMAP_SCATTER.name] = (embedding, ("UMAP1", "UMAP2"))
        for name, (points, axes) in planes.items():
            figures.append(plots.clusters_2d(points, labels, axes, staging / name))
        if shown is None:
            path, path_class = pc_path(z, MAX_TRAJECTORIES), None
        else:  # each class along its own first principal component
            path = np.concatenate(
                [pc_path(z[labels == c] if sizes[c - 1] > 1 else z, 1) for c in range(1, k + 1)]
            )
            path_class = shown.repeat_interleave(path.shape[1])
        p, n = path.shape[:2]
        flat = torch.tensor(path.reshape(p * n, zdim), dtype=torch.float32)
        frames = _decoded(model, flat, path_class)
        grid = frames.reshape(p, n, *frames.shape[1:])
        figures.append(tiles.save_png(grid, staging / page.PC_TRAJECTORIES.name, scale=3))
        result["figures"] = [f.name for f in figures]
        (staging / "analyze.json").write_text(json.dumps(result, indent=2) + "\n")
        written = {f.name for f in staging.iterdir()}
        (dest / "analyze.json").unlink(missing_ok=True)  # incomplete until it is back
        for name in set(FILES) - written:
            (dest / name).unlink(missing_ok=True)
        for name in sorted(written - {"analyze.json"}):
            os.replace(staging / name, dest / name)
        os.replace(staging / "analyze.json", dest / "analyze.json")
        record_outputs(dest, sorted(written), config.run_id)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


def _decoded(model: SpatialVAE, z: Tensor, classes: Tensor | None) -> Tensor:
    """The generator's images at z ``(B, K)`` (:func:`emvae.montage.decode_mean`), clipped to
    [0, 1] for a Bernoulli model."""
    from emvae import montage as mt

    images = mt.decode_mean(model, z, classes)
    return images.clamp(0, 1) if model.config.likelihood == "bernoulli" else images


def _epoch_table(run: Run, checkpoint: Path) -> tuple[SpatialVAE, pd.DataFrame, dict[str, Any]]:
    """``(model, table, checkpoint dict)``: the particle table of the run's images under the
    checkpoint ``checkpoint`` (posteriors only: its ``elbo`` column is NaN)."""
    from emvae.ctf import likelihood_ctf
    from emvae.encode import encode
    from emvae.run import check_same_run, load_model

    model, config, ckpt = load_model(checkpoint, "cpu")
    check_same_run(checkpoint, config.run_id, run.config.run_id)
    particles = run.particles()
    data = particles.load("cpu", config.model.likelihood, config.train.stream)
    device = torch.device("cpu")
    mode = config.model.ctf  # the images as the encoder saw them, and its CTFs
    data, ctf = likelihood_ctf(particles.ctf(mode), mode, data, device)
    enc = encode(model, data, device, 256, config.train.seed, ctf=ctf, elbo=False)
    return model, particles.table(config.model, enc), ckpt


def class_labels(sizes: np.ndarray) -> tiles.Labels:
    """The text of a strip of class images: each cluster's number above it, its size and
    fraction under it (:class:`emvae.figures.tiles.Labels`)."""
    n = max(1, int(np.sum(sizes)))
    columns = [str(c) for c in range(1, len(sizes) + 1)]
    return tiles.Labels(columns=columns, tiles=[[[f"{int(s)} ({s / n:.0%})"] for s in sizes]])


def write_classes(
    folder: Path,
    decoded: np.ndarray,
    averages: np.ndarray | None,
    sizes: np.ndarray,
    centres: np.ndarray,
    config: RunConfig,
    notes: list[str],
) -> list[str]:
    """The classes as RELION writes a 2-D classification's: ``classes.mrcs`` (the generator
    at each cluster's centre, ``(k, D, D)``, model pixels), ``class_averages.mrcs`` (each
    cluster's aligned average, input pixels) with their pixel sizes when known, and
    ``classes.star`` (``data_model_general`` and ``data_model_classes`` in the spirit of
    RELION's ``run_model.star``: ``rlnReferenceImage`` ``k@classes.mrcs``,
    ``rlnClassDistribution``, and emvae's ``emvaeClassSize``, ``emvaeAverageImage``,
    ``emvaeMeanZ1..K``; no resolution). Colour images get no MRC stacks (a note says so).
    Returns the names written."""
    import starfile

    from emvae.io import write_mrc

    if decoded.shape[1] != 1:
        notes.append("note: classes.mrcs and classes.star are written for grey images only")
        return []
    k = len(sizes)
    data = config.data
    model_apix = None if data.apix is None else data.apix * data.scale
    write_mrc(folder / "classes.mrcs", decoded[:, 0], model_apix)
    names = ["classes.mrcs"]
    classes = pd.DataFrame(
        {
            "rlnReferenceImage": [f"{c:06d}@classes.mrcs" for c in range(1, k + 1)],
            "rlnClassDistribution": np.asarray(sizes, dtype=np.float64) / max(1, sizes.sum()),
            "emvaeClassSize": np.asarray(sizes, dtype=np.int64),
        }
    )
    if averages is not None:
        write_mrc(folder / "class_averages.mrcs", averages[:, 0], data.apix)
        names.append("class_averages.mrcs")
        classes["emvaeAverageImage"] = [f"{c:06d}@class_averages.mrcs" for c in range(1, k + 1)]
    for j in range(centres.shape[1]):
        classes[f"emvaeMeanZ{j + 1}"] = centres[:, j]
    general = pd.DataFrame(
        {
            "rlnNrClasses": [k],
            "rlnOriginalImageSize": [decoded.shape[-1]],
            "rlnPixelSize": [model_apix if model_apix is not None else -1.0],
        }
    )
    starfile.write(
        {"model_general": general, "model_classes": classes},
        folder / "classes.star",
        float_format="%.6g",
    )
    return [*names, "classes.star"]


def check_clusters(run: str | os.PathLike[str], path: Path) -> None:
    """Refuse a ``clusters.csv`` that ``emvae analyze`` did not write for ``run`` as it is now:
    from another run, edited, or made before the run was trained further (``fit --resume``).
    The folder's manifest holds the run id and digest of the file analyze wrote, and its
    ``analyze.json`` the checkpoint epoch it was made from."""
    from emvae.checkpoint import load_checkpoint
    from emvae.run import Run, check_same_run
    from emvae.safety import foreign_outputs

    r = Run(Path(run))
    again = f"run emvae analyze {run} again"
    if foreign_outputs(path.parent, [path.name, "analyze.json"]):
        raise InputError(path, f"is not the table emvae analyze wrote for this run; {again}")
    made = json.loads((path.parent / "analyze.json").read_text())
    check_same_run(path, made.get("run_id") or "", r.config.run_id, again)
    epoch = int(load_checkpoint(r.last)["epoch"]) if r.last.exists() else None
    if made.get("epoch") != epoch:
        raise InputError(
            path,
            f"was made from the checkpoint of epoch {made.get('epoch', '?')}, but the run is "
            f"now at epoch {epoch}: its clusters are stale; {again}",
        )


def _real_averages(
    run: Run, table: pd.DataFrame, labels: np.ndarray, k: int, notes: list[str]
) -> np.ndarray | None:
    """The per-cluster aligned averages of the run's own images
    ``(k, C, D, D)``, or None with a note in ``notes`` when they cannot be read."""
    from emvae.io.stack import image_key

    try:
        stack = run.particles().stack
        names = [image_key(n) for n in stack.names]
        if len(names) != len(table) or names != [image_key(n) for n in table["image"]]:
            raise InputError(stack.source, "its images are no longer the run table's")
        theta = table["theta_deg"].to_numpy(np.float64)
        shift = table[["shift_x_px", "shift_y_px"]].to_numpy(np.float64)
        averages, _ = cluster_averages(stack, theta, shift, labels, k)
    except (EmvaeError, OSError, ValueError) as e:
        notes.append(f"note: aligned averages of the particles skipped ({e})")
        return None
    return averages
