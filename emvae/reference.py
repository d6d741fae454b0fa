"""Known poses and factors against a run's: read a reference, match its rows to the run's
particles by image name (index and file name, never by position), and compare.

A reference is an emvae-style CSV (``image``, ``theta_deg``, optional ``shift_x_px``,
``shift_y_px`` and numeric factors, as a simulation's ``truth.csv``) or a STAR file from another
program (``rlnAnglePsi`` and origins, read with RELION's conventions).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from emvae.errors import InputError
from emvae.io import kind_by_suffix
from emvae.io.stack import image_key
from emvae.io.star_export import star_pose
from emvae.io.tables import read_table
from emvae.latents import latent_columns
from emvae.metrics import angle_difference_deg, angular_error_deg, circular_correlation, pearson

POSE_REFERENCE_COLUMNS = {"theta_deg", "shift_x_px", "shift_y_px", "image", "input_row"}
#: A simulation's truth also gives the pose in the body's frame (emvae.simulate): compared
#: separately, never treated as a factor.
BODY_FRAME = {
    "theta_deg": "theta_body_deg",
    "shift_x_px": "shift_body_x_px",
    "shift_y_px": "shift_body_y_px",
}


def read_reference(path: str | os.PathLike[str], box: int, apix: float | None) -> pd.DataFrame:
    """Reference poses and factors, one row per image, with an ``image`` column (``N@file``).

    A STAR file's origins (Å) become pixels of ``box``-pixel images at ``apix`` Å (its optics'
    pixel size when it has one); its other numeric columns become factors. A CSV's pose columns
    must be numbers; its rows without a finite pose are left out (named in
    ``attrs["left_out"]``, said in ``attrs["note"]``)."""
    p = Path(path)
    if not p.exists():
        raise InputError(p, "no such file")
    if kind_by_suffix(p) == "star":  # by suffix, as the readers tell inputs apart
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


def match(
    table: pd.DataFrame, reference: pd.DataFrame, source: str = "reference"
) -> tuple[pd.DataFrame, pd.DataFrame]:
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


def match_all(
    table: pd.DataFrame, reference: pd.DataFrame, source: str, partial: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """:func:`match`, refusing a reference that names only some of the table's images unless
    ``partial``; returns the matched rows and the notes to show (rows left out, a partial
    match)."""
    notes = [f"warning: {reference.attrs['note']}"] if reference.attrs.get("note") else []
    ours, theirs = match(table, reference, source)
    keys = {image_key(n) for n in table["image"]}
    named = len(ours) + sum(image_key(n) in keys for n in reference.attrs.get("left_out", []))
    if named < len(table):
        if not partial:
            raise InputError(
                source,
                f"names {named} of the run's {len(table)} particles (matched by N@file name); "
                f"give --partial to compare those {named}",
            )
        notes.append(
            f"note: {source} names {named} of the run's {len(table)} particles; "
            f"only those are compared (--partial)"
        )
    return ours, theirs, notes


def compare(table: pd.DataFrame, reference: pd.DataFrame) -> dict[str, Any]:
    """Agreement of matched rows (same order): ``rotation``, ``shift``, ``scale`` (affine
    poses) and ``latent`` (each z against each factor that varies: Pearson and Spearman); with
    a simulation's body-frame pose columns, the same pose figures in that frame too
    (``rotation_body``, ``shift_body``)."""
    out: dict[str, Any] = {"matched": len(table), **_pose_agreement(table, reference)}
    if BODY_FRAME["theta_deg"] in reference:
        present = [k for k, v in BODY_FRAME.items() if v in reference]
        body = reference.drop(columns=present).rename(columns={v: k for k, v in BODY_FRAME.items()})
        out.update({f"{k}_body": v for k, v in _pose_agreement(table, body).items()})
    skip = POSE_REFERENCE_COLUMNS | set(BODY_FRAME.values())
    numeric = [c for c in reference.columns if pd.api.types.is_numeric_dtype(reference[c])]
    factors = [c for c in numeric if c not in skip and reference[c].nunique() > 1]
    scales = [c for c in ("scale_x", "scale_y") if c in table and c in reference]
    if scales:  # --pose affine against a simulation's (or any reference's) magnifications
        out["scale"] = {
            c: {"pearson_log": pearson(np.log(table[c]), np.log(reference[c].astype(float)))}
            for c in scales
        }
    out["latent"] = {
        z: {
            f: {
                "pearson": pearson(table[z], reference[f]),
                "spearman": float(stats.spearmanr(table[z], reference[f]).statistic),
            }
            for f in factors
        }
        for z in latent_columns(table)
    }
    return out


def _pose_agreement(table: pd.DataFrame, reference: pd.DataFrame) -> dict[str, Any]:
    out: dict[str, Any] = {}
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
            "within_10_deg": float(np.mean(angle_difference_deg(a, b, offset) < 10.0)),
        }
    if {"shift_x_px", "shift_y_px"} <= set(reference.columns):
        out["shift"] = {
            f"pearson_{ax}": pearson(table[f"shift_{ax}_px"], reference[f"shift_{ax}_px"])
            for ax in ("x", "y")
        }
        if "theta_deg" in reference:
            out["shift"].update(_shift_after_offset(table, reference))
    return out


def _shift_after_offset(table: pd.DataFrame, reference: pd.DataFrame) -> dict[str, float]:
    """Shift agreement after the best offset of the canonical view's centre.

    A model can draw its canonical view anywhere in the box if every particle's shift moves
    with it: centred at u (pixels, in the canonical frame), a particle turned by theta has its
    shift changed by rot(theta) u. Like the global offset of theta, u is fitted (least squares
    over the particles, with the reference's angles) and removed. Returns ``offset_x_px``,
    ``offset_y_px`` (u), ``rms_error_px`` (after it) and ``pearson_{x,y}_after_offset``."""
    a = np.radians(reference["theta_deg"].to_numpy(float))
    ours = table[["shift_x_px", "shift_y_px"]].to_numpy(float)
    err = ours - reference[["shift_x_px", "shift_y_px"]].to_numpy(float)
    c, s = np.cos(a), np.sin(a)
    # err ~ rot(theta) u: [c -s; s c] u, stacked over particles
    design = np.concatenate([np.stack([c, -s], 1), np.stack([s, c], 1)])
    u = np.linalg.lstsq(design, np.concatenate([err[:, 0], err[:, 1]]), rcond=None)[0]
    moved = np.stack([c * u[0] - s * u[1], s * u[0] + c * u[1]], 1)
    fixed, residual = ours - moved, err - moved
    return {
        "offset_x_px": float(u[0]),
        "offset_y_px": float(u[1]),
        "rms_error_px": float(np.sqrt((residual**2).sum(1).mean())),
        **{
            f"pearson_{ax}_after_offset": pearson(fixed[:, k], reference[f"shift_{ax}_px"])
            for k, ax in enumerate("xy")
        },
    }


def best_factors(latent: dict[str, dict[str, dict[str, float]]]) -> list[tuple[str, str, float]]:
    """For each z of :func:`compare`'s ``latent``: (z, the reference factor it correlates with
    best by |Pearson r|, r); dimensions without a finite correlation are left out."""
    out = []
    for z, factors in latent.items():
        finite = {f: r["pearson"] for f, r in factors.items() if np.isfinite(r["pearson"])}
        if finite:
            best = max(finite, key=lambda f: abs(finite[f]))
            out.append((z, best, float(finite[best])))
    return out
