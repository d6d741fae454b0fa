"""``emvae report``: learning curves, pose and latent distributions, and (with a reference)
how well poses and latents agree with known angles, shifts and factors.

Writes PNG figures, ``report.json`` and a self-contained ``report.html`` (figures embedded),
laid out like a paper's supplementary figures: sections, numbered figures with a caption that
gives the units, a summary table in words, example particles beside their reconstructions,
the run's montages (``emvae montage``) and latent analysis (``emvae analyze``) when they exist,
and the emvae version and command line that made the run. Reference rows are matched to the
run's particles by image name (index and file name), never by position.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from scipy import stats

from emvae._version import __version__
from emvae.config import RunConfig
from emvae.errors import ConfigError, InputError
from emvae.geometry import wrap_degrees
from emvae.io.stack import image_key
from emvae.io.star_export import star_pose
from emvae.io.tables import read_table
from emvae.latents import KL_UNUSED, latent_columns, latent_usage, unused_warning
from emvae.metrics import angular_error_deg, circular_correlation
from emvae.plotstyle import STYLE, figure, save
from emvae.run import ANALYZE, CONVERGENCE, MONTAGE, REPORT, Run
from emvae.safety import claim_outputs, record_outputs

POSE_REFERENCE_COLUMNS = {"theta_deg", "shift_x_px", "shift_y_px", "image", "input_row"}
#: A simulation's truth also gives the pose in the body's frame (emvae.simulate): compared
#: separately, never treated as a factor.
BODY_FRAME = {
    "theta_deg": "theta_body_deg",
    "shift_x_px": "shift_body_x_px",
    "shift_y_px": "shift_body_y_px",
}


def read_reference(path: str | os.PathLike, box: int, apix: float | None) -> pd.DataFrame:
    """Reference poses/factors with an ``image`` column: an emvae-style CSV (``image``,
    ``theta_deg``, optional ``shift_x_px``/``shift_y_px`` and numeric factors, as
    ``truth.csv`` of a simulation) or a STAR file (``rlnAnglePsi`` and origins, read with
    RELION's conventions; its other numeric columns become factors)."""
    p = Path(path)
    if not p.exists():
        raise InputError(p, "no such file")
    if p.suffix.lower() == ".star":
        from emvae.io.star import particle_block, read_star_blocks

        particles, optics, _ = particle_block(p, read_star_blocks(p))
        if optics is not None and "rlnImagePixelSize" in optics:
            apix = float(optics["rlnImagePixelSize"].iloc[0])
        psi, shift = star_pose(particles, apix, box)
        ref = pd.DataFrame({"image": particles["rlnImageName"].astype(str), "theta_deg": psi})
        ref["shift_x_px"], ref["shift_y_px"] = shift[:, 0], shift[:, 1]
        skip = {"rlnAnglePsi", "rlnOriginX", "rlnOriginY", "rlnOriginXAngst", "rlnOriginYAngst"}
        for col in particles.columns:
            if col not in skip and pd.api.types.is_numeric_dtype(particles[col]):
                ref[col] = particles[col].to_numpy()
        return ref
    ref = read_table(p)
    if "image" not in ref:
        raise InputError(p, "has no 'image' column (N@file names) to match particles by")
    return _checked_reference(ref, p)


def _checked_reference(ref: pd.DataFrame, p: Path) -> pd.DataFrame:
    """Pose columns must be numbers; rows without a finite value there are left out (and
    said so) rather than turning every score into NaN."""
    poses = [c for c in ("theta_deg", "shift_x_px", "shift_y_px") if c in ref]
    for c in poses:
        values = pd.to_numeric(ref[c], errors="coerce")
        bad = values.isna() & ref[c].notna()
        if bad.any():
            k = int(np.argmax(bad.to_numpy()))
            raise InputError(p, f"row {k + 1}: {c} is {ref[c].iloc[k]!r}, not a number")
        ref[c] = values
    finite = np.isfinite(ref[poses].to_numpy(np.float64)).all(1) if poses else None
    if finite is not None and not finite.all():
        left_out = ref["image"][~finite].astype(str).tolist()
        ref = ref[finite].reset_index(drop=True)
        ref.attrs["left_out"] = left_out  # named, but not compared
        ref.attrs["note"] = f"{p}: {int((~finite).sum())} rows without a finite pose left out"
    return ref


def match(table: pd.DataFrame, reference: pd.DataFrame, source: str = "reference") -> tuple:
    """(table rows, reference rows) of the images both name, in the table's order."""
    keys = [image_key(n) for n in reference["image"]]
    index = {k: i for i, k in enumerate(keys)}
    if len(index) < len(keys):
        raise InputError(source, "names some images twice")
    pairs = [
        (i, index[image_key(n)]) for i, n in enumerate(table["image"]) if image_key(n) in index
    ]
    if not pairs:
        raise InputError(source, "names none of the run's images (matched by N@file name)")
    a, b = np.array(pairs).T
    return table.iloc[a].reset_index(drop=True), reference.iloc[b].reset_index(drop=True)


def compare(table: pd.DataFrame, reference: pd.DataFrame) -> dict:
    """Agreement of matched rows (same order): rotation, shifts, and latents vs factors; with a
    simulation's body-frame pose columns, the same pose figures in that frame too
    (``rotation_body``, ``shift_body``)."""
    out: dict = {"matched": len(table), **_pose_agreement(table, reference)}
    if BODY_FRAME["theta_deg"] in reference:
        present = [k for k, v in BODY_FRAME.items() if v in reference]
        body = reference.drop(columns=present).rename(columns={v: k for k, v in BODY_FRAME.items()})
        out.update({f"{k}_body": v for k, v in _pose_agreement(table, body).items()})
    skip = POSE_REFERENCE_COLUMNS | set(BODY_FRAME.values())
    factors = [
        c
        for c in reference.columns
        if c not in skip
        and pd.api.types.is_numeric_dtype(reference[c])
        and reference[c].nunique() > 1
    ]
    scales = [c for c in ("scale_x", "scale_y") if c in table and c in reference]
    if scales:  # --pose affine against a simulation's (or any reference's) magnifications
        out["scale"] = {
            c: {"pearson_log": _pearson(np.log(table[c]), np.log(reference[c].astype(float)))}
            for c in scales
        }
    zs = latent_columns(table)
    out["latent"] = {
        z: {
            f: {
                "pearson": _pearson(table[z], reference[f]),
                "spearman": float(stats.spearmanr(table[z], reference[f]).statistic),
            }
            for f in factors
        }
        for z in zs
    }
    return out


def _pose_agreement(table: pd.DataFrame, reference: pd.DataFrame) -> dict:
    out: dict = {}
    if "theta_deg" in reference:
        a, b = table["theta_deg"].to_numpy(float), reference["theta_deg"].to_numpy(float)
        err, offset = angular_error_deg(a, b)
        err_flip, offset_flip = angular_error_deg(a, b, allow_flip=True)
        out["rotation"] = {
            "circular_correlation": circular_correlation(np.radians(a), np.radians(b)),
            "median_error_deg": err,
            "offset_deg": offset,
            "median_error_with_flip_deg": err_flip,
            "offset_with_flip_deg": offset_flip,
            "within_10_deg": float(np.mean(_angle_diff(a, b, offset) < 10.0)),
        }
    if {"shift_x_px", "shift_y_px"} <= set(reference.columns):
        out["shift"] = {
            f"pearson_{ax}": _pearson(table[f"shift_{ax}_px"], reference[f"shift_{ax}_px"])
            for ax in ("x", "y")
        }
        if "theta_deg" in reference:
            out["shift"].update(_shift_after_offset(table, reference))
    return out


def _shift_after_offset(table: pd.DataFrame, reference: pd.DataFrame) -> dict:
    """Shift agreement after the best offset of the canonical view's centre.

    A model can draw its canonical view anywhere in the box if every particle's shift moves
    with it: centred at u (pixels, in the canonical frame), a particle turned by theta has its
    shift changed by rot(theta) u. Like the global offset of theta, u is fitted (least squares
    over the particles, with the reference's angles) and removed. Returns ``offset_x_px``,
    ``offset_y_px`` (u), ``rms_error_px`` (after it) and ``pearson_{x,y}_after_offset``."""
    a = np.radians(reference["theta_deg"].to_numpy(float))
    err = table[["shift_x_px", "shift_y_px"]].to_numpy(float) - reference[
        ["shift_x_px", "shift_y_px"]
    ].to_numpy(float)
    c, s = np.cos(a), np.sin(a)
    # err ~ rot(theta) u: [c -s; s c] u, stacked over particles
    design = np.concatenate([np.stack([c, -s], 1), np.stack([s, c], 1)])
    u = np.linalg.lstsq(design, np.concatenate([err[:, 0], err[:, 1]]), rcond=None)[0]
    moved = np.stack([c * u[0] - s * u[1], s * u[0] + c * u[1]], 1)
    fixed = table[["shift_x_px", "shift_y_px"]].to_numpy(float) - moved
    residual = err - moved
    return {
        "offset_x_px": float(u[0]),
        "offset_y_px": float(u[1]),
        "rms_error_px": float(np.sqrt((residual**2).sum(1).mean())),
        **{
            f"pearson_{ax}_after_offset": _pearson(fixed[:, k], reference[f"shift_{ax}_px"])
            for k, ax in enumerate("xy")
        },
    }


def _angle_diff(a: np.ndarray, b: np.ndarray, offset: float) -> np.ndarray:
    return np.abs(wrap_degrees(a - b - offset))


def _pearson(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


# ----------------------------------------------------------------------------- figures

#: Example particles shown beside their reconstructions.
EXAMPLES = 8


def _figure(ncols: int = 1, nrows: int = 1, size: float = 3.6):
    return figure(size * ncols, size * 0.8 * nrows, nrows, ncols)


def plot_learning_curves(metrics: pd.DataFrame, path: Path) -> Path:
    with matplotlib.rc_context(STYLE):
        fig, ax = _figure(3, size=3.4)
        for k, (term, label) in enumerate(
            (("elbo", "ELBO"), ("error", "reconstruction error −log p"), ("kl", "KL divergence"))
        ):
            for split, style in (("train", "-"), ("test", "--")):
                ax[k].plot(metrics["epoch"], metrics[f"{split}_{term}"], style, label=split)
            ax[k].set_title(label)
            ax[k].set_xlabel("epoch")
            ax[k].set_ylabel("nats per particle")
        ax[0].legend()
        return save(fig, path)


def _secondary_shift_axis(ax, per_px: float | None, unit: str) -> None:
    """A top axis in physical units (Å, arcsec) over a histogram of shifts in pixels."""
    if per_px:
        top = ax.secondary_xaxis("top", functions=(lambda v: v * per_px, lambda v: v / per_px))
        top.set_xlabel(unit)


def plot_pose_histograms(
    table: pd.DataFrame,
    path: Path,
    apix: float | None = None,
    arcsec_per_px: float | None = None,
) -> Path:
    """θ, shifts (pixels of the input; Å or arcsec on a second axis when the pixel size is
    known), and (rotation bins) the probability of each particle's rotation bin: a 2 x 2 grid."""
    binned = "theta_prob" in table
    with matplotlib.rc_context(STYLE):
        fig, ax = _figure(2, 2, size=5.0)
        ax[0].hist(table["theta_deg"], bins=72, range=(-180, 180), color="C0")
        ax[0].set_xlabel("θ (degrees, counter-clockwise)")
        ax[0].set_xticks(range(-180, 181, 90))
        for k, axis in zip((2, 3), ("x", "y"), strict=True):
            ax[k].hist(table[f"shift_{axis}_px"], bins=50, color="C1")
            ax[k].set_xlabel(f"shift {axis} (px, input pixels)")
            if apix:
                _secondary_shift_axis(ax[k], apix, f"shift {axis} (Å)")
            else:
                _secondary_shift_axis(ax[k], arcsec_per_px, f"shift {axis} (arcsec)")
        if binned:
            ax[1].hist(table["theta_prob"], bins=50, range=(0, 1), color="C2")
            ax[1].set_xlabel("probability of the rotation bin (1: certain)")
        else:
            ax[1].set_visible(False)
        for a in ax:
            a.set_ylabel("particles")
        return save(fig, path)


#: the particle table's affine / spline columns (``--pose``) and their axis labels
DEFORM_COLUMNS = {
    "scale_x": "scale along the canonical x axis (factor)",
    "scale_y": "scale along the canonical y axis (factor)",
    "shear": "shear γ (dimensionless)",
    "tps_max_px": "largest control-point displacement (px)",
}


def plot_deform_histograms(table: pd.DataFrame, path: Path) -> Path | None:
    """``--pose affine|tps``: histograms of scale_x, scale_y, shear and the spline's largest
    control-point displacement over the particles; None for a rigid pose."""
    shown = [c for c in DEFORM_COLUMNS if c in table]
    if not shown:
        return None
    with matplotlib.rc_context(STYLE):
        fig, ax = _figure(len(shown), 1, size=3.6)
        for a, c in zip(ax, shown, strict=False):
            a.hist(table[c], bins=50, color="C3")
            a.set_xlabel(DEFORM_COLUMNS[c])
            a.set_ylabel("particles")
        return save(fig, path)


def plot_z_histograms(table: pd.DataFrame, path: Path) -> Path | None:
    """Histogram of each z's posterior means; unused dimensions (:mod:`emvae.latents`) are
    labelled as such."""
    zs = latent_columns(table)
    if not zs:
        return None
    unused = {u.name for u in latent_usage(table) if not u.used}
    shown = zs[:12]
    ncols = min(3, len(shown))
    with matplotlib.rc_context(STYLE):
        fig, ax = _figure(ncols, math.ceil(len(shown) / ncols), size=10.0 / max(2, ncols))
        for k, z in enumerate(shown):
            ax[k].hist(table[z], bins=50, color="C3" if z in unused else "C2")
            ax[k].set_xlabel(f"{z} (prior std units){' UNUSED' if z in unused else ''}")
            ax[k].set_ylabel("particles")
        for a in ax[len(shown) :]:
            a.set_visible(False)
        return save(fig, path)


def plot_latent_kl(metrics: pd.DataFrame, path: Path) -> Path | None:
    """Test KL of each latent dimension per epoch (which dimensions carry information), with
    the threshold below which a dimension counts as unused."""
    cols = sorted(
        (c for c in metrics.columns if c.startswith("test_kl_z") and c[9:].isdigit()),
        key=lambda c: int(c[9:]),
    )
    if not cols:
        return None
    with matplotlib.rc_context(STYLE):
        fig, ax = _figure(1, size=6.0)
        for c in cols:
            ax[0].plot(metrics["epoch"], metrics[c], label=c[8:].replace("kl_", ""))
        ax[0].axhline(KL_UNUSED, color="k", ls=":", lw=0.8, label=f"unused below {KL_UNUSED}")
        ax[0].set_xlabel("epoch")
        ax[0].set_ylabel("test KL of each z (nats per particle)")
        ax[0].legend()
        return save(fig, path)


def latent_2d(table: pd.DataFrame) -> tuple[np.ndarray, tuple[str, str]] | None:
    """z1, z2 (K = 2), or the first two principal components of z (K > 2)."""
    zs = latent_columns(table)
    if len(zs) < 2:
        return None
    z = table[zs].to_numpy(float)
    if len(zs) == 2:
        return z, ("z1", "z2")
    zc = z - z.mean(0)
    _, s, vt = np.linalg.svd(zc, full_matrices=False)
    explained = s**2 / (s**2).sum()
    labels = (f"PC1 of z ({explained[0]:.0%})", f"PC2 of z ({explained[1]:.0%})")
    return zc @ vt[:2].T, labels


def plot_latent_scatter(table: pd.DataFrame, path: Path, colour=None, label="") -> Path | None:
    xy = latent_2d(table)
    if xy is None:
        return None
    pts, (lx, ly) = xy
    with matplotlib.rc_context(STYLE):
        fig, ax = _figure(1, size=6.0)
        if colour is None:
            ax[0].scatter(pts[:, 0], pts[:, 1], s=4, alpha=0.5, linewidths=0)
        else:
            sc = ax[0].scatter(pts[:, 0], pts[:, 1], s=4, c=colour, cmap="viridis", linewidths=0)
            fig.colorbar(sc, ax=ax[0], label=f"reference {label}")
        ax[0].set_xlabel(f"{lx} (prior std units)")
        ax[0].set_ylabel(f"{ly} (prior std units)")
        return save(fig, path)


def plot_theta_vs_reference(table, reference, offset: float, path: Path) -> Path:
    with matplotlib.rc_context(STYLE):
        fig, ax = _figure(1, size=6.0)
        ref = reference["theta_deg"].to_numpy(float)
        ours = wrap_degrees(table["theta_deg"].to_numpy(float) - offset)
        ax[0].scatter(ref, ours, s=4, alpha=0.5, linewidths=0)
        ax[0].plot([-180, 180], [-180, 180], "k:", lw=0.8)
        ax[0].set_xlim(-180, 180)
        ax[0].set_ylim(-180, 180)
        ax[0].set_xticks(range(-180, 181, 90))
        ax[0].set_yticks(range(-180, 181, 90))
        ax[0].set_xlabel("reference θ (degrees)")
        ax[0].set_ylabel(f"emvae θ − global offset ({offset:+.1f}°) (degrees)")
        return save(fig, path)


def best_factors(latent: dict) -> list[tuple[str, str, float]]:
    """For each z of ``compare``'s ``latent``: (z, the reference factor it correlates with
    best by |Pearson r|, r); dimensions without a finite correlation are left out."""
    out = []
    for z, factors in latent.items():
        finite = {f: r["pearson"] for f, r in factors.items() if np.isfinite(r["pearson"])}
        if finite:
            best = max(finite, key=lambda f: abs(finite[f]))
            out.append((z, best, float(finite[best])))
    return out


def plot_z_vs_reference(
    table: pd.DataFrame, reference: pd.DataFrame, latent: dict, unused: set, path: Path
) -> Path | None:
    """Each z (up to 4) against the reference factor it follows best (:func:`best_factors`),
    one panel each; None without a factor."""
    pairs = best_factors(latent)[:4]
    if not pairs:
        return None
    with matplotlib.rc_context(STYLE):
        fig, ax = _figure(len(pairs), size=10.0 / max(2, len(pairs)))
        for a, (z, f, r) in zip(ax, pairs, strict=True):
            a.scatter(reference[f], table[z], s=4, alpha=0.5, linewidths=0)
            a.set_xlabel(f"reference {f}")
            a.set_ylabel(f"{z} (prior std units)")
            a.set_title(f"{z} vs {f}: r = {r:+.2f}" + (" (z unused)" if z in unused else ""))
        return save(fig, path)


def example_indices(table: pd.DataFrame, n: int = EXAMPLES) -> np.ndarray:
    """``n`` table rows to show: held-out (test split) particles when there are enough, spread
    evenly over the range of the first used z (over the table's order without z)."""
    pool = np.flatnonzero(table["split"].to_numpy() == "test") if "split" in table else None
    if pool is None or len(pool) < n:
        pool = np.arange(len(table))
    used = [u.name for u in latent_usage(table) if u.used] or latent_columns(table)
    if used:
        pool = pool[np.argsort(table[used[0]].to_numpy(float)[pool], kind="stable")]
    at = np.unique(np.round(np.linspace(0, len(pool) - 1, min(n, len(pool)))).astype(int))
    return pool[at]


def plot_reconstructions(
    run: Run, table: pd.DataFrame, path: Path, n: int = EXAMPLES
) -> tuple[Path | None, str | None]:
    """Example particles (:func:`example_indices`) above the generator's rendering of them at
    their inferred z and pose (:func:`emvae.montage.reconstruct`) and, below, the same z at
    θ = 0, Δx = 0. Returns (the figure, None), or (None, why not) when the run's input images
    can no longer be read."""
    from emvae import montage as mt

    idx = example_indices(table, n)
    model, config, _ = run.model()
    try:
        images = run.particles().images(idx)
    except (InputError, ConfigError, OSError) as e:
        return None, f"example particles not shown: the run's input images are not readable ({e})"
    rendered, z, _ = mt.reconstruct(model, images)
    canonical = mt.decode_mean(model, z)
    observed = images.numpy()
    if config.model.likelihood == "bernoulli":
        observed = np.clip(observed, 0, 1)
    model_rows = np.stack([rendered.numpy(), canonical.numpy()])
    pixels = np.concatenate(
        [
            mt.to_uint8(observed, *mt.contrast(observed))[None],
            mt.to_uint8(model_rows, *mt.contrast(model_rows)),
        ]
    )
    rows = table.iloc[idx]
    labels = mt.Labels(
        columns=[f"{image_key(name)[0]}@" for name in rows["image"]],
        rows=["input", "model", "θ = 0"],
        tiles=[
            [[f"θ {t:+.0f}°"] for t in rows["theta_deg"].astype(float)],
            [mt.z_lines(v, most=2) for v in z.numpy()],
            [[] for _ in idx],
        ],
    )
    scale = max(1, math.ceil(72 / config.model.image_size))
    mt.render(pixels, scale, labels).save(path)
    return path, None


#: The z grid of the local-metric figure (n x n, as ``emvae montage``'s manifold).
METRIC_GRID = 10


def plot_traversals(model, table: pd.DataFrame, path: Path) -> Path | None:
    """One row per latent dimension (:func:`emvae.montage.traversals`): that z from the
    particles' 2nd to 98th percentile, the others at their medians, θ = 0, Δx = 0, each
    tile's value under it. None without latent dimensions."""
    from emvae import montage as mt

    zs = latent_columns(table)
    k = model.config.zdim
    if k < 1 or len(zs) != k:
        return None
    z_data = table[zs].to_numpy(np.float64)
    grid = mt.traversals(model, z_data=z_data)
    labels = mt.traversal_labels(k, z_data=z_data)
    mt.save_png(grid, path, scale=max(1, math.ceil(48 / model.config.image_size)), labels=labels)
    return path


def plot_local_metric(model, table: pd.DataFrame, path: Path, n: int = METRIC_GRID) -> tuple:
    """For 2-D z: the decoded grid (:func:`emvae.montage.manifold` at quantiles of the
    particles' posterior means) beside heat maps over the same grid, cell for cell, of the
    generator's local metric (:func:`emvae.montage.metric_grid`): the magnification factor
    sqrt(det JᵀJ) and the two singular values of J. Returns (the figure, the numbers for
    ``report.json``), or (None, None) unless z is 2-D."""
    from emvae import montage as mt

    zs = latent_columns(table)
    if model.config.zdim != 2 or len(zs) != 2:
        return None, None
    z_data = table[zs].to_numpy(np.float64)
    decoded = np.asarray(mt.manifold(model, n, z_data), dtype=np.float64)
    magnification, sv = mt.metric_grid(model, n, z_data)
    z1, z2 = (g.numpy() for g in mt.manifold_grids(2, n, z_data))
    z2_rows = z2[::-1]  # top row: largest z2, as in the manifold
    pad, d = 2, model.config.image_size
    picture = mt.tile(mt.to_uint8(decoded, *mt.contrast(decoded)), pad)
    ticks = np.arange(0, n, max(1, n // 5))
    unit = "pixel-value units per unit z"
    maps = (
        (magnification, r"magnification $\sqrt{\det J^{T}J} = \sigma_1\sigma_2$" f"\n({unit})$^2$"),
        (sv[..., 0], r"$\sigma_1$, fastest direction" f"\n({unit})"),
        (sv[..., 1], r"$\sigma_2$, slowest direction" f"\n({unit})"),
    )
    with matplotlib.rc_context(STYLE):
        fig, ax = _figure(2, 2, size=5.0)
        centres = pad + ticks * (d + pad) + d / 2
        ax[0].imshow(picture, cmap="gray" if picture.ndim == 2 else None, interpolation="nearest")
        ax[0].set_title("decoded grid (θ = 0, Δx = 0)")
        ax[0].set_xticks(centres, [f"{z1[t]:+.2f}" for t in ticks])
        ax[0].set_yticks(centres, [f"{z2_rows[t]:+.2f}" for t in ticks])
        for a, (values, label) in zip(ax[1:], maps, strict=True):
            im = a.imshow(values.numpy(), cmap="viridis", interpolation="nearest")
            fig.colorbar(im, ax=a, label=label, shrink=0.9)
            a.set_xticks(ticks, [f"{z1[t]:+.2f}" for t in ticks])
            a.set_yticks(ticks, [f"{z2_rows[t]:+.2f}" for t in ticks])
        for a in ax:
            a.set_xlabel("z1 (prior std units)")
            a.set_ylabel("z2 (prior std units)")
        save(fig, path)
    numbers = {
        "grid": n,
        "z1": z1.round(5).tolist(),
        "z2_top_to_bottom": z2_rows.round(5).tolist(),
        "magnification": magnification.double().numpy().round(6).tolist(),
        "singular_values": sv.double().numpy().round(6).tolist(),
        "median_magnification": float(magnification.median()),
    }
    return path, numbers


# ----------------------------------------------------------------------------- report


def write_report(
    run: str | os.PathLike,
    reference: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    examples: int = EXAMPLES,
    force: bool = False,
    partial: bool = False,
) -> dict:
    """Figures, ``report.json`` and ``report.html`` for a run (into ``out``, default
    ``RUN/report``). ``examples``: particles shown beside their reconstructions (0: none).
    A ``reference`` that names only some of the run's particles is refused unless
    ``partial`` (then the warnings say how many were compared).
    Returns the JSON content.

    Files of those names that emvae did not write are refused (:func:`claim_outputs`); an
    earlier report is replaced in ``RUN/report``, and in ``out`` only with ``force``."""
    r = Run.open(run)
    table, metrics, config = r.table(), r.metrics(), r.config
    dest = Path(out) if out is not None else r.path / REPORT
    claim_outputs(dest, REPORT_FILES, force or out is None, "report files")
    dest.mkdir(parents=True, exist_ok=True)
    try:
        return _write_report(run, r, table, metrics, dest, reference, examples, partial)
    finally:  # claim_outputs found no other files of these names: all are emvae's now
        record_outputs(dest, REPORT_FILES, config.run_id)


def _write_report(
    run: str | os.PathLike,
    r: Run,
    table: pd.DataFrame,
    metrics: pd.DataFrame | None,
    dest: Path,
    reference: str | os.PathLike | None,
    examples: int,
    partial: bool = False,
) -> dict:
    """:func:`write_report`'s work, once ``dest`` is known to be emvae's to write."""
    config = r.config
    result: dict = {"run": str(run), "particles": len(table), "figures": [], "warnings": []}
    usage = latent_usage(table)
    if usage:
        result["latent_usage"] = [u.as_dict() for u in usage]
        warning = unused_warning(usage)
        if warning:
            result["warnings"].append(warning)
    unused = {u.name for u in usage if not u.used}
    if "theta_prob" in table:  # equivariant encoder: how sure each rotation is
        p = table["theta_prob"].to_numpy(float)
        result["rotation_bin_probability"] = {
            "median": float(np.median(p)),
            "fraction_above_0.9": float(np.mean(p > 0.9)),
        }
    if metrics is not None and len(metrics):
        last = metrics.iloc[-1]
        result["final_epoch"] = {k: float(v) for k, v in last.items()}
        kl = [c for c in metrics.columns if c.startswith("test_kl_z") and c[9:].isdigit()]
        if kl:  # is each latent dimension used, epoch by epoch (nats per particle, test set)
            result["kl_per_epoch"] = {
                "epoch": metrics["epoch"].astype(int).tolist(),
                **{c[8:]: metrics[c].astype(float).round(5).tolist() for c in kl},
            }
    data = config.data
    figures: list[Path | None] = [
        plot_learning_curves(metrics, dest / "learning_curves.png")
        if metrics is not None
        else None,
        plot_latent_kl(metrics, dest / "latent_kl.png") if metrics is not None else None,
        plot_pose_histograms(table, dest / "pose_histograms.png", data.apix, data.arcsec_per_px),
        plot_deform_histograms(table, dest / "deform_histograms.png"),
        plot_z_histograms(table, dest / "z_histograms.png"),
    ]
    colour = label = None
    if reference is not None:
        box = config.data.input_size or config.model.image_size
        ref = read_reference(reference, box, config.data.apix)
        if ref.attrs.get("note"):
            result["warnings"].append(f"warning: {ref.attrs['note']}")
        ours, theirs = match(table, ref, str(reference))
        keys = {image_key(n) for n in table["image"]}
        named = len(ours) + sum(image_key(n) in keys for n in ref.attrs.get("left_out", []))
        if named < len(table) and not partial:
            raise InputError(
                reference,
                f"names {named} of the run's {len(table)} particles (matched by N@file name); "
                f"give --partial to compare those {named}",
            )
        if named < len(table):
            result["warnings"].append(
                f"note: {reference} names {named} of the run's {len(table)} particles; "
                f"only those are compared (--partial)"
            )
        result["reference"] = str(reference)
        result.update(compare(ours, theirs))
        if "rotation" in result:
            figures.append(
                plot_theta_vs_reference(
                    ours, theirs, result["rotation"]["offset_deg"], dest / "theta_vs_reference.png"
                )
            )
        figures.append(
            plot_z_vs_reference(ours, theirs, result["latent"], unused, dest / "z_vs_reference.png")
        )
        factors = [f for z in result["latent"].values() for f in z]
        if factors and len(ours) == len(table):
            label = factors[0]
            colour = theirs[label].to_numpy(float)
    figures.append(plot_latent_scatter(table, dest / "latent_scatter.png", colour, label or ""))
    if config.model.zdim >= 1 and latent_columns(table):
        model = r.model()[0]
        figures.append(plot_traversals(model, table, dest / "latent_traversals.png"))
        metric_path, metric = plot_local_metric(model, table, dest / "latent_metric.png")
        figures.append(metric_path)
        if metric is not None:
            result["latent_metric"] = metric
    if examples > 0:
        recon, note = plot_reconstructions(r, table, dest / "reconstructions.png", examples)
        figures.append(recon)
        if note:
            result["warnings"].append(f"note: {note}")
    result["figures"] = [p.name for p in figures if p is not None]
    analysis = _analysis(Path(run), config, result["warnings"])
    if analysis is not None:
        result["analyze"] = analysis
    agreement = _convergence(Path(run), config, result["warnings"])
    if agreement is not None:
        result["convergence"] = agreement
    (dest / "report.json").write_text(json.dumps(result, indent=2, default=_json) + "\n")
    (dest / "report.html").write_text(_html(result, dest, config, r))
    return result


def _analysis(run: Path, config: RunConfig, warnings: list[str]) -> dict | None:
    """``RUN/analyze/analyze.json`` (emvae analyze) with its folder, when it describes this
    fit; a warning and None when it was made from another fit of the folder."""
    path = run / ANALYZE / "analyze.json"
    if not path.exists():
        return None
    try:
        analysis = json.loads(path.read_text())
    except (ValueError, OSError) as e:
        warnings.append(f"warning: {path}: not readable ({e}); latent analysis not shown")
        return None
    if not _of_this_fit(path, analysis, config, "analyze", warnings):
        return None
    analysis["folder"] = str(path.parent)
    return analysis


def _of_this_fit(
    path: Path, made: dict, config: RunConfig, command: str, warnings: list[str]
) -> bool:
    """Whether the output ``path`` (its JSON ``made``) of ``emvae COMMAND`` describes this fit
    (its run id); if not, a warning saying to run the command again."""
    made_by = made.get("run_id") or ""
    if made_by and config.run_id and made_by != config.run_id:
        warnings.append(
            f"warning: {path} was made from another fit of this folder (run {made_by[:8]}); "
            f"run emvae {command} again"
        )
        return False
    return True


def _convergence(run: Path, config: RunConfig, warnings: list[str]) -> dict | None:
    """``RUN/convergence`` (emvae convergence) when it describes this fit: its settings
    (convergence.json), the agreement of each pair of consecutive kept checkpoints
    (convergence.csv) and the folder; a warning and None when it was made from another fit."""
    folder = run / CONVERGENCE
    path = folder / "convergence.json"
    if not path.exists():
        return None
    try:
        made = json.loads(path.read_text())
        pairs = pd.read_csv(folder / "convergence.csv")
    except (ValueError, OSError) as e:
        warnings.append(f"warning: {folder}: not readable ({e}); convergence not shown")
        return None
    if not _of_this_fit(path, made, config, "convergence", warnings):
        return None
    made["pairs"] = json.loads(pairs.to_json(orient="records"))
    made["folder"] = str(folder)
    return made


def _json(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    raise TypeError(type(v))


# ----------------------------------------------------------------------------- the page

#: The page's sections, in order, and the figures each holds (by file name; montages from
#: RUN/montage, the latent analysis's from RUN/analyze).
SECTIONS = (
    ("Training", ("learning_curves.png", "latent_kl.png")),
    ("Poses", ("pose_histograms.png", "deform_histograms.png", "theta_vs_reference.png")),
    (
        "Latent space",
        (
            "z_histograms.png",
            "latent_scatter.png",
            "z_vs_reference.png",
            "latent_traversals.png",
            "latent_metric.png",
        ),
    ),
    ("Example particles", ("reconstructions.png",)),
)
#: Every file ``emvae report`` may write.
REPORT_FILES = ("report.json", "report.html", *(f for _, names in SECTIONS for f in names))
#: What ``emvae montage`` writes, in the order the page shows it.
MONTAGES = (
    "interpolation.png",
    "manifold.png",
    "traversals.png",
    "pose_traversals.png",
    "prior_samples.png",
    "latent_motion.gif",
    "canonical.png",
)


@dataclass
class Shown:
    """One figure of the page: its file, title and caption (HTML)."""

    path: Path
    title: str
    caption: str
    folder: str = ""  # where the file lies relative to the run ("montage/", "analyze/")


#: The 1-D z figure of emvae analyze (emvae.analyze.plot_histogram_1d) draws no density map.
_z_scatter_1d = (
    "Left: each particle's posterior mean z1 against its rank (particles sorted by z1), "
    "coloured by cluster; right: the histogram of z1 (particles per bin), stacked by cluster."
)


def _caption(name: str, result: dict, config: RunConfig) -> tuple[str, str]:
    """(title, one-line caption with units) of a report figure or montage."""
    esc = html.escape
    k = config.model.zdim
    rot = result.get("rotation", {})
    unit = "Å" if config.data.apix else ("arcsec" if config.data.arcsec_per_px else "")
    colour = next((f for z in result.get("latent", {}).values() for f in z), None)
    bins = "rotation_bin_probability" in result
    captions = {
        "convergence.png": (
            "Convergence across checkpoints",
            "For each pair of consecutive kept checkpoints, against the later epoch: how well "
            "one epoch's z predicts the other's (r of an affine fit: 1 = the same latents), "
            "the median difference of θ after the best global turn (degrees) and the adjusted "
            "Rand index of their clusters of z (1 = the same partition); and the ELBO of every "
            "epoch (nats per particle), the compared checkpoints marked.",
        ),
        "learning_curves.png": (
            "Learning curves",
            "Per epoch, on the training particles (solid) and the held-out test particles "
            "(dashed): the ELBO (higher is better), the reconstruction error −log p(image | z, "
            "pose) and the KL divergence of the posterior from the prior, in nats per particle.",
        ),
        "latent_kl.png": (
            "Information carried by each latent dimension",
            f"Test KL divergence of each z from its prior per epoch, nats per particle; below "
            f"the dotted line ({KL_UNUSED} nats) a dimension counts as unused.",
        ),
        "deform_histograms.png": (
            "Inferred scales, shear and bending",
            "--pose " + esc(config.model.pose) + ": distribution over the particles of the "
            "posterior means of the scale factors along the canonical view's own x and y axes "
            "(1: the canonical size), of the shear γ (dimensionless), and of the largest "
            "displacement of the thin-plate spline's control points (input pixels), as present"
            + (
                "; log-scale correlation with the reference: "
                + ", ".join(f"{c} r = {v['pearson_log']:.2f}" for c, v in result["scale"].items())
                + "."
                if "scale" in result
                else "."
            ),
        ),
        "pose_histograms.png": (
            "Inferred poses",
            "Distribution over the particles of the rotation θ (degrees, counter-clockwise, "
            "relative to the canonical view) and of the shifts x and y (pixels of the input "
            f"images{f'; {unit} on the top axis' if unit else ''})"
            + (
                ", and of the posterior probability of each particle's rotation bin (1: certain)."
                if bins
                else "."
            ),
        ),
        "theta_vs_reference.png": (
            "Rotation against the reference",
            f"Each particle's θ minus the best global offset ({rot.get('offset_deg', 0):+.1f}°) "
            f"against the reference angle, degrees; on the dotted diagonal where they agree "
            f"(median error {rot.get('median_error_deg', float('nan')):.1f}°).",
        ),
        "z_histograms.png": (
            "Latent values",
            "Distribution of the particles' posterior means of each z, in units of the prior's "
            "standard deviation; unused dimensions in red.",
        ),
        "latent_scatter.png": (
            "Latent space",
            ("z1 against z2" if k == 2 else "The first two principal components of z")
            + ", one point per particle, prior standard-deviation units"
            + (f"; colour: the reference's {esc(colour)}." if colour else "."),
        ),
        "z_vs_reference.png": (
            "Latent against the reference",
            "Each particle's posterior mean of z (prior standard-deviation units) against the "
            "reference factor that z follows best (in the reference's units); r: Pearson "
            "correlation over the matched particles.",
        ),
        "latent_traversals.png": (
            "Per-dimension traversals",
            "One row per z: the generator at θ = 0, Δx = 0 with that z from the particles' 2nd "
            "to 98th percentile (prior standard-deviation units, under the tiles) and the "
            "other dimensions at their medians; a row that does not change is an unused "
            "dimension.",
        ),
        "latent_metric.png": (
            "Decoded grid with the local metric",
            "Top left: the generator at θ = 0, Δx = 0 on a grid of z at quantiles of the "
            "particles' posterior means (z1 along the columns, z2 up the rows; prior "
            "standard-deviation units). The heat maps cover the same grid, cell for cell: how "
            "far the pose-free image moves per unit of z, from the generator's Jacobian J "
            "(pixels × 2) of that image with respect to z. σ₁ ≥ σ₂, the singular values of J: "
            "the change of the image (Euclidean norm over all pixels) per unit step of z along "
            "the fastest and the slowest direction, in (pixel-value units) per unit z ("
            + ("probability" if config.model.likelihood == "bernoulli" else "normalised units")
            + " per prior standard deviation of z); the magnification factor √det(JᵀJ) = "
            "σ₁σ₂, the area of image space swept per unit area of z, in (pixel-value units "
            "per unit z)². Where it is small the generator hardly changes with z; where it is "
            "large a small step of z changes the image much.",
        ),
        "reconstructions.png": (
            "Example particles and their reconstructions",
            "Held-out particles spread over the range of z. Top: the particle as the model sees "
            "it (preprocessed, normalised), with its image number and inferred θ (degrees); "
            "middle: the generator's mean at the particle's inferred z and pose, its "
            "reconstruction; bottom: the same z at θ = 0, Δx = 0, the canonical view"
            + (
                " (the renderings are CTF-free; the particles carry their CTFs)."
                if config.model.ctf == "on"
                else "."
            ),
        ),
        "interpolation.png": (
            "Interpolation between particles",
            "Each row: two held-out particles at the ends (as observed, with θ in degrees) and "
            "the generator at θ = 0, Δx = 0 for z equally spaced between their posterior means "
            "(t: the fraction of the way from the left particle to the right one).",
        ),
        "manifold.png": (
            "The learned manifold",
            "The generator at θ = 0, Δx = 0 for z on quantiles of the particles' posterior "
            "means: z1 along the columns" + (", z2 up the rows." if k == 2 else "."),
        ),
        "traversals.png": (
            "Latent traversals",
            "One row per z, from the particles' 2nd to 98th percentile (values under the "
            "tiles), the other dimensions at their medians; θ = 0, Δx = 0.",
        ),
        "pose_traversals.png": (
            "Pose traversals",
            "One row per pose parameter (--pose " + esc(config.model.pose) + "), the others at "
            "the identity and z at the particles' medians: θ over a full turn (degrees), each "
            "shift over ±2 prior standard deviations (pixels), log s_x, log s_y and the shear "
            "over the fitted prior's mean ± 2 of its standard deviations, each spline control "
            "point's x and y displacement over ±2 prior standard deviations (pixels; control "
            "points numbered row by row from the top left). Values under the tiles.",
        ),
        "prior_samples.png": (
            "Samples from the prior",
            "The generator at θ = 0, Δx = 0 for z drawn from N(0, I); each tile's z under it.",
        ),
        "latent_motion.gif": (
            "Motion along the main axis of z",
            "Animation: the generator at θ = 0, Δx = 0 along the first principal component of "
            "the particles' posterior means (2nd to 98th percentile) and back; the marker under "
            "the image shows the position along the path.",
        ),
        "canonical.png": ("The canonical view", "The generator at θ = 0, Δx = 0 (no latent)."),
        "class_generator.png": (
            "Generator at each cluster's centre",
            "The generator's mean at θ = 0, Δx = 0 at each cluster's mean z, cluster 1 (the "
            "largest) on the left; each tile's cluster number above it, its particles (and "
            "their fraction) under it.",
        ),
        "class_averages.png": (
            "Cluster averages",
            "The aligned average of each cluster's particles (input pixels), cluster 1 on the "
            "left; each tile's cluster number above it, its particles (and their fraction) "
            "under it.",
        ),
        "z_scatter.png": (
            ("Clusters in z", _z_scatter_1d)
            if k == 1
            else (
                "Clusters in z",
                "Particles' posterior means z1 against z2 coloured by cluster and by density "
                "(particles per cell, log scale).",
            )
        ),
        "pca_scatter.png": (
            "Principal components of z",
            "PC1 against PC2, by cluster and by density.",
        ),
        "umap_scatter.png": ("UMAP of z", "UMAP1 against UMAP2, by cluster and by density."),
        "pc_trajectories.png": (
            "Principal-component trajectories",
            "The generator at θ = 0, Δx = 0 from −2 to +2 standard deviations along each "
            "principal component of z.",
        ),
    }
    return captions.get(name, (name, ""))


#: Width of the page's figures (px); pictures of pixels (montages, example particles)
#: narrower than half of it are shown enlarged, up to twice, with their pixels kept sharp.
PAGE_PX = 1000
PIXEL_PICTURES = (*MONTAGES, "reconstructions.png", "class_generator.png", "class_averages.png",
                  "pc_trajectories.png")  # fmt: skip


def _zoom(shown: Shown) -> str:
    """The ``style`` attribute that enlarges a small picture of pixels on the page."""
    if shown.path.name not in PIXEL_PICTURES:
        return ""
    from PIL import Image

    with Image.open(shown.path) as im:
        width = im.width
    zoom = min(2.0, PAGE_PX / width)
    if zoom < 1.25:
        return ""
    return f' class="pixels" style="width:{round(width * zoom)}px"'


def _embed(path: Path) -> str:
    kind = "gif" if path.suffix.lower() == ".gif" else "png"
    return f"data:image/{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"


def _summary_rows(result: dict, config: RunConfig) -> list[tuple[str, str]]:
    """The summary table in words: (quantity, value with its unit)."""
    m, d = config.model, config.data
    rows: list[tuple[str, str]] = [("Particles", f"{result['particles']:,}")]
    size = f"{m.image_size} × {m.image_size} px as the model sees them"
    if d.input_size and d.input_size != m.image_size:
        size += f" (input {d.input_size} px)"
    if d.apix:
        size += f"; input pixel size {d.apix:.3g} Å"
    elif d.arcsec_per_px:
        size += f"; input pixel scale {d.arcsec_per_px:.3g} arcsec"
    rows.append(("Images", size))
    gen = {
        "spatial": "coordinate-MLP (spatial)",
        "broadcast": "spatial broadcast (CNN on the transformed coordinates)",
    }.get(m.generator, "vanilla (pixels)")
    rows.append(
        (
            "Model",
            f"{gen} generator, {m.zdim} latent dimension{'s' if m.zdim != 1 else ''}, "
            f"{m.likelihood.capitalize()} likelihood",
        )
    )
    posterior = f"{m.rotation_bins} rotation bins" if m.binned else "Gaussian rotation posterior"
    rows.append(("Pose network", f"{m.encoder}, {posterior}"))
    ctf = {"on": "modelled in the likelihood", "phase-flip": "images phase-flipped"}
    rows.append(
        ("CTF", ctf.get(m.ctf, "not modelled") + ("" if m.ctf == "off" else f" (--ctf {m.ctf})"))
    )
    last = result.get("final_epoch")
    if last:
        rows.append(("Epochs trained", f"{int(last.get('epoch', 0))}"))
        for key, what in (
            ("test_elbo", "Final test ELBO"),
            ("test_error", "Final test reconstruction error −log p"),
            ("test_kl", "Final test KL divergence"),
        ):
            if key in last:
                rows.append((what, f"{last[key]:.2f} nats per particle"))
    bins = result.get("rotation_bin_probability")
    if bins:
        rows.append(
            (
                "Rotation certainty",
                f"median probability of a particle's rotation bin {bins['median']:.2f}; "
                f"{bins['fraction_above_0.9']:.0%} of the particles above 0.9",
            )
        )
    unused = set()
    for u in result.get("latent_usage", []):
        state = "used" if u["used"] else "UNUSED (every particle gets the same z)"
        rows.append(
            (
                f"Latent {u['name']}",
                f"{state}: KL {u['kl']:.3f} nats; spread of the posterior means {u['spread']:.3g} "
                f"vs a posterior std of {u['width']:.3g} (prior std units)",
            )
        )
        if not u["used"]:
            unused.add(u["name"])
    if "reference" in result:
        rows.append(
            (
                "Reference",
                f"{result['reference']} ({result['matched']:,} particles matched by image name)",
            )
        )
        for key, frame in (("rotation", ""), ("rotation_body", " (body frame)")):
            rot = result.get(key)
            if rot:
                rows.append(
                    (
                        f"Rotation vs reference{frame}",
                        f"circular correlation {rot['circular_correlation']:.3f}; median error "
                        f"{rot['median_error_deg']:.1f}° after a global offset of "
                        f"{rot['offset_deg']:+.1f}° ({rot['median_error_with_flip_deg']:.1f}° if a "
                        f"reflection is allowed); {rot['within_10_deg']:.0%} of the particles "
                        f"within 10°",
                    )
                )
        for key, frame in (("shift", ""), ("shift_body", " (body frame)")):
            sh = result.get(key)
            if sh:
                text = f"Pearson r {sh['pearson_x']:.3f} (x), {sh['pearson_y']:.3f} (y)"
                if "rms_error_px" in sh:
                    rms = f"{sh['rms_error_px']:.2f} px"
                    if d.apix:
                        rms += f" ({sh['rms_error_px'] * d.apix:.2f} Å)"
                    text += (
                        f"; after removing the canonical centre's offset "
                        f"({sh['offset_x_px']:+.2f}, {sh['offset_y_px']:+.2f}) px: RMS error "
                        f"{rms}, r {sh['pearson_x_after_offset']:.3f} (x), "
                        f"{sh['pearson_y_after_offset']:.3f} (y)"
                    )
                rows.append((f"Shift vs reference{frame}", text))
        for z, factors in result.get("latent", {}).items():
            note = " (z unused: this correlation is noise)" if z in unused else ""
            for f, r in factors.items():
                rows.append(
                    (
                        f"{z} vs {f}",
                        f"Pearson r {r['pearson']:+.3f}, Spearman ρ {r['spearman']:+.3f}{note}",
                    )
                )
    return rows


def _provenance(result: dict, config: RunConfig) -> list[tuple[str, str]]:
    """Who made the run and how: (label, HTML)."""
    esc = html.escape
    command = (
        f"<code>{esc(config.command)}</code>"
        if config.command
        else "unknown (not recorded in config.json: a fit through the library, emvae.fit, or "
        "by an emvae that did not record it)"
    )
    return [
        (
            "Run",
            f"<code>{esc(result['run'])}</code>"
            + (f" (run id {esc(config.run_id[:8])})" if config.run_id else ""),
        ),
        (
            "Fitted with",
            f"emvae {esc(config.version or 'unknown')}"
            + (f", {esc(config.created.replace('T', ' '))}" if config.created else ""),
        ),
        ("Command line", command),
        ("Report made by", f"emvae {esc(__version__)}"),
    ]


def _montages(run: Path, result: dict, config: RunConfig) -> list[Shown]:
    """The montages ``emvae montage`` wrote into RUN/montage, as figures of the page; each one
    older than the run's last checkpoint says so (made from an earlier state of the fit)."""
    folder, last = run / MONTAGE, Run(run).last
    shown = []
    for name in MONTAGES:
        path = folder / name
        if not path.exists():
            continue
        title, caption = _caption(name, result, config)
        if last.exists() and path.stat().st_mtime < last.stat().st_mtime:
            caption += " <b>Made before the run's last checkpoint: run emvae montage again.</b>"
        shown.append(Shown(path, title, caption, "montage/"))
    return shown


def _convergence_part(
    made: dict | None, result: dict, config: RunConfig
) -> tuple[str, list[Shown]]:
    """The convergence section: the last pair of kept checkpoints in numbers, and the figure;
    a pointer to the command when there is none."""
    esc = html.escape
    if made is None:
        return (
            f'<p class="missing">Not measured yet: <code>emvae convergence {esc(result["run"])}'
            "</code> compares the poses, z and clusters of consecutive kept checkpoints.</p>",
            [],
        )
    rows = []
    for pair in made.get("pairs", [])[-3:]:  # the last pairs: has it settled?

        def num(key: str, fmt: str, pair: dict = pair) -> str:
            v = pair.get(key)
            return "–" if v is None or v != v else format(v, fmt)

        rows.append(
            f"<tr><td>{pair['epoch_a']} → {pair['epoch_b']}</td><td>{num('z_corr', '.3f')}</td>"
            f"<td>{num('theta_diff_deg', '.2f')}°</td><td>{num('cluster_ari', '.3f')}</td>"
            f"<td>{num('test_elbo', '.2f')}</td></tr>"
        )
    text = (
        f"<p>{made.get('particles', '')} particles compared between consecutive kept "
        "checkpoints (the last pairs below; all of them in <code>convergence.csv</code>).</p>"
        '<table class="summary"><tr><th>epochs</th><th>z agreement (r)</th>'
        "<th>θ difference (median)</th><th>clusters (ARI)</th><th>test ELBO</th></tr>"
        f"{''.join(rows)}</table>"
    )
    path = Path(made["folder"]) / "convergence.png"
    shown = [Shown(path, *_caption(path.name, result, config), "convergence/")]
    return text, shown if path.exists() else []


def _analysis_part(
    analysis: dict | None, result: dict, config: RunConfig
) -> tuple[str, list[Shown]]:
    """The latent-analysis section's text (cluster sizes, explained variance) and figures."""
    if analysis is None:
        return "", []
    folder = Path(analysis["folder"])
    n = max(1, int(analysis.get("particles", 0)))
    rows = "".join(
        f"<tr><td>{c}</td><td>{size:,}</td><td>{size / n:.1%}</td></tr>"
        for c, size in enumerate(analysis.get("cluster_sizes", []), start=1)
    )
    explained = ", ".join(
        f"PC{j}: {e:.1%}" for j, e in enumerate(analysis.get("explained_variance_ratio", []), 1)
    )
    notes = "".join(f"<p>{html.escape(t)}</p>" for t in analysis.get("notes", []))
    method = html.escape(str(analysis.get("method", "")))
    text = f"""<p>{analysis.get("k")} clusters of z ({method}, seed {analysis.get("seed")}),
numbered by size; PCA of z, explained variance {html.escape(explained)}.</p>
<table class="summary"><tr><th>cluster</th><th>particles</th><th>fraction</th></tr>{rows}</table>
{notes}"""
    shown = []
    for name in analysis.get("figures", []):
        if (folder / name).exists():
            shown.append(Shown(folder / name, *_caption(name, result, config), "analyze/"))
    return text, shown


CSS = """body{font-family:Helvetica,Arial,sans-serif;max-width:1040px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.6em;margin-bottom:0.2em}h2{font-size:1.25em;border-bottom:1px solid #ccc;
padding-bottom:0.2em;margin-top:1.8em}
table.summary{border-collapse:collapse;margin:0.5em 0;font-size:0.95em}
table.summary th,table.summary td{text-align:left;vertical-align:top;padding:0.25em 0.8em;
border-bottom:1px solid #eee}table.summary th{font-weight:600;white-space:nowrap}
figure{margin:1.2em 0}figure img{max-width:100%;height:auto;display:block}
img.pixels{image-rendering:pixelated}
figcaption{font-size:0.95em;margin-top:0.4em;max-width:900px}
.warning{color:#a00;font-weight:bold}.missing{color:#666;font-style:italic}
code{font-size:0.9em;background:#f4f4f4;padding:0 0.2em}"""


def _html(result: dict, dest: Path, config: RunConfig, run: Run) -> str:
    esc = html.escape
    counter = [0]

    def figure(shown: Shown) -> str:
        counter[0] += 1
        return (
            f'<figure id="figure-{counter[0]}"><img src="{_embed(shown.path)}"{_zoom(shown)} '
            f'alt="Figure {counter[0]}: {esc(shown.title)}">'
            f"<figcaption><b>Figure {counter[0]}. {esc(shown.title)}.</b> {shown.caption} "
            f'<span class="missing">({esc(shown.folder + shown.path.name)})</span>'
            "</figcaption></figure>"
        )

    def table(rows: list[tuple[str, str]], escape: bool = True) -> str:
        cells = "".join(
            f"<tr><th>{esc(a)}</th><td>{esc(b) if escape else b}</td></tr>" for a, b in rows
        )
        return f'<table class="summary">{cells}</table>'

    parts = [
        f"<h1>emvae report</h1><p>{esc(Path(result['run']).name or result['run'])}: "
        "spatial-VAE fit of a particle stack; the numbers behind this page are in "
        "<code>report.json</code>.</p>",
        "".join(f'<p class="warning">{esc(w)}</p>' for w in result.get("warnings", [])),
        "<h2>The run</h2>",
        table(_provenance(result, config), escape=False),
        "<h2>Summary</h2>",
        table(_summary_rows(result, config)),
    ]
    made = set(result["figures"])
    for title, names in SECTIONS:
        shown = [Shown(dest / n, *_caption(n, result, config)) for n in names if n in made]
        if shown:
            parts.append(f"<h2>{esc(title)}</h2>")
            parts.extend(figure(s) for s in shown)
    montages = _montages(run.path, result, config)
    parts.append("<h2>What the generator draws (emvae montage)</h2>")
    if montages:
        parts.extend(figure(s) for s in montages)
    else:
        parts.append(
            f'<p class="missing">No montages yet: <code>emvae montage {esc(result["run"])}</code> '
            "draws interpolations, the manifold and prior samples, and the report shows them.</p>"
        )
    parts.append("<h2>Convergence (emvae convergence)</h2>")
    text, shown = _convergence_part(result.get("convergence"), result, config)
    parts.append(text)
    parts.extend(figure(s) for s in shown)
    text, shown = _analysis_part(result.get("analyze"), result, config)
    if text:
        parts.append("<h2>Latent analysis (emvae analyze)</h2>")
        parts.append(text)
        parts.extend(figure(s) for s in shown)
    body = "\n".join(p for p in parts if p)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>emvae report: {esc(result["run"])}</title>
<style>{CSS}</style></head>
<body>
{body}
</body></html>
"""
