"""``emvae preprocess`` and ``emvae info``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from emvae.particles import Particles
from emvae.preprocess import CHUNK, Normalize
from emvae.preprocessing import preprocess_stack
from emvae_cli import inputs as opt
from emvae_cli.common import SEED_MAX, err_console, user_errors


@user_errors
def preprocess(
    stacks: list[str] = typer.Argument(..., help=opt.INPUTS_HELP, show_default=False),
    out: Path = typer.Option(
        ..., "-o", "--out", help="Cache to write: .h5 (keeps names and settings) or .mrcs."
    ),
    datadir: str | None = opt.DATADIR,
    ind: str | None = opt.IND,
    apix: float | None = opt.APIX,
    size: int | None = opt.SIZE,
    crop: int | None = opt.CROP,
    jitter: int | None = opt.JITTER,
    invert: bool = opt.INVERT,
    norm: Normalize = opt.NORM,
    bg_radius: float | None = opt.BG_RADIUS,
    seed: int = typer.Option(0, "--seed", min=0, max=SEED_MAX, help="Seed of the window jitter."),
    chunk: int = typer.Option(CHUNK, "--chunk", help="Images per chunk (bounds memory)."),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress display."),
) -> None:
    """Preprocess once, streaming in chunks, into a cache that fit and encode memory-map."""
    wrote = preprocess_stack(
        stacks, out, datadir=datadir, ind=ind, apix=apix, size=size, crop=crop, jitter=jitter,
        seed=seed, invert=invert, normalize=norm, bg_radius=bg_radius, chunk=chunk, force=force,
        progress=not quiet, say=lambda note: err_console.print(note, highlight=False),
    )  # fmt: skip
    err_console.print(wrote, highlight=False)


@user_errors
def info(
    stacks: list[str] = typer.Argument(..., help=opt.INPUTS_HELP, show_default=False),
    datadir: str | None = opt.DATADIR,
    ind: str | None = opt.IND,
    apix: float | None = opt.APIX,
) -> None:
    """What a file is: format, count, size, pixel size and where it came from.

    Also channels, dtype, STAR version and optics groups, metadata columns, value range and
    the memory a fit needs."""
    lines = Particles.open(stacks, datadir=datadir, ind=ind, apix=apix).describe()
    console = Console(highlight=False, soft_wrap=True)
    width = max(len(k) for k, _ in lines)
    for key, text in lines:
        console.print(f"{key + ':':<{width + 1}} {text}", markup=False)
