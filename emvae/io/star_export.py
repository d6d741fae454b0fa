"""Poses to RELION STAR files (3.1 with optics by default, 3.0 on request), and back.

RELION's 2-D pose: ``rlnAnglePsi`` (degrees) rotates the reference into the particle;
``rlnOriginX/Y`` (pixels; ``...Angst`` in 3.1) shift the particle onto the reference, applied
before the rotation, about pixel (W//2, H//2). emvae's table gives ``theta_deg`` and the
canonical centre's position ``s`` from the box centre ((W-1)/2, (H-1)/2), +y up. For odd boxes
``rlnAnglePsi = theta_deg``, ``rlnOriginX = -s_x``, ``rlnOriginY = s_y`` (docs/conventions.md,
"RELION's 2-D pose"). For
even boxes the two centres differ by ``e = (-1/2, +1/2)`` px (geometric centre from RELION's,
+y up), and a rotation about one centre is a rotation about the other plus a shift, so the
canonical centre RELION must be told about is ``s' = s + e - e R(theta)^T``
(:func:`relion_origin`). The round trip through ``relion_stack_create --apply_transformation``
is tested in ``tests/test_relion.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from emvae._version import __version__
from emvae.errors import ConfigError
from emvae.io.stack import image_name, split_image_name
from emvae.safety import atomic_output

POSE_COLUMNS = ("rlnAnglePsi", "rlnOriginX", "rlnOriginY", "rlnOriginXAngst", "rlnOriginYAngst")
OWN = {  # emvae table column -> STAR column RELION ignores
    "theta_std_deg": "emvaeAnglePsiStd",
    "theta_prob": "emvaeAnglePsiProb",
    "shift_x_std_px": "emvaeOriginXStdPx",
    "shift_y_std_px": "emvaeOriginYStdPx",
    "elbo": "emvaeElbo",
    "ncc": "emvaeNcc",
    "junk": "emvaeJunk",
    "split": "emvaeSplit",
}
#: emvae's classes (``--classes``) in RELION's own columns, as its 2-D classification writes
#: them (1-based class numbers; the class's posterior probability)
CLASS_COLUMNS = {"class": "rlnClassNumber", "class_prob": "rlnMaxValueProbDistribution"}


@dataclass
class Optics:
    """Optics defaults for a STAR written without an input STAR (RELION's usual values for a
    300 kV microscope); every field is an option of ``emvae export-star``."""

    voltage: float = 300.0  # kV
    cs: float = 2.7  # mm
    amplitude_contrast: float = 0.1


def _centre_offset(box: int) -> np.ndarray:
    """Geometric centre ((W-1)/2) from RELION's centre (W//2), px, +x right, +y up."""
    return np.array([-0.5, 0.5]) if box % 2 == 0 else np.zeros(2)


def relion_origin(theta_deg: np.ndarray, shift_px: np.ndarray, box: int) -> np.ndarray:
    """``(rlnOriginX, rlnOriginY)`` in pixels, ``(N, 2)``, for the table's poses."""
    theta = -np.radians(np.asarray(theta_deg, dtype=np.float64))  # the model's theta
    c, s = np.cos(theta), np.sin(theta)
    e = _centre_offset(box)
    # e R(theta)^T for row vector e, R = [[c, s], [-s, c]]
    e_rt = np.stack([e[0] * c + e[1] * s, -e[0] * s + e[1] * c], axis=1)
    sp = np.asarray(shift_px, dtype=np.float64) + e - e_rt
    return np.stack([-sp[:, 0], sp[:, 1]], axis=1)


def table_pose(theta_deg: np.ndarray, origin_px: np.ndarray, box: int) -> np.ndarray:
    """Inverse of :func:`relion_origin`: the table's shift ``(N, 2)`` from RELION's origins."""
    theta = -np.radians(np.asarray(theta_deg, dtype=np.float64))
    c, s = np.cos(theta), np.sin(theta)
    e = _centre_offset(box)
    e_rt = np.stack([e[0] * c + e[1] * s, -e[0] * s + e[1] * c], axis=1)
    o = np.asarray(origin_px, dtype=np.float64)
    sp = np.stack([-o[:, 0], o[:, 1]], axis=1)
    result: np.ndarray = sp - e + e_rt
    return result


