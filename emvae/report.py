"""``emvae report``: learning curves, pose and latent distributions, and (with a reference)
how well poses and latents agree with known angles, shifts and factors.

Writes PNG figures (:mod:`emvae.figures.plots`), ``report.json`` and a self-contained
``report.html`` (:mod:`emvae.figures.page`): numbered figures with captions that give the units,
a summary table in words, example particles beside their reconstructions, the run's montages
(``emvae montage``), convergence and latent analysis (``emvae analyze``) when they exist, and
the emvae version and command line that made the run. Reference rows are matched to the run's
particles by image name (:mod:`emvae.reference`), never by position.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from emvae import montage as mt
from emvae.config import RunConfig
from emvae.errors import ConfigError, InputError
from emvae.figures import page, plots, tiles
from emvae.io.stack import image_label
from emvae.latents import latent_columns, latent_usage, unused_warning
from emvae.models import SpatialVAE
from emvae.reference import best_factors, compare, match_all, read_reference
from emvae.run import ANALYZE, CONVERGENCE, MONTAGE, REPORT, Run, check_same_run
from emvae.safety import claim_outputs, record_outputs

#: Example particles shown beside their reconstructions.
EXAMPLES = 8
#: The particles with the highest junk scores shown under the junk figure's histogram.
JUNK_SHOWN = 8
#: The z grid of the local-metric figure (n x n, as ``emvae montage``'s manifold).
METRIC_GRID = 10


def write_report(
    run: str | os.PathLike[str],
    reference: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    examples: int = EXAMPLES,
    force: bool = False,
    partial: bool = False,
) -> dict[str, Any]:
    """Figures, ``report.json`` and ``report.html`` for a run (into ``out``, default
    ``RUN/report``). ``examples``: particles shown beside their reconstructions (0: none).
    A ``reference`` that names only some of the run's particles is refused unless
    ``partial`` (then the warnings say how many were compared).
    Returns the JSON content.

    Files of those names that emvae did not write are refused (:func:`claim_outputs`); an
    earlier report is replaced in ``RUN/report``, and in ``out`` only with ``force``."""
    r = Run.open(run)
    dest = Path(out) if out is not None else r.path / REPORT
    table = r.table()
    matched = None  # a reference is read and matched (or refused) before any file is written
    if reference is not None:
        box = r.config.data.input_size or r.config.model.image_size
        ref = read_reference(reference, box, r.config.data.apix)
        matched = match_all(table, ref, str(reference), partial)
    claim_outputs(dest, page.REPORT_FILES, force or out is None, "report files")
    dest.mkdir(parents=True, exist_ok=True)
    try:
        return _write_report(run, r, table, dest, reference, matched, examples)
    finally:  # claim_outputs found no other files of these names: all are emvae's now
        record_outputs(dest, page.REPORT_FILES, r.config.run_id)


def agreement_lines(result: dict[str, Any]) -> list[str]:
    """:func:`write_report`'s ``result`` against its reference, a line per measure (none
    without one): the rotation (and in the body frame), the shift, and each z against each
    reference factor, noted when that z is unused."""
    lines = [
        f"rotation vs reference{frame}: circular correlation "
        f"{rot['circular_correlation']:.3f}, median error {rot['median_error_deg']:.1f} "
        f"deg ({rot['median_error_with_flip_deg']:.1f} allowing a flip), "
        f"{result['matched']} particles matched"
        for key, frame in (("rotation", ""), ("rotation_body", " (body frame)"))
        if (rot := result.get(key))
    ]
    shift = result.get("shift")
    if shift and "rms_error_px" in shift:
        lines.append(
            f"shift vs reference: Pearson x {shift['pearson_x']:.3f}, y {shift['pearson_y']:.3f}; "
            f"after removing the centre offset ({shift['offset_x_px']:+.2f}, "
            f"{shift['offset_y_px']:+.2f}) px: RMS error {shift['rms_error_px']:.2f} px"
        )
    used = {u["name"]: u["used"] for u in result.get("latent_usage", [])}
    lines += [
        f"{name} vs {column}: Pearson {r['pearson']:+.3f}, Spearman {r['spearman']:+.3f}"
        + ("" if used.get(name, True) else " (z unused: this correlation is noise)")
        for name, columns in result.get("latent", {}).items()
        for column, r in columns.items()
    ]
    return lines


def report_run(
    run: str | os.PathLike[str],
    reference: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    examples: int = EXAMPLES,
    force: bool = False,
    partial: bool = False,
) -> list[tuple[str, bool]]:
    """``emvae report``: :func:`write_report` (the same arguments), and the lines to print,
    each with whether it is a warning (to stand out): the agreement with the reference
    (:func:`agreement_lines`), the warnings and the files written."""
    result = write_report(run, reference, out, examples, force, partial)
    dest = Path(out) if out is not None else Path(run) / REPORT
    lines = [(line, False) for line in agreement_lines(result)]
    lines += [(warning, True) for warning in result["warnings"]]
    n = len(result["figures"])
    lines.append((f"wrote {dest / 'report.html'}, {dest / 'report.json'} and {n} figures", False))
    return lines


def _write_report(
    run: str | os.PathLike[str],
    r: Run,
    table: pd.DataFrame,
    dest: Path,
    reference: str | os.PathLike[str] | None,
    matched: tuple[pd.DataFrame, pd.DataFrame, list[str]] | None,
    examples: int,
) -> dict[str, Any]:
    """:func:`write_report`'s work, once ``dest`` is known to be emvae's to write: ``table``
    is the run's, ``matched`` the reference's rows matched to it (:func:`match_all`) or None."""
    metrics, config = r.metrics(), r.config
    result: dict[str, Any] = {"run": str(run), "particles": len(table), "figures": []}
    result["warnings"] = warnings = []
    usage = latent_usage(table)
    if usage:
        result["latent_usage"] = [u.as_dict() for u in usage]
        if warning := unused_warning(usage):
            warnings.append(warning)
    unused = {u.name for u in usage if not u.used}
    if "theta_prob" in table:  # equivariant encoder: how sure each rotation is
        p = table["theta_prob"].to_numpy(float)
        result["rotation_bin_probability"] = {
            "median": float(np.median(p)),
            "fraction_above_0.9": float(np.mean(p > 0.9)),
        }
    if metrics is not None and len(metrics):
        result["final_epoch"] = {k: float(v) for k, v in metrics.iloc[-1].items()}
        kl = [c for c in metrics.columns if c.startswith("test_kl_z") and c[9:].isdigit()]
        if kl:  # is each latent dimension used, epoch by epoch (nats per particle, test set)
            result["kl_per_epoch"] = {
                "epoch": metrics["epoch"].astype(int).tolist(),
                **{c[8:]: metrics[c].astype(float).round(5).tolist() for c in kl},
            }
    zs = latent_columns(table)
    figures: list[Path | None] = []
    if metrics is not None:
        figures.append(plots.learning_curves(metrics, dest / page.LEARNING_CURVES.name))
        figures.append(plots.latent_kl(metrics, dest / page.LATENT_KL.name))
    data = config.data
    figures += [
        plots.pose_histograms(
            table, dest / page.POSE_HISTOGRAMS.name, data.apix, data.arcsec_per_px
        ),
        plots.deform_histograms(table, dest / page.DEFORM_HISTOGRAMS.name),
        plots.z_histograms(table[zs], unused, dest / page.Z_HISTOGRAMS.name),
    ]
    colour, label = None, ""
    if reference is not None and matched is not None:
        ours, theirs, notes = matched
        warnings += notes
        result["reference"] = str(reference)
        result.update(compare(ours, theirs))
        if "rotation" in result:
            figures.append(
                plots.theta_vs_reference(
                    ours["theta_deg"].to_numpy(float),
                    theirs["theta_deg"].to_numpy(float),
                    result["rotation"]["offset_deg"],
                    dest / page.THETA_VS_REFERENCE.name,
                )
            )
        pairs = [
            (z, ours[z].to_numpy(), f, theirs[f].to_numpy(), r)
            for z, f, r in best_factors(result["latent"])[:4]
        ]
        figures.append(plots.z_vs_reference(pairs, unused, dest / page.Z_VS_REFERENCE.name))
        factors = [f for z in result["latent"].values() for f in z]
        if factors and len(ours) == len(table):
            label = factors[0]
            colour = theirs[label].to_numpy(float)
    z_data = table[zs].to_numpy(np.float64)
    figures.append(plots.latent_scatter(z_data, dest / page.LATENT_SCATTER.name, colour, label))
    model = None  # checkpoints/last.pt, loaded once, when a figure draws with the generator
    if config.model.zdim >= 1 and zs:
        model = r.model()[0]
        # --classes: the traversals of every class, each over its own particles' z; the local
        # metric of the largest class (the montages draw every class)
        by_class: list[tuple[int | None, np.ndarray | None]] = [(None, z_data)]
        largest = None
        if "class" in table:
            largest = int(table["class"].value_counts().idxmax())
            result["latent_class"] = largest
            z_of = {c: rows[zs].to_numpy(np.float64) for c, rows in table.groupby("class")}
            z_data = z_of[largest]
            # a class no particle chose (None): over the prior's +-2.5 std
            by_class = [(c, z_of.get(c)) for c in range(1, config.model.classes + 1)]
        if len(zs) == config.model.zdim:
            figures.append(_traversals(model, by_class, dest / page.LATENT_TRAVERSALS.name))
        with model.rendering_class(None if largest is None else largest - 1):
            if config.model.zdim == 2 and len(zs) == 2:
                path = dest / page.LATENT_METRIC.name
                result["latent_metric"] = _local_metric(model, z_data, path)
                figures.append(path)
    if "junk" in table and table["junk"].notna().any():
        result["junk"] = {
            "mean": float(table["junk"].mean()),
            "above_half": int((table["junk"] > 0.5).sum()),
        }
        figures.append(_junk(r, table, dest / page.JUNK.name, warnings))
    if examples > 0:
        model = r.model()[0] if model is None else model
        path = dest / page.RECONSTRUCTIONS.name
        figures.append(_reconstructions(r, model, table, path, examples, warnings))
    result["figures"] = [p.name for p in figures if p is not None]
    for key, what, csv in ((ANALYZE, "latent analysis", ""), (CONVERGENCE, "convergence", "pairs")):
        if (made := _of_this_fit(Path(run) / key, config, what, warnings, csv)) is not None:
            result[key] = made  # report.json's "analyze" and "convergence": the folders' names
    (dest / "report.json").write_text(json.dumps(result, indent=2, default=_json) + "\n")
    (dest / "report.html").write_text(
        page.html_page(result, dest, config, r.path / MONTAGE, r.last)
    )
    return result


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
    chosen: np.ndarray = pool[at]
    return chosen


def _reconstructions(
    r: Run, model: SpatialVAE, table: pd.DataFrame, path: Path, n: int, warnings: list[str]
) -> Path | None:
    """Example particles (:func:`example_indices`) above ``model``'s rendering of them at
    their inferred z and pose (:func:`emvae.montage.reconstruct`) and, below, the same z at
    θ = 0, Δx = 0 (:func:`emvae.figures.plots.reconstructions`); None, and a note in
    ``warnings``, when the run's input images can no longer be read."""
    from emvae.ctf import likelihood_ctf

    idx = example_indices(table, n)
    mode = model.config.ctf
    try:
        particles = r.particles()
        images, params = particles.images(idx), particles.ctf(mode)
    except (InputError, ConfigError, OSError) as e:
        warnings.append(
            f"note: example particles not shown: the run's input images are not readable ({e})"
        )
        return None
    # the images as the encoder saw them in training (phase-flipped with --ctf phase-flip)
    at = None if params is None else params[idx]
    seen, ctf = likelihood_ctf(at, mode, images, torch.device("cpu"))
    rendered, z, _ = mt.reconstruct(model, seen, ctf)
    classes = None  # --classes: each particle drawn as its own class
    if "class" in table:
        classes = torch.as_tensor(table["class"].to_numpy()[idx] - 1)
    canonical = mt.decode_mean(model, z, classes)
    observed = images.numpy()
    if model.config.likelihood == "bernoulli":
        observed = np.clip(observed, 0, 1)
    rows = table.iloc[idx]
    names = [image_label(name) for name in rows["image"]]
    theta = list(rows["theta_deg"].astype(float))
    return plots.reconstructions(
        observed, rendered.numpy(), canonical.numpy(), names, theta, z.numpy(), path
    )


