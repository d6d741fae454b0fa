"""The report's plots (matplotlib), each from arrays and tables, never from a run: learning
curves, pose and latent histograms, the latent space, agreement with a reference, the local
metric of the generator, example particles beside their reconstructions; and the plots of
``emvae analyze`` (clusters in z) and ``emvae convergence`` (agreement between checkpoints).

Each function draws one figure and writes it to ``path`` as a PNG at
:data:`emvae.plotstyle.DPI` (:func:`emvae.plotstyle.save`); those that may have nothing to show
return None then. All draw with the text sizes of :data:`emvae.plotstyle.STYLE` (one style);
only crowded text is smaller (the clusters' legends, the junk tiles' titles).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from emvae.figures.tiles import Labels, contrast, render, tile, to_uint8, z_lines
from emvae.geometry import wrap_degrees
from emvae.latents import KL_UNUSED
from emvae.plotstyle import STYLE, figure, save

#: the particle table's affine / spline columns (``--pose``) and their axis labels
DEFORM_COLUMNS = {
    "scale_x": "scale along the canonical x axis (factor)",
    "scale_y": "scale along the canonical y axis (factor)",
    "shear": "shear γ (dimensionless)",
    "tps_max_px": "largest control-point displacement (px)",
}


@contextmanager
def _drawn(
    path: Path, ncols: int = 1, nrows: int = 1, size: float = 3.6, aspect: float = 0.8
) -> Iterator[tuple[Figure, Any]]:
    """A figure of ``nrows`` x ``ncols`` panels, each ``size`` x ``aspect * size`` inches,
    drawn in :data:`STYLE` and written to ``path`` (:func:`save`) when the block ends."""
    with matplotlib.rc_context(STYLE):
        fig, ax = figure(size * ncols, size * aspect * nrows, nrows, ncols)
        yield fig, ax
        save(fig, path)


def learning_curves(metrics: pd.DataFrame, path: Path) -> Path:
    """Train (solid) and test (dashed) ELBO, reconstruction error and KL per epoch, nats per
    particle, from ``metrics.csv``'s columns ``epoch``, ``{train,test}_{elbo,error,kl}``."""
    terms = (("elbo", "ELBO"), ("error", "reconstruction error −log p"), ("kl", "KL divergence"))
    with _drawn(path, 3, size=3.4) as (_, ax):
        for a, (term, label) in zip(ax, terms, strict=True):
            for split, style in (("train", "-"), ("test", "--")):
                a.plot(metrics["epoch"], metrics[f"{split}_{term}"], style, label=split)
            a.set(title=label, xlabel="epoch", ylabel="nats per particle")
        ax[0].legend()
    return path


def latent_kl(metrics: pd.DataFrame, path: Path) -> Path | None:
    """Test KL of each latent dimension per epoch (``test_kl_z1``, ...: nats per particle),
    with the threshold below which a dimension counts as unused; None without those columns."""
    cols = sorted(
        (c for c in metrics.columns if c.startswith("test_kl_z") and c[9:].isdigit()),
        key=lambda c: int(c[9:]),
    )
    if not cols:
        return None
    with _drawn(path, 1, size=6.0) as (_, (ax,)):
        for c in cols:
            ax.plot(metrics["epoch"], metrics[c], label=c[8:].replace("kl_", ""))
        ax.axhline(KL_UNUSED, color="k", ls=":", lw=0.8, label=f"unused below {KL_UNUSED}")
        ax.set(xlabel="epoch", ylabel="test KL of each z (nats per particle)")
        ax.legend()
    return path


