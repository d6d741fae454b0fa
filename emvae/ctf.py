"""The contrast transfer function (CTF) of each particle, in RELION's convention.

Per-particle parameters are one row of :data:`COLUMNS` (float32), read once with the stack
(:func:`ctf_params`) and kept beside the images; the CTF itself is computed on the fly for each
batch (:func:`ctf_grid`), so a million-particle stack never holds a million CTF images.

Convention (RELION's ``CTF::getCTF``; the defocus is positive for underfocus):

    gamma(k) = -pi lambda df(phi) |k|^2 + pi/2 Cs lambda^3 |k|^4 - atan(w / sqrt(1 - w^2)) - p
    CTF(k)   = -scale sin(gamma(k)) exp(-B |k|^2 / 4)
    df(phi)  = (dfU + dfV) / 2 + (dfU - dfV) / 2 cos(2 (phi - angle))

with k in 1/Å, lambda the relativistic electron wavelength (Å) at the voltage, Cs in Å, w the
amplitude contrast, p the phase shift, and phi = atan2(k_row, k_column) measured from the
column (x) axis towards increasing row index, as RELION indexes an image's array. The CTF is
+w x scale at zero frequency: an image whose particles are white (RELION's convention after
"invert contrast") keeps its sign at low resolution.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, overload

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from emvae.errors import InputError

#: One row per particle: defocus U and V (Å), astigmatism angle (degrees), voltage (kV),
#: spherical aberration (mm), amplitude contrast (fraction), phase shift (degrees),
#: B-factor (Å^2), scale factor, and the pixel size of the images it applies to (Å).
COLUMNS = (
    "defocus_u_A",
    "defocus_v_A",
    "defocus_angle_deg",
    "voltage_kV",
    "cs_mm",
    "amplitude_contrast",
    "phase_shift_deg",
    "bfactor_A2",
    "scale",
    "apix_A",
)
#: Columns that may be absent, and the value they then take.
OPTIONAL = {"phase_shift_deg": 0.0, "bfactor_A2": 0.0, "scale": 1.0}

# RELION names (particle rows or optics groups) and cryoSPARC fields (with their unit factor)
_RELION = {
    "defocus_u_A": "rlnDefocusU",
    "defocus_v_A": "rlnDefocusV",
    "defocus_angle_deg": "rlnDefocusAngle",
    "voltage_kV": "rlnVoltage",
    "cs_mm": "rlnSphericalAberration",
    "amplitude_contrast": "rlnAmplitudeContrast",
    "phase_shift_deg": "rlnPhaseShift",
    "bfactor_A2": "rlnCtfBfactor",
    "scale": "rlnCtfScalefactor",
}
_CRYOSPARC = {
    "defocus_u_A": ("ctf/df1_A", 1.0),
    "defocus_v_A": ("ctf/df2_A", 1.0),
    "defocus_angle_deg": ("ctf/df_angle_rad", 180 / math.pi),
    "voltage_kV": ("ctf/accel_kv", 1.0),
    "cs_mm": ("ctf/cs_mm", 1.0),
    "amplitude_contrast": ("ctf/amp_contrast", 1.0),
    "phase_shift_deg": ("ctf/phase_shift_rad", 180 / math.pi),
    "bfactor_A2": ("ctf/bfactor", 1.0),
    "scale": ("ctf/scale", 1.0),
}


@overload
def electron_wavelength_A(voltage_kv: Tensor) -> Tensor: ...
@overload
def electron_wavelength_A(voltage_kv: float | np.ndarray) -> Any: ...
def electron_wavelength_A(voltage_kv: Tensor | float | np.ndarray) -> Tensor | Any:
    """Relativistic electron wavelength (Å) at ``voltage_kv`` (numpy or torch, any shape)."""
    v = voltage_kv * 1e3
    if isinstance(v, Tensor):
        return 12.2643247 / torch.sqrt(v * (1 + 0.978466e-6 * v))
    return 12.2643247 / np.sqrt(v * (1 + 0.978466e-6 * v))


def ctf_grid(params: Tensor, size: int, pad: int = 1) -> Tensor:
    """The CTF of each row of ``params`` ``(B, 10)`` (:data:`COLUMNS`) on the ``rfft2`` grid of
    a ``(size * pad)``-px box: ``(B, P, P // 2 + 1)``, float32, on ``params``' device."""
    p = params.float()
    n = size * pad
    apix = p[:, 9, None, None]  # padding samples frequencies more finely; pixels stay
    ky = torch.fft.fftfreq(n, device=p.device)[None, :, None] / apix  # 1/Å, along rows
    kx = torch.fft.rfftfreq(n, device=p.device)[None, None, :] / apix  # along columns
    k2 = kx**2 + ky**2
    phi = torch.atan2(ky, kx)
    col = [p[:, i, None, None] for i in range(10)]
    dfu, dfv, angle, kv, cs, w, shift, bfac, scale = col[:9]
    lam = electron_wavelength_A(kv)
    df = 0.5 * (dfu + dfv) + 0.5 * (dfu - dfv) * torch.cos(2 * (phi - torch.deg2rad(angle)))
    gamma = (
        -math.pi * lam * df * k2
        + 0.5 * math.pi * cs * 1e7 * lam**3 * k2**2
        - torch.atan(w / torch.sqrt(1 - w**2))
        - torch.deg2rad(shift)
    )
    return -scale * torch.sin(gamma) * torch.exp(-0.25 * bfac * k2)


def apply_ctf(images: Tensor, params: Tensor, pad: int = 1) -> Tensor:
    """Multiply the 2-D Fourier transform of ``images`` ``(B, C, D, D)`` by each particle's
    CTF (``params`` ``(B, 10)``), zero-padding to ``pad * D`` first; float32 ``(B, C, D, D)``."""
    d = images.shape[-1]
    n = d * pad
    with torch.autocast(images.device.type, enabled=False):
        f = torch.fft.rfft2(images.float(), s=(n, n))
        f = f * ctf_grid(params, d, pad)[:, None]
        out: Tensor = torch.fft.irfft2(f, s=(n, n))[..., :d, :d]
        return out


def phase_flip(images: Tensor, params: Tensor) -> Tensor:
    """Images with each Fourier component's sign flipped where its CTF is negative."""
    with torch.autocast(images.device.type, enabled=False):
        f = torch.fft.rfft2(images.float())
        f = f * torch.sign(ctf_grid(params, images.shape[-1]))[:, None]
        out: Tensor = torch.fft.irfft2(f, s=images.shape[-2:])
        return out


def ctf_params(
    metadata: pd.DataFrame | None,
    optics: pd.DataFrame | None,
    apix: float | None,
    source: str,
    required: bool = False,
) -> np.ndarray | None:
    """``(N, 10)`` float32 CTF parameters (:data:`COLUMNS`) of a stack's particles from its
    RELION 3.0 / 3.1 / 5 STAR rows (voltage, Cs, amplitude contrast from the particle's optics
    group where there is one) or cryoSPARC ``ctf/*`` fields; ``apix`` is the images' pixel size.

    None when the table carries no defocus; with ``required``, a missing field is an
    :class:`InputError` naming it."""
    if metadata is None or not (
        "rlnDefocusU" in metadata or "ctf/df1_A" in metadata or "defocus_u_A" in metadata
    ):
        if required:
            raise InputError(source, "carries no CTF parameters (rlnDefocusU or ctf/df1_A)")
        return None
    n = len(metadata)
    columns: dict[str, np.ndarray] = {}
    if "ctf/df1_A" in metadata:
        for name, (field, factor) in _CRYOSPARC.items():
            if field in metadata:
                columns[name] = metadata[field].to_numpy(np.float64) * factor
    elif "defocus_u_A" in metadata:  # emvae's own --ctf-params table
        columns = {k: metadata[k].to_numpy(np.float64) for k in COLUMNS[:9] if k in metadata}
    else:
        group = _optics_rows(metadata, optics, source)
        for name, label in _RELION.items():
            if label in metadata:
                columns[name] = pd.to_numeric(metadata[label], errors="coerce").to_numpy()
            elif group is not None and label in group:
                columns[name] = pd.to_numeric(group[label], errors="coerce").to_numpy()
    for name, value in OPTIONAL.items():
        columns.setdefault(name, np.full(n, value))
    missing = [k for k in COLUMNS[:9] if k not in columns]
    if missing:
        names = [_RELION[k] if "rlnDefocusU" in metadata else k for k in missing]
        raise InputError(source, f"CTF parameters without {', '.join(names)}")
    if apix is None:
        raise InputError(source, "the CTF needs the pixel size: give --apix")
    columns["apix_A"] = np.full(n, float(apix))
    table = np.stack([columns[k] for k in COLUMNS], axis=1)
    bad = ~np.isfinite(table).all(axis=1) | (table[:, 3] <= 0) | (np.abs(table[:, 5]) >= 1)
    if bad.any():
        row = int(np.argmax(bad))
        raise InputError(source, f"row {row + 1}: CTF parameters {table[row, :9].tolist()}")
    return table.astype(np.float32)


def read_ctf_table(
    path: str | os.PathLike[str], n: int, rows: np.ndarray | None = None
) -> pd.DataFrame:
    """A ``--ctf-params`` CSV: one row per image (input order), columns named as
    :data:`COLUMNS` (all but ``apix_A``; phase shift, B-factor and scale optional).

    ``rows``: the 0-based input rows of the ``n`` images when ``--ind`` chose some; the CSV
    may then describe either the whole input (its ``rows`` are taken) or the ``n`` images."""
    p = Path(path)
    try:
        table = pd.read_csv(p)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise InputError(p, f"not a readable CSV of CTF parameters ({e})") from None
    missing = [k for k in COLUMNS[:9] if k not in table and k not in OPTIONAL]
    if missing:
        raise InputError(p, f"has no column {', '.join(missing)}")
    if rows is not None and len(table) != n:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.max() >= len(table):
            raise InputError(p, f"has {len(table)} rows; --ind selects input row {rows.max()}")
        return table.iloc[rows].reset_index(drop=True)
    if len(table) != n:
        raise InputError(p, f"has {len(table)} rows; the stack holds {n} images")
    return table


def _optics_rows(
    metadata: pd.DataFrame, optics: pd.DataFrame | None, source: str
) -> pd.DataFrame | None:
    """The optics group's row for every particle (RELION 3.1+), or None."""
    if optics is None or "rlnOpticsGroup" not in metadata or "rlnOpticsGroup" not in optics:
        return None
    table = optics.set_index(optics["rlnOpticsGroup"].astype(int))
    groups = metadata["rlnOpticsGroup"].astype(int)
    unknown = sorted(set(groups) - set(table.index))
    if unknown:
        raise InputError(source, f"particles name optics group {unknown[0]}, not in data_optics")
    return table.loc[groups.to_numpy()].reset_index(drop=True)


def phase_flipped(data: Tensor, params: np.ndarray, chunk: int = 1024) -> Tensor:
    """A copy of ``data`` ``(N, C, D, D)`` with its phases flipped (:func:`phase_flip`, chunk by
    chunk, in ``data``'s dtype and on its device); ``params`` ``(N, 10)``."""
    table = torch.from_numpy(np.asarray(params))
    out = torch.empty_like(data)
    for start in range(0, data.shape[0], chunk):
        part = table[start : start + chunk].to(data.device)
        out[start : start + chunk] = phase_flip(data[start : start + chunk], part).to(data.dtype)
    return out


def likelihood_ctf(
    params: np.ndarray | None, mode: str, data: Any, device: torch.device
) -> tuple[Any, Tensor | None]:
    """``(images, ctf)``: the images ``data`` (normalised, ``(N, C, D, D)``, in memory or
    :class:`emvae.data.StreamedImages`) to use, and the CTF parameters ``params`` ``(N, 10)``
    (:meth:`emvae.particles.Particles.ctf`) on ``device`` for the likelihood (``--ctf on``) or
    None. With ``--ctf phase-flip`` the images come back with their phases flipped, once
    (streamed images: as each batch is read), and the CTF is None; ``data`` is not changed."""
    if params is None:
        return data, None
    if mode == "phase-flip":
        if isinstance(data, Tensor):
            return phase_flipped(data, params), None
        return data.flipped(params), None
    return data, torch.from_numpy(params).to(device)
