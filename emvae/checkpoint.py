"""Checkpoints: state_dicts + config + epoch + RNG + version; never a pickled module.

Loaded with ``torch.load(weights_only=True)``, so a checkpoint cannot run code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from emvae.config import RunConfig
from emvae.errors import InputError
from emvae.safety import atomic_output

FORMAT = "emvae-checkpoint/2"
#: Formats this version cannot rebuild, and why.
OLD_FORMATS = {
    "emvae-checkpoint/1": "written by emvae 0.1, whose inference network read z from pooled "
    "features (it collapsed); fit again with this version"
}


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` atomically (a crash mid-write leaves the previous file intact).

    ``state`` holds: ``model`` (state_dict), ``optimizer`` (state_dict or None), ``config``
    (``RunConfig.to_dict()``), ``epoch`` (completed epochs), ``rng`` (ByteTensor), ``split``
    (0-based test indices, LongTensor), ``history`` (list of per-epoch metric dicts).
    """
    from emvae import __version__

    p = Path(path)
    with atomic_output(p) as tmp:
        torch.save({"format": FORMAT, "version": __version__, **state}, tmp)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint onto the CPU, refusing anything that is not an emvae checkpoint."""
    from emvae.run import CONFIG, LAST

    p = Path(path)
    if not p.exists():
        raise InputError(p, "no such checkpoint")
    if p.is_dir():
        if not (p / LAST).exists():
            raise InputError(p, f"is a directory without {LAST}")
        p = p / LAST
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a foreign or truncated file
        raise InputError(p, f"not a readable emvae checkpoint ({type(e).__name__})") from None
    if isinstance(ckpt, dict) and ckpt.get("format") in OLD_FORMATS:
        raise InputError(p, OLD_FORMATS[ckpt["format"]])
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise InputError(p, "not an emvae checkpoint")
    if Path(path).is_dir():
        check_same_run(ckpt, p, Path(path) / CONFIG)
    return ckpt


def check_same_run(ckpt: dict[str, Any], path: Path, config_json: Path) -> None:
    """A run folder's last checkpoint must belong to the run its config.json describes."""
    if not config_json.exists():
        return
    from emvae.config import read_config

    made_by = str(ckpt.get("config", {}).get("run_id", ""))
    described = read_config(config_json).run_id
    if made_by and described and made_by != described:
        raise InputError(
            path,
            f"was written by run {made_by[:8]} but config.json describes run {described[:8]}: "
            "this folder mixes outputs of two runs",
        )


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu"):
    """Rebuild the model from a checkpoint (a file, or a run directory).

    Returns ``(model in eval mode on device, RunConfig, checkpoint dict)``.
    """
    from emvae.data import default_pass_memory_mb
    from emvae.models import SpatialVAE

    ckpt = load_checkpoint(path)
    config = RunConfig.from_dict(ckpt["config"])
    model = SpatialVAE(config.model)
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    model.pass_memory_mb = default_pass_memory_mb(device)  # this device's, not the fit's
    return model, config, ckpt
