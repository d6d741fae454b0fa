"""``emvae export-catalog``: RA/Dec and position angles of a run on FITS images, checked against
astropy's own WCS transforms (``WCS.pixel_to_world``, ``SkyCoord.position_angle``) for a
normal, a rotated (CD and PC matrices) and a flipped (east to the right) WCS, and for the
shared COSMOS stamps' real headers."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from conftest import SMALL, real_data, runner
from emvae_cli.main import app

from emvae.catalog import sky_catalog
from emvae.errors import InputError
from emvae.io import open_stack
from emvae.io.fits import image_headers

SCALE = 0.2  # arcsec per pixel
H, W = 19, 16  # rows, columns: not square, so that rows and columns cannot be swapped


def _header(kind: str, rows: int = H, cols: int = W) -> fits.Header:
    """A TAN WCS about (150, 2) deg whose reference pixel is the image's centre (FITS pixels
    are 1-based: CRPIX = (W + 1) / 2 is the 0-based centre (W - 1) / 2): ``normal`` (north
    towards higher rows, east towards lower columns), ``cd30`` (a CD matrix turned by 30 deg),
    ``pc-70`` (a PC matrix turned by -70 deg), ``flipped`` (east towards higher columns,
    det > 0), ``flipped-cd`` (flipped and turned by 50 deg), ``pole`` (normal, at Dec 89.99)."""
    h = fits.Header()
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRVAL1"], h["CRVAL2"] = 150.0, 89.99 if kind == "pole" else 2.0
    h["CRPIX1"], h["CRPIX2"] = (cols + 1) / 2, (rows + 1) / 2
    h["RADESYS"] = "ICRS"
    s = SCALE / 3600
    turn = {"cd30": 30.0, "flipped-cd": 50.0}.get(kind)
    if kind in ("normal", "flipped", "pole"):
        h["CDELT1"], h["CDELT2"] = (s if kind == "flipped" else -s), s
    elif turn is not None:
        a = np.radians(turn)
        c, n = np.cos(a), np.sin(a)
        flip = -1.0 if kind == "flipped-cd" else 1.0
        h["CD1_1"], h["CD1_2"] = -s * c * flip, s * n
        h["CD2_1"], h["CD2_2"] = s * n * flip, s * c
    elif kind == "pc-70":
        a = np.radians(-70.0)
        h["CDELT1"], h["CDELT2"] = -s, s
        h["PC1_1"], h["PC1_2"] = np.cos(a), -np.sin(a)
        h["PC2_1"], h["PC2_2"] = np.sin(a), np.cos(a)
    else:
        raise ValueError(kind)
    return h


KINDS = ["normal", "cd30", "pc-70", "flipped", "flipped-cd", "pole"]


def _write(path: Path, headers: list[fits.Header], shape=(H, W), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    hdus = [fits.PrimaryHDU()] + [
        fits.ImageHDU(rng.normal(size=shape).astype(np.float32), header=h) for h in headers
    ]
    fits.HDUList(hdus).writeto(path)
    return path


def _wcs(header: fits.Header) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return WCS(header).celestial


def _expected(wcs: WCS, shape: tuple[int, int], theta_deg: float, sx: float, sy: float):
    """(RA/Dec, PA in degrees) by astropy alone: the centre at 0-based pixel
    x = (W-1)/2 + sx, y = (H-1)/2 - sy (+y is up, towards row 0); the canonical +y axis turned
    counter-clockwise by theta is (-sin t, cos t) with +y up, i.e. (-sin t, -cos t) in
    (column, row); its two ends through pixel_to_world, and SkyCoord.position_angle."""
    rows, cols = shape
    x, y = (cols - 1) / 2 + sx, (rows - 1) / 2 - sy
    t = np.radians(theta_deg)
    p0 = wcs.pixel_to_world(x, y).icrs
    p1 = wcs.pixel_to_world(x - np.sin(t), y - np.cos(t)).icrs
    return p0, p0.position_angle(p1).deg


def _table(names: list[str], theta, sx, sy, sdx=None, sdy=None) -> pd.DataFrame:
    n = len(names)
    return pd.DataFrame(
        {
            "image": names,
            "input_row": np.arange(n),
            "theta_deg": np.asarray(theta, float),
            "theta_std_deg": np.full(n, 4.0),
            "shift_x_px": np.asarray(sx, float),
            "shift_y_px": np.asarray(sy, float),
            "shift_x_std_px": np.full(n, 0.5) if sdx is None else np.asarray(sdx, float),
            "shift_y_std_px": np.full(n, 0.25) if sdy is None else np.asarray(sdy, float),
            "z1": np.linspace(-1, 1, n),
            "z1_std": np.full(n, 0.3),
            "elbo": np.full(n, -100.0),
            "split": ["train"] * n,
        }
    )


def _angle_diff(a, b) -> np.ndarray:
    return np.abs((np.asarray(a) - np.asarray(b) + 180.0) % 360.0 - 180.0)


def test_positions_and_angles_match_astropy_for_every_wcs(tmp_path):
    """Six WCSs x five poses each: RA/Dec equal WCS.pixel_to_world of the shifted centre, and
    the position angle equals astropy's between the two ends of the turned +y axis."""
    path = _write(tmp_path / "sky.fits", [_header(k) for k in KINDS])
    names = open_stack(path, crop=15).names  # as a run names them: k@file[HDU]
    poses = [(0.0, 0.0, 0.0), (90.0, 1.5, -2.0), (30.0, -3.25, 0.5), (-135.0, 2.0, 4.0)]
    poses.append((170.0, -0.5, -1.0))
    rows = [(name, *pose) for name in names for pose in poses]
    table = _table([r[0] for r in rows], *zip(*[r[1:] for r in rows], strict=True))
    cat = sky_catalog(table)
    assert len(cat) == len(table) and list(cat["image"]) == list(table["image"])
    assert cat["ra_deg"].unit == "deg" and cat["pa_deg"].unit == "deg"
    assert list(cat["z1"]) == list(table["z1"]) and list(cat["split"]) == ["train"] * len(table)
    for i, (name, theta, sx, sy) in enumerate(rows):
        kind = KINDS[int(name.split("@")[0]) - 1]
        wcs = _wcs(_header(kind))
        p0, pa = _expected(wcs, (H, W), theta, sx, sy)
        got = SkyCoord(cat["ra_deg"][i], cat["dec_deg"][i], unit="deg", frame="icrs")
        assert p0.separation(got).arcsec < 1e-6, (kind, theta, sx, sy)
        assert _angle_diff(cat["pa_deg"][i], pa) < 1e-4, (kind, theta, cat["pa_deg"][i], pa)
        assert 0 <= cat["pa_deg"][i] < 360
        # 1-based FITS pixels (CRPIX's convention) of the same centre
        assert cat["x_image"][i] == pytest.approx((W + 1) / 2 + sx, abs=1e-12)
        assert cat["y_image"][i] == pytest.approx((H + 1) / 2 - sy, abs=1e-12)


