"""How emvae draws its figures (matplotlib): the resolution, the text sizes and the layout."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

#: Every figure is drawn to be read at the report page's width (about 1,000 px): 100 dpi. The
#: report's own figures use text sizes (points) that stay legible there (:data:`STYLE`).
DPI = 100
STYLE: Any = {  # matplotlib rcParams (typed Any: its stubs list every key)
    "font.size": 12,
    "axes.labelsize": 13,
    "axes.titlesize": 13,
    "xtick.labelsize": 11,
    "ytick.labelsize": 11,
    "legend.fontsize": 11,
    "figure.dpi": DPI,
}


def figure(width: float, height: float, nrows: int = 1, ncols: int = 1) -> tuple[Figure, Any]:
    """A figure of ``width`` x ``height`` inches (constrained layout) and its ``nrows`` x
    ``ncols`` axes, row by row in a flat array."""
    fig = Figure(figsize=(width, height), layout="constrained")
    axes: np.ndarray = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes.ravel()


def save(fig: Figure, path: str | os.PathLike[str], dpi: int = DPI) -> Path:
    """Write ``fig`` to ``path`` as a PNG (whatever its suffix: a temporary file) at ``dpi``."""
    fig.savefig(path, dpi=dpi, format="png")
    return Path(path)
