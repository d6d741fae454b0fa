"""Coarse-to-fine: the resolution schedule, and the images each stage and the inference
networks see.

The generator is a function of continuous coordinates, so one network renders any box. A fit
of D-px images can therefore learn the poses and z on small copies and refine at full size for
the last epochs (``TrainConfig.stages``, ``emvae fit --stages``), as RELION's and cryoDRGN-AI's
resolution schedules do. Two copies of each image are made on the device, batch by batch:

* the **stage's target** (:func:`fourier_crop`): the image's Fourier transform cut to the
  stage's d x d frequencies, so it holds exactly the frequencies below the stage's Nyquist and
  its pixel size is ``apix * D / d`` (the CTF is evaluated there, :func:`stage_ctf`). Its pixel
  j lies at the full box's pixel ``D//2 + (j - d//2) * D / d``; the generator renders those
  points (:func:`stage_grid`, in the full box's coordinate units), so a pose, a shift prior
  or a mask radius means the same thing at every stage. White noise of standard deviation s
  becomes noise of about ``s * d / D`` (:func:`noise_logstd`; the likelihood uses that
  standard deviation, so each stage's bound weighs the data as the full-size one does);
* the **inference networks' view** (:func:`encoder_view`): a fixed small copy of
  ``ModelConfig.encoder_size`` px (the same low frequencies, resampled so that its corner
  pixels are the full box's corners: its coordinates are the full box's), the same at every
  stage: the pose and z networks keep their weights and their cost through the whole
  schedule.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from emvae.errors import ConfigError

if TYPE_CHECKING:
    from emvae.config import RunConfig

__all__ = [
    "COARSE_PX", "ENCODER_PX", "TABLE_PX", "auto_stages", "default_schedule", "encoder_view",
    "fourier_crop", "noise_logstd", "parse_stages", "size_at", "stage_ctf", "stage_grid",
    "table_size",
]  # fmt: skip

#: The first stage's box above 48 px: 20,000 particles at 64 and 128 px gave the same poses and
#: z after 5 epochs at 24 px as at 32 px, about 10 % faster (docs/benchmarks.md, "Users' sizes").
COARSE_PX = 24
#: The inference networks' view above 48 px (the size at which the 128-wide networks were
#: measured to find poses and z in minutes: docs/benchmarks.md), the same at every stage.
ENCODER_PX = 32

#: The largest box a coarse-to-fine fit's particle tables compute the ELBO and the rendering
#: correlation (and so the junk score) at (:func:`table_size`): a larger box is compared on
#: its lowest frequencies up to this size, rendered as a 64-px stage renders, as RELION limits
#: each particle's likelihood to the current resolution. At 128 px the full-size pass took 20
#: of fit's 40 minutes on 2 cores (docs/benchmarks.md, "Users' sizes").
TABLE_PX = 64

#: fit's default schedule above 48 px when ``--epochs`` is not given (:func:`default_schedule`):
#: the coarse stage trains on about this many images (epochs x training images; 20,000
#: particles of 64 or 128 px had their poses and most of z after 5 epochs of 18,000,
#: docs/benchmarks.md), in at least 3 and at most 40 epochs ...
COARSE_IMAGES = 90_000
COARSE_EPOCHS = (3, 40)
#: ... then one epoch at full size on at most this many training images (a random subset each
#: full-size epoch, ``TrainConfig.fine_images``): it refines the generator's detail, while the
#: poses and z come from the networks' fixed small view, trained on every stage
FINE_IMAGES = 5_000


def parse_stages(text: str, full: int) -> list[tuple[int, int]]:
    """``"32:20,64:5"`` -> ``[(32, 20), (64, 5)]``: 20 epochs at 32 px, then 5 at 64, then the
    rest of the run at ``full`` px. ``""`` or ``"off"``: no stage before full size. Sizes must
    grow, lie in [8, full) and be even; epochs >= 1."""
    spec = text.strip().lower()
    if spec in ("", "off", "none"):
        return []
    stages: list[tuple[int, int]] = []
    for part in spec.split(","):
        size_text, sep, epochs_text = part.strip().partition(":")
        try:
            size, epochs = int(size_text), int(epochs_text)
        except ValueError:
            raise ConfigError(
                f"--stages {text!r}: expected SIZE:EPOCHS pairs separated by commas "
                "(32:20,64:5; the rest of the run is at full size), or off"
            ) from None
        if not sep or epochs < 1:
            raise ConfigError(f"--stages {text!r}: each stage needs a number of epochs >= 1")
        low = stages[-1][0] if stages else 7
        if not low < size < full or size % 2:
            raise ConfigError(
                f"--stages {text!r}: stage sizes must be even, grow, and lie between 8 px "
                f"and the {full}-px box (exclusive)"
            )
        stages.append((size, epochs))
    return stages


def auto_stages(full: int, epochs: int) -> str:
    """The default schedule of a ``full``-px fit of ``epochs`` epochs: none up to 48 px; above,
    :data:`COARSE_PX` px for about 80 % of the epochs, then (from 96 px) half the box for half
    of the rest, then full size for the last (at least one epoch at full size)."""
    if full <= 48 or epochs < 2:
        return "off"
    rest = max(1, round(epochs / 5))
    coarse = epochs - rest
    stages = [(COARSE_PX, coarse)]
    middle = 2 * (full // 4)
    if full >= 96 and rest >= 2:
        stages.append((middle, rest // 2))
    return ",".join(f"{s}:{e}" for s, e in stages)


def default_schedule(n_train: int) -> tuple[int, str]:
    """fit's epochs and stages above 48 px when the number of epochs is not given, for
    ``n_train`` training images: :data:`COARSE_PX` px for ``COARSE_IMAGES / n_train`` epochs
    (within :data:`COARSE_EPOCHS`), then one epoch at full size. ``(epochs, stages)``."""
    low, high = COARSE_EPOCHS
    coarse = min(high, max(low, math.ceil(COARSE_IMAGES / max(n_train, 1))))
    return coarse + 1, f"{COARSE_PX}:{coarse}"


def table_size(config: RunConfig) -> int:
    """The box (px) a fit's particle tables compute the ELBO at (:func:`emvae.encode.encode`'s
    ``elbo_px``): :data:`TABLE_PX` when the box is larger and the fit was trained coarse to
    fine with the Gaussian likelihood and the crop's known noise (``config.train.stages``; its
    generator then renders a 64-px grid as a 64-px stage does: the Fourier features above that
    stage's Nyquist frequency switched off); else the box."""
    m = config.model
    staged = bool(parse_stages(config.train.stages or "off", m.image_size))
    cropped = staged and m.coarse_to_fine and m.likelihood == "gaussian" and not m.learn_noise
    return min(m.image_size, TABLE_PX) if cropped else m.image_size


