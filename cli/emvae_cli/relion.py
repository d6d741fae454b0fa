"""``emvae export-star`` and ``emvae align``: poses out to RELION, or applied here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import typer

from emvae.align import align_stack
from emvae.config import RunConfig, physical
from emvae.data import resolve_device
from emvae.errors import ConfigError, InputError
from emvae.io import input_files, open_stack, read_table, write_mrc
from emvae.io.stack import same_image
from emvae.io.star import _pixel_size as star_pixel_size
from emvae.io.star_export import Optics, export_table, input_star_rows
from emvae.progress import training_progress
from emvae.run import Run
from emvae.safety import check_writable, refuse_existing, refuse_inputs_as_outputs
from emvae_cli.common import DEVICE, DEVICE_HELP, err_console, user_errors
from emvae_cli.inputs import APIX, DATADIR, IND

SOURCE_HELP = "A run directory (particles.h5 + config.json) or a table (.csv/.h5) from emvae."


def load_source(source: Path) -> tuple[pd.DataFrame, RunConfig | None]:
    """(particle table, the run's config or None) of a run directory or a table file."""
    if source.is_dir():
        run = Run.open(source)
        return run.table(), run.config if run.has_config else None
    if not source.exists():
        raise InputError(source, "no such file or directory")
    return read_table(source), None


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
    refuse_existing(out, force)
    apix = None if apix is None else physical("--apix", apix)
    optics_given = Optics(
        physical("--voltage", voltage), physical("--cs", cs, zero_ok=True), amp_contrast
    )
    if not 0 <= amp_contrast < 1:
        raise ConfigError(f"--amp-contrast must lie in [0, 1), got {amp_contrast}")
    table, config = load_source(source)
    refuse_inputs_as_outputs([out], [source, *([input_star] if input_star else [])])
    check_writable(out.parent)
    if config is not None:
        apix = apix if apix is not None else config.data.apix
        box = box or config.data.input_size or None
        first = config.data.paths[0] if config.data.paths else ""
        if input_star is None and first.lower().endswith(".star"):
            input_star = Path(first)
    particles = optics = None
    if input_star is not None:
        if "input_row" not in table:
            raise InputError(source, "has no input_row column to match the input STAR's rows")
        refuse_inputs_as_outputs([out], [input_star])
        particles, optics = input_star_rows(input_star, table["input_row"].to_numpy())
        _check_names(table, particles, input_star)
        if apix is None:  # what the STAR states: its optics groups' or its rows' pixel size
            apix, notes = star_pixel_size(particles, optics, input_star)
            for note in notes:
                err_console.print(f"note: {input_star}: {note}", highlight=False)
        if box is None and optics is not None and "rlnImageSize" in optics:
            box = int(optics["rlnImageSize"].iloc[0])
    if box is None:
        raise ConfigError("the box size is unknown: give --box (the input images' size in px)")
    layout = export_table(table, out, box, apix, particles, optics, relion30, optics_given)
    err_console.print(f"wrote {out} ({len(table)} particles, RELION {layout})", highlight=False)


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
    batch_size: int = typer.Option(1024, "-b", "--batch-size", min=1, help="Images per batch."),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT and its average."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress display."),
) -> None:
    """Apply a table's poses: the aligned stack and its average (OUT_avg.mrc).

    What RELION's relion_stack_create --apply_transformation makes of the same poses."""
    avg_path = out.with_name(out.stem + "_avg.mrc")
    refuse_existing([out, avg_path], force)
    table, config = load_source(source)
    if not stacks:
        if config is None or not config.data.paths:
            raise ConfigError("name the images the table describes")
        stacks = config.data.paths
        datadir = datadir or config.data.datadir
        ind = ind or config.data.ind
    images = open_stack(stacks, datadir, ind, apix=apix)
    inputs = [*input_files(images.inputs, images.names), source]
    refuse_inputs_as_outputs([out, avg_path], inputs)
    check_writable(out.parent)
    names = table["image"].astype(str).tolist()
    if len(names) != len(images):
        raise InputError(
            images.source, f"holds {len(images)} images but the table has {len(names)} rows"
        )
    same = [same_image(a, b) for a, b in zip(names, images.names, strict=True)]
    if not all(same):
        k = same.index(False)
        raise InputError(
            images.source, f"image {k + 1} is {images.names[k]} but the table's row says {names[k]}"
        )
    with training_progress(not quiet) as bar:
        avg = align_stack(
            images,
            table["theta_deg"].to_numpy(np.float64),
            table[["shift_x_px", "shift_y_px"]].to_numpy(np.float64),
            out,
            resolve_device(device),
            max(1, batch_size),
            bar.task("aligning", len(images)),
        )
    write_mrc(avg_path, avg, images.apix)
    err_console.print(f"wrote {out} ({len(images)} images) and {avg_path}", highlight=False)


def _check_names(table: pd.DataFrame, particles: pd.DataFrame, star: Path) -> None:
    """The table's images must be the STAR rows its poses are attached to."""
    if "image" not in table or "rlnImageName" not in particles:
        return
    names = particles["rlnImageName"].astype(str).tolist()
    for k, (a, b) in enumerate(zip(table["image"].astype(str), names, strict=True)):
        if not same_image(a, b):
            raise InputError(
                star,
                f"row {table['input_row'].iloc[k]} is {b} but the table's particle {k + 1} is "
                f"{a}: this STAR file is not the one the poses came from",
            )