def test_the_sign_of_the_position_angle_by_hand(tmp_path):
    """Without astropy on the expected side: with north towards higher rows and east towards
    lower columns, the canonical +y axis (towards row 0) points south at theta = 0 (PA 180),
    and a counter-clockwise turn (+y up, row 0 at the top) of 90 deg takes it to -x, the
    lower columns: east (PA 90), so PA = 180 - theta. East to the right mirrors it: PA = 180 +
    theta. A sign flip anywhere fails here."""
    path = _write(tmp_path / "two.fits", [_header("normal"), _header("flipped")])
    names = [f"1@{path}[1]", f"2@{path}[2]"]  # as a run names them (test below)
    thetas = np.array([0.0, 90.0, -90.0, 30.0, 135.0])
    table = _table([names[0]] * 5 + [names[1]] * 5, np.tile(thetas, 2), np.zeros(10), np.zeros(10))
    cat = sky_catalog(table)
    assert _angle_diff(cat["pa_deg"][:5], 180 - thetas).max() < 1e-6
    assert _angle_diff(cat["pa_deg"][5:], 180 + thetas).max() < 1e-6
    # the unshifted centre is the reference pixel: RA/Dec = CRVAL, so CRPIX is read 1-based
    assert np.allclose(cat["ra_deg"], 150.0, atol=1e-12)
    assert np.allclose(cat["dec_deg"], 2.0, atol=1e-12)
    # one pixel right (+x) is west in the normal WCS, east in the flipped one; +y up is south
    moved = sky_catalog(_table(names, [0, 0], [1, 1], [1, 1]))
    dra = (np.asarray(moved["ra_deg"]) - 150.0) * np.cos(np.radians(2.0)) * 3600
    assert dra == pytest.approx([-SCALE, SCALE], abs=1e-6)
    assert (np.asarray(moved["dec_deg"]) - 2.0) * 3600 == pytest.approx([-SCALE] * 2, abs=1e-6)


