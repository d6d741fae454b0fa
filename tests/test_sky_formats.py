"""Pixel scales from a FITS WCS (arcsec/px), tile-compressed ``.fits.fz`` files, and the two
layouts of cryoSPARC ``.cs`` files (NumPy arrays, including ones with large headers, and
cryosparc-tools' compressed CSDAT stream). Every file is written here, in ``tmp_path``."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from conftest import real_data

from emvae.config import ModelConfig
from emvae.encode import Encoding
from emvae.errors import InputError
from emvae.io import input_kind, open_stack, write_mrc
from emvae.io.cryosparc import load_cs_table
from emvae.io.fits import cutout_slices, sky_pixel_scale
from emvae.particles import Particles


def _sky_header(**cards) -> fits.Header:
    """A TAN projection about (150, 2) deg centred on pixel (8, 8), plus ``cards``."""
    h = fits.Header()
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRVAL1"], h["CRVAL2"] = 150.0, 2.0
    h["CRPIX1"], h["CRPIX2"] = 8.0, 8.0
    for k, v in cards.items():
        h[k] = v
    return h


def _rotated_cd(arcsec: float, degrees: float) -> dict[str, float]:
    """CD matrix of square pixels of ``arcsec`` turned by ``degrees`` (RA increasing left)."""
    s, a = arcsec / 3600.0, np.radians(degrees)
    c, n = np.cos(a), np.sin(a)
    return {"CD1_1": -s * c, "CD1_2": s * n, "CD2_1": s * n, "CD2_2": s * c}


def _pixels(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# ----------------------------------------------------------------------------- WCS pixel scale


def test_cdelt_wcs_gives_arcsec_per_pixel_and_pixels_unchanged(tmp_path):
    data = _pixels((16, 16))
    header = _sky_header(CDELT1=-1e-4, CDELT2=1e-4, CUNIT1="deg", CUNIT2="deg")
    fits.PrimaryHDU(data, header=header).writeto(tmp_path / "sky.fits")
    s = open_stack(tmp_path / "sky.fits")
    assert s.arcsec_per_px == 0.36  # 1e-4 deg, rounded to 12 significant digits
    assert s.arcsec_from == "FITS WCS" and s.pixel_unit == "arcsec" and s.pixel_scale == 0.36
    assert s.apix is None and s.apix_from is None and s.notes == []
    assert np.array_equal(s.images[0, 0], data)


@pytest.mark.parametrize("angle", [0.0, 30.0, 137.5, -90.0])
def test_rotated_cd_matrix_gives_the_unrotated_scale(tmp_path, angle):
    data = _pixels((16, 16), seed=1)
    fits.PrimaryHDU(data, header=_sky_header(**_rotated_cd(0.25, angle))).writeto(
        tmp_path / "rot.fits"
    )
    s = open_stack(tmp_path / "rot.fits")
    assert s.arcsec_per_px == 0.25
    assert np.array_equal(s.images[0, 0], data)


def test_pc_matrix_and_arcsec_units(tmp_path):
    a = np.radians(20.0)
    pc = {"PC1_1": np.cos(a), "PC1_2": -np.sin(a), "PC2_1": np.sin(a), "PC2_2": np.cos(a)}
    header = _sky_header(CDELT1=-0.5, CDELT2=0.5, CUNIT1="arcsec", CUNIT2="arcsec", **pc)
    assert sky_pixel_scale(header) == (0.5, None)
    # galaxy stamps written as (bands, H, W): the celestial axes are still x and y
    cube = _pixels((2, 12, 12), seed=2)
    h3 = _sky_header(CDELT1=-2e-4, CDELT2=2e-4, CTYPE3="WAVE", CDELT3=1e-7, CRVAL3=5e-7)
    fits.PrimaryHDU(cube, header=h3).writeto(tmp_path / "cube.fits")
    s = open_stack(tmp_path / "cube.fits")
    assert s.images.shape == (1, 2, 12, 12) and s.arcsec_per_px == 0.72
    assert np.array_equal(s.images[0], cube)


def test_fits_without_a_celestial_wcs_reads_as_before(tmp_path):
    data = _pixels((8, 8), seed=3)
    fits.PrimaryHDU(data).writeto(tmp_path / "plain.fits")
    linear = fits.Header({"CTYPE1": "LINEAR", "CTYPE2": "LINEAR", "CDELT1": 2.0, "CDELT2": 2.0})
    fits.PrimaryHDU(data, header=linear).writeto(tmp_path / "linear.fits")
    for name in ("plain.fits", "linear.fits"):
        s = open_stack(tmp_path / name)
        assert s.arcsec_per_px is None and s.arcsec_from is None and s.apix is None, name
        assert s.pixel_unit == "px" and s.pixel_scale is None and s.notes == [], name
        assert s.format == "FITS (1 image)" and np.array_equal(s.images[0, 0], data), name
    assert ("pixel size", "unknown (give --apix)") in Particles.of(
        open_stack(tmp_path / "plain.fits")
    ).describe()


def test_no_single_scale_is_said_and_left_unset(tmp_path):
    data = _pixels((8, 8), seed=4)
    oblong = _sky_header(CDELT1=-1e-4, CDELT2=2e-4)
    fits.PrimaryHDU(data, header=oblong).writeto(tmp_path / "oblong.fits")
    s = open_stack(tmp_path / "oblong.fits")
    assert s.arcsec_per_px is None and len(s.notes) == 1
    assert "not square on the sky (0.36 x 0.72 arcsec)" in s.notes[0]
    assert "shifts in pixels only" in s.notes[0]

    two = fits.HDUList(
        [
            fits.PrimaryHDU(data, header=_sky_header(CDELT1=-1e-4, CDELT2=1e-4)),
            fits.ImageHDU(data, header=_sky_header(CDELT1=-3e-4, CDELT2=3e-4), name="WIDE"),
        ]
    )
    two.writeto(tmp_path / "two.fits")
    s = open_stack(tmp_path / "two.fits")
    assert s.arcsec_per_px is None and "scales differ, 0.36 to 1.08 arcsec/px" in s.notes[0]
    assert open_stack(f"{tmp_path / 'two.fits'}[WIDE]").arcsec_per_px == 1.08  # one HDU: fine

    fits.HDUList(
        [fits.PrimaryHDU(data, header=_sky_header(CDELT1=-1e-4, CDELT2=1e-4)), fits.ImageHDU(data)]
    ).writeto(tmp_path / "half.fits")
    s = open_stack(tmp_path / "half.fits")
    assert s.arcsec_per_px is None and "[1]: no celestial WCS" in s.notes[0]


def test_apix_given_by_the_user_replaces_the_sky_scale(tmp_path):
    header = _sky_header(CDELT1=-1e-4, CDELT2=1e-4)
    fits.PrimaryHDU(_pixels((8, 8)), header=header).writeto(tmp_path / "sky.fits")
    s = open_stack(tmp_path / "sky.fits", apix=2.0)
    assert s.apix == 2.0 and s.arcsec_per_px is None and s.pixel_unit == "A"


def test_info_and_particle_table_speak_arcsec(tmp_path):
    """`emvae info` names the scale; the particle table has shift_x/y_arcsec = px x scale
    (and no Angstrom columns)."""
    imgs = _pixels((2, 16, 16), seed=5)
    header = _sky_header(**_rotated_cd(0.396, 12.0))
    fits.HDUList(
        [fits.PrimaryHDU(imgs[0], header=header), fits.ImageHDU(imgs[1], header=header)]
    ).writeto(tmp_path / "pair.fits")
    stack = open_stack(tmp_path / "pair.fits")
    assert ("pixel scale", "0.396 arcsec/px (from the FITS WCS)") in Particles.of(stack).describe()

    particles = Particles.of(stack)
    assert particles.data.arcsec_per_px == 0.396 and particles.data.apix is None
    model = ModelConfig(image_size=16, zdim=1)
    pose = np.array([[0.0, 0.25, -0.125], [0.0, -0.5, 0.0]])  # theta, shifts (model units)
    enc = Encoding(
        z_mu=np.zeros((2, 1)),
        z_std=np.ones((2, 1)),
        pose_mu=pose,
        pose_std=np.zeros((2, 3)),
        elbo=np.zeros(2),
    )
    table = particles.table(model, enc)
    assert "shift_x_A" not in table and "shift_y_A" not in table
    assert table["shift_x_px"].abs().max() > 1  # a real shift, not zeros
    assert np.allclose(table["shift_x_arcsec"], table["shift_x_px"] * 0.396, rtol=1e-12)
    assert np.allclose(table["shift_y_arcsec"], table["shift_y_px"] * 0.396, rtol=1e-12)


def test_preprocessed_cache_keeps_the_sky_scale(tmp_path):
    from emvae.preprocess import Preprocess, write_cache

    imgs = _pixels((3, 16, 16), seed=10)
    header = _sky_header(CDELT1=-1e-4, CDELT2=1e-4)
    fits.HDUList(
        [fits.PrimaryHDU(imgs[0], header=header)]
        + [fits.ImageHDU(a, header=header) for a in imgs[1:]]
    ).writeto(tmp_path / "three.fits")
    stack = open_stack(tmp_path / "three.fits")
    cache = write_cache(stack, Preprocess(size=8), tmp_path / "c.h5")
    back = open_stack(cache)
    assert back.arcsec_per_px == 0.36 and back.arcsec_from == "emvae cache"
    assert back.scale == 2.0 and back.pixel_unit == "arcsec"  # 0.72 arcsec per cached pixel
    assert (
        "pixel scale",
        "0.36 arcsec/px (from the emvae cache); 0.72 arcsec/px after preprocessing",
    ) in Particles.of(back).describe()


def test_real_hst_and_sdss_stamps_have_their_survey_scales():
    fits_dir = real_data("fits/100610.img.fits") / "fits"
    header = fits.getheader(fits_dir / "100610.img.fits")
    column = np.hypot(header["CD1_1"], header["CD2_1"]) * 3600  # the CD matrix, by hand
    s = open_stack(fits_dir / "100610.img.fits")
    assert s.arcsec_per_px == pytest.approx(column, rel=1e-9)
    assert s.arcsec_per_px == pytest.approx(0.03, abs=5e-5)  # COSMOS HST/ACS drizzle: 0.03"


# ----------------------------------------------------------------------------- .fits.fz


@pytest.mark.parametrize(("shape", "size"), [((10, 12), 4), ((11, 9), 5), ((8, 8), 8)])
def test_cutout_windows_are_astropys_and_start_where_asked(shape, size):
    """Every window start of every size gives astropy Cutout2D's slices for that start; a
    window that leaves the image is refused (strict), not padded."""
    from astropy.nddata import Cutout2D
    from astropy.nddata.utils import PartialOverlapError

    image = _pixels(shape)
    for r in range(shape[0] - size + 1):
        for c in range(shape[1] - size + 1):
            rows, cols = cutout_slices(shape, np.array([r, c]), size)
            assert (rows, cols) == (slice(r, r + size), slice(c, c + size))
            centre = (c + (size - 1) / 2, r + (size - 1) / 2)
            assert np.array_equal(image[rows, cols], Cutout2D(image, centre, size).data)
    with pytest.raises(PartialOverlapError):
        cutout_slices(shape, np.array([shape[0] - size + 1, 0]), size)


def test_jittered_fits_windows_match_the_recorded_offsets(tmp_path):
    """A cube cut to a 9-px window moved by up to 3 px: each image's pixels are the file's
    pixels at the window, and ``offsets`` says where the window centre moved (+x right, +y up:
    one row down is y - 1)."""
    data = _pixels((6, 2, 21, 19), seed=4)
    fits.HDUList([fits.PrimaryHDU()] + [fits.ImageHDU(d) for d in data]).writeto(
        tmp_path / "c.fits"
    )
    s = open_stack(tmp_path / "c.fits", crop=9, jitter=3, seed=1)
    assert s.images.shape == (6, 2, 9, 9) and s.offsets is not None
    for k in range(6):
        dx, dy = np.asarray(s.offsets[k]).round().astype(int)
        r0, c0 = 21 // 2 - 4 - dy, 19 // 2 - 4 + dx
        assert np.array_equal(s.images[k], data[k][:, r0 : r0 + 9, c0 : c0 + 9])


def test_tile_compressed_image_is_read_losslessly_with_its_scale(tmp_path):
    counts = np.random.default_rng(6).integers(-500, 30000, size=(20, 20)).astype(np.int32)
    header = _sky_header(**_rotated_cd(0.2, 45.0))
    fits.HDUList(
        [fits.PrimaryHDU(), fits.CompImageHDU(counts, header=header, compression_type="RICE_1")]
    ).writeto(tmp_path / "img.fits.fz")
    assert input_kind(tmp_path / "img.fits.fz") == "fits"
    assert input_kind(f"{tmp_path / 'img.fits.fz'}[1]") == "fits"
    s = open_stack(tmp_path / "img.fits.fz")
    assert s.images.shape == (1, 1, 20, 20)
    assert np.array_equal(s.images[0, 0], counts.astype(np.float32))
    assert s.arcsec_per_px == 0.2
    assert s.format == "FITS (1 image, tile-compressed)"
    assert s.names == [f"1@{tmp_path / 'img.fits.fz'}[1]"]  # not astropy's COMPRESSED_IMAGE
    assert np.array_equal(open_stack(f"{tmp_path / 'img.fits.fz'}[1]").images[0, 0], counts)


def test_tile_compressed_cube_and_several_hdus(tmp_path):
    cube = _pixels((3, 12, 12), seed=7)
    other = _pixels((12, 12), seed=8)
    fits.HDUList(
        [
            fits.PrimaryHDU(),
            fits.CompImageHDU(cube, compression_type="GZIP_2", quantize_level=0.0),
            fits.CompImageHDU(
                np.stack([other] * 3), name="SCI", compression_type="GZIP_1", quantize_level=0.0
            ),
        ]
    ).writeto(tmp_path / "bands.fits.fz")
    s = open_stack(tmp_path / "bands.fits.fz")
    assert s.images.shape == (2, 3, 12, 12)
    assert np.array_equal(s.images[0], cube)  # unquantised floats come back bit for bit
    assert np.array_equal(s.images[1, 2], other)
    assert [n.rsplit("[", 1)[1] for n in s.names] == ["1]", "SCI]"]
    assert np.array_equal(open_stack(f"{tmp_path / 'bands.fits.fz'}[SCI]").images[0, 0], other)
    assert s.arcsec_per_px is None and s.notes == []  # no WCS: nothing said


def test_folder_and_glob_of_fz_files(tmp_path):
    folder = tmp_path / "stamps"
    folder.mkdir()
    stamps = [_pixels((10, 10), seed=k) for k in range(3)]
    header = _sky_header(CDELT1=-5e-5, CDELT2=5e-5)
    for k, a in enumerate(stamps):
        fits.HDUList(
            [
                fits.PrimaryHDU(),
                fits.CompImageHDU(a, header=header, compression_type="GZIP_2", quantize_level=0.0),
            ]
        ).writeto(folder / f"g{k}.fits.fz")
    for spec in (folder, str(folder / "*.fits.fz")):
        s = open_stack(spec)
        assert input_kind(spec) == "fits"
        assert np.array_equal(s.images[:, 0], np.stack(stamps)), spec
        assert s.arcsec_per_px == 0.18 and s.names[0] == f"1@{folder / 'g0.fits.fz'}"


def test_damaged_fz_is_one_input_error(tmp_path):
    (tmp_path / "bad.fits.fz").write_bytes(b"SIMPLE  = nonsense" + b"\0" * 100)
    with pytest.raises(InputError, match=r"bad\.fits\.fz: "):
        open_stack(tmp_path / "bad.fits.fz")


# ----------------------------------------------------------------------------- cryoSPARC .cs


def _particles(tmp_path, n: int = 6, extra: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A stack ``J1/imported/p.mrcs`` and its .cs table (``extra`` more float fields)."""
    images = _pixels((n, 8, 8), seed=9)
    (tmp_path / "J1" / "imported").mkdir(parents=True)
    write_mrc(tmp_path / "J1" / "imported" / "p.mrcs", images, apix=1.5)
    fields = [
        ("uid", "<u8"),
        ("blob/path", "S24"),
        ("blob/idx", "<u4"),
        ("blob/psize_A", "<f4"),
        ("blob/shape", "<u4", (2,)),
        ("ctf/df1_A", "<f4"),
    ]
    fields += [(f"alignments_class_{k // 4}/field_{k % 4}", "<f4") for k in range(extra)]
    cs = np.zeros(n, dtype=fields)
    cs["uid"] = np.arange(1000, 1000 + n)
    cs["blob/path"] = b">J1/imported/p.mrcs"
    cs["blob/idx"] = np.arange(n)[::-1]  # rows in reverse image order
    cs["blob/psize_A"] = 1.5
    cs["blob/shape"] = 8
    cs["ctf/df1_A"] = np.linspace(12000.0, 17000.0, n)
    return images, cs


