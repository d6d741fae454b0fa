"""``emvae convergence``: has the fit converged? Poses, latents and clusters compared between
the checkpoints a fit kept (``--checkpoint-every``), after cryoDRGN's analyze_convergence.

Every kept checkpoint (``checkpoints/epoch_NNNN.pt``, and ``last.pt`` when its epoch was not
kept) encodes the same particles (all of them, or ``max_particles`` drawn once with a fixed
seed: one pass of the inference networks each, no generator); each pair of consecutive
checkpoints is then compared:

* ``z_r2``: how well each epoch's z predicts the other's by an affine map (least squares;
  the mean of the R^2 of both directions). z is defined up to sign, order and any invertible
  linear change of axes, none of which changes it; 1 when the latents agree, ``z_corr`` its
  square root (for 1-D z the absolute Pearson correlation).
* ``theta_diff_deg``: the median angular difference between the epochs' theta after the best
  global offset (``theta_offset_deg``; the canonical view may turn as a whole):
  :func:`emvae.metrics.angular_error_deg`. 0 when the poses agree.
* ``cluster_ari``: the adjusted Rand index between the epochs' clusterings of z (k-means or a
  Gaussian mixture, :func:`emvae.analyze.cluster`): 1 for the same partition.
* ``train_elbo``, ``test_elbo``: metrics.csv's ELBO at the later epoch (nats per image).

Writes into ``RUN/convergence/``: ``convergence.csv`` (one row per consecutive pair),
``convergence.png`` (the four figures against the epoch, the ELBO of every epoch with the kept
ones marked) and ``convergence.json`` (the settings, the epochs, the particles compared).
The functions above :func:`convergence_run` are pure (arrays in, numbers out);
:func:`check_convergence` is the command, with its progress display and the lines it prints.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from emvae.errors import ConfigError
from emvae.figures import page, plots
from emvae.progress import training_progress
from emvae.safety import atomic_output, claim_outputs, record_outputs

if TYPE_CHECKING:
    from torch import Tensor

    from emvae.config import RunConfig
    from emvae.data import StreamedImages
    from emvae.encode import Encoding
    from emvae.run import Run

#: What :func:`convergence_run` writes (convergence.json last: complete when it is there).
FILES = ("convergence.csv", page.CONVERGENCE_PLOT.name, "convergence.json")
#: convergence.csv's columns.
COLUMNS = ("epoch_a", "epoch_b", "z_r2", "z_corr", "theta_diff_deg", "theta_offset_deg",
           "cluster_ari", "train_elbo", "test_elbo")  # fmt: skip
#: Particles encoded per checkpoint unless told otherwise.
MAX_PARTICLES = 5000


# ----------------------------------------------------------------------------- pure functions


def _r2(x: np.ndarray, y: np.ndarray) -> float:
    """R^2 of the least-squares affine prediction of ``y`` ``(N, K)`` from ``x`` ``(N, J)``
    (1 - residual / total sum of squares, over all of y's columns); 1 when y is constant and
    predicted exactly, 0 when it is not predicted."""
    a = np.column_stack([x, np.ones(len(x))])
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    residual = float(((y - a @ coef) ** 2).sum())
    total = float(((y - y.mean(0)) ** 2).sum())
    tiny = 1e-12 * max(1.0, float((y**2).sum()))
    if total <= tiny:
        return 1.0 if residual <= tiny else 0.0
    return float(np.clip(1.0 - residual / total, 0.0, 1.0))


def z_agreement(z_a: np.ndarray, z_b: np.ndarray) -> float:
    """How much two epochs' latents ``(N, K)`` agree, up to an invertible affine change of
    axes (sign, order, scale, rotation): the mean of the R^2 of predicting each from the other
    by least squares, in [0, 1]. For K = 1 it is the squared Pearson correlation."""
    a, b = (np.asarray(v, dtype=np.float64) for v in (z_a, z_b))
    a, b = (v[:, None] if v.ndim == 1 else v for v in (a, b))
    if a.shape[0] != b.shape[0] or a.shape[0] < 2:
        raise ValueError(f"z of shapes {a.shape} and {b.shape}: need the same N >= 2 rows")
    return 0.5 * (_r2(a, b) + _r2(b, a))


def cluster_agreement(labels_a: np.ndarray, labels_b: np.ndarray) -> float:
    """Adjusted Rand index between two clusterings ``(N,)`` of the same particles: 1 for the
    same partition whatever the cluster names, about 0 for unrelated ones."""
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(np.asarray(labels_a), np.asarray(labels_b)))


@dataclass
class Snapshot:
    """One checkpoint's view of the particles compared: its epoch, z ``(N, K)`` (K may be 0)
    and theta ``(N,)`` in degrees (the particle table's convention)."""

    epoch: int
    z: np.ndarray
    theta_deg: np.ndarray


def convergence_table(
    snapshots: list[Snapshot],
    metrics: pd.DataFrame | None = None,
    k: int = 4,
    method: str = "kmeans",
    seed: int = 0,
) -> pd.DataFrame:
    """One row per consecutive pair of ``snapshots`` (in epoch order), the columns of
    :data:`COLUMNS`: z and theta agreement, the adjusted Rand index of ``k`` clusters of z
    (``method``, ``seed``; NaN without z or with fewer than ``k`` particles), and the ELBO of
    the later epoch from ``metrics`` (metrics.csv; NaN where absent)."""
    from emvae.analyze import cluster
    from emvae.metrics import angular_error_deg

    snaps = sorted(snapshots, key=lambda s: s.epoch)
    labels: list[np.ndarray | None] = []
    for s in snaps:
        usable = s.z.ndim == 2 and s.z.shape[1] > 0 and 1 <= k <= len(s.z)
        labels.append(cluster(s.z, k, method, seed) if usable else None)
    by_epoch = metrics.set_index("epoch") if metrics is not None else None
    rows = []
    for i in range(1, len(snaps)):
        a, b, la, lb = snaps[i - 1], snaps[i], labels[i - 1], labels[i]
        has_z = a.z.ndim == 2 and a.z.shape[1] > 0
        r2 = z_agreement(a.z, b.z) if has_z else float("nan")
        diff, offset = angular_error_deg(a.theta_deg, b.theta_deg)
        row = {
            "epoch_a": a.epoch,
            "epoch_b": b.epoch,
            "z_r2": r2,
            "z_corr": float(np.sqrt(r2)) if has_z else float("nan"),
            "theta_diff_deg": diff,
            "theta_offset_deg": offset,
            "cluster_ari": float("nan") if la is None or lb is None else cluster_agreement(la, lb),
        }
        for name in ("train_elbo", "test_elbo"):
            row[name] = float("nan")
            if by_epoch is not None and name in by_epoch and b.epoch in by_epoch.index:
                row[name] = float(by_epoch.loc[b.epoch, name])
        rows.append(row)
    return pd.DataFrame(rows, columns=list(COLUMNS))


def subsample(n: int, max_particles: int | None, seed: int = 0) -> np.ndarray:
    """The rows compared: all ``n`` (``max_particles`` None or 0, or at least n), else
    ``max_particles`` of them drawn without replacement by a generator seeded with ``seed``
    (the same rows for every checkpoint and every call), in increasing order."""
    if not max_particles or max_particles >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=max_particles, replace=False))