def test_position_errors_follow_the_shift_errors(tmp_path):
    """Shift stds (px) become arcsec along RA and Dec: for the normal WCS x is RA and y Dec;
    a turned CD matrix mixes them (correlated) but keeps the total; flipping keeps them."""
    path = _write(tmp_path / "e.fits", [_header(k) for k in ("normal", "cd30", "flipped")])
    names = [f"{k}@{path}[{k}]" for k in (1, 2, 3)]
    cat = sky_catalog(_table(names, [10, 10, 10], [0, 0, 0], [0, 0, 0], [2, 2, 2], [1, 1, 1]))
    assert cat["ra_std_arcsec"][0] == pytest.approx(2 * SCALE, rel=1e-6)
    assert cat["dec_std_arcsec"][0] == pytest.approx(1 * SCALE, rel=1e-6)
    assert cat["ra_dec_corr"][0] == pytest.approx(0, abs=1e-6)
    total = np.hypot(cat["ra_std_arcsec"][1], cat["dec_std_arcsec"][1])
    assert total == pytest.approx(np.hypot(2, 1) * SCALE, rel=1e-6)
    assert abs(cat["ra_dec_corr"][1]) > 0.1
    assert cat["ra_std_arcsec"][2] == pytest.approx(2 * SCALE, rel=1e-6)
    assert list(cat["pa_std_deg"]) == [4.0] * 3


def test_real_cosmos_stamps_and_a_flipped_copy(tmp_path):
    """The shared HST stamps' own headers (rotated CD matrices, FK5 J2000, reference pixels
    outside the stamp), and one of them mirrored east-right (CD1_1, CD2_1 negated)."""
    d = real_data("fits/100610.img.fits") / "fits"
    files = [
        d / "100610.img.fits",
        d / "147246.0_150.416558_1.998697.g1_0.02.g2_0.00.fits",
        d / "147246.0_150.416558_1.998697_masknoise.fits",
    ]
    header = fits.getheader(files[0])
    header["CD1_1"], header["CD2_1"] = -header["CD1_1"], -header["CD2_1"]
    flipped = tmp_path / "flipped.fits"
    fits.PrimaryHDU(fits.getdata(files[0]), header=header).writeto(flipped)
    files.append(flipped)
    mirrored, original = _wcs(header).wcs.cd, _wcs(fits.getheader(files[0])).wcs.cd
    assert np.linalg.det(mirrored) > 0 > np.linalg.det(original)
    names = [f"1@{f}[0]" for f in files]
    poses = [(25.0, 3.0, -1.5), (-60.0, -4.5, 2.0), (120.0, 0.0, 7.0), (-170.0, 1.0, 1.0)]
    table = _table(names, *zip(*poses, strict=True))
    cat = sky_catalog(table)
    for i, (f, (theta, sx, sy)) in enumerate(zip(files, poses, strict=True)):
        h = fits.getheader(f)
        p0, pa = _expected(_wcs(h), (h["NAXIS2"], h["NAXIS1"]), theta, sx, sy)
        got = SkyCoord(cat["ra_deg"][i], cat["dec_deg"][i], unit="deg", frame="icrs")
        assert p0.separation(got).arcsec < 1e-6, f.name
        assert _angle_diff(cat["pa_deg"][i], pa) < 1e-4, (f.name, cat["pa_deg"][i], pa)
    # the mirrored copy turns the other way: same image, same pose, another angle
    same = sky_catalog(_table([names[0], names[3]], [25.0, 25.0], [3.0, 3.0], [-1.5, -1.5]))
    assert _angle_diff(same["pa_deg"][0], same["pa_deg"][1]) > 1


def test_image_names_find_their_hdus(tmp_path):
    """Every way a run names a FITS image leads back to its header: HDUs by EXTNAME or
    number, file.fits[EXT], a folder of files, tile-compressed files."""
    h = [_header("normal"), _header("cd30"), _header("flipped")]
    for k, x in enumerate(h):
        x["WHICH"] = k
    hdus = [fits.PrimaryHDU()] + [
        fits.ImageHDU(np.zeros((H, W), np.float32), header=x, name=n)
        for x, n in zip(h, ["SCI", "", "SCI"], strict=True)
    ]
    fits.HDUList(hdus).writeto(tmp_path / "m.fits")
    names = open_stack(tmp_path / "m.fits", crop=15).names
    assert [x.header["WHICH"] for x in image_headers(names)] == [0, 1, 2]
    assert image_headers(names)[0].shape == (H, W)
    one = open_stack(f"{tmp_path / 'm.fits'}[2]", crop=15).names
    assert [x.header["WHICH"] for x in image_headers(one)] == [1]
    folder = tmp_path / "d"
    folder.mkdir()
    for k, x in enumerate(h):
        fits.PrimaryHDU(np.zeros((8, 8), np.float32), header=x).writeto(folder / f"g{k}.fits")
    fits.HDUList(
        [fits.PrimaryHDU(), fits.CompImageHDU(np.zeros((8, 8), np.float32), header=h[2])]
    ).writeto(folder / "g3.fits.fz")
    names = open_stack(folder).names
    assert [x.header["WHICH"] for x in image_headers(names)] == [0, 1, 2, 2]
    with pytest.raises(InputError, match="no such file"):
        image_headers([f"1@{tmp_path / 'gone.fits'}[0]"])


