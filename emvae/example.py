"""The embedded example: a small synthetic stack generated on demand (nothing is downloaded)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from emvae.safety import use_force
from emvae.simulate import write_simulation

#: The example stack: hinge particles with uniform rotation, 1 px shifts, SNR 5.
EXAMPLE_STACK: dict[str, Any] = {
    "n": 1500,
    "size": 24,
    "snr": 5.0,
    "shift_std_px": 1.0,
    "seed": 0,
    "apix": 2.0,
}

#: Settings `emvae fit --example` uses where the user gives none (small enough for a laptop CPU).
EXAMPLE_OPTIONS: dict[str, Any] = {
    "zdim": 1,
    "gen_hidden": 128,
    "enc_hidden": 128,
    "epochs": 40,
    "lr": 1e-3,
    "batch_size": 50,
}


def make_example(directory: str | os.PathLike[str], force: bool = False) -> Path:
    """Write the example stack and its ground truth into ``directory``; return the stack path.

    ``directory/particles.mrcs`` and ``directory/truth.csv`` (true poses in emvae's conventions
    and the hinge conformation in [0, 1]). An existing example is reused when ``force``.
    """
    d = Path(directory)
    stack = d / "particles.mrcs"
    if stack.exists():
        if force:
            return stack
        raise use_force(f"{d}: the example already exists")
    return write_simulation(d, **EXAMPLE_STACK)