def pose_histograms(
    table: pd.DataFrame, path: Path, apix: float | None = None, arcsec_per_px: float | None = None
) -> Path:
    """θ (degrees), shifts (pixels of the input; Å or arcsec on a second axis when ``apix`` or
    ``arcsec_per_px`` is known), and (rotation bins) the probability of each particle's
    rotation bin: a 2 x 2 grid of histograms over the particle table's rows."""
    with _drawn(path, 2, 2, size=5.0) as (_, ax):
        ax[0].hist(table["theta_deg"], bins=72, range=(-180, 180), color="C0")
        ax[0].set(xlabel="θ (degrees, counter-clockwise)", xticks=range(-180, 181, 90))
        per = apix or arcsec_per_px  # Å or arcsec per pixel, on a top axis when known
        unit = "Å" if apix else "arcsec"
        for k, axis in zip((2, 3), ("x", "y"), strict=True):
            ax[k].hist(table[f"shift_{axis}_px"], bins=50, color="C1")
            ax[k].set_xlabel(f"shift {axis} (px, input pixels)")
            if per:
                scaled = (lambda v: np.multiply(v, per), lambda v: np.divide(v, per))
                ax[k].secondary_xaxis("top", functions=scaled).set_xlabel(f"shift {axis} ({unit})")
        if "theta_prob" in table:
            ax[1].hist(table["theta_prob"], bins=50, range=(0, 1), color="C2")
            ax[1].set_xlabel("probability of the rotation bin (1: certain)")
        else:
            ax[1].set_visible(False)
        for a in ax:
            a.set_ylabel("particles")
    return path


def deform_histograms(table: pd.DataFrame, path: Path) -> Path | None:
    """``--pose affine|tps``: histograms of the table's :data:`DEFORM_COLUMNS` over the
    particles; None for a rigid pose."""
    shown = [c for c in DEFORM_COLUMNS if c in table]
    if not shown:
        return None
    with _drawn(path, len(shown), 1, size=3.6) as (_, ax):
        for a, c in zip(ax, shown, strict=False):
            a.hist(table[c], bins=50, color="C3")
            a.set(xlabel=DEFORM_COLUMNS[c], ylabel="particles")
    return path


def z_histograms(z: pd.DataFrame, unused: set[str], path: Path) -> Path | None:
    """Histogram of each column of ``z`` (posterior means, prior std units; up to 12), the
    ``unused`` ones in red and labelled so; None without a column."""
    shown = list(z.columns)[:12]
    if not shown:
        return None
    ncols = min(3, len(shown))
    with _drawn(path, ncols, math.ceil(len(shown) / ncols), size=10.0 / max(2, ncols)) as (_, ax):
        for a, name in zip(ax, shown, strict=False):
            a.hist(z[name], bins=50, color="C3" if name in unused else "C2")
            a.set_xlabel(f"{name} (prior std units){' UNUSED' if name in unused else ''}")
            a.set_ylabel("particles")
        for a in ax[len(shown) :]:
            a.set_visible(False)
    return path


def latent_2d(z: np.ndarray) -> tuple[np.ndarray, tuple[str, str]] | None:
    """Posterior means ``(N, K)`` -> ``(N, 2)`` points and their axis names: z1, z2 (K = 2),
    or the first two principal components (K > 2); None for K < 2."""
    if z.shape[1] < 2:
        return None
    if z.shape[1] == 2:
        return z, ("z1", "z2")
    zc = z - z.mean(0)
    _, s, vt = np.linalg.svd(zc, full_matrices=False)
    explained = s**2 / (s**2).sum()
    labels = (f"PC1 of z ({explained[0]:.0%})", f"PC2 of z ({explained[1]:.0%})")
    return zc @ vt[:2].T, labels


def latent_scatter(
    z: np.ndarray, path: Path, colour: np.ndarray | None = None, label: str = ""
) -> Path | None:
    """One point per particle in the plane of :func:`latent_2d` (``z`` ``(N, K)``), coloured
    by ``colour`` ``(N,)`` (a reference factor called ``label``) when given; None for K < 2."""
    xy = latent_2d(z)
    if xy is None:
        return None
    pts, (lx, ly) = xy
    with _drawn(path, 1, size=6.0) as (fig, (ax,)):
        if colour is None:
            ax.scatter(pts[:, 0], pts[:, 1], s=4, alpha=0.5, linewidths=0)
        else:
            sc = ax.scatter(pts[:, 0], pts[:, 1], s=4, c=colour, cmap="viridis", linewidths=0)
            fig.colorbar(sc, ax=ax, label=f"reference {label}")
        ax.set(xlabel=f"{lx} (prior std units)", ylabel=f"{ly} (prior std units)")
    return path


