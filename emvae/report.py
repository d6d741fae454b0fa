"""``emvae report``: learning curves, pose and latent distributions, and (with a reference)
how well poses and latents agree with known angles, shifts and factors.

Writes PNG figures, ``report.json`` and a self-contained ``report.html`` (figures embedded).
Reference rows are matched to the run's particles by image name (index and file name), never
by position.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats

from emvae.config import RunConfig
from emvae.errors import InputError
from emvae.io.star_export import star_pose
from emvae.io.tables import read_table
from emvae.latents import KL_UNUSED, latent_columns, latent_usage, unused_warning
from emvae.metrics import angular_error_deg, circular_correlation
from emvae.run import Run

POSE_REFERENCE_COLUMNS = {"theta_deg", "shift_x_px", "shift_y_px", "image", "input_row"}
#: A simulation's truth also gives the pose in the body's frame (emvae.simulate): compared
#: separately, never treated as a factor.
BODY_FRAME = {
    "theta_deg": "theta_body_deg",
    "shift_x_px": "shift_body_x_px",
    "shift_y_px": "shift_body_y_px",
}


def image_key(name: str) -> tuple[int, str]:
    """``"000012@dir/stack.mrcs"`` -> ``(12, "stack.mrcs")``: the same image however its folder
    or index padding is written."""
    k, _, path = str(name).partition("@")
    try:
        return int(k), Path(path).name
    except ValueError:
        return 1, Path(str(name)).name


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
        ref = ref[finite].reset_index(drop=True)
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
    return np.abs(np.mod(a - b - offset + 180.0, 360.0) - 180.0)


def _pearson(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


# ----------------------------------------------------------------------------- figures


def _figure(ncols: int = 1, nrows: int = 1, size: float = 3.6):
    fig = Figure(figsize=(size * ncols, size * 0.85 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes.ravel()


def plot_learning_curves(metrics: pd.DataFrame, path: Path) -> Path:
    fig, ax = _figure(3)
    for k, (term, label) in enumerate(
        (("elbo", "ELBO (nats)"), ("error", "error = -log p (nats)"), ("kl", "KL (nats)"))
    ):
        for split, style in (("train", "-"), ("test", "--")):
            ax[k].plot(metrics["epoch"], metrics[f"{split}_{term}"], style, label=split)
        ax[k].set_xlabel("epoch")
        ax[k].set_ylabel(label)
    ax[0].legend()
    fig.savefig(path, dpi=110)
    return path


def plot_pose_histograms(table: pd.DataFrame, path: Path) -> Path:
    """θ, shifts, and (equivariant encoder) the probability of each particle's rotation bin."""
    binned = "theta_prob" in table
    fig, ax = _figure(3 + binned)
    ax[0].hist(table["theta_deg"], bins=72, range=(-180, 180), color="C0")
    ax[0].set_xlabel("theta (deg)")
    for k, axis in enumerate(("x", "y"), start=1):
        ax[k].hist(table[f"shift_{axis}_px"], bins=50, color="C1")
        ax[k].set_xlabel(f"shift {axis} (px)")
    if binned:
        ax[3].hist(table["theta_prob"], bins=50, range=(0, 1), color="C2")
        ax[3].set_xlabel("probability of the rotation bin")
    ax[0].set_ylabel("particles")
    fig.savefig(path, dpi=110)
    return path


def plot_z_histograms(table: pd.DataFrame, path: Path) -> Path | None:
    """Histogram of each z's posterior means; unused dimensions (:mod:`emvae.latents`) are
    labelled as such."""
    zs = latent_columns(table)
    if not zs:
        return None
    unused = {u.name for u in latent_usage(table) if not u.used}
    shown = zs[:12]
    ncols = min(4, len(shown))
    fig, ax = _figure(ncols, math.ceil(len(shown) / ncols), size=3.0)
    for k, z in enumerate(shown):
        ax[k].hist(table[z], bins=50, color="C3" if z in unused else "C2")
        ax[k].set_xlabel(f"{z} (unused)" if z in unused else z)
    for a in ax[len(shown) :]:
        a.set_visible(False)
    fig.savefig(path, dpi=110)
    return path