def _save_numpy(path, table: np.ndarray) -> None:
    with open(path, "wb") as f:  # np.save(path) would append .npy
        np.save(f, table)


def test_numpy_cs_with_a_large_header(tmp_path):
    images, cs = _particles(tmp_path, extra=400)
    _save_numpy(tmp_path / "big.cs", cs)
    with open(tmp_path / "big.cs", "rb") as f:
        assert len(f.read(20000)) == 20000
    with pytest.raises(ValueError, match="max_header_size"):
        np.load(tmp_path / "big.cs", allow_pickle=False)  # what NumPy alone does with it
    s = open_stack(tmp_path / "big.cs", datadir=tmp_path)
    assert np.array_equal(s.images[:][:, 0], images[::-1])
    assert s.apix == 1.5 and s.format == "cryoSPARC .cs"
    assert np.array_equal(s.metadata["ctf/df1_A"], cs["ctf/df1_A"])


def test_csdat_cs_reads_like_the_numpy_one(tmp_path):
    pytest.importorskip("cryosparc.dataset", reason="cryosparc-tools (emvae[cryosparc])")
    from cryosparc.dataset import CSDAT_FORMAT, Dataset

    images, cs = _particles(tmp_path)
    _save_numpy(tmp_path / "np.cs", cs)
    Dataset(cs).save(tmp_path / "new.cs", format=CSDAT_FORMAT)
    assert (tmp_path / "new.cs").read_bytes()[:6] == b"\x95CSDAT"

    table = load_cs_table(tmp_path / "new.cs")
    assert type(table) is np.ndarray and table.dtype.type is np.void  # as np.load gives
    assert table.dtype.names == cs.dtype.names
    for name in cs.dtype.names:  # strings come back as bytes, as wide as the longest
        assert np.array_equal(table[name], cs[name]), name
    a = open_stack(tmp_path / "np.cs", datadir=tmp_path)
    b = open_stack(tmp_path / "new.cs", datadir=tmp_path)
    assert b.format == "cryoSPARC .cs (CSDAT)"
    assert np.array_equal(b.images[:], a.images[:]) and np.array_equal(b.images[0][0], images[-1])
    assert b.names == a.names == [f"{k}@J1/imported/p.mrcs" for k in range(6, 0, -1)]
    assert b.apix == 1.5 and b.apix_from == "cryoSPARC blob/psize_A"
    assert np.array_equal(b.metadata["ctf/df1_A"], cs["ctf/df1_A"])
    assert b.metadata["blob/path"].tolist() == [">J1/imported/p.mrcs"] * 6


