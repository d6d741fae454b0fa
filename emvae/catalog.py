"""A sky catalogue of a run on FITS images (``emvae export-catalog``): one row per object.

For each image of the particle table whose FITS header holds a celestial WCS
(:func:`emvae.io.fits.celestial_wcs`, the one reader of image WCSs), the object's place and
orientation on the sky:

* **Position.** The canonical view's centre lies at ``shift_x_px``, ``shift_y_px`` from the
  image's centre (+x right, +y up with row 0 at the top: docs/conventions.md), i.e. at the
  0-based pixel (astropy's convention: x the column, y the row of the array as stored)

      x = (W - 1) / 2 + shift_x_px,     y = (H - 1) / 2 - shift_y_px

  of the whole image in the file (H rows, W columns: crops and jitter are already in the
  shifts). Its RA/Dec is the WCS at that pixel (``WCS.all_pix2world`` with origin 0,
  distortions included), in ICRS. ``x_image``, ``y_image`` give the same pixel 1-based, as
  FITS (CRPIX), ds9 and SExtractor's ``X_IMAGE`` count.
* **Position angle.** ``pa_deg`` is the position angle, east of north, of the canonical view's
  +y axis ("up" in the canonical view as emvae draws it, row 0 at the top) in this image: the
  direction ``u = (-sin t, cos t)`` (+x right, +y up) that a turn by ``t = theta_deg``
  counter-clockwise takes +y to, carried onto the sky by the WCS's local Jacobian at the
  object. It lies in [0, 360). With the usual orientation (north towards higher rows, east
  towards lower columns, det CD < 0) ``pa_deg = 180 - theta_deg``; with east to the right
  (det CD > 0) ``pa_deg = 180 + theta_deg`` (mod 360); a rotated CD or PC matrix adds its turn.
* **Uncertainties.** ``ra_std_arcsec`` (along RA on the sky, i.e. of RA·cos Dec, as Gaia's
  ``ra_error``), ``dec_std_arcsec`` and their correlation ``ra_dec_corr``: the shift's
  posterior stds (``shift_x_std_px``, ``shift_y_std_px``, taken as independent) carried through
  the same Jacobian. ``pa_std_deg`` is θ's posterior std (``theta_std_deg``).

Every column of the particle table follows (θ, shifts, ``z1..zK`` and ``z1_std..zK_std``,
``elbo``, ``split``, ...), so the catalogue is the table placed on the sky. Written through
:mod:`astropy.table` as FITS, ECSV or VOTable, with units.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import Table
from astropy.wcs.utils import wcs_to_celestial_frame

from emvae.errors import ConfigError, InputError
from emvae.io import input_kind
from emvae.io.fits import celestial_wcs, image_headers
from emvae.io.stack import split_image_name
from emvae.safety import atomic_output, refuse_existing

__all__ = [
    "FORMATS",
    "SKY_COLUMNS",
    "Catalog",
    "catalog_format",
    "export_catalog",
    "sky_catalog",
    "write_catalog",
]

#: Output suffix -> astropy's table format.
FORMATS = {
    ".fits": "fits",
    ".fit": "fits",
    ".fts": "fits",
    ".ecsv": "ascii.ecsv",
    ".vot": "votable",
    ".votable": "votable",
    ".xml": "votable",
}
#: The columns the catalogue adds before the particle table's own: name -> (unit, description).
SKY_COLUMNS: dict[str, tuple[u.UnitBase | None, str]] = {
    "ra_deg": (u.deg, "right ascension (ICRS) of the canonical view's centre"),
    "dec_deg": (u.deg, "declination (ICRS) of the canonical view's centre"),
    "ra_std_arcsec": (u.arcsec, "posterior std of the position along RA (of RA cos Dec)"),
    "dec_std_arcsec": (u.arcsec, "posterior std of the position along Dec"),
    "ra_dec_corr": (None, "correlation of the RA and Dec errors"),
    "pa_deg": (u.deg, "position angle, east of north, of the canonical view's +y axis"),
    "pa_std_deg": (u.deg, "posterior std of the position angle (theta_std_deg)"),
    "x_image": (u.pix, "column of the centre in the FITS image, 1-based (FITS, ds9)"),
    "y_image": (u.pix, "row of the centre in the FITS image, 1-based (FITS, ds9)"),
}
#: IVOA UCDs of the sky columns (VOTable FIELDs carry them: TOPCAT finds RA/Dec by them).
_UCD = {
    "ra_deg": "pos.eq.ra;meta.main",
    "dec_deg": "pos.eq.dec;meta.main",
    "ra_std_arcsec": "stat.error;pos.eq.ra",
    "dec_std_arcsec": "stat.error;pos.eq.dec",
    "ra_dec_corr": "stat.correlation;pos.eq",
    "pa_deg": "pos.posAng",
    "pa_std_deg": "stat.error;pos.posAng",
}
#: Units of the particle table's columns, by name ending.
_UNITS = {"_deg": u.deg, "_px": u.pix, "_arcsec": u.arcsec, "_A": u.AA}
#: Half the step of the central differences that give the WCS's local Jacobian, pixels.
_STEP = 0.5


@dataclass
class Catalog:
    """What :func:`write_catalog` wrote: the path, the astropy format and the rows."""

    path: Path
    format: str
    rows: int


def catalog_format(path: str | os.PathLike[str]) -> str:
    """astropy's format for an output named ``path`` (by suffix), or a ConfigError."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(
            f"{path}: unknown catalogue format; name it .fits, .ecsv or .vot "
            f"(suffixes {', '.join(FORMATS)})"
        )
    return FORMATS[suffix]


