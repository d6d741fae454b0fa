"""``emvae export-star`` and ``emvae align``: poses out to RELION, or applied here."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import typer

from emvae.export import align_run, export_to_star
from emvae.io.star_export import Optics
from emvae_cli.common import DEVICE, DEVICE_HELP, arg, err_console, user_errors
from emvae_cli.inputs import APIX, DATADIR, IND

SOURCE_HELP = "A run directory (particles.h5 + config.json) or a table (.csv/.h5) from emvae."


@user_errors
def export_star(
    source: Path = typer.Argument(..., help=SOURCE_HELP),
    out: Path = typer.Option(..., "-o", "--out", help="STAR file to write."),
    input_star: Path | None = typer.Option(
        None,
        "--input",
        show_default=False,
        help="The STAR file the particles came from: its rows and columns are kept (default: "
        "the run's input when it was a STAR file).",
    ),
    apix: float | None = typer.Option(
        None,
        "--apix",
        show_default=False,
        help="Pixel size in A (default: the run's, else the --input STAR's).",
    ),
    box: int | None = typer.Option(
        None, "--box", show_default=False, help="Box size in px (default: the run's input box)."
    ),
    relion30: bool = typer.Option(
        False, "--relion30", help="RELION 3.0 layout: one block, origins in pixels."
    ),
    voltage: float = typer.Option(Optics.voltage, "--voltage", help="kV, for a new optics group."),
    cs: float = typer.Option(Optics.cs, "--cs", help="Spherical aberration, mm (new group)."),
    amp_contrast: float = typer.Option(
        Optics.amplitude_contrast, "--amp-contrast", help="Amplitude contrast (new group)."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT."),
) -> None:
    """Write an emvae particle table as a RELION STAR file (3.1 with optics by default)."""
    wrote = export_to_star(
        source, out, input_star=input_star, apix=apix, box=box, relion30=relion30,
        voltage=voltage, cs=cs, amp_contrast=amp_contrast, force=force,
        note=partial(err_console.print, highlight=False),
    )  # fmt: skip
    err_console.print(wrote, highlight=False)


@user_errors
def align(
    source: Path = typer.Argument(..., help=SOURCE_HELP),
    stacks: list[str] | None = typer.Argument(
        None, show_default=False, help="The images the table describes (default: the run's)."
    ),
    out: Path = typer.Option(..., "-o", "--out", help="Aligned stack to write (.mrcs)."),
    datadir: str | None = DATADIR,
    ind: str | None = IND,
    apix: float | None = APIX,
    device: str = typer.Option(DEVICE, "--device", help=DEVICE_HELP),
    batch_size: int = typer.Option(
        arg(align_run, "batch_size"), "-b", "--batch-size", min=1, help="Images per batch."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT and its average."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress display."),
) -> None:
    """Apply a table's poses: the aligned stack and its average (OUT_avg.mrc).

    What RELION's relion_stack_create --apply_transformation makes of the same poses."""
    n, avg_path = align_run(
        source, stacks, out, datadir=datadir, ind=ind, apix=apix, device=device,
        batch_size=batch_size, force=force, progress=not quiet,
    )  # fmt: skip
    err_console.print(f"wrote {out} ({n} images) and {avg_path}", highlight=False)
