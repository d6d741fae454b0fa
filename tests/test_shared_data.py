"""Real files written by RELION, cryoSPARC, cryoDRGN, ASPIRE and telescopes.

Every file in tests/data, and in em/ and star/ of ../shared/data, opens, or is refused with one
line naming it. tests/data holds small files that this project made with RELION 3.1,
cryosparc-tools and astropy (tests/data/README.md), so every check runs in any checkout; the
files in ../shared/data are other people's, stay outside the repository, and add the same checks
on real particles where that folder exists (skipped where it does not). tests/test_formats.py
covers the same formats with files it writes itself."""

from __future__ import annotations

import mrcfile
import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from conftest import DATA, SHARED, real_data

from emvae.errors import InputError
from emvae.io import open_stack

OPENS = {  # file -> (images, box, pixel size or None)
    "empiar_10076_7.mrc": (7, 320, None),
    "empiar_10076_7.star": (7, 320, 1.31),
    "empiar_10076_7.cs": (7, 320, 1.31),
    "relion31.mrcs": (5, 256, None),
    "relion31.star": (5, 256, 2.806),
    "relion31.v2.star": (5, 256, 2.806),
    "toy_projections.mrcs": (1000, 30, 1.0),
    "toy_projections.star": (1000, 30, 1.0),
    "toy_projections.txt": (1000, 30, 1.0),
    "sample.mrcs": (17, 200, None),
    "sample_particles_relion30.star": (17, 200, 1.338),
    "sample_particles_relion31.star": (17, 200, 1.4),
    "rln_proj_64.mrcs": (None, 64, None),
    "rln_proj_64.star": (None, 64, None),
    "rln_proj_64_centered.star": (None, 64, None),
    "rln_proj_64_shifted.star": (None, 64, None),
}
REFUSED = "refused"
DATA_OPENS = {  # tests/data: every file, with what it must give
    "blobs31.mrcs": (8, 32, 2.5),
    "blobs31.star": (8, 32, 2.5),
    "blobs31.v2.star": (8, 32, 2.5),
    "blobs31_centered.mrcs": (8, 32, 2.5),
    "blobs31_centered.star": (8, 32, 2.5),
    "blobs30.star": (8, 32, 2.5),
    "blobs.cs": (8, 32, 2.5),
    "blobs_csdat.cs": (8, 32, 2.5),
    "split/blobs_a.mrcs": (4, 32, None),  # relion_stack_create writes no voxel size
    "split/blobs_b.mrcs": (4, 32, None),
    "wcs_galaxy.fits": (1, 24, None),
    "blobs_elsewhere.star": REFUSED,  # stacks in folders that are not there
    "blobs_elsewhere.cs": REFUSED,
    "blobs_split.star": REFUSED,
    "catalogue.fits": REFUSED,  # no image
    "psf_hdus.fits": REFUSED,  # images of different sizes
}


def _shared_files():
    """Every file under em/ and star/ of ../shared/data, relative to it."""
    files = set()
    for sub in ("em", "star"):
        files.update(f.relative_to(SHARED) for f in (SHARED / sub).rglob("*") if f.is_file())
    return sorted(files)


def _data_files():
    """Every data file in tests/data (not its README or make.py), relative to it."""
    return sorted(
        str(f.relative_to(DATA))
        for f in DATA.rglob("*")
        if f.suffix in {".mrcs", ".star", ".cs", ".fits"}
    )


def test_data_table_lists_every_file_in_tests_data():
    assert _data_files() == sorted(DATA_OPENS)


FILES = [("data", r) for r in _data_files()] + [("shared", str(r)) for r in _shared_files()]


@pytest.mark.parametrize(("where", "rel"), FILES, ids=[f"{w}/{r}" for w, r in FILES])
def test_every_file_opens_or_is_refused_clearly(where, rel):
    if where == "data":  # tests/data: what each file gives is known exactly
        path, expected = DATA / rel, DATA_OPENS[rel]
        if expected == REFUSED:
            with pytest.raises(InputError) as e:
                open_stack(path)
            assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)
            return
        s = open_stack(path)
        n, box, apix = expected
        assert (len(s), s.size, s.images[:1].shape[-1]) == (n, box, box)
        assert s.apix == (None if apix is None else pytest.approx(apix, abs=1e-6))
        return
    path = real_data(rel) / rel
    try:
        s = open_stack(path)
    except InputError as e:
        msg = str(e)
        assert path.name in msg and "\n" not in msg
        return
    assert len(s) > 0 and s.images[:1].shape[-1] == s.size
    expected = OPENS.get(path.name)
    if expected is not None:
        n, box, apix = expected
        assert s.size == box and (n is None or len(s) == n)
        if apix is not None:
            assert s.apix == pytest.approx(apix, abs=1e-3)


