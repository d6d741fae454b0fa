"""``emvae export-catalog``: a run on FITS images as a sky catalogue (RA/Dec, position angle)."""

from __future__ import annotations

from pathlib import Path

import typer

from emvae.catalog import export_catalog as write_sky_catalog
from emvae_cli.common import err_console, user_errors

_FORMATS = {"fits": "FITS table", "ascii.ecsv": "ECSV", "votable": "VOTable"}


@user_errors
def export_catalog(
    run_dir: Path = typer.Argument(..., help="A run directory fitted on FITS images with a WCS."),
    out: Path = typer.Option(
        ..., "-o", "--out", help="Catalogue to write: .fits, .ecsv or .vot (astropy.table)."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT."),
) -> None:
    """Write a sky catalogue of a run on FITS images: each object's RA/Dec (ICRS; the cut-out
    centre moved by the inferred shift), position angle east of north (the inferred rotation
    on the sky), their uncertainties, and every column of the particle table (z, ...)."""
    cat = write_sky_catalog(run_dir, out, force)
    err_console.print(
        f"wrote {cat.path} ({cat.rows} objects, {_FORMATS[cat.format]}; RA/Dec ICRS)",
        highlight=False,
        soft_wrap=True,
    )