def _is_fits_name(name: str) -> bool:
    """Whether an image name ``k@file[HDU]`` names a FITS file (by suffix, as inputs are
    told apart)."""
    split = split_image_name(name)
    try:
        return split is not None and input_kind(split[1]) == "fits"
    except InputError:
        return False


def sky_catalog(table: pd.DataFrame, source: str = "the run") -> Table:
    """The sky catalogue of a particle table (one row per table row, same order).

    table: a run's particle table (:meth:`emvae.particles.Particles.table`) whose ``image``
    names FITS images (``k@file[HDU]``) that are still where the run read them; it needs
    ``theta_deg``, ``shift_x_px``, ``shift_y_px`` and their stds. ``source`` names the run
    in errors. Returns an astropy Table with the columns of :data:`SKY_COLUMNS` (degrees,
    arcsec, pixels; see the module's docstring for their definitions) after ``image`` and
    ``input_row``, then the table's other columns, with units.

    Raises :class:`InputError` naming the first image that is not a FITS image or whose header
    has no usable celestial WCS.
    """
    names = table["image"].astype(str).tolist()
    not_fits = [n for n in names if not _is_fits_name(n)]
    if not_fits:
        raise InputError(
            source,
            f"its images are not FITS images ({not_fits[0]}"
            f"{f' and {len(not_fits) - 1} more' if len(not_fits) > 1 else ''}): a sky "
            "catalogue needs FITS images whose header holds a celestial WCS",
        )
    headers = image_headers(names)
    n = len(table)
    rows, cols = np.array([h.shape for h in headers], dtype=np.float64).reshape(n, 2).T
    pixel = np.stack(  # 0-based (x, y) of each centre, (n, 2)
        [
            (cols - 1) / 2 + table["shift_x_px"].to_numpy(np.float64),
            (rows - 1) / 2 - table["shift_y_px"].to_numpy(np.float64),
        ],
        axis=1,
    )
    found: list[tuple[Any, str | None]] = [celestial_wcs(h.header) for h in headers]  # (WCS, why)
    missing = [(name, why) for name, (wcs, why) in zip(names, found, strict=True) if wcs is None]
    if missing:
        name, why = missing[0]
        more = f" ({len(missing)} of the {n} images lack one)" if len(missing) > 1 else ""
        raise InputError(
            source,
            f"image {name} has no celestial WCS in its FITS header"
            f"{f' ({why})' if why else ''}: no RA/Dec to give{more}",
        )
    # five points per object: the centre, then x -/+ STEP, y -/+ STEP (0-based pixels)
    steps = np.array([[0, 0], [-_STEP, 0], [_STEP, 0], [0, -_STEP], [0, _STEP]])
    lon, lat = np.empty((2, n, 5))  # in each image's celestial frame, degrees
    frames: dict[str, tuple[object, list[int]]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FITSFixedWarning: the header is as it is
        for k, (wcs, _) in enumerate(found):
            try:
                world = wcs.all_pix2world(pixel[k] + steps, 0)
                frame = wcs_to_celestial_frame(wcs)
            except Exception as e:  # a WCS astropy reads but cannot place on the sky
                what = (str(e).strip().splitlines() or [""])[0]
                raise InputError(
                    source, f"image {names[k]}: its WCS gives no sky position ({what})"
                ) from None
            lon[k], lat[k] = world[:, wcs.wcs.lng], world[:, wcs.wcs.lat]
            frames.setdefault(repr(frame), (frame, []))[1].append(k)
    ra, dec = np.empty((2, n, 5))  # ICRS, degrees
    for frame, ks in frames.values():  # one transformation per celestial frame
        c = SkyCoord(lon[ks] * u.deg, lat[ks] * u.deg, frame=frame).icrs
        ra[ks], dec[ks] = c.ra.deg, c.dec.deg
    centre = SkyCoord(ra[:, 0] * u.deg, dec[:, 0] * u.deg, frame="icrs")

    def offset(j: int) -> np.ndarray:
        """(east, north) offsets in arcsec from each centre to its point ``j``: ``(n, 2)``."""
        east, north = centre.spherical_offsets_to(
            SkyCoord(ra[:, j] * u.deg, dec[:, j] * u.deg, frame="icrs")
        )
        return np.stack([east.to_value(u.arcsec), north.to_value(u.arcsec)], axis=1)

    d_col = (offset(2) - offset(1)) / (2 * _STEP)  # per pixel towards higher columns (+x)
    d_up = -(offset(4) - offset(3)) / (2 * _STEP)  # per pixel towards lower rows (+y up)
    jac = np.stack([d_col, d_up], axis=2)  # (n, 2 sky: east, north, 2 image: x, y up)

    t = np.radians(table["theta_deg"].to_numpy(np.float64))
    up = np.stack([-np.sin(t), np.cos(t)], axis=1)  # canonical +y turned by theta, (n, 2)
    east, north = np.einsum("nij,nj->ni", jac, up).T
    pa = np.mod(np.degrees(np.arctan2(east, north)), 360.0)
    pa[pa >= 360.0] = 0.0  # -0.0 and tiny negatives round to 360 in np.mod
    var = table[["shift_x_std_px", "shift_y_std_px"]].to_numpy(np.float64) ** 2  # (n, 2) px^2
    cov = np.einsum("nij,nj,nkj->nik", jac, var, jac)  # (n, 2, 2) arcsec^2
    sd = np.sqrt(np.stack([cov[:, 0, 0], cov[:, 1, 1]], axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.where(sd.prod(1) > 0, cov[:, 0, 1] / sd.prod(1), 0.0)

    sky = {
        "ra_deg": ra[:, 0],
        "dec_deg": dec[:, 0],
        "ra_std_arcsec": sd[:, 0],
        "dec_std_arcsec": sd[:, 1],
        "ra_dec_corr": corr,
        "pa_deg": pa,
        "pa_std_deg": table["theta_std_deg"].to_numpy(np.float64),
        "x_image": pixel[:, 0] + 1.0,
        "y_image": pixel[:, 1] + 1.0,
    }
    out = Table()
    first = [c for c in ("image", "input_row") if c in table]
    for c in first:
        out[c] = _strings(table[c]) if c == "image" else table[c].to_numpy()
    for c, values in sky.items():
        unit, text = SKY_COLUMNS[c]
        out[c] = values
        out[c].unit, out[c].description = unit, text
        if c in _UCD:
            out[c].meta["ucd"] = _UCD[c]
    for c in table.columns:
        if c in first or c in sky:
            continue
        col = table[c]
        out[c] = col.to_numpy() if col.dtype.kind in "biuf" else _strings(col)
        unit = next((v for end, v in _UNITS.items() if str(c).endswith(end)), None)
        if unit is not None and out[c].dtype.kind == "f":
            out[c].unit = unit
    return out


def _strings(col: pd.Series) -> np.ndarray:
    """A text column as a fixed-width unicode array (what FITS and VOTable tables hold)."""
    return np.asarray(col.astype(str).tolist(), dtype=str)


def write_catalog(
    catalog: Table,
    path: str | os.PathLike[str],
    force: bool = False,
    meta: dict[str, Any] | None = None,
) -> Catalog:
    """Write ``catalog`` to ``path`` in the format its suffix names (:data:`FORMATS`),
    atomically; an existing file is refused unless ``force``. ``meta``: short keys (up to 8
    characters: FITS header cards) and string values, written as the FITS table's header
    cards, ECSV's ``meta`` and, as ``KEY=value; ...``, the VOTable's DESCRIPTION."""
    p = Path(path)
    fmt = catalog_format(p)
    refuse_existing(p, force)
    table = catalog.copy(copy_data=False)
    meta = dict(meta or {})
    if fmt == "votable":  # astropy writes a VOTable's meta as its description only
        table.meta["description"] = "; ".join(f"{k}={v}" for k, v in meta.items())
    else:
        table.meta.update(meta)
    with atomic_output(p) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", u.UnitsWarning)  # 'pix' in VOTable: written as is
        table.write(tmp, format=fmt, overwrite=True)
    return Catalog(p, fmt, len(table))


def export_catalog(
    run: str | os.PathLike[str], out: str | os.PathLike[str], force: bool = False
) -> Catalog:
    """``emvae export-catalog``: the sky catalogue (:func:`sky_catalog`) of the run in folder
    ``run``, written to ``out`` (.fits, .ecsv or .vot: :data:`FORMATS`) with the run's id and
    the emvae version in its header. Everything is checked before anything is written: the
    format, an existing ``out`` (refused unless ``force``; never one of the run's inputs or
    outputs), the images' WCSs."""
    from emvae._version import __version__
    from emvae.io import input_files
    from emvae.run import OUTPUTS, Run
    from emvae.safety import check_writable, refuse_inputs_as_outputs

    out = Path(out)
    catalog_format(out)
    refuse_existing(out, force)
    r = Run.open(run)
    table = r.table()
    config = r.config
    inputs = input_files(config.data.paths, table["image"].astype(str))
    refuse_inputs_as_outputs([out], [*inputs, *(r.path / n for n in OUTPUTS)])
    check_writable(out.parent)
    catalog = sky_catalog(table, str(r.path))
    meta = {
        "EMVAE": __version__,
        "RUN": str(r.path),
        "RUN_ID": config.run_id,
        "RADESYS": "ICRS",
        "PA_AXIS": "canonical +y",
    }
    return write_catalog(catalog, out, force, meta)
