"""A run's poses out of emvae: as a RELION STAR file (``emvae export-star``), or applied to
its images here (``emvae align``).

:func:`load_source` reads a run folder or a table file; :func:`export_to_star` resolves what
a STAR file needs (the input STAR whose rows it keeps, the box in px, the pixel size in Å) and
writes it; :func:`align_run` writes the aligned stack.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from emvae.align import align_stack
from emvae.config import RunConfig, physical
from emvae.data import resolve_device
from emvae.errors import ConfigError, InputError
from emvae.io import input_files, kind_by_suffix, open_stack, read_table, write_mrc
from emvae.io.stack import same_image
from emvae.io.star import _pixel_size as star_pixel_size
from emvae.io.star_export import Optics, export_table, input_star_rows
from emvae.progress import training_progress
from emvae.run import Run
from emvae.safety import check_writable, refuse_existing, refuse_inputs_as_outputs


def load_source(source: Path) -> tuple[pd.DataFrame, RunConfig | None]:
    """(particle table, the run's config or None) of a run directory or a table file."""
    if source.is_dir():
        run = Run.open(source)
        return run.table(), run.config if run.has_config else None
    if not source.exists():
        raise InputError(source, "no such file or directory")
    return read_table(source), None


def export_to_star(
    source: Path,
    out: Path,
    *,
    input_star: Path | None = None,
    apix: float | None = None,
    box: int | None = None,
    relion30: bool = False,
    voltage: float = Optics.voltage,
    cs: float = Optics.cs,
    amp_contrast: float = Optics.amplitude_contrast,
    force: bool = False,
    note: Callable[[str], None] = print,
) -> str:
    """``emvae export-star``: the poses of ``source`` (a run folder or a table) written to the
    STAR file ``out`` (RELION 3.1 with optics, or the 3.0 layout with origins in px when
    ``relion30``). Returns the line that says what was written.

    ``input_star``: the STAR file the particles came from, whose rows and columns are kept
    (default: the run's input when it was a STAR file); its names must be the table's.
    ``apix`` (Å) and ``box`` (px) default to the run's, else the input STAR's (the box
    unknown is refused; the pixel size unknown: origins in px, RELION 3.0).
    ``voltage`` (kV), ``cs`` (mm), ``amp_contrast``: a new optics group's (when no input STAR
    gives one). What is found out about the input STAR is given to ``note``, each a line
    "note: ...", before the file is written (so that it comes before a refusal).
    """
    refuse_existing(out, force)
    apix = None if apix is None else physical("--apix", apix)
    optics_given = Optics(
        physical("--voltage", voltage), physical("--cs", cs, zero_ok=True), amp_contrast
    )
    if not 0 <= amp_contrast < 1:
        raise ConfigError(f"--amp-contrast must lie in [0, 1), got {amp_contrast}")
    table, config = load_source(source)
    refuse_inputs_as_outputs([out], [source])  # the input STAR's below, once known
    check_writable(out.parent)
    if config is not None:
        apix = apix if apix is not None else config.data.apix
        box = box or config.data.input_size or None
        first = config.data.paths[0] if config.data.paths else ""
        if input_star is None and kind_by_suffix(first) == "star":
            input_star = Path(first)
    # the input STAR's particle rows for the table's rows, in order, and its optics table
    particles, optics = None, None
    if input_star is not None:
        if "input_row" not in table:
            raise InputError(source, "has no input_row column to match the input STAR's rows")
        refuse_inputs_as_outputs([out], [input_star])
        particles, optics = input_star_rows(input_star, table["input_row"].to_numpy())
        check_star_names(table, particles, input_star)
        if apix is None:  # what the STAR states: its optics groups' or its rows' pixel size
            apix, notes = star_pixel_size(particles, optics, input_star)
            for line in notes:
                note(f"note: {input_star}: {line}")
        if box is None and optics is not None and "rlnImageSize" in optics:
            box = int(optics["rlnImageSize"].iloc[0])
    if box is None:
        raise ConfigError("the box size is unknown: give --box (the input images' size in px)")
    layout = export_table(table, out, box, apix, particles, optics, relion30, optics_given)
    return f"wrote {out} ({len(table)} particles, RELION {layout})"


def check_star_names(table: pd.DataFrame, particles: pd.DataFrame, star: Path) -> None:
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


def align_run(
    source: Path,
    stacks: list[str] | None,
    out: Path,
    *,
    datadir: str | None = None,
    ind: str | None = None,
    apix: float | None = None,
    device: str = "auto",
    batch_size: int = 1024,
    force: bool = False,
    progress: bool = True,
) -> tuple[int, Path]:
    """Apply the poses of ``source`` (a run folder or a table) to its images (``stacks``;
    default: the run's inputs): the aligned stack ``out`` (.mrcs) and its average
    (``OUT_avg.mrc``), as RELION's ``relion_stack_create --apply_transformation`` makes them.

    The images must be the table's rows, in order (the same ``k@stack`` names). ``batch_size``
    images at a time on ``device``. Returns (number of images, the average's path).
    """
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
    inputs: list[str | os.PathLike[str]] = [*input_files(images.inputs, images.names), source]
    refuse_inputs_as_outputs([out, avg_path], inputs)
    check_writable(out.parent)
    check_table_names(table, images.names, images.source)
    with training_progress(progress) as bar:
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
    return len(images), avg_path


def check_table_names(table: pd.DataFrame, names: Sequence[str], source: str) -> None:
    """The images ``names`` (of the stack ``source``) must be the table's rows, in order."""
    rows = table["image"].astype(str).tolist()
    if len(rows) != len(names):
        raise InputError(source, f"holds {len(names)} images but the table has {len(rows)} rows")
    same = [same_image(a, b) for a, b in zip(rows, names, strict=True)]
    if not all(same):
        k = same.index(False)
        raise InputError(source, f"image {k + 1} is {names[k]} but the table's row says {rows[k]}")