def _blobs() -> np.ndarray:
    """RELION's 8 projections in tests/data, read with mrcfile itself: ``(8, 1, 32, 32)``."""
    return mrcfile.read(DATA / "blobs31.mrcs")[:, None]


def test_files_naming_stacks_in_absent_folders_say_which_and_find_them_with_datadir():
    msg = r"blobs_elsewhere.star: row 1: stack Extract/job007/Micrographs/blobs31.mrcs not found"
    with pytest.raises(InputError, match=msg + r".*--datadir"):
        open_stack(DATA / "blobs_elsewhere.star")
    with pytest.raises(InputError, match=r"row 1: stack J7/extract/blobs31.mrcs not found"):
        open_stack(DATA / "blobs_elsewhere.cs")
    for name in ("blobs_elsewhere.star", "blobs_elsewhere.cs"):  # found by file name
        s = open_stack(DATA / name, datadir=DATA)
        assert np.array_equal(s.images[:], _blobs()) and s.apix == 2.5


def test_metadata_only_files_say_which_stack_is_missing():
    em = real_data("em/relion31.6opticsgroups.star", "em/cryosparc_J2_particles_exported.cs") / "em"
    with pytest.raises(InputError, match=r"row \d+: stack Polish/.*not found.*--datadir"):
        open_stack(em / "relion31.6opticsgroups.star")
    with pytest.raises(InputError, match=r"stack .*not found"):
        open_stack(em / "cryosparc_J2_particles_exported.cs")


def test_star_and_cs_name_the_same_particles_as_the_stack():
    names = ("empiar_10076_7.mrc", "empiar_10076_7.star", "empiar_10076_7.cs")  # 2.9 MB stack
    em = real_data(*(f"em/{n}" for n in names)) / "em"
    mrc = open_stack(em / "empiar_10076_7.mrc").images[:]
    assert np.array_equal(open_stack(em / "empiar_10076_7.star").images[:], mrc)
    assert np.array_equal(open_stack(em / "empiar_10076_7.cs").images[:], mrc)


def test_relion_and_cryosparc_files_of_the_blobs_name_the_same_pixels():
    """RELION 3.1 and 3.0 STAR files and cryoSPARC .cs files of both layouts, one stack."""
    blobs = _blobs()
    assert blobs.dtype == np.float32 and blobs.std() > 0
    for name in ("blobs31.star", "blobs31.v2.star", "blobs30.star", "blobs.cs", "blobs_csdat.cs"):
        s = open_stack(DATA / name)
        assert np.array_equal(s.images[:], blobs), name
        index = [(int(n.split("@")[0]), n.split("@")[1]) for n in s.names]
        assert index == [(k, "blobs31.mrcs") for k in range(1, 9)] and s.apix == 2.5, name
    v31, v2 = open_stack(DATA / "blobs31.star"), open_stack(DATA / "blobs31.v2.star")
    assert (v31.star_version, v2.star_version) == ("3.1", "3.1") and len(v31.optics) == 1
    assert open_stack(DATA / "blobs30.star").star_version == "3.0"
    assert v31.optics["rlnVoltage"].iloc[0] == 300.0
    assert v31.metadata["rlnOriginXAngst"].tolist() == v2.metadata["rlnOriginXAngst"].tolist()
    # the 3.0 file: origins in pixels, 2.5 A/px from 5 um detector pixels at 20000x
    v30 = open_stack(DATA / "blobs30.star").metadata
    assert np.allclose(v30["rlnOriginX"] * 2.5, v31.metadata["rlnOriginXAngst"])
    assert np.abs(v30["rlnOriginX"]).max() > 1  # the origins are not all zero
    # the .cs: 0-based blob/idx, the 1-based STAR index minus one
    cs = open_stack(DATA / "blobs.cs").metadata
    assert cs["blob/idx"].tolist() == list(range(8))