# ----------------------------------------------------------------------------- a run


def encode_checkpoint(
    path: Path,
    data: Tensor | StreamedImages,
    rows: np.ndarray,
    device: torch.device,
    ctf: Tensor | None = None,
    batch_size: int = 256,
) -> tuple[RunConfig, int, Encoding]:
    """``(config, epoch, Encoding)``: the checkpoint ``path`` over the normalised images
    ``data`` (the run's own, all of them, as its likelihood sees them:
    :func:`emvae.ctf.likelihood_ctf`) at ``rows``, with their CTF parameters ``ctf`` ``(N,
    10)`` (all of them; None without the CTF); posteriors only (no ELBO)."""
    from emvae.data import gather
    from emvae.encode import encode
    from emvae.run import load_model

    model, config, ckpt = load_model(path, device)
    if len(rows) < data.shape[0]:
        data = gather(data, torch.from_numpy(rows), device)
    if ctf is not None:
        ctf = ctf[torch.from_numpy(rows).to(ctf.device)]
    enc = encode(model, data, device, batch_size, config.train.seed, ctf=ctf, elbo=False)
    return config, int(ckpt["epoch"]), enc


def snapshot(config: RunConfig, epoch: int, enc: Encoding) -> Snapshot:
    """The z and theta (degrees, the table's convention) of an :class:`Encoding`."""
    from emvae.geometry import model_to_image_pose

    model = config.model
    pose = torch.from_numpy(enc.pose_mu).double()
    theta = pose[:, 0] if model.rotation else torch.zeros(len(pose), dtype=torch.float64)
    theta_deg, _ = model_to_image_pose(theta, torch.zeros(len(pose), 2).double(), model.image_size)
    return Snapshot(epoch, np.asarray(enc.z_mu, np.float64), theta_deg.numpy())


