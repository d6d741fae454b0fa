#!/usr/bin/env python
"""Regenerate the files in tests/data (see README.md there): run ``python tests/data/make.py``.

Needs RELION 3.1 (``relion_project``, ``relion_stack_create``; Debian's ``relion`` package, as
installed by .ci/run), and mrcfile, starfile, cryosparc-tools and astropy (emvae's test extras).
Every number below is fixed, so a rerun writes the same pixels and tables; only the date in
the MRC header labels RELION writes and the time in starfile's first comment line change."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import starfile

HERE = Path(__file__).resolve().parent
BOX, APIX, N = 32, 2.5, 8  # box (px), pixel size (A), particles
DETECTOR_UM = 5.0  # RELION 3.0 pixel size = detector pixel / magnification (5 um / 20000)


def blob_map() -> np.ndarray:
    """A 32^3 map of four Gaussian blobs of different sizes, no symmetry."""
    g = np.arange(BOX) - BOX // 2
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    vol = np.zeros((BOX, BOX, BOX), np.float32)
    for cx, cy, cz, s, a in [
        (5, 0, 0, 3, 1),
        (-5, 4, 2, 2.5, 0.8),
        (0, -6, -2, 2, 0.6),
        (2, 3, -5, 1.5, 0.5),
    ]:
        vol += a * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * s * s))
    return vol


def angles_table(shifted: bool) -> dict[str, pd.DataFrame]:
    """relion_project's --ang input: RELION 3.1 optics + particles with angles, origins, CTF."""
    rng = np.random.default_rng(15)
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnVoltage": [300.0],
            "rlnSphericalAberration": [2.7],
            "rlnAmplitudeContrast": [0.1],
            "rlnImagePixelSize": [APIX],
            "rlnImageSize": [BOX],
            "rlnImageDimensionality": [2],
        }
    )
    origins = np.round(rng.uniform(-4, 4, (N, 2)), 1) * APIX  # whole tenths of a pixel, in A
    particles = pd.DataFrame(
        {
            "rlnImageName": [f"{k + 1:06d}@unused.mrcs" for k in range(N)],
            "rlnAngleRot": np.round(rng.uniform(-180, 180, N), 2),
            "rlnAngleTilt": np.round(np.degrees(np.arccos(rng.uniform(-1, 1, N))), 2),
            "rlnAnglePsi": np.round(rng.uniform(-180, 180, N), 2),
            "rlnOriginXAngst": origins[:, 0] if shifted else np.zeros(N),
            "rlnOriginYAngst": origins[:, 1] if shifted else np.zeros(N),
            "rlnDefocusU": np.round(rng.uniform(12000, 25000, N), 1),
            "rlnDefocusV": 0.0,
            "rlnDefocusAngle": np.round(rng.uniform(0, 180, N), 2),
            "rlnPhaseShift": np.zeros(N),
            "rlnCtfBfactor": np.zeros(N),
            "rlnCtfScalefactor": np.ones(N),
            "rlnOpticsGroup": np.ones(N, int),
        }
    )
    particles["rlnDefocusV"] = particles["rlnDefocusU"] - np.round(rng.uniform(0, 1500, N), 1)
    return {"optics": optics, "particles": particles}


def run(args: list[str], cwd: Path) -> None:
    r = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")