def test_select_reads_a_csdat_input_for_its_subset(tmp_path):
    """`emvae select` re-reads the run's .cs input to write the selected rows: CSDAT too."""
    pytest.importorskip("cryosparc.dataset", reason="cryosparc-tools (emvae[cryosparc])")
    from cryosparc.dataset import CSDAT_FORMAT, Dataset

    from emvae.config import RunConfig
    from emvae.select import read_input_rows

    _, cs = _particles(tmp_path)
    Dataset(cs).save(tmp_path / "new.cs", format=CSDAT_FORMAT)
    config = RunConfig(model=ModelConfig(image_size=8, zdim=1))
    config.data.paths, config.data.n_images = [str(tmp_path / "new.cs")], len(cs)
    names = open_stack(tmp_path / "new.cs", datadir=tmp_path).names
    table = pd.DataFrame({"image": list(names), "input_row": np.arange(len(cs))})
    rows = read_input_rows(config, table)
    assert rows.kind == "cs" and rows.array is not None
    assert np.array_equal(rows.array["uid"], cs["uid"])
    assert np.array_equal(rows.array["ctf/df1_A"], cs["ctf/df1_A"])


def test_real_cryosparc_file_survives_the_csdat_round_trip(tmp_path):
    pytest.importorskip("cryosparc.dataset", reason="cryosparc-tools (emvae[cryosparc])")
    from cryosparc.dataset import CSDAT_FORMAT, Dataset

    real = real_data("em/cryosparc_J2_particles_exported.cs") / "em"
    plain = load_cs_table(real / "cryosparc_J2_particles_exported.cs")
    Dataset(plain).save(tmp_path / "J2.cs", format=CSDAT_FORMAT)
    packed = load_cs_table(tmp_path / "J2.cs")
    assert packed.dtype.names == plain.dtype.names and len(packed) == len(plain) > 0
    for name in plain.dtype.names:
        assert np.array_equal(packed[name], plain[name], equal_nan=plain[name].dtype.kind == "f")