def theta_vs_reference(
    theta_deg: np.ndarray, reference_deg: np.ndarray, offset: float, path: Path
) -> Path:
    """Each particle's θ less the global ``offset`` against the reference's, degrees ``(N,)``,
    with the diagonal where they agree."""
    with _drawn(path, 1, size=6.0) as (_, (ax,)):
        ours = wrap_degrees(theta_deg - offset)
        ax.scatter(reference_deg, ours, s=4, alpha=0.5, linewidths=0)
        ax.plot([-180, 180], [-180, 180], "k:", lw=0.8)
        ax.set(xlim=(-180, 180), ylim=(-180, 180))
        ax.set(xticks=range(-180, 181, 90), yticks=range(-180, 181, 90))
        ax.set_xlabel("reference θ (degrees)")
        ax.set_ylabel(f"emvae θ − global offset ({offset:+.1f}°) (degrees)")
    return path


def z_vs_reference(
    pairs: Sequence[tuple[str, np.ndarray, str, np.ndarray, float]], unused: set[str], path: Path
) -> Path | None:
    """One panel per (z name, its values ``(N,)``, factor name, the factor's values ``(N,)``,
    Pearson r): z against the factor; None without a pair."""
    if not pairs:
        return None
    with _drawn(path, len(pairs), size=10.0 / max(2, len(pairs))) as (_, ax):
        for a, (z, values, f, factor, r) in zip(ax, pairs, strict=True):
            a.scatter(factor, values, s=4, alpha=0.5, linewidths=0)
            a.set(xlabel=f"reference {f}", ylabel=f"{z} (prior std units)")
            a.set_title(f"{z} vs {f}: r = {r:+.2f}" + (" (z unused)" if z in unused else ""))
    return path


