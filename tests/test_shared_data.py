"""Real files written by RELION, cryoSPARC, cryoDRGN, ASPIRE and telescopes (../shared/data).

Every file in em/ and star/ opens, or is refused with one line naming it. Skipped when the
shared folder is absent."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHARED

from emvae.errors import InputError
from emvae.io import open_stack

EM, STAR = SHARED / "em", SHARED / "star"
pytestmark = pytest.mark.skipif(not EM.is_dir(), reason="../shared/data is absent")

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
    if not EM.is_dir():
        return []
    files = [f for f in sorted(EM.rglob("*")) + sorted(STAR.rglob("*")) if f.is_file()]
    return [f.relative_to(SHARED) for f in files]


@pytest.mark.parametrize("rel", _all_files(), ids=str)
def test_every_file_opens_or_is_refused_clearly(rel):
    path = SHARED / rel
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
    with pytest.raises(InputError, match=r"row \d+: stack Polish/.*not found.*--datadir"):
        open_stack(EM / "relion31.6opticsgroups.star")
    with pytest.raises(InputError, match=r"stack .*not found"):
        open_stack(EM / "cryosparc_J2_particles_exported.cs")


def test_star_and_cs_name_the_same_particles_as_the_stack():
    mrc = open_stack(EM / "empiar_10076_7.mrc").images[:]
    assert np.array_equal(open_stack(EM / "empiar_10076_7.star").images[:], mrc)
    assert np.array_equal(open_stack(EM / "empiar_10076_7.cs").images[:], mrc)
    rel = open_stack(EM / "relion31.mrcs").images[:]
    v1, v2 = open_stack(EM / "relion31.star"), open_stack(EM / "relion31.v2.star")
    assert np.array_equal(v1.images[:], rel) and np.array_equal(v2.images[:], rel)
    assert v1.star_version == "3.1" and len(v1.optics) == 1


def test_datadir_split_stacks_match_the_single_stack():
    whole = open_stack(EM / "toy_projections.mrcs").images[:]
    with pytest.raises(InputError, match=r"row 1: stack toy_images_b.mrcs not found"):
        open_stack(EM / "toy_projections_dir.star")
    split = open_stack(EM / "toy_projections_dir.star", datadir=EM / "toy_datadir")
    assert len(split) == 1000
    # the same 1000 projections, each once, whatever the stacks' order
    a = np.sort(whole.reshape(1000, -1).sum(1))
    b = np.sort(split.images[:].reshape(1000, -1).sum(1))
    assert np.allclose(a, b)


def test_fits_and_galaxy_files():
    fits_dir = SHARED / "fits"
    with pytest.raises(InputError, match="real_galaxy_23.5_500_fits.fits: holds no image"):
        open_stack(fits_dir / "real_galaxy_23.5_500_fits.fits")
    with pytest.raises(InputError, match="differ in size"):
        open_stack(fits_dir / "real_galaxy_PSF_images.fits")
    psf = open_stack(fits_dir / "real_galaxy_PSF_images.fits", crop=37)
    assert psf.images.shape == (100, 1, 37, 37)
    one = open_stack(fits_dir / "147246.0_150.416558_1.998697.g1_0.02.g2_0.00.fits")
    assert one.images.shape == (1, 1, 60, 60) and one.images.dtype == np.float32
    gal = open_stack(SHARED / "galaxies", crop=207, jitter=12)
    assert gal.images.shape == (545, 3, 207, 207)
    assert 0 <= gal.images[:3].min() and gal.images[:3].max() <= 1


def test_ctf_parameters_agree_between_relion_and_cryosparc_exports_of_one_set():
    """The same 7 EMPIAR-10076 particles as a RELION STAR and a cryoSPARC .cs: the same CTF
    (defocus in Å, the .cs angle in radians, optics from the STAR's optics group)."""
    from emvae.ctf import ctf_params

    tables = []
    for name in ("empiar_10076_7.star", "empiar_10076_7.cs"):
        s = open_stack(EM / name, datadir=EM)
        tables.append(ctf_params(s.metadata, s.optics, s.apix, name, required=True))
    star, cs = tables
    assert star.shape == (7, 10) and np.allclose(star, cs, rtol=1e-5, atol=1e-3)
    assert 1e4 < star[:, 0].min() and star[0, 3] == 300.0 and star[0, 4] == pytest.approx(2.7)
    s = open_stack(EM / "sample_particles_relion30.star", datadir=EM)  # 3.0: optics in the rows
    assert ctf_params(s.metadata, s.optics, s.apix, "3.0")[0, 3] == 300.0
