"""Synthetic particles with known poses: a 2-D molecule with one hinge degree of freedom.

Used by the embedded example (``emvae fit --example``) and by the tests. Ground truth is given
in emvae's image-frame conventions (SPEC section 2): ``theta_deg`` is the counter-clockwise
rotation of the particle relative to the canonical view (+y up), ``shift_x_px``/``shift_y_px``
where the canonical centre lands relative to the box centre.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from emvae.geometry import coordinate_grid, pixels_per_unit

# body: (x, y, sigma, amplitude) in coordinate units of the canonical view: a heavy head on the
# right and two lighter lobes, so that no rotation maps the molecule onto itself.
_BODY = np.array(
    [
        [0.20, 0.00, 0.16, 1.3],
        [-0.08, 0.14, 0.10, 0.8],
        [-0.10, -0.12, 0.09, 0.6],
    ]
)
_HINGE = np.array([-0.22, -0.14])
_ARM_RADII = np.array([0.12, 0.24, 0.36])
_ARM_SIGMA, _ARM_AMP = 0.07, 0.8
_ARM_OPEN_DEG = (180.0, 270.0)  # arm direction at conformation 0 and 1


def hinge_blobs(conformation: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian blobs of the canonical molecule for each conformation in [0, 1].

    The arm on the lower left swings from pointing left (conformation 0) to down (1).
    Returns centres ``(n, M, 2)`` (coordinate units), sigmas ``(M,)`` and amplitudes ``(M,)``.
    """
    c = np.asarray(conformation, dtype=np.float64)
    lo, hi = _ARM_OPEN_DEG
    alpha = np.radians(lo + (hi - lo) * c)[:, None]  # (n, 1)
    arm = _HINGE + _ARM_RADII[None, :, None] * np.stack([np.cos(alpha), np.sin(alpha)], -1)
    body = np.broadcast_to(_BODY[:, :2], (len(c), len(_BODY), 2))
    centres = np.concatenate([body, arm], axis=1)
    sigmas = np.concatenate([_BODY[:, 2], np.full(len(_ARM_RADII), _ARM_SIGMA)])
    amps = np.concatenate([_BODY[:, 3], np.full(len(_ARM_RADII), _ARM_AMP)])
    return centres, sigmas, amps


def render_blobs(
    centres: np.ndarray,
    sigmas: np.ndarray,
    amps: np.ndarray,
    theta_deg: np.ndarray,
    shift_px: np.ndarray,
    size: int,
    chunk: int = 512,
) -> np.ndarray:
    """Render blob molecules posed in the image frame.

    centres ``(n, M, 2)`` in the canonical frame; the particle is rotated counter-clockwise by
    ``theta_deg`` ``(n,)`` about the box centre and its centre moved to ``shift_px`` ``(n, 2)``.
    Returns float32 images ``(n, size, size)``, row 0 at the top.
    """
    grid = coordinate_grid(size, size, dtype=torch.float64)  # (N, 2)
    h = pixels_per_unit(size)
    out = np.empty((len(centres), size, size), dtype=np.float32)
    sig = torch.as_tensor(sigmas)
    amp = torch.as_tensor(amps)
    for s in range(0, len(centres), chunk):
        c = torch.as_tensor(np.ascontiguousarray(centres[s : s + chunk]))
        t = torch.deg2rad(torch.as_tensor(theta_deg[s : s + chunk], dtype=torch.float64))
        cos, sin = torch.cos(t)[:, None], torch.sin(t)[:, None]
        placed = torch.stack(
            [cos * c[..., 0] - sin * c[..., 1], sin * c[..., 0] + cos * c[..., 1]], -1
        )
        placed = placed + torch.as_tensor(shift_px[s : s + chunk])[:, None, :] / h
        d2 = ((grid[None, :, None, :] - placed[:, None, :, :]) ** 2).sum(-1)  # (b, N, M)
        img = (amp * torch.exp(-d2 / (2 * sig**2))).sum(-1)
        out[s : s + chunk] = img.reshape(-1, size, size).numpy()
    return out


