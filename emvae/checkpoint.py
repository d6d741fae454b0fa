"""Checkpoints: state_dicts + config + epoch + RNG + version; never a pickled module.

Loaded with ``torch.load(weights_only=True)``, so a checkpoint cannot run code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from emvae._version import __version__
from emvae.config import RunConfig
from emvae.errors import InputError
from emvae.safety import atomic_output

if TYPE_CHECKING:
    from emvae.models import SpatialVAE

FORMAT = "emvae-checkpoint/2"
#: Formats this version cannot rebuild, and why.
OLD_FORMATS = {
    "emvae-checkpoint/1": "written by emvae 0.1, whose inference network read z from pooled "
    "features (it collapsed); fit again with this version"
}


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write ``state`` atomically (a crash mid-write leaves the previous file intact).

    ``state`` holds: ``model`` (state_dict), ``optimizer`` (state_dict or None), ``config``
    (``RunConfig.to_dict()``), ``epoch`` (completed epochs), ``rng`` (ByteTensor), ``split``
    (0-based test indices, LongTensor), ``history`` (list of per-epoch metric dicts).
    """
    p = Path(path)
    with atomic_output(p) as tmp:
        torch.save({"format": FORMAT, "version": __version__, **state}, tmp)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint file onto the CPU, refusing anything that is not an emvae checkpoint
    (a run folder's last checkpoint, checked against the run: :func:`emvae.run.load_checkpoint`)."""
    p = Path(path)
    if not p.exists():
        raise InputError(p, "no such checkpoint")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a foreign or truncated file
        raise InputError(p, f"not a readable emvae checkpoint ({type(e).__name__})") from None
    if isinstance(ckpt, dict) and ckpt.get("format") in OLD_FORMATS:
        raise InputError(p, OLD_FORMATS[ckpt["format"]])
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise InputError(p, "not an emvae checkpoint")
    return ckpt


def build_model(
    ckpt: dict[str, Any], device: torch.device | str = "cpu"
) -> tuple[SpatialVAE, RunConfig, dict[str, Any]]:
    """Rebuild the model of a checkpoint dict: ``(model in eval mode on device, RunConfig,
    ckpt)``."""
    from emvae.data import default_pass_memory_mb
    from emvae.models import SpatialVAE

    config = RunConfig.from_dict(ckpt["config"])
    model = SpatialVAE(config.model)
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    model.pass_memory_mb = default_pass_memory_mb(device)  # this device's, not the fit's
    return model, config, ckpt
