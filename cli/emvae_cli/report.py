"""``emvae report`` and ``emvae montage``."""

from __future__ import annotations

from pathlib import Path

import typer

from emvae import montage as mt
from emvae.report import report_run
from emvae_cli.common import SEED_MAX, arg, err_console, user_errors


@user_errors
def report(
    run: Path = typer.Argument(..., help="A run directory (emvae fit -o)."),
    reference: Path | None = typer.Option(
        None,
        "--reference",
        show_default=False,
        help="Known poses/factors: a CSV with image (N@file), theta_deg, [shift_x_px, "
        "shift_y_px, numeric factors], or a STAR file from another program.",
    ),
    out: Path | None = typer.Option(
        None, "-o", "--out", show_default=False, help="Folder for the report (default RUN/report)."
    ),
    examples: int = typer.Option(
        arg(report_run, "examples"),
        "--examples",
        min=0,
        help="Held-out particles shown beside their reconstructions (0: none).",
    ),
    force: bool = typer.Option(
        False, "--force", help="Replace an earlier report in -o (never files emvae did not write)."
    ),
    partial: bool = typer.Option(
        False, "--partial", help="Accept a --reference naming only some of the run's particles."
    ),
) -> None:
    """Learning curves, histograms, latent scatter; agreement with a --reference.

    With --reference: circular correlation, angular error, shift and latent correlations.
    Writes PNGs, report.json and a self-contained report.html (numbered figures with units,
    example particles and their reconstructions, the run's montages, how the run was made)."""
    for line, warning in report_run(run, reference, out, examples, force, partial):
        err_console.print(line, highlight=False, style="bold" if warning else None)


@user_errors
def montage(
    source: Path = typer.Argument(..., help="A run directory or a checkpoint (.pt)."),
    out: Path | None = typer.Option(
        None, "-o", "--out", show_default=False, help="Folder (default RUN/montage)."
    ),
    pairs: int = typer.Option(
        arg(mt.write_montages, "pairs"),
        "--pairs",
        min=1,
        help="Random pairs of test particles to interpolate.",
    ),
    pair: list[str] | None = typer.Option(
        None, "--pair", show_default=False, help="A pair of image names 'A,B' (repeatable)."
    ),
    steps: int = typer.Option(
        arg(mt.interpolation, "steps"),
        "--steps",
        min=2,
        help="Interpolation steps (ends included).",
    ),
    grid: int = typer.Option(
        arg(mt.manifold, "n"), "--grid", min=1, help="Manifold grid size for 1-D / 2-D z."
    ),
    samples: int = typer.Option(
        arg(mt.prior_samples, "rows"), "--samples", min=1, help="Prior samples: an N x N grid."
    ),
    seed: int = typer.Option(
        arg(mt.prior_samples, "seed"),
        "--seed",
        min=0,
        max=SEED_MAX,
        help="Seed for pairs and prior samples.",
    ),
    gif: bool = typer.Option(
        True, "--gif/--no-gif", help="Animated GIF along the particles' main axis of z."
    ),
    gif_steps: int = typer.Option(
        arg(mt.write_montages, "gif_steps"),
        "--gif-steps",
        min=2,
        help="GIF: steps along the path, ends included; it goes there and back, so the GIF "
        "has 2 x steps - 2 frames.",
    ),
    labels: bool = typer.Option(
        True,
        "--labels/--no-labels",
        help="Write each tile's z (and an observed particle's name and theta) beside it; "
        "--no-labels: the tiles alone.",
    ),
    force: bool = typer.Option(
        False, "--force", help="Replace earlier montages in -o (never files emvae did not write)."
    ),
) -> None:
    """Interpolations, manifold, prior samples, traversals and a GIF (PNG); with --pose
    affine/tps also a traversal of each pose parameter.

    Everything is the generator's mean at theta = 0, dx = 0. Manifold, traversals and the GIF
    span the range of z the run's particles cover (the prior's, given only a checkpoint)."""
    steps_of_gif = gif_steps if gif else None
    written, notes = mt.write_montages(
        source, out, pairs, pair or (), steps, grid, samples, seed, steps_of_gif, labels, force
    )
    for note in notes:
        err_console.print(note, highlight=False)
    err_console.print(
        f"wrote {', '.join(str(p) for p in written)}", highlight=False, soft_wrap=True
    )