def size_at(stages: list[tuple[int, int]], full: int, epoch: int) -> int:
    """The box (px) of 1-based ``epoch`` under ``stages`` (:func:`parse_stages`)."""
    end = 0
    for size, epochs in stages:
        end += epochs
        if epoch <= end:
            return size
    return full


def stage_grid(full: int, size: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Coordinates ``(size*size, 2)`` (x right, y up; row-major) of the pixels of a ``full``-px
    image Fourier-cropped to ``size`` px (:func:`fourier_crop`), in the full box's coordinate
    units (:func:`emvae.geometry.coordinate_grid`: 1 unit = (full - 1) / 2 full pixels). Pixel
    j of the crop lies at the full box's pixel ``full//2 + (j - size//2) * full / size``.
    ``size == full`` gives exactly ``coordinate_grid(full, full)``."""
    j = torch.arange(size, dtype=torch.float64)
    at = full // 2 + (j - size // 2) * (full / size)  # full-box pixel index of crop pixel j
    h = (full - 1) / 2
    x = (at - h) / h
    y = -x  # row i: +y up, as coordinate_grid
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1).to(dtype)


def fourier_crop(images: Tensor, size: int) -> Tensor:
    """Images ``(..., D, D)`` -> ``(..., size, size)`` holding their lowest ``size`` x ``size``
    frequencies (intensities kept: a constant image stays that constant). ``size == D``
    returns ``images`` unchanged."""
    d = images.shape[-1]
    if size == d:
        return images
    f = torch.fft.fftshift(torch.fft.fft2(images.float()), dim=(-2, -1))
    lo = d // 2 - size // 2
    cut = f[..., lo : lo + size, lo : lo + size]
    out = torch.fft.ifft2(torch.fft.ifftshift(cut, dim=(-2, -1))).real * (size * size / (d * d))
    result: Tensor = out.to(images.dtype)
    return result


def encoder_view(images: Tensor, size: int) -> Tensor:
    """The inference networks' copy ``(B, C, size, size)`` of images ``(B, C, D, D)``, on the
    full box's coordinate grid at ``size`` px (:func:`emvae.geometry.coordinate_grid`: the
    corner pixels on the box's corners): the images' lowest frequencies
    (:func:`fourier_crop`), resampled bilinearly from the crop's pixels (:func:`stage_grid`)
    onto that grid, and scaled by ``D / size`` so that white noise keeps about its standard
    deviation. ``size == D`` returns ``images``."""
    d = images.shape[-1]
    if size == d:
        return images
    crop = fourier_crop(images.float(), size)
    grid = _view_grid(d, size, images.device).expand(images.shape[0], size, size, 2)
    out = F.grid_sample(crop, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return (out * (d / size)).to(images.dtype)


@functools.lru_cache(maxsize=16)
def _view_grid(full: int, size: int, device: torch.device) -> Tensor:
    """The sampling grid ``(1, size, size, 2)`` (``grid_sample``'s units, align_corners=True)
    that :func:`encoder_view` resamples a ``size``-px Fourier crop of a ``full``-px image with,
    made once per device: the training step then moves nothing from the host."""
    # crop pixel j lies at x = a + b j (units); the grid wants x_i = -1 + 2 i / (size - 1)
    at = stage_grid(full, size, torch.float64)[:size, 0]
    a, b = at[0].item(), (at[1] - at[0]).item()
    want = -1.0 + 2.0 * torch.arange(size, dtype=torch.float64) / (size - 1)
    u = ((want - a) / b) * (2.0 / (size - 1)) - 1.0  # grid_sample's align_corners=True units
    u = u.to(device=device, dtype=torch.float32)
    gx = u[None, :].expand(size, size)
    return torch.stack([gx, gx.T], -1)[None]  # x along columns, y down the rows


def stage_ctf(ctf: Tensor | None, full: int, size: int) -> Tensor | None:
    """CTF parameters ``(N, 10)`` (:data:`emvae.ctf.COLUMNS`) for a stage's Fourier crop: the
    pixel size multiplied by ``full / size``."""
    if ctf is None or size == full:
        return ctf
    from emvae.ctf import COLUMNS

    out = ctf.clone()
    k = COLUMNS.index("apix_A")
    out[:, k] = out[:, k] * (full / size)
    return out


def noise_logstd(full: int, size: int) -> float:
    """log of the standard deviation of white noise in a ``size``-px crop relative to the
    ``full``-px image's: ``size / full`` for the kept frequencies, less the half of the power
    of the crop's Nyquist row and column that the real part drops (``(2 size - 1) / (2
    size^2)`` of the whole, for an even ``size``)."""
    kept = 1.0 - (2 * size - 1) / (2 * size * size) if size % 2 == 0 else 1.0
    return math.log(size / full) + 0.5 * math.log(kept)