def test_images_without_a_wcs_or_not_fits_are_one_error(tmp_path, write_stack):
    path = _write(tmp_path / "p.fits", [_header("normal"), fits.Header()])
    with pytest.raises(InputError, match=r"runs/x: image 2@.*\[2\] has no celestial WCS"):
        sky_catalog(_table([f"1@{path}[1]", f"2@{path}[2]"], [0, 0], [0, 0], [0, 0]), "runs/x")
    mrc = write_stack(np.zeros((2, 8, 8), np.float32))
    with pytest.raises(InputError, match="not FITS images"):
        sky_catalog(_table([f"1@{mrc}", f"2@{mrc}"], [0, 0], [0, 0], [0, 0]), "runs/x")


# ----------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def sky_run(tmp_path_factory) -> Path:
    """A 2-epoch fit of 24 noise images 19 x 16 cut to 15 px, each HDU with one of the WCSs."""
    tmp = tmp_path_factory.mktemp("sky")
    _write(tmp / "sky.fits", [_header(KINDS[k % len(KINDS)]) for k in range(24)], seed=1)
    run = tmp / "run"
    r = runner.invoke(app, ["fit", str(tmp / "sky.fits"), "-o", str(run), "--crop", "15", *SMALL])
    assert r.exit_code == 0, r.output
    return run


@pytest.mark.parametrize("suffix", [".fits", ".ecsv", ".vot"])
def test_export_catalog_writes_every_format(sky_run, tmp_path, suffix):
    out = tmp_path / f"cat{suffix}"
    r = runner.invoke(app, ["export-catalog", str(sky_run), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert f"wrote {out} (24 objects" in r.output
    cat = Table.read(out)
    table = pd.read_csv(sky_run / "particles.csv")
    assert list(cat["image"]) == list(table["image"]) and len(cat) == 24
    assert np.allclose(cat["z1"], table["z1"]) and np.allclose(cat["z1_std"], table["z1_std"])
    assert str(cat["ra_deg"].unit) == "deg" and str(cat["ra_std_arcsec"].unit) == "arcsec"
    for i in range(24):
        kind = KINDS[i % len(KINDS)]
        row = table.iloc[i]
        p0, pa = _expected(
            _wcs(_header(kind)), (H, W), row.theta_deg, row.shift_x_px, row.shift_y_px
        )
        got = SkyCoord(cat["ra_deg"][i], cat["dec_deg"][i], unit="deg", frame="icrs")
        assert p0.separation(got).arcsec < 1e-6
        assert _angle_diff(cat["pa_deg"][i], pa) < 1e-4
    if suffix != ".vot":
        assert cat.meta["RUN_ID"] and cat.meta["RADESYS"] == "ICRS"
    # never over an existing file without --force
    r = runner.invoke(app, ["export-catalog", str(sky_run), "-o", str(out)])
    assert r.exit_code == 1 and "exists; use --force" in r.output
    r = runner.invoke(app, ["export-catalog", str(sky_run), "-o", str(out), "--force"])
    assert r.exit_code == 0, r.output


def test_export_catalog_refusals_are_one_line(sky_run, tmp_path):
    r = runner.invoke(app, ["export-catalog", str(sky_run), "-o", str(tmp_path / "c.csv")])
    assert r.exit_code == 1 and "unknown catalogue format" in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    r = runner.invoke(app, ["export-catalog", str(sky_run), "-o", str(sky_run / "particles.h5")])
    assert r.exit_code == 1
    # the run's own input is a .fits file too: never written over, --force or not
    source = sky_run.parent / "sky.fits"
    kept = source.read_bytes()
    r = runner.invoke(app, ["export-catalog", str(sky_run), "-o", str(source), "--force"])
    assert r.exit_code == 1 and "is an input of this command" in r.output
    assert source.read_bytes() == kept
    # the same images, written again without their WCS
    try:
        with fits.open(source) as hdul:
            plain = [fits.PrimaryHDU()] + [fits.ImageHDU(h.data) for h in hdul[1:]]
        source.unlink()
        fits.HDUList(plain).writeto(source)
        out = tmp_path / "c.fits"
        r = runner.invoke(app, ["export-catalog", str(sky_run), "-o", str(out)])
        assert r.exit_code == 1 and not out.exists()
        assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
        assert f"{sky_run}: image 1@{source}[1] has no celestial WCS" in r.output
        assert "(24 of the 24 images lack one)" in r.output
    finally:
        source.write_bytes(kept)
