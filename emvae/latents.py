"""How a fit uses its latent dimensions: is each z carrying information about the particles?

A latent dimension is *unused* (collapsed onto the prior) when its posterior says the same
thing for every particle: its KL from the prior is near 0, or the posterior means of all
particles lie within a small fraction of one posterior's width, so that z is noise to the
generator. A correlation of such a z with anything is meaningless; :func:`latent_usage` says
so, and ``emvae fit`` and ``emvae report`` print :func:`unused_warning`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

#: A dimension whose mean KL from the prior is below this (nats per particle) is unused.
KL_UNUSED = 0.05
#: ... or whose posterior means spread (std over particles) less than this fraction of the
#: typical (median) posterior std: a particle's own uncertainty then covers every particle.
SPREAD_UNUSED = 0.1


@dataclass
class LatentUse:
    """One latent dimension of a fitted table: ``name`` (``z1``..), ``kl`` (mean KL from the
    prior over the particles, nats), ``spread`` (std of the posterior means over the
    particles), ``width`` (median posterior std), ``used``."""

    name: str
    kl: float
    spread: float
    width: float
    used: bool

    def as_dict(self) -> dict[str, Any]:
        """The figures by field name (for JSON)."""
        return asdict(self)


def latent_columns(table: pd.DataFrame) -> list[str]:
    """The z columns of a particle table, in order: ``z1``, ``z2``, ..."""
    zs = [c for c in table.columns if c.startswith("z") and c[1:].isdigit()]
    return sorted(zs, key=lambda c: int(c[1:]))


def latent_usage(table: pd.DataFrame) -> list[LatentUse]:
    """Usage of every latent dimension from a particle table's ``zk`` and ``zk_std`` columns
    (posterior means and stds): the KL of ``N(z, z_std^2)`` from ``N(0, 1)`` averaged over the
    particles, the spread of the means and the median std (see the module docstring)."""
    out = []
    for z in latent_columns(table):
        mu = table[z].to_numpy(np.float64)
        std = table[f"{z}_std"].to_numpy(np.float64) if f"{z}_std" in table else np.ones_like(mu)
        std = np.maximum(std, 1e-12)
        kl = float(np.mean(0.5 * (mu**2 + std**2 - 1.0) - np.log(std)))
        spread, width = float(mu.std()), float(np.median(std))
        used = kl >= KL_UNUSED and spread >= SPREAD_UNUSED * width
        out.append(LatentUse(z, kl, spread, width, used))
    return out


def unused_warning(usage: list[LatentUse]) -> str | None:
    """One plain line naming the unused dimensions and why, or None when all are used."""
    unused = [u for u in usage if not u.used]
    if not unused:
        return None
    parts = [
        f"{u.name} (KL {u.kl:.3f} nats, means spread {u.spread:.3g} vs posterior std {u.width:.3g})"
        for u in unused
    ]
    what = "is" if len(unused) == 1 else "are"
    return (
        f"warning: {', '.join(parts)} {what} unused: the particles all get the same latent "
        f"value there, so it describes no variation (correlations with it are noise); "
        f"fewer --zdim, or a longer fit, may help"
    )
