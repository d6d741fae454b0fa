"""``emvae select``: a subset of a run's particles, as index lists and in the input's format."""

from __future__ import annotations

from pathlib import Path

import typer

from emvae.select import select_run
from emvae_cli.common import err_console, user_errors


@user_errors
def select(
    run_dir: Path = typer.Argument(..., help="A run directory (particles.h5 + config.json)."),
    out: Path = typer.Option(
        ...,
        "-o",
        "--out",
        help="Stem of the outputs: OUT.txt and OUT.npy (0-based input rows), and OUT.star or "
        "OUT.cs when the run's input was a STAR or cryoSPARC file.",
    ),
    cluster: str | None = typer.Option(
        None,
        "--cluster",
        show_default=False,
        help="Clusters to keep, 1-based, comma separated (1,3), from RUN/analyze/clusters.csv "
        "(emvae analyze).",
    ),
    query: str | None = typer.Option(
        None,
        "--query",
        show_default=False,
        help="A condition on the particle table's columns ('z1 > 0.5 and theta_prob > 0.9', "
        "'cluster in [1, 3]', 'abs(z2) < 1'); analyze/clusters.csv's columns too when present. "
        "Comparisons, and/or/not, arithmetic and a few functions; never run as Python.",
    ),
    indices: Path | None = typer.Option(
        None,
        "--indices",
        show_default=False,
        help="0-based input rows to keep (values of the table's input_row; .txt, .npy or "
        "cryoDRGN .pkl).",
    ),
    invert: bool = typer.Option(False, "--invert", help="Keep the run's other particles."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
) -> None:
    """Select particles of a run by cluster, condition or index list; write their input rows
    (for fit --ind and cryoDRGN --ind) and the input's own STAR or .cs rows."""
    line = select_run(
        run_dir, out, cluster=cluster, query=query, indices=indices, invert=invert, force=force
    )
    err_console.print(line, highlight=False, soft_wrap=True)