def plot_latent_kl(metrics: pd.DataFrame, path: Path) -> Path | None:
    """Test KL of each latent dimension per epoch (which dimensions carry information), with
    the threshold below which a dimension counts as unused."""
    cols = sorted(
        (c for c in metrics.columns if c.startswith("test_kl_z") and c[9:].isdigit()),
        key=lambda c: int(c[9:]),
    )
    if not cols:
        return None
    fig, ax = _figure(1, size=4.5)
    for c in cols:
        ax[0].plot(metrics["epoch"], metrics[c], label=c[8:].replace("kl_", ""))
    ax[0].axhline(KL_UNUSED, color="k", ls=":", lw=0.8, label=f"unused below {KL_UNUSED}")
    ax[0].set_xlabel("epoch")
    ax[0].set_ylabel("test KL of each z (nats per particle)")
    ax[0].legend()
    fig.savefig(path, dpi=110)
    return path


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
    fig, ax = _figure(1, size=4.5)
    if colour is None:
        ax[0].scatter(pts[:, 0], pts[:, 1], s=3, alpha=0.5, linewidths=0)
    else:
        sc = ax[0].scatter(pts[:, 0], pts[:, 1], s=3, c=colour, cmap="viridis", linewidths=0)
        fig.colorbar(sc, ax=ax[0], label=label)
    ax[0].set_xlabel(lx)
    ax[0].set_ylabel(ly)
    fig.savefig(path, dpi=110)
    return path


def plot_theta_vs_reference(table, reference, offset: float, path: Path) -> Path:
    fig, ax = _figure(1, size=4.5)
    ref = reference["theta_deg"].to_numpy(float)
    ours = np.mod(table["theta_deg"].to_numpy(float) - offset + 180.0, 360.0) - 180.0
    ax[0].scatter(ref, ours, s=3, alpha=0.5, linewidths=0)
    ax[0].plot([-180, 180], [-180, 180], "k:", lw=0.8)
    ax[0].set_xlim(-180, 180)
    ax[0].set_ylim(-180, 180)
    ax[0].set_xlabel("reference theta (deg)")
    ax[0].set_ylabel(f"emvae theta minus the global offset ({offset:+.1f} deg)")
    fig.savefig(path, dpi=110)
    return path


# ----------------------------------------------------------------------------- report


def write_report(
    run: str | os.PathLike,
    reference: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
) -> dict:
    """Figures, ``report.json`` and ``report.html`` for a run (into ``out``, default
    ``RUN/report``). Returns the JSON content."""
    r = Run.open(run)
    table, metrics, config = r.table(), r.metrics(), r.config
    dest = Path(out) if out is not None else Path(run) / "report"
    dest.mkdir(parents=True, exist_ok=True)
    result: dict = {"run": str(run), "particles": len(table), "figures": [], "warnings": []}
    usage = latent_usage(table)
    if usage:
        result["latent_usage"] = [u.as_dict() for u in usage]
        warning = unused_warning(usage)
        if warning:
            result["warnings"].append(warning)
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
    figures: list[Path | None] = [
        plot_learning_curves(metrics, dest / "learning_curves.png")
        if metrics is not None
        else None,
        plot_pose_histograms(table, dest / "pose_histograms.png"),
        plot_z_histograms(table, dest / "z_histograms.png"),
        plot_latent_kl(metrics, dest / "latent_kl.png") if metrics is not None else None,
    ]
    colour = label = None
    if reference is not None:
        box = config.data.input_size or config.model.image_size
        ref = read_reference(reference, box, config.data.apix)
        if ref.attrs.get("note"):
            result["warnings"].append(f"warning: {ref.attrs['note']}")
        ours, theirs = match(table, ref, str(reference))
        result["reference"] = str(reference)
        result.update(compare(ours, theirs))
        if "rotation" in result:
            figures.append(
                plot_theta_vs_reference(
                    ours, theirs, result["rotation"]["offset_deg"], dest / "theta_vs_reference.png"
                )
            )
        factors = [f for z in result["latent"].values() for f in z]
        if factors and len(ours) == len(table):
            label = factors[0]
            colour = theirs[label].to_numpy(float)
    figures.append(plot_latent_scatter(table, dest / "latent_scatter.png", colour, label or ""))
    result["figures"] = [p.name for p in figures if p is not None]
    analysis = _analysis(Path(run), config, result["warnings"])
    if analysis is not None:
        result["analyze"] = analysis
    (dest / "report.json").write_text(json.dumps(result, indent=2, default=_json) + "\n")
    (dest / "report.html").write_text(_html(result, dest, config))
    return result


def _analysis(run: Path, config: RunConfig, warnings: list[str]) -> dict | None:
    """``RUN/analyze/analyze.json`` (emvae analyze) with its folder, when it describes this
    fit; a warning and None when it was made from another fit of the folder."""
    from emvae.analyze import FOLDER

    path = run / FOLDER / "analyze.json"
    if not path.exists():
        return None
    try:
        analysis = json.loads(path.read_text())
    except (ValueError, OSError) as e:
        warnings.append(f"warning: {path}: not readable ({e}); latent analysis not shown")
        return None
    made_by = analysis.get("run_id") or ""
    if made_by and config.run_id and made_by != config.run_id:
        warnings.append(
            f"warning: {path} was made from another fit of this folder (run {made_by[:8]}); "
            "run emvae analyze again"
        )
        return None
    analysis["folder"] = str(path.parent)
    return analysis


