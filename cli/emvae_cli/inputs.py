"""Options every command that reads images shares."""

from __future__ import annotations

import typer

from emvae.config import GALAXY_CROP, GALAXY_JITTER, GALAXY_SIZE

INPUTS_HELP = (
    "Images: .mrcs/.mrc, RELION .star, cryoSPARC .cs, .txt list of stacks, .npy, "
    "file.h5[:/dataset], .fits[EXT], JPEG/PNG files, or a folder of pictures/FITS files. "
    "Several are concatenated."
)
DATADIR = typer.Option(
    None,
    "--datadir",
    help="Folder holding the stacks a STAR/.cs/.txt file names (also matched by file name).",
    show_default=False,
)
IND = typer.Option(
    None,
    "--ind",
    help="Keep only these 0-based images (.npy, .txt or cryoDRGN .pkl).",
    show_default=False,
)
APIX = typer.Option(
    None, "--apix", show_default=False, help="Pixel size in A (overrides header/STAR)."
)
SIZE = typer.Option(
    None,
    "-D",
    "--downsample",
    show_default=False,
    help=f"Fourier-downsample to this box size (pictures: {GALAXY_SIZE}).",
)
CROP = typer.Option(
    None,
    "--crop",
    show_default=False,
    help=f"Cut a centred N x N window first (pictures: {GALAXY_CROP}; 0: none).",
)
JITTER = typer.Option(
    None,
    "--jitter",
    show_default=False,
    help=f"Move each window by up to this many px at random (pictures: {GALAXY_JITTER}).",
)
INVERT = typer.Option(False, "--invert", help="Invert the contrast (multiply by -1).")
NORM = typer.Option(
    "none",
    "--norm",
    help="Per-image normalisation to mean 0, std 1 (background: by the pixels outside "
    "--bg-radius; image: by all of them).",
)
BG_RADIUS = typer.Option(
    None,
    "--bg-radius",
    show_default=False,
    help="Background radius in output px (default 3/4 of the half box).",
)