def star_pose(
    particles: pd.DataFrame, apix: float | None, box: int
) -> tuple[np.ndarray, np.ndarray]:
    """(theta_deg, shift_px ``(N, 2)``) that a RELION particle table's psi and origins mean."""
    psi = np.zeros(len(particles))
    if "rlnAnglePsi" in particles:
        psi = np.array(particles["rlnAnglePsi"], dtype=np.float64)
    if {"rlnOriginXAngst", "rlnOriginYAngst"} <= set(particles.columns):
        if not apix:
            raise ConfigError("the STAR file gives origins in A but no pixel size is known")
        o = particles[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(float) / apix
    elif {"rlnOriginX", "rlnOriginY"} <= set(particles.columns):
        o = particles[["rlnOriginX", "rlnOriginY"]].to_numpy(float)
    else:
        o = np.zeros((len(particles), 2))
    return psi, table_pose(psi, o, box)


def table_to_star(
    table: pd.DataFrame,
    box: int,
    apix: float | None,
    metadata: pd.DataFrame | None = None,
    optics: pd.DataFrame | None = None,
    relion30: bool = False,
    defaults: Optics | None = None,
) -> dict[str, pd.DataFrame]:
    """STAR blocks for an emvae particle table.

    ``metadata`` (the input STAR's particle rows for the table's images, same order) keeps every
    input column; pose columns are replaced and emvae's own columns (``emvae...``) added.
    ``optics`` (the input's optics table) is kept; without one, a single group is made from
    ``box``, ``apix`` and ``defaults``. RELION 3.1 needs the pixel size (origins in A).
    """
    n = len(table)
    missing = [c for c in ("image", "theta_deg", "shift_x_px", "shift_y_px") if c not in table]
    if missing:
        raise ConfigError(f"the table has no {', '.join(missing)} column: not an emvae table?")
    if metadata is not None and len(metadata) != n:
        raise ValueError("metadata rows must match the table")
    origin = relion_origin(
        table["theta_deg"].to_numpy(), table[["shift_x_px", "shift_y_px"]].to_numpy(), box
    )
    rows = metadata.copy() if metadata is not None else pd.DataFrame(index=range(n))
    rows = rows.reset_index(drop=True)
    rows = rows.drop(columns=[c for c in POSE_COLUMNS if c in rows.columns])
    if "rlnImageName" not in rows:
        rows.insert(0, "rlnImageName", [_relion_name(x) for x in table["image"]])
    psi = table["theta_deg"].to_numpy(np.float64)
    if relion30:
        rows["rlnAnglePsi"] = psi
        rows["rlnOriginX"], rows["rlnOriginY"] = origin[:, 0], origin[:, 1]
        d = defaults or Optics()
        legacy = {
            "rlnVoltage": d.voltage,
            "rlnSphericalAberration": d.cs,
            "rlnAmplitudeContrast": d.amplitude_contrast,
        }
        if apix and not {"rlnDetectorPixelSize", "rlnMagnification"} & set(rows.columns):
            # RELION 3.0's pixel size: detector pixel [um] * 1e4 / magnification
            legacy.update(rlnMagnification=10000.0, rlnDetectorPixelSize=apix)
        for col, value in legacy.items():
            if col not in rows:
                rows[col] = value
    else:
        # each particle's origin in its own optics group's pixels (groups may differ)
        per_row = _group_pixel_sizes(rows, optics)
        if per_row is not None:
            scale = per_row
        elif apix:
            scale = np.full(n, float(apix))
        else:
            raise ConfigError(
                "the pixel size is unknown and RELION 3.1 origins are in A: give --apix "
                "(or --relion30 for origins in pixels)"
            )
        if optics is None:  # one group, from a RELION 3.0 input's rows or the defaults
            d = defaults or Optics()

            def first(col: str, value: float) -> float:
                return float(rows[col].iloc[0]) if col in rows else value

            optics = pd.DataFrame(
                {
                    "rlnOpticsGroup": [1],
                    "rlnOpticsGroupName": ["opticsGroup1"],
                    "rlnAmplitudeContrast": [first("rlnAmplitudeContrast", d.amplitude_contrast)],
                    "rlnSphericalAberration": [first("rlnSphericalAberration", d.cs)],
                    "rlnVoltage": [first("rlnVoltage", d.voltage)],
                    "rlnImagePixelSize": [apix],
                    "rlnImageSize": [box],
                    "rlnImageDimensionality": [2],
                }
            )
            rows = rows.drop(columns=["rlnOpticsGroup"], errors="ignore")
        if "rlnOpticsGroup" not in rows:
            rows["rlnOpticsGroup"] = int(optics["rlnOpticsGroup"].iloc[0])
        rows["rlnAnglePsi"] = psi
        rows["rlnOriginXAngst"] = origin[:, 0] * scale
        rows["rlnOriginYAngst"] = origin[:, 1] * scale
    for col, star_col in (OWN | CLASS_COLUMNS).items():
        if col in table:
            rows[star_col] = table[col].to_numpy()
    for col in table.columns:
        if col.startswith("z") and col[1:].split("_")[0].isdigit():
            k, std = col[1:].split("_")[0], col.endswith("_std")
            rows[f"emvaeZ{k}{'Std' if std else ''}"] = table[col].to_numpy()
    if relion30:
        return {"": rows}
    assert optics is not None  # made above for RELION 3.1 when the input has none
    return {"optics": optics.reset_index(drop=True), "particles": rows}


def _group_pixel_sizes(rows: pd.DataFrame, optics: pd.DataFrame | None) -> np.ndarray | None:
    """``(N,)`` each particle's pixel size from its optics group (Å), or None when the input
    STAR's optics table does not give every particle's group a pixel size."""
    if optics is None or "rlnOpticsGroup" not in rows or "rlnOpticsGroup" not in optics:
        return None
    col = next((c for c in ("rlnImagePixelSize", "rlnPixelSize") if c in optics), None)
    if col is None:
        return None
    groups = pd.Series(optics[col].to_numpy(np.float64), index=optics["rlnOpticsGroup"].astype(int))
    per_row = rows["rlnOpticsGroup"].astype(int).map(groups).to_numpy(np.float64)
    return None if np.isnan(per_row).any() else per_row


def _relion_name(name: str) -> str:
    """``k@path`` as RELION writes it (index zero-padded to 6 digits)."""
    split = split_image_name(name)
    return image_name(split[0], split[1], digits=6) if split and split[1] else str(name)


def export_table(
    table: pd.DataFrame,
    path: str | os.PathLike[str],
    box: int,
    apix: float | None,
    particles: pd.DataFrame | None = None,
    optics: pd.DataFrame | None = None,
    relion30: bool | None = None,
    defaults: Optics | None = None,
) -> str:
    """Write ``table`` as a STAR file; returns the layout written ("3.1" or "3.0").

    particles/optics: the input STAR's particle rows *for the table's rows, in order* and its
    optics table. ``relion30=None`` picks 3.1 when the pixel size is known, else 3.0.
    """
    if relion30 is None:  # 3.1 needs pixel sizes: the run's, or the input's optics groups'
        relion30 = not apix and (particles is None or _group_pixel_sizes(particles, optics) is None)
    blocks = table_to_star(table, box, apix, particles, optics, relion30, defaults)
    write_star(blocks, path)
    return "3.0" if relion30 else "3.1"


def input_star_rows(
    star: str | os.PathLike[str], rows: np.ndarray
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(particle rows at 0-based ``rows``, optics or None) of an input STAR file."""
    from emvae.io.star import particle_block, read_star_blocks

    p = Path(star)
    particles, optics, _ = particle_block(p, read_star_blocks(p))
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) and (rows.min() < 0 or rows.max() >= len(particles)):
        raise ConfigError(f"{p}: has {len(particles)} particles; the table names row {rows.max()}")
    return particles.iloc[rows].reset_index(drop=True), optics


def write_star(
    blocks: dict[str, pd.DataFrame],
    path: str | os.PathLike[str],
    float_format: str | Callable[[float], str] = "%.6f",
) -> Path:
    """Write blocks with ``starfile`` (``# version 30001`` header for 3.1, as RELION does);
    ``float_format`` as pandas' ``to_csv`` takes it."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(p) as tmp:
        starfile.write(blocks, tmp, overwrite=True, float_format=float_format)
        # starfile stamps the time of day into its first line; emvae's files name emvae instead,
        # so the same poses always give the same bytes.
        lines = tmp.read_text().split("\n")
        if lines and lines[0].startswith("# Created by the starfile"):
            lines[0] = f"# Created by emvae {__version__}"
        text = "\n".join(lines)
        if "optics" in blocks:
            text = text.replace("data_optics", "# version 30001\n\ndata_optics", 1).replace(
                "data_particles", "# version 30001\n\ndata_particles", 1
            )
        tmp.write_text(text)
    return p


__all__ = [
    "Optics",
    "export_table",
    "input_star_rows",
    "relion_origin",
    "star_pose",
    "table_pose",
    "table_to_star",
    "write_star",
]