def _analysis_html(analysis: dict | None) -> str:
    """The latent-analysis section: cluster sizes, explained variance, its figures."""
    if analysis is None:
        return ""
    folder = Path(analysis["folder"])
    n = max(1, int(analysis.get("particles", 0)))
    rows = "".join(
        f"<tr><td>{c}</td><td>{size}</td><td>{size / n:.1%}</td></tr>"
        for c, size in enumerate(analysis.get("cluster_sizes", []), start=1)
    )
    explained = ", ".join(
        f"PC{j}: {e:.1%}" for j, e in enumerate(analysis.get("explained_variance_ratio", []), 1)
    )
    figures = []
    for name in analysis.get("figures", []):
        if (folder / name).exists():
            data = base64.b64encode((folder / name).read_bytes()).decode()
            figures.append(
                f'<figure><img src="data:image/png;base64,{data}">'
                f"<figcaption>analyze/{html.escape(name)}</figcaption></figure>"
            )
    notes = "".join(f"<p>{html.escape(t)}</p>" for t in analysis.get("notes", []))
    method = html.escape(str(analysis.get("method", "")))
    return f"""<h2>Latent analysis (emvae analyze)</h2>
<p>{analysis.get("k")} clusters ({method}, seed {analysis.get("seed")}), numbered by size;
PCA of z, explained variance {html.escape(explained)}</p>
<table><tr><th>cluster</th><th>particles</th><th>fraction</th></tr>{rows}</table>
{notes}
{"".join(figures)}
"""


def _json(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    raise TypeError(type(v))


def _html(result: dict, dest: Path, config: RunConfig) -> str:
    def img(name: str) -> str:
        data = base64.b64encode((dest / name).read_bytes()).decode()
        src = f"data:image/png;base64,{data}"
        return f'<figure><img src="{src}"><figcaption>{name}</figcaption></figure>'

    rows = []

    def add(label, value):
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        rows.append(f"<tr><th>{html.escape(label)}</th><td>{html.escape(text)}</td></tr>")

    add("particles", result["particles"])
    for k, v in result.get("final_epoch", {}).items():
        if k in ("epoch", "test_elbo", "train_elbo", "test_error", "test_kl"):
            add(f"last epoch: {k}", v)
    unused = set()
    for u in result.get("latent_usage", []):
        state = "used" if u["used"] else "UNUSED"
        add(
            f"{u['name']}",
            f"{state}: KL {u['kl']:.3f} nats, posterior means spread {u['spread']:.3g}, "
            f"posterior std {u['width']:.3g}",
        )
        if not u["used"]:
            unused.add(u["name"])
    if "reference" in result:
        add("reference", result["reference"])
        add("matched particles", result["matched"])
        for group in ("rotation", "shift", "rotation_body", "shift_body"):
            for k, v in result.get(group, {}).items():
                add(f"{group.replace('_body', ' (body frame)')}: {k}", v)
        for z, factors in result["latent"].items():
            note = " (z unused: this correlation is noise)" if z in unused else ""
            for f, r in factors.items():
                add(
                    f"{z} vs {f}",
                    f"Pearson {r['pearson']:.3f}, Spearman {r['spearman']:.3f}{note}",
                )
    m = config.model
    add("model", f"{m.generator} generator, z {m.zdim}-D, {m.image_size} px, {m.likelihood}")
    add("pose network", f"{m.encoder}, rotation posterior {'bins' if m.binned else 'gaussian'}")
    ctf = {"on": "modelled in the likelihood", "phase-flip": "images phase-flipped"}
    add("CTF", ctf.get(m.ctf, "not modelled") + ("" if m.ctf == "off" else f" (--ctf {m.ctf})"))
    figures = "\n".join(img(n) for n in result["figures"])
    warnings = "\n".join(
        f'<p style="color:#a00"><b>{html.escape(w)}</b></p>' for w in result.get("warnings", [])
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>emvae report: {html.escape(result["run"])}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}}
th{{text-align:left;padding-right:1em}}figure{{display:inline-block;margin:0.5em}}
img{{max-width:100%}}</style></head>
<body><h1>emvae report</h1><p>{html.escape(result["run"])}</p>
{warnings}
<table>{"".join(rows)}</table>
{figures}
{_analysis_html(result.get("analyze"))}
</body></html>
"""