def _junk(r: Run, table: pd.DataFrame, path: Path, warnings: list[str]) -> Path:
    """The junk score's histogram above the particles that score worst
    (:func:`emvae.figures.plots.junk`); their images left out, with a note in ``warnings``,
    when the run's input images can no longer be read."""
    scores = table["junk"].to_numpy(np.float64)
    worst = np.argsort(-np.nan_to_num(scores, nan=-1.0), kind="stable")[:JUNK_SHOWN]
    images = None
    try:
        images = r.particles().images(worst).numpy()
    except (InputError, ConfigError, OSError) as e:
        warnings.append(f"note: the worst particles are not shown: images not readable ({e})")
    names = [image_label(name) for name in table["image"].to_numpy()[worst]]
    return plots.junk(scores, images, names, scores[worst], path)


def _traversals(
    model: SpatialVAE, by_class: list[tuple[int | None, np.ndarray | None]], path: Path
) -> Path:
    """One row per latent dimension (:func:`emvae.montage.traversals`): that z from the
    particles' 2nd to 98th percentile, the others at their medians, θ = 0, Δx = 0, each
    tile's value under it. ``by_class``: (class (1-based; None without classes), the
    posterior means ``(N_c, K)`` of its particles, or None for the prior's +-2.5 std) for
    each class drawn, one set of rows each, labelled by class."""
    k = model.config.zdim
    grids: list[torch.Tensor] = []
    rows: list[str] = []
    values: list[Any] = []
    for c, z_data in by_class:
        with model.rendering_class(None if c is None else c - 1):
            grids.append(mt.traversals(model, z_data=z_data))
        labels = mt.traversal_labels(k, z_data=z_data)
        rows += [r if c is None else f"class {c} {r}" for r in labels.rows]
        values += labels.tiles
    scale = max(1, math.ceil(48 / model.config.image_size))
    shown = tiles.Labels(rows=rows, tiles=values)
    return tiles.save_png(torch.cat(grids), path, scale=scale, labels=shown)