def test_split_stacks_written_by_relion_need_datadir_and_hold_the_same_pixels():
    with pytest.raises(InputError, match=r"row 1: stack blobs_a.mrcs not found.*2 stacks"):
        open_stack(DATA / "blobs_split.star")
    split = open_stack(DATA / "blobs_split.star", datadir=DATA / "split")
    assert len(split) == 8 and np.array_equal(split.images[:], _blobs())
    assert split.apix == 2.5  # from the STAR's optics; relion_stack_create's stacks say 0


def test_relion31_stars_in_either_block_order_name_the_stack():
    em = real_data("em/relion31.mrcs", "em/relion31.star", "em/relion31.v2.star") / "em"
    rel = open_stack(em / "relion31.mrcs").images[:]
    v1, v2 = open_stack(em / "relion31.star"), open_stack(em / "relion31.v2.star")
    assert np.array_equal(v1.images[:], rel) and np.array_equal(v2.images[:], rel)
    assert v1.star_version == "3.1" and len(v1.optics) == 1


def test_datadir_split_stacks_match_the_single_stack():
    names = ("toy_projections.mrcs", "toy_projections_dir.star")  # 3.6 MB + 3.6 MB of stacks
    names += ("toy_datadir/toy_images_a.mrcs", "toy_datadir/toy_images_b.mrcs")
    em = real_data(*(f"em/{n}" for n in names)) / "em"
    whole = open_stack(em / "toy_projections.mrcs").images[:]
    with pytest.raises(InputError, match=r"row 1: stack toy_images_b.mrcs not found"):
        open_stack(em / "toy_projections_dir.star")
    split = open_stack(em / "toy_projections_dir.star", datadir=em / "toy_datadir")
    assert len(split) == 1000
    # the same 1000 projections, each once, whatever the stacks' order
    a = np.sort(whole.reshape(1000, -1).sum(1))
    b = np.sort(split.images[:].reshape(1000, -1).sum(1))
    assert np.allclose(a, b)


def test_fits_files_in_tests_data():
    with pytest.raises(InputError, match="catalogue.fits: holds no image"):
        open_stack(DATA / "catalogue.fits")
    s = open_stack(DATA / "wcs_galaxy.fits")
    assert s.images.shape == (1, 1, 24, 24) and s.images.dtype == np.float32
    assert np.array_equal(s.images[0, 0], fits.getdata(DATA / "wcs_galaxy.fits").astype(np.float32))
    header = fits.getheader(DATA / "wcs_galaxy.fits")
    column = np.hypot(header["CD1_1"], header["CD2_1"]) * 3600  # the CD matrix, by hand
    assert s.arcsec_per_px == pytest.approx(column, rel=1e-9)
    assert s.arcsec_per_px == pytest.approx(0.05, rel=1e-9)
    with pytest.raises(InputError, match="psf_hdus.fits: images differ in size"):
        open_stack(DATA / "psf_hdus.fits")
    psf = open_stack(DATA / "psf_hdus.fits", crop=13)  # the centre 13 x 13 of each HDU
    assert psf.images.shape == (4, 1, 13, 13)
    with fits.open(DATA / "psf_hdus.fits") as hdus:
        for k, hdu in enumerate(hdus[1:]):
            h, w = hdu.data.shape
            top, left = (h - 13) // 2, (w - 13) // 2
            assert np.array_equal(psf.images[k, 0], hdu.data[top : top + 13, left : left + 13])


def test_fits_files():
    names = ("real_galaxy_23.5_500_fits.fits", "147246.0_150.416558_1.998697.g1_0.02.g2_0.00.fits")
    fits_dir = real_data(*(f"fits/{n}" for n in names)) / "fits"
    with pytest.raises(InputError, match="real_galaxy_23.5_500_fits.fits: holds no image"):
        open_stack(fits_dir / "real_galaxy_23.5_500_fits.fits")
    one = open_stack(fits_dir / "147246.0_150.416558_1.998697.g1_0.02.g2_0.00.fits")
    assert one.images.shape == (1, 1, 60, 60) and one.images.dtype == np.float32