def simulate_hinge(
    n: int,
    size: int = 40,
    snr: float = 1.0,
    shift_std_px: float = 2.0,
    seed: int = 0,
    stack_name: str = "particles.mrcs",
) -> tuple[np.ndarray, pd.DataFrame]:
    """``n`` noisy hinge particles with uniform rotations and Gaussian shifts.

    SNR is the variance of the clean images (all pixels of the stack) over the noise variance;
    ``snr=inf`` gives clean images. Returns images ``(n, size, size)`` float32 and the truth
    table (``image``, ``theta_deg``, ``shift_x_px``, ``shift_y_px``, ``conformation``).
    """
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.0, 1.0, n)
    theta = rng.uniform(-180.0, 180.0, n)
    shift = rng.normal(0.0, shift_std_px, (n, 2)) if shift_std_px > 0 else np.zeros((n, 2))
    centres, sigmas, amps = hinge_blobs(conf)
    clean = render_blobs(centres, sigmas, amps, theta, shift, size)
    if np.isfinite(snr):
        noise_std = float(np.sqrt(clean.var() / snr))
        images = clean + rng.normal(0.0, noise_std, clean.shape).astype(np.float32)
    else:
        images = clean
    truth = pd.DataFrame(
        {
            "image": [f"{k}@{stack_name}" for k in range(1, n + 1)],
            "theta_deg": theta,
            "shift_x_px": shift[:, 0],
            "shift_y_px": shift[:, 1],
            "conformation": conf,
        }
    )
    return images.astype(np.float32), truth


def electron_wavelength_A(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Angstrom."""
    v = voltage_kv * 1e3
    return 12.2643247 / np.sqrt(v * (1 + 0.978466e-6 * v))


def ctf_2d(
    size: int,
    apix: float,
    defocus_um: float,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
) -> np.ndarray:
    """Isotropic CTF on the ``(size, size)`` FFT grid (numpy order, zero frequency at [0, 0]),
    RELION's sign: ``-(sqrt(1 - w^2) sin(chi) + w cos(chi))`` with
    ``chi = pi lambda df k^2 - pi/2 Cs lambda^3 k^4`` (defocus positive = underfocus)."""
    lam = electron_wavelength_A(voltage_kv)
    f = np.fft.fftfreq(size, d=apix)  # 1/A
    k2 = f[:, None] ** 2 + f[None, :] ** 2
    chi = np.pi * lam * defocus_um * 1e4 * k2 - 0.5 * np.pi * cs_mm * 1e7 * lam**3 * k2**2
    w = amplitude_contrast
    return -(np.sqrt(1 - w**2) * np.sin(chi) + w * np.cos(chi))


def apply_ctf(images: np.ndarray, ctf: np.ndarray) -> np.ndarray:
    """Multiply each image's Fourier transform by ``ctf`` (real, same grid). ``(N, D, D)``."""
    return np.fft.ifft2(np.fft.fft2(images) * ctf).real.astype(np.float32)


def write_simulation(
    out_dir: str | os.PathLike,
    n: int,
    size: int = 40,
    snr: float = 1.0,
    shift_std_px: float = 2.0,
    seed: int = 0,
    apix: float = 1.0,
    defocus_um: float | None = None,
) -> Path:
    """Write ``particles.mrcs``, ``particles.star`` (RELION 3.1, the true poses) and
    ``truth.csv`` into ``out_dir``; returns the stack's path.

    With ``defocus_um``, the clean images are multiplied by a CTF (300 kV, Cs 2.7 mm,
    amplitude contrast 0.1, that defocus) before the noise is added; SNR is measured after it.
    """
    from emvae.io import write_mrc
    from emvae.io.star_export import Optics, table_to_star, write_star

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if defocus_um is None:
        images, truth = simulate_hinge(n, size, snr, shift_std_px, seed)
    else:
        clean, truth = simulate_hinge(n, size, float("inf"), shift_std_px, seed)
        clean = apply_ctf(clean, ctf_2d(size, apix, defocus_um))
        rng = np.random.default_rng(seed + 1)
        images = clean + rng.normal(0, np.sqrt(clean.var() / snr), clean.shape).astype(np.float32)
    write_mrc(out / "particles.mrcs", images, apix)
    truth.to_csv(out / "truth.csv", index=False, float_format="%.6f")
    meta = None
    if defocus_um is not None:
        df = defocus_um * 1e4
        meta = pd.DataFrame(
            {
                "rlnImageName": [f"{k:06d}@particles.mrcs" for k in range(1, n + 1)],
                "rlnDefocusU": df,
                "rlnDefocusV": df,
                "rlnDefocusAngle": 0.0,
            }
        )
    write_star(table_to_star(truth, size, apix, meta, defaults=Optics()), out / "particles.star")
    return out / "particles.mrcs"
