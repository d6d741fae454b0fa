"""Real files written by RELION, cryoSPARC, cryoDRGN, ASPIRE and telescopes.

Every file in em/ and star/ opens, or is refused with one line naming it. They stay in
../shared/data (their owners' files, not copied into the repository): each test is skipped when
its files are absent; tests/test_formats.py covers the same formats with files it writes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED, real_data

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


def _all_files():
    """Every file under em/ and star/ of ../shared/data, relative to it."""
    files = set()
    for sub in ("em", "star"):
        files.update(f.relative_to(SHARED) for f in (SHARED / sub).rglob("*") if f.is_file())
    return sorted(files)


@pytest.mark.parametrize("rel", _all_files(), ids=str)
def test_every_file_opens_or_is_refused_clearly(rel):
    path = real_data(str(rel)) / rel
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


def test_fits_files():
    names = ("real_galaxy_23.5_500_fits.fits", "147246.0_150.416558_1.998697.g1_0.02.g2_0.00.fits")
    fits_dir = real_data(*(f"fits/{n}" for n in names)) / "fits"
    with pytest.raises(InputError, match="real_galaxy_23.5_500_fits.fits: holds no image"):
        open_stack(fits_dir / "real_galaxy_23.5_500_fits.fits")
    one = open_stack(fits_dir / "147246.0_150.416558_1.998697.g1_0.02.g2_0.00.fits")
    assert one.images.shape == (1, 1, 60, 60) and one.images.dtype == np.float32


def test_multi_hdu_fits_and_galaxy_files():
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


@pytest.mark.parametrize("name", ["empiar_10076_7.star", "empiar_10076_7.cs"])
def test_fit_models_the_ctf_of_real_relion_and_cryosparc_exports(name, tmp_path):
    """--ctf auto turns the CTF on from the files' own columns; the run records it, and its
    particle table keeps the 320-px input's pixel size."""
    import json

    from conftest import SMALL, runner
    from emvae_cli.main import app

    root = real_data(f"em/{name}", "em/empiar_10076_7.mrc") / "em"
    out = tmp_path / "run"
    r = runner.invoke(app, ["fit", str(root / name), "-o", str(out), "-D", "32", *SMALL])
    assert r.exit_code == 0, r.output
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["ctf"] == "on" and config["data"]["apix"] == pytest.approx(1.31, 1e-3)
    table = pd.read_csv(out / "particles.csv")
    assert len(table) == 7 and np.allclose(table["shift_x_A"], table["shift_x_px"] * 1.31, 1e-3)