def test_csdat_without_cryosparc_tools_says_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "new.cs").write_bytes(b"\x95CSDAT" + b"\0" * 64)
    monkeypatch.setitem(sys.modules, "cryosparc.dataset", None)  # import fails
    with pytest.raises(InputError) as e:
        open_stack(tmp_path / "new.cs")
    text = str(e.value)
    assert "new.cs" in text and "CSDAT" in text and "pip install 'emvae[cryosparc]'" in text
    assert "\n" not in text


def test_unreadable_cs_files_are_one_input_error(tmp_path):
    obj = np.array([{"blob/path": "x"}], dtype=object)
    np.save(tmp_path / "obj.npy", obj, allow_pickle=True)
    (tmp_path / "obj.npy").rename(tmp_path / "obj.cs")
    (tmp_path / "old.cs").write_bytes(b"\x94CSDAT" + b"\0" * 16)
    (tmp_path / "text.cs").write_text("uid blob/path\n")
    cases = {
        "obj.cs": "stores pickled Python objects, which emvae does not load",
        "old.cs": "is a cryoSPARC CSDAT dataset of a version emvae does not know",
        "text.cs": "is not a cryoSPARC .cs file .*neither NumPy nor CSDAT",
    }
    for name, message in cases.items():
        with pytest.raises(InputError, match=rf"{name}: {message}"):
            open_stack(tmp_path / name)