def _local_metric(
    model: SpatialVAE, z_data: np.ndarray, path: Path, n: int = METRIC_GRID
) -> dict[str, Any]:
    """For 2-D z: the decoded grid (:func:`emvae.montage.manifold` at quantiles of the
    particles' posterior means ``z_data`` ``(N, 2)``) beside heat maps of the generator's
    local metric over it (:func:`emvae.montage.metric_grid`); returns the numbers for
    ``report.json``."""
    decoded = np.asarray(mt.manifold(model, n, z_data), dtype=np.float64)
    magnification, sv = mt.metric_grid(model, n, z_data)
    z1, z2 = (g.numpy() for g in mt.manifold_grids(2, n, z_data))
    z2_rows = z2[::-1]  # top row: largest z2, as in the manifold
    plots.local_metric(decoded, magnification.numpy(), sv.numpy(), z1, z2_rows, path)
    return {
        "grid": n,
        "z1": z1.round(5).tolist(),
        "z2_top_to_bottom": z2_rows.round(5).tolist(),
        "magnification": magnification.double().numpy().round(6).tolist(),
        "singular_values": sv.double().numpy().round(6).tolist(),
        "median_magnification": float(magnification.median()),
    }


def _of_this_fit(
    folder: Path, config: RunConfig, what: str, warnings: list[str], csv: str = ""
) -> dict[str, Any] | None:
    """``FOLDER/NAME.json``, what ``emvae NAME`` wrote (NAME: the folder's name, analyze or
    convergence), with the folder and with the rows of ``FOLDER/NAME.csv`` under ``csv``,
    when it describes this fit (:func:`emvae.run.check_same_run`); None when there is none,
    and with a warning when it is not readable (``what`` is not shown) or was made from
    another fit of this folder (run the command again)."""
    path = folder / f"{folder.name}.json"
    if not path.exists():
        return None
    try:
        made: dict[str, Any] = json.loads(path.read_text())
        again = f"run emvae {folder.name} again"
        check_same_run(path, made.get("run_id") or "", config.run_id, again)
        if csv:
            made[csv] = json.loads(pd.read_csv(path.with_suffix(".csv")).to_json(orient="records"))
    except InputError as e:
        warnings.append(f"warning: {e}")
        return None
    except (ValueError, OSError) as e:
        warnings.append(f"warning: {folder}: not readable ({e}); {what} not shown")
        return None
    made["folder"] = str(folder)
    return made


def _json(v: object) -> object:
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    raise TypeError(type(v))