def relion_files(tmp: Path) -> None:
    with mrcfile.new(tmp / "blobs.mrc") as m:
        m.set_data(blob_map())
        m.voxel_size = APIX
    for name, shifted in (("blobs31", True), ("blobs31_centered", False)):
        starfile.write(angles_table(shifted), tmp / f"{name}_in.star")
        run(
            ["relion_project", "--i", "blobs.mrc", "--o", name, "--ang", f"{name}_in.star"]
            + ["--angpix", str(APIX), "--ctf"],
            tmp,
        )
        for ext in (".mrcs", ".star"):
            shutil.copy(tmp / f"{name}{ext}", HERE / f"{name}{ext}")

    blocks = starfile.read(HERE / "blobs31.star", always_dict=True)
    optics, particles = blocks["optics"], blocks["particles"]
    # the same blocks in the other order
    starfile.write({"particles": particles, "optics": optics}, HERE / "blobs31.v2.star")
    # RELION 3.0 layout: optics in every row, pixel size as detector pixel / magnification,
    # origins in pixels, one unnamed block
    v30 = particles.drop(columns=["rlnOriginXAngst", "rlnOriginYAngst", "rlnOpticsGroup"])
    v30.insert(4, "rlnOriginX", particles["rlnOriginXAngst"] / APIX)
    v30.insert(5, "rlnOriginY", particles["rlnOriginYAngst"] / APIX)
    for col in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"):
        v30[col] = optics[col].iloc[0]
    v30["rlnDetectorPixelSize"] = DETECTOR_UM
    v30["rlnMagnification"] = DETECTOR_UM * 1e4 / APIX
    starfile.write(v30, HERE / "blobs30.star")
    # image names in a folder that is not here (as in a STAR file copied out of its project)
    index = particles["rlnImageName"].str.split("@").str[0]
    away = particles.assign(rlnImageName=index + "@Extract/job007/Micrographs/blobs31.mrcs")
    starfile.write({"optics": optics, "particles": away}, HERE / "blobs_elsewhere.star")

    # the particles split over two stacks that relion_stack_create writes, in split/
    (HERE / "split").mkdir(exist_ok=True)
    shutil.copy(HERE / "blobs31.mrcs", tmp / "blobs31.mrcs")
    names = []
    for part, rows in (("a", slice(0, N // 2)), ("b", slice(N // 2, N))):
        sub = particles.iloc[rows]
        starfile.write({"optics": optics, "particles": sub}, tmp / f"sub_{part}.star")
        run(["relion_stack_create", "--i", f"sub_{part}.star", "--o", f"blobs_{part}"], tmp)
        shutil.copy(tmp / f"blobs_{part}.mrcs", HERE / "split" / f"blobs_{part}.mrcs")
        names += [f"{k + 1}@blobs_{part}.mrcs" for k in range(len(sub))]
    split = particles.assign(rlnImageName=names)
    starfile.write({"optics": optics, "particles": split}, HERE / "blobs_split.star")


def cryosparc_files() -> None:
    from cryosparc.dataset import CSDAT_FORMAT, Dataset

    blocks = starfile.read(HERE / "blobs31.star", always_dict=True)
    optics, p = blocks["optics"].iloc[0], blocks["particles"]
    index = p["rlnImageName"].str.split("@").str[0].astype(int).to_numpy()

    def dataset(path: str) -> Dataset:
        d = Dataset.allocate(
            N,
            [
                ("blob/path", "O"),
                ("blob/idx", "<u4"),
                ("blob/shape", "<u4", (2,)),
                ("blob/psize_A", "<f4"),
                ("blob/sign", "<f4"),
                ("ctf/type", "O"),
                ("ctf/accel_kv", "<f4"),
                ("ctf/cs_mm", "<f4"),
                ("ctf/amp_contrast", "<f4"),
                ("ctf/df1_A", "<f4"),
                ("ctf/df2_A", "<f4"),
                ("ctf/df_angle_rad", "<f4"),
                ("ctf/phase_shift_rad", "<f4"),
                ("ctf/scale", "<f4"),
                ("ctf/bfactor", "<f4"),
            ],
        )
        d["uid"] = np.arange(1, N + 1, dtype=np.uint64) * 1000003
        d["blob/path"] = [path] * N
        d["blob/idx"] = index - 1  # 0-based
        d["blob/shape"] = [[BOX, BOX]] * N
        d["blob/psize_A"] = float(optics["rlnImagePixelSize"])
        d["blob/sign"] = -1.0
        d["ctf/type"] = ["spline"] * N
        d["ctf/accel_kv"] = float(optics["rlnVoltage"])
        d["ctf/cs_mm"] = float(optics["rlnSphericalAberration"])
        d["ctf/amp_contrast"] = float(optics["rlnAmplitudeContrast"])
        d["ctf/df1_A"] = p["rlnDefocusU"].to_numpy()
        d["ctf/df2_A"] = p["rlnDefocusV"].to_numpy()
        d["ctf/df_angle_rad"] = np.radians(p["rlnDefocusAngle"].to_numpy())
        d["ctf/phase_shift_rad"] = np.radians(p["rlnPhaseShift"].to_numpy())
        d["ctf/scale"] = 1.0
        d["ctf/bfactor"] = 0.0
        return d

    dataset("blobs31.mrcs").save(HERE / "blobs.cs")  # NumPy layout (the default format)
    dataset("blobs31.mrcs").save(HERE / "blobs_csdat.cs", format=CSDAT_FORMAT)
    dataset(">J7/extract/blobs31.mrcs").save(HERE / "blobs_elsewhere.cs")


def fits_files() -> None:
    from astropy.io import fits

    # a 24x24 galaxy-like stamp, float64, with a rotated TAN WCS of 0.05 arcsec/px
    g = np.arange(24) - 11.5
    y, x = np.meshgrid(g, g, indexing="ij")
    u, v = 0.8 * x + 0.6 * y, -0.6 * x + 0.8 * y
    image = 100.0 * np.exp(-(u**2 / 18 + v**2 / 6)) + 10.0
    scale, turn = 0.05 / 3600, np.radians(30.0)
    header = fits.Header()
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["CRVAL1"], header["CRVAL2"] = 150.1, 2.2
    header["CRPIX1"], header["CRPIX2"] = 12.5, 12.5
    header["CD1_1"], header["CD1_2"] = -scale * np.cos(turn), scale * np.sin(turn)
    header["CD2_1"], header["CD2_2"] = scale * np.sin(turn), scale * np.cos(turn)
    fits.PrimaryHDU(image, header).writeto(HERE / "wcs_galaxy.fits", overwrite=True)
    # a catalogue: a table and no image
    table = fits.BinTableHDU.from_columns(
        [fits.Column("ID", "J", array=np.arange(3)), fits.Column("MAG", "E", array=[21.5, 22, 23])]
    )
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(HERE / "catalogue.fits", overwrite=True)
    # four image HDUs of slightly different shapes (PSF stamps): values row * 100 + column + k
    hdus = [fits.PrimaryHDU()]
    for k, (h, w) in enumerate([(13, 13), (15, 13), (15, 15), (13, 15)]):
        a = np.add.outer(np.arange(h) * 100.0, np.arange(w)) + 1000.0 * k
        hdus.append(fits.ImageHDU(a.astype(np.float32)))
    fits.HDUList(hdus).writeto(HERE / "psf_hdus.fits", overwrite=True)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        relion_files(Path(tmp))
    cryosparc_files()
    fits_files()


if __name__ == "__main__":
    main()