def convergence_run(
    run: str | os.PathLike[str] | Run,
    out: str | os.PathLike[str] | None = None,
    max_particles: int | None = MAX_PARTICLES,
    seed: int = 0,
    k: int = 4,
    method: str = "kmeans",
    device: str = "cpu",
    force: bool = False,
    advance: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Compare the kept checkpoints of ``run`` (a run directory or :class:`emvae.run.Run`)
    into ``out`` (default ``RUN/convergence``): the files of the module docstring. Returns
    the content of convergence.json (with ``table``, the DataFrame written). ``advance(1)``
    is called after each checkpoint is encoded. Files of those names that emvae did not write
    are refused; an earlier comparison is replaced in ``RUN/convergence``, and in ``out`` only
    with ``force``. Raises ConfigError for fewer than two kept checkpoints."""
    from emvae.analyze import METHODS
    from emvae.data import resolve_device
    from emvae.run import CONVERGENCE, Run, check_same_run, kept_checkpoints

    r = run if isinstance(run, Run) else Run.open(run)
    config = r.config
    if method not in METHODS:
        raise ConfigError(f"unknown --method {method!r}; choose from {', '.join(METHODS)}")
    if max_particles is not None and max_particles < 0:
        raise ConfigError(f"--max-particles {max_particles}: give 0 (all) or more")
    kept = kept_checkpoints(r)
    if len(kept) < 2:
        raise ConfigError(
            f"{r.path}: {len(kept)} checkpoint(s) kept; a comparison needs two or more (fit "
            f"with --checkpoint-every N to keep one every N epochs)"
        )
    dest = Path(out) if out is not None else r.path / CONVERGENCE
    claim_outputs(dest, FILES, force or out is None, "convergence files")
    dest.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    particles = r.particles()
    data = particles.load(dev, config.model.likelihood, config.train.stream)
    from emvae.ctf import likelihood_ctf

    mode = config.model.ctf  # the images as the networks saw them, and their CTFs
    data, ctf = likelihood_ctf(particles.ctf(mode), mode, data, dev)
    rows = subsample(len(particles), max_particles, seed)
    snaps = []
    for _, path in kept:
        ckpt_config, got, enc = encode_checkpoint(path, data, rows, dev, ctf)
        check_same_run(path, ckpt_config.run_id, config.run_id)
        snaps.append(snapshot(ckpt_config, got, enc))
        if advance is not None:
            advance(1)
    metrics = r.metrics()
    table = convergence_table(snaps, metrics, min(k, len(rows)), method, seed)
    result = {
        "run": str(r.path),
        "run_id": config.run_id,
        "epochs": [s.epoch for s in snaps],
        "particles": int(len(rows)),
        "of_particles": int(len(particles)),
        "max_particles": max_particles,
        "seed": seed,
        "k": k,
        "method": method,
        "files": list(FILES),
    }
    with atomic_output(dest / "convergence.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_output(dest / page.CONVERGENCE_PLOT.name) as tmp:
        plots.convergence(table, metrics, tmp)
    with atomic_output(dest / "convergence.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    record_outputs(dest, FILES, config.run_id)
    return {**result, "table": table}


def check_convergence(
    run: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    max_particles: int | None = MAX_PARTICLES,
    seed: int = 0,
    k: int = 4,
    method: str = "kmeans",
    device: str = "cpu",
    force: bool = False,
    progress: bool = True,
) -> list[str]:
    """``emvae convergence``: :func:`convergence_run` with a display of the checkpoints encoded
    (none without ``progress``). Returns the lines to print: the last pair's agreement (when
    there is a pair) and the files written."""
    from emvae.run import CONVERGENCE, Run, kept_checkpoints

    with training_progress(progress) as bar:
        r = Run.open(run)
        advance = bar.task("encoding checkpoints", len(kept_checkpoints(r)))
        result = convergence_run(r, out, max_particles, seed, k, method, device, force, advance)
    dest = Path(out) if out is not None else Path(run) / CONVERGENCE
    lines = []
    table = result["table"]
    if len(table):
        last = table.iloc[-1]
        lines.append(
            f"{len(result['epochs'])} checkpoints (epochs {', '.join(map(str, result['epochs']))}) "
            f"on {result['particles']} of {result['of_particles']} particles; last pair "
            f"{int(last['epoch_a'])} -> {int(last['epoch_b'])}: z R^2 {last['z_r2']:.3f}, theta "
            f"median difference {last['theta_diff_deg']:.2f} deg, cluster ARI "
            f"{last['cluster_ari']:.3f}"
        )
    files = ", ".join(str(dest / name) for name in FILES)
    return [*lines, f"wrote {files}"]