def local_metric(
    decoded: np.ndarray,
    magnification: np.ndarray,
    singular: np.ndarray,
    z1: np.ndarray,
    z2_rows: np.ndarray,
    path: Path,
) -> Path:
    """The decoded grid ``(n, n, C, D, D)`` beside heat maps over it, cell for cell: the
    ``magnification`` ``(n, n)`` and the two ``singular`` values ``(n, n, 2)`` of the
    generator's Jacobian ((pixel-value units) per unit z); ``z1`` ``(n,)`` along the columns,
    ``z2_rows`` ``(n,)`` the rows' z2 from the top."""
    n, d, pad = decoded.shape[0], decoded.shape[-1], 2
    picture = tile(to_uint8(decoded, *contrast(decoded)), pad)
    ticks = np.arange(0, n, max(1, n // 5))
    unit = "pixel-value units per unit z"
    maps = (
        (magnification, r"magnification $\sqrt{\det J^{T}J} = \sigma_1\sigma_2$" f"\n({unit})$^2$"),
        (singular[..., 0], r"$\sigma_1$, fastest direction" f"\n({unit})"),
        (singular[..., 1], r"$\sigma_2$, slowest direction" f"\n({unit})"),
    )
    with _drawn(path, 2, 2, size=5.0) as (fig, ax):
        centres = pad + ticks * (d + pad) + d / 2
        ax[0].imshow(picture, cmap="gray" if picture.ndim == 2 else None, interpolation="nearest")
        ax[0].set_title("decoded grid (θ = 0, Δx = 0)")
        ax[0].set_xticks(centres, [f"{z1[t]:+.2f}" for t in ticks])
        ax[0].set_yticks(centres, [f"{z2_rows[t]:+.2f}" for t in ticks])
        for a, (values, label) in zip(ax[1:], maps, strict=True):
            im = a.imshow(values, cmap="viridis", interpolation="nearest")
            fig.colorbar(im, ax=a, label=label, shrink=0.9)
            a.set_xticks(ticks, [f"{z1[t]:+.2f}" for t in ticks])
            a.set_yticks(ticks, [f"{z2_rows[t]:+.2f}" for t in ticks])
        for a in ax:
            a.set(xlabel="z1 (prior std units)", ylabel="z2 (prior std units)")
    return path


def reconstructions(
    observed: np.ndarray,
    rendered: np.ndarray,
    canonical: np.ndarray,
    names: Sequence[str],
    theta_deg: Sequence[float],
    z: np.ndarray,
    path: Path,
) -> Path:
    """Three rows of tiles: the particles ``(n, C, D, D)`` as the model sees them (``names``
    above, θ in degrees under them), their reconstructions and the same z ``(n, K)`` at
    θ = 0, Δx = 0 (one contrast for both), each pixel drawn enough times for 72 pixels."""
    model_rows = np.stack([rendered, canonical])
    pixels = np.concatenate(
        [to_uint8(observed, *contrast(observed))[None], to_uint8(model_rows, *contrast(model_rows))]
    )
    labels = Labels(
        columns=list(names),
        rows=["input", "model", "θ = 0"],
        tiles=[
            [[f"θ {t:+.0f}°"] for t in theta_deg],
            [z_lines(v, most=2) for v in z],
            [[] for _ in names],
        ],
    )
    render(pixels, max(1, math.ceil(72 / observed.shape[-1])), labels).save(path)
    return path


def junk(
    scores: np.ndarray,
    worst: np.ndarray | None,
    names: Sequence[str],
    worst_scores: np.ndarray,
    path: Path,
) -> Path:
    """The junk score's histogram over the particles (``scores`` ``(N,)``, log count axis, the
    0.5 line marked) above the particles that score worst, ``worst`` ``(n, C, D, D)`` as the
    model sees them (first channel; None: the histogram alone), each titled with its name and
    score."""
    n = 0 if worst is None else len(worst)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(7.0, 3.2 + (1.2 if n else 0.0)), layout="constrained")
        grid = fig.add_gridspec(2 if n else 1, max(n, 1), height_ratios=[3, 1.2] if n else [1])
        ax = fig.add_subplot(grid[0, :])
        ax.hist(scores[np.isfinite(scores)], bins=50, range=(0, 1), color="C3", log=True)
        ax.axvline(0.5, color="0.3", linestyle=":")
        ax.set_xlabel("junk score (probability the model does not explain the particle)")
        ax.set_ylabel("particles")
        if worst is not None:
            lo, hi = contrast(worst)
            for j in range(n):
                tile_ax = fig.add_subplot(grid[1, j])
                tile_ax.imshow(worst[j, 0], cmap="gray", vmin=lo, vmax=hi)
                tile_ax.set_title(f"{names[j]} {worst_scores[j]:.2f}", fontsize=7)
                tile_ax.set_axis_off()
        return save(fig, path)


# ----------------------------------------------------------------------------- emvae analyze


def density(points: np.ndarray, bins: int | None = None) -> np.ndarray:
    """Local density of 2-D ``points`` ``(N, 2)``: the count of points in each point's cell of
    a ``bins`` x ``bins`` histogram over their range ``(N,)`` (cheap for millions of points;
    default ``sqrt(N) / 2`` bins, 8 to 100)."""
    x = np.asarray(points, dtype=np.float64)
    if bins is None:
        bins = int(np.clip(np.sqrt(len(x)) / 2, 8, 100))
    counts, ex, ey = np.histogram2d(x[:, 0], x[:, 1], bins=bins)
    ix = np.clip(np.searchsorted(ex, x[:, 0], side="right") - 1, 0, bins - 1)
    iy = np.clip(np.searchsorted(ey, x[:, 1], side="right") - 1, 0, bins - 1)
    return counts[ix, iy]


def _cluster_colours(k: int) -> list[tuple[float, float, float, float]]:
    """The colours of clusters 1..k: tab10, or tab20 above 10 clusters (cycled)."""
    cm = matplotlib.colormaps["tab10" if k <= 10 else "tab20"]
    return [cm(c % cm.N) for c in range(k)]


def clusters_2d(points: np.ndarray, labels: np.ndarray, names: tuple[str, str], path: Path) -> Path:
    """Two panels of 2-D ``points`` ``(N, 2)`` named ``names``: coloured by cluster
    ``labels`` ``(N,)`` (1..k, legend) and by local density (:func:`density`, log colour
    scale)."""
    with _drawn(path, 2, size=4.2, aspect=0.85) as (fig, ax):
        colours = _cluster_colours(int(labels.max()))
        size = max(1.0, min(12.0, 4000 / max(len(points), 1)))
        for c, colour in enumerate(colours, start=1):
            m = labels == c
            label = f"{c} ({int(m.sum())})"
            ax[0].scatter(*points[m].T, s=size, linewidths=0, label=label, color=colour)
        ax[0].legend(title="cluster", fontsize=7, markerscale=max(1.0, 6 / size), loc="best")
        dens = density(points)
        order = np.argsort(dens)  # dense points on top
        x, y = points[order].T
        norm = LogNorm(vmin=1, vmax=max(2.0, float(dens.max())))
        sc = ax[1].scatter(x, y, s=size, c=dens[order], cmap="viridis", norm=norm, linewidths=0)
        fig.colorbar(sc, ax=ax[1], label="particles per cell")
        for a, title in zip(ax, ("by cluster", "by density"), strict=True):
            a.set(xlabel=names[0], ylabel=names[1], title=title)
    return path


def clusters_1d(z: np.ndarray, labels: np.ndarray, name: str, path: Path) -> Path:
    """1-D z ``(N,)`` called ``name``: each particle's z against its rank, coloured by cluster
    ``labels`` ``(N,)`` (1..k), beside the histogram of z stacked by cluster (the density)."""
    with _drawn(path, 2, size=4.2, aspect=0.85) as (_, ax):
        colours = _cluster_colours(int(labels.max()))
        clusters = range(1, len(colours) + 1)
        rank = np.argsort(np.argsort(z))
        bins = np.histogram_bin_edges(z, bins=50)
        for c, colour in zip(clusters, colours, strict=True):
            m = labels == c
            ax[0].scatter(rank[m], z[m], s=3, linewidths=0, color=colour, label=str(c))
        stacks = [z[labels == c] for c in clusters]
        ax[1].hist(stacks, bins=bins, stacked=True, color=colours, label=list(map(str, clusters)))

        ax[0].set(xlabel="particle (ranked by z)", ylabel=name)
        ax[0].legend(title="cluster", fontsize=7)
        ax[1].set(xlabel=name, ylabel="particles")
    return path


# ----------------------------------------------------------------------------- emvae convergence


def convergence(table: pd.DataFrame, metrics: pd.DataFrame | None, path: Path) -> Path:
    """Four panels against the epoch, from ``convergence.csv``'s ``table`` (one row per pair
    of checkpoints): z agreement (R^2), theta's median difference, the clusters' adjusted Rand
    index (each at the later epoch of its pair), and the ELBO of every epoch from ``metrics``
    (metrics.csv) with the compared checkpoints marked."""
    with _drawn(path, 4, size=3.5, aspect=3.4 / 3.5) as (_, ax):  # 14 x 3.4 inches
        x = table["epoch_b"].to_numpy()
        panels = (
            ("z_r2", "z agreement (R², 1 = same)", (0, 1.05)),
            ("theta_diff_deg", "θ median difference (°)", None),
            ("cluster_ari", "cluster agreement (ARI)", (-0.05, 1.05)),
        )
        for a, (column, title, ylim) in zip(ax[:3], panels, strict=True):
            y = table[column].to_numpy(np.float64)
            if np.isfinite(y).any():
                a.plot(x, y, "o-", color="C0")
            else:
                a.text(0.5, 0.5, "no latent dimensions", ha="center", transform=a.transAxes)
            a.set(title=title, xlabel="epoch (vs the previous checkpoint)")
            if ylim is not None:
                a.set_ylim(*ylim)
        ax[1].set_ylim(bottom=0)
        if metrics is not None and len(metrics):
            for name, colour in (("train_elbo", "C0"), ("test_elbo", "C1")):
                if name in metrics:
                    ax[3].plot(metrics["epoch"], metrics[name], color=colour, label=name[:-5])
            kept = metrics[metrics["epoch"].isin(np.concatenate([table["epoch_a"], x]))]
            if "test_elbo" in kept:
                ax[3].plot(kept["epoch"], kept["test_elbo"], "o", color="C1", label="checkpoints")
            ax[3].legend()
        ax[3].set(title="ELBO (nats per image)", xlabel="epoch")
        for a in ax:
            a.xaxis.set_major_locator(MaxNLocator(integer=True))
    return path
