"""RELION STAR particle files (3.0 and 3.1 with optics groups) through ``starfile``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import starfile

from emvae.config import physical
from emvae.errors import InputError
from emvae.io.mrc import MrcSource
from emvae.io.stack import ImageStack, Rows, split_image_names
from emvae.io.tables import check_complete

STAR_SUFFIXES = (".star",)


def read_star(
    path: str | os.PathLike[str], datadir: str | os.PathLike[str] | None = None
) -> ImageStack:
    """The particles of a RELION STAR file, in the file's row order.

    ``N@stack`` names (N 1-based) are resolved by :func:`resolve_stack`. The pixel size comes
    from the optics group (3.1: ``rlnImagePixelSize``) or the particle rows (3.0:
    ``rlnImagePixelSize``, else ``rlnDetectorPixelSize`` [um] * 1e4 / ``rlnMagnification``);
    when rows disagree it is left unset and a note says so.
    """
    p = Path(path)
    blocks = read_star_blocks(p)
    particles, optics, version = particle_block(p, blocks)
    names = particles["rlnImageName"].astype(str)
    index, files, has_at = split_image_names(names)
    bad = index.isna() | (index < 1) | (index != index.round())  # "7.5@stack" is no image
    if bad.any():
        row = int(np.argmax(bad.to_numpy()))
        raise InputError(p, f"row {row + 1}: image name {names[row]!r} is not N@stack with N >= 1")
    part, local, sources = _locate(p, files.to_numpy(), index.to_numpy(np.int64) - 1, datadir)
    counts = np.array([len(s) for s in sources])
    whole = ~has_at.to_numpy() & (counts[part] > 1)  # "p.mrcs": which of its images?
    if whole.any():
        row = int(np.argmax(whole))
        raise InputError(
            p,
            f"row {row + 1}: image name {names[row]!r} has no N@ but "
            f"{sources[part[row]].path} holds {counts[part[row]]} images; name each image "
            f"as N@{names[row]} (N from 1)",
        )
    if optics is not None and "rlnImageSize" in optics:
        sizes = set(optics["rlnImageSize"].astype(int))
        if sources[0].shape[-1] not in sizes:
            raise InputError(
                p,
                f"the optics table says rlnImageSize {sorted(sizes)} but "
                f"{sources[0].path} holds {sources[0].shape[-1]}-px images",
            )
    apix, notes = _pixel_size(particles, optics, p)
    stack = ImageStack(
        images=Rows(sources, part, local),
        names=names.tolist(),
        apix=apix,
        source=str(p),
        format=f"RELION {version} STAR",
        apix_from=("STAR optics table" if optics is not None else "STAR rows") if apix else None,
        metadata=particles.reset_index(drop=True),
        optics=optics,
        star_version=version,
        notes=notes,
    )
    if stack.apix is None and not notes:  # nothing in the STAR: the stacks' headers
        header = {s.apix for s in sources} - {None}
        if len(header) == 1:
            stack.apix, stack.apix_from = header.pop(), "MRC header"
    return stack


def read_star_blocks(p: Path) -> dict[str, Any]:
    """Every data block of the STAR file ``p`` by name (starfile's tables); an
    :class:`InputError` for a missing or unreadable file."""
    if not p.exists():
        raise InputError(p, "no such file")
    try:
        blocks: dict[str, Any] = starfile.read(p, always_dict=True)
    except Exception as e:  # starfile raises assorted parser errors
        raise InputError(p, f"not a readable STAR file ({type(e).__name__}: {e})") from None
    return blocks


def particle_block(
    p: Path, blocks: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame | None, str]:
    """(particle rows, optics table or None, "3.0"/"3.1") of a parsed STAR file."""
    tables = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame)}
    optics = tables.get("optics")
    if optics is not None and "particles" in tables:
        particles = tables["particles"]
    else:
        found = [v for v in tables.values() if "rlnImageName" in v.columns]
        particles = found[0] if found else None
    if particles is None or "rlnImageName" not in particles.columns:
        listing = ", ".join(f"data_{k}" for k in blocks) or "none"
        raise InputError(
            p, f"has no particle table with an rlnImageName column (blocks: {listing})"
        )
    if len(particles) == 0:
        raise InputError(p, "the particle table has no rows")
    for table in (particles, optics):
        twice = [] if table is None else sorted(set(table.columns[table.columns.duplicated()]))
        if twice:
            raise InputError(p, f"the column {twice[0]} appears more than once in a table")
    check_complete(p, particles, star=True)  # a file cut in its last row: not 'optics groups [nan]'
    if optics is None:
        return particles, None, "3.0"
    if "rlnOpticsGroup" in particles.columns and "rlnOpticsGroup" in optics.columns:
        missing = set(particles["rlnOpticsGroup"]) - set(optics["rlnOpticsGroup"])
        if missing:
            raise InputError(p, f"particles refer to optics groups {sorted(missing)} not defined")
    return particles, optics, "3.1"


def resolve_stack(
    recorded: str, base: Path, datadir: str | os.PathLike[str] | None = None
) -> list[Path]:
    """Where a stack named in a metadata file may be, most likely first.

    With ``datadir``, only files inside it: ``datadir/recorded`` (a relative path that stays
    inside), then ``datadir/<file name>`` (for paths recorded in another project, absolute ones
    included). Without: ``recorded`` if absolute, else relative to ``base`` (the metadata
    file's folder), then to the working directory (a RELION project folder).
    """
    rec = Path(recorded)
    if datadir is not None:
        d = Path(datadir)
        inside = [] if rec.is_absolute() or ".." in rec.parts else [d / rec]
        return [*inside, d / rec.name]
    if rec.is_absolute():
        return [rec]
    return [base / rec, rec]


def open_stacks(
    p: Path, files: np.ndarray, datadir: str | os.PathLike[str] | None, what: str = "row"
) -> tuple[np.ndarray, list[MrcSource]]:
    """Open every distinct stack of ``files``: (part index per row, sources)."""
    uniq, first, part = np.unique(files, return_index=True, return_inverse=True)
    found: dict[str, Path] = {}  # the stack file of each name
    tried: dict[str, list[Path]] = {}  # the paths looked at for each name not found
    for name in uniq:
        candidates = list(dict.fromkeys(resolve_stack(str(name), p.parent, datadir)))
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is None:
            tried[name] = candidates
        else:
            found[name] = hit
    missing = [k for k, name in enumerate(uniq) if name in tried]
    if missing:
        k = min(missing, key=lambda k: first[k])
        hint = "" if datadir is not None else "; give --datadir DIR (the folder holding it)"
        looked = ", ".join(str(c) for c in tried[uniq[k]])
        raise InputError(
            p,
            f"{what} {first[k] + 1}: stack {uniq[k]} not found (looked for {looked}){hint}"
            + (f" ({len(missing)} stacks missing in all)" if len(missing) > 1 else ""),
        )
    sources = [MrcSource(found[name]) for name in uniq]
    sizes = {s.shape[1:] for s in sources}
    if len(sizes) > 1:
        shown = ", ".join(f"{s.path.name}: {s.shape[-1]}px" for s in sources[:4])
        raise InputError(p, f"the stacks it names hold images of different sizes ({shown} ...)")
    return part, sources


def _locate(
    p: Path, files: np.ndarray, local: np.ndarray, datadir: str | os.PathLike[str] | None
) -> tuple[np.ndarray, np.ndarray, list[MrcSource]]:
    part, sources = open_stacks(p, files, datadir)
    counts = np.array([len(s) for s in sources])
    beyond = local >= counts[part]
    if beyond.any():
        row = int(np.argmax(beyond))
        src = sources[part[row]]
        raise InputError(
            p,
            f"row {row + 1}: image {local[row] + 1} is beyond the end of {src.path} "
            f"({len(src)} images)",
        )
    return part, local, sources


def _pixel_size(
    particles: pd.DataFrame, optics: pd.DataFrame | None, path: Path
) -> tuple[float | None, list[str]]:
    """(pixel size in Å, notes) of a STAR file's particles: their optics groups', else their
    rows'; None (and a note) when they differ."""
    values = None
    if optics is not None:
        col = next((c for c in ("rlnImagePixelSize", "rlnPixelSize") if c in optics), None)
        if col is not None:
            groups = optics.set_index("rlnOpticsGroup")[col]
            if "rlnOpticsGroup" in particles:
                values = particles["rlnOpticsGroup"].map(groups).to_numpy(np.float64)
            else:
                values = groups.to_numpy(np.float64)
    else:
        col = next((c for c in ("rlnImagePixelSize", "rlnPixelSize") if c in particles), None)
        if col is not None:
            values = particles[col].to_numpy(np.float64)
        elif {"rlnDetectorPixelSize", "rlnMagnification"} <= set(particles.columns):
            values = (
                particles["rlnDetectorPixelSize"].to_numpy(np.float64)
                * 1e4
                / particles["rlnMagnification"].to_numpy(np.float64)
            )
    if values is None:
        return None, []
    bad = ~(np.isfinite(values) & (values > 0))
    if bad.any():  # RELION's value, not a number to replace silently by the MRC header's
        row = int(np.argmax(bad))
        if optics is None:
            where = f"row {row + 1}"
        elif "rlnOpticsGroup" in particles:
            where = f"optics group {particles['rlnOpticsGroup'].iloc[row]}"
        else:
            where = "the optics table"
        name = col or "rlnDetectorPixelSize * 1e4 / rlnMagnification"
        physical(f"{where}: the pixel size {name}", values[row], path)
    return _one_pixel_size(values)


def _one_pixel_size(values: np.ndarray) -> tuple[float | None, list[str]]:
    lo, hi = float(values.min()), float(values.max())
    if hi - lo > 1e-4 * hi:
        return None, [
            f"pixel sizes differ between optics groups ({lo:.4g} to {hi:.4g} A); "
            "shifts are reported in pixels only unless --apix is given"
        ]
    return round(float(np.median(values)), 6), []