def test_multi_hdu_fits_and_galaxy_files():
    """Real multi-HDU PSFs and Galaxy Zoo pictures (tests/data's psf_hdus.fits, above, and
    tests/test_formats.py's picture folders check the same on small files)."""
    root = real_data("fits/real_galaxy_PSF_images.fits", "galaxies")  # 1.7 MB and 46 MB
    fits_dir = root / "fits"
    with pytest.raises(InputError, match="differ in size"):
        open_stack(fits_dir / "real_galaxy_PSF_images.fits")
    psf = open_stack(fits_dir / "real_galaxy_PSF_images.fits", crop=37)
    assert psf.images.shape == (100, 1, 37, 37)
    gal = open_stack(root / "galaxies", crop=207, jitter=12)
    assert gal.images.shape == (545, 3, 207, 207)
    assert 0 <= gal.images[:3].min() and gal.images[:3].max() <= 1


def test_ctf_parameters_agree_between_relion_and_cryosparc_exports_of_one_set():
    """The same 7 EMPIAR-10076 particles as a RELION STAR and a cryoSPARC .cs: the same CTF
    (defocus in Å, the .cs angle in radians, optics from the STAR's optics group)."""
    from emvae.ctf import ctf_params

    names = ("empiar_10076_7.star", "empiar_10076_7.cs", "empiar_10076_7.mrc")
    names += ("sample_particles_relion30.star", "sample.mrcs")  # 2.9 MB and 2.7 MB stacks
    em = real_data(*(f"em/{n}" for n in names)) / "em"
    tables = []
    for name in ("empiar_10076_7.star", "empiar_10076_7.cs"):
        s = open_stack(em / name, datadir=em)
        tables.append(ctf_params(s.metadata, s.optics, s.apix, name, required=True))
    star, cs = tables
    assert star.shape == (7, 10) and np.allclose(star, cs, rtol=1e-5, atol=1e-3)
    assert 1e4 < star[:, 0].min() and star[0, 3] == 300.0 and star[0, 4] == pytest.approx(2.7)
    s = open_stack(em / "sample_particles_relion30.star", datadir=em)  # 3.0: optics in the rows
    assert ctf_params(s.metadata, s.optics, s.apix, "3.0")[0, 3] == 300.0


def test_ctf_parameters_agree_between_the_relion_and_cryosparc_files_in_tests_data():
    """blobs31.star (3.1, optics block), blobs30.star (3.0, optics in the rows) and blobs.cs
    (cryoSPARC, angles in radians) give one CTF table, the numbers relion_project applied."""
    from emvae.ctf import ctf_params

    tables = []
    for name in ("blobs31.star", "blobs30.star", "blobs.cs"):
        s = open_stack(DATA / name)
        tables.append(ctf_params(s.metadata, s.optics, s.apix, name, required=True))
    star, v30, cs = tables
    assert star.shape == (8, 10) and np.allclose(star, v30) and np.allclose(star, cs, atol=1e-2)
    rows = open_stack(DATA / "blobs31.star").metadata
    for k, column in enumerate(("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle")):
        assert np.allclose(star[:, k], rows[column]), column
    assert 1.2e4 <= star[:, 0].min() and (star[:, 0] > star[:, 1]).all()
    assert (star[0, 3], star[0, 4], star[0, 5]) == (300.0, 2.7, 0.1)


FITS_OF = [  # (root, input, its stack, images, pixel size)
    ("data", "blobs31.star", "blobs31.mrcs", 8, 2.5),
    ("data", "blobs.cs", "blobs31.mrcs", 8, 2.5),
    ("shared", "em/empiar_10076_7.star", "em/empiar_10076_7.mrc", 7, 1.31),
    ("shared", "em/empiar_10076_7.cs", "em/empiar_10076_7.mrc", 7, 1.31),
]


@pytest.mark.parametrize(("where", "name", "stack", "n", "apix"), FITS_OF, ids=lambda v: str(v))
def test_fit_models_the_ctf_of_real_relion_and_cryosparc_exports(
    where, name, stack, n, apix, tmp_path
):
    """--ctf auto turns the CTF on from the files' own columns; the run records it, and its
    particle table keeps the input's pixel size."""
    import json

    from conftest import SMALL, runner
    from emvae_cli.main import app

    root = DATA if where == "data" else real_data(name, stack)
    out = tmp_path / "run"
    r = runner.invoke(app, ["fit", str(root / name), "-o", str(out), "-D", "32", *SMALL])
    assert r.exit_code == 0, r.output
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["ctf"] == "on" and config["data"]["apix"] == pytest.approx(apix, 1e-3)
    table = pd.read_csv(out / "particles.csv")
    assert len(table) == n and np.allclose(table["shift_x_A"], table["shift_x_px"] * apix, 1e-3)
