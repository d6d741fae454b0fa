"""The command line on every kind of input: info, preprocess, fit on a cache, encode with the
recorded preprocessing, RGB pictures, and one-line errors for each kind of bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import starfile
from astropy.io import fits
from conftest import SMALL, runner
from emvae_cli.main import app
from PIL import Image

from emvae.io import read_table, write_mrc


def _ok(result):
    assert result.exit_code == 0, result.output
    return result


def test_info_says_where_the_pixel_size_came_from(tmp_path):
    write_mrc(tmp_path / "s.mrcs", np.ones((3, 8, 8), np.float32) * np.arange(3)[:, None, None])
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnImagePixelSize": [2.5],
            "rlnImageSize": [8],
            "rlnImageDimensionality": [2],
        }
    )
    particles = pd.DataFrame({"rlnImageName": ["1@s.mrcs", "3@s.mrcs"], "rlnOpticsGroup": [1, 1]})
    starfile.write({"optics": optics, "particles": particles}, tmp_path / "p.star")
    r = _ok(runner.invoke(app, ["info", str(tmp_path / "p.star")]))
    assert "RELION 3.1 STAR" in r.output and "2.5 A/px (from the STAR optics table)" in r.output
    assert "images:           2" in r.output and "8 x 8 px" in r.output
    assert "0 to 2" in r.output  # value range of images 1 and 3
    r = _ok(runner.invoke(app, ["info", str(tmp_path / "s.mrcs"), "--apix", "1.1"]))
    assert "1.1 A/px (from the --apix)" in r.output


def test_preprocess_fit_on_cache_and_encode_the_original(tiny_stack, tmp_path):
    """fit on the original with -D, fit on a preprocessed cache, and encode of the original
    under the first model all give the same particles."""
    cache = tmp_path / "cache.h5"
    pre = ["-D", "12", "--norm", "background"]
    r = _ok(runner.invoke(app, ["preprocess", str(tiny_stack), "-o", str(cache), *pre, "-q"]))
    assert "images/s" in r.output
    a, b = tmp_path / "a", tmp_path / "b"
    _ok(runner.invoke(app, ["fit", str(tiny_stack), "-o", str(a), *pre, *SMALL]))
    _ok(runner.invoke(app, ["fit", str(cache), "-o", str(b), *SMALL]))
    ta, tb = read_table(a / "particles.csv"), read_table(b / "particles.csv")
    assert (
        ta["image"].tolist() == tb["image"].tolist() == [f"{k}@{tiny_stack}" for k in range(1, 61)]
    )
    for col in ("theta_deg", "shift_x_px", "shift_y_px", "shift_x_A", "z1"):
        assert np.allclose(ta[col], tb[col], atol=1e-5), col
    # shifts are in input pixels and A uses the input pixel size (1.5 A), not the 16/12 x
    # larger pixels of the downsampled model box
    assert np.allclose(ta["shift_x_A"], ta["shift_x_px"] * 1.5, atol=1e-5)
    enc = tmp_path / "enc.csv"
    _ok(
        runner.invoke(
            app, ["encode", str(a), str(tiny_stack), "-o", str(enc), "-q", "--device", "cpu"]
        )
    )
    te = read_table(enc)
    assert np.allclose(te["z1"], ta["z1"], atol=1e-5)
    assert np.allclose(te["shift_x_A"], ta["shift_x_A"], atol=1e-4)
    r = runner.invoke(app, ["fit", str(cache), "-o", str(tmp_path / "c"), "-D", "8", *SMALL])
    assert r.exit_code == 1 and "already preprocessed" in r.output


def test_fit_rgb_pictures_with_subset(tmp_path):
    rng = np.random.default_rng(0)
    pics = tmp_path / "pics"
    pics.mkdir()
    for k in range(12):
        a = np.zeros((40, 40, 3), np.uint8)
        a[10:30, 15:25] = rng.integers(100, 255, size=3)
        Image.fromarray(a).save(pics / f"g{k:02d}.png")
    (tmp_path / "ind.txt").write_text("\n".join(map(str, range(1, 12))))
    out = tmp_path / "run"
    _ok(
        runner.invoke(
            app,
            [
                "fit",
                str(pics),
                "-o",
                str(out),
                "--crop",
                "32",
                "--jitter",
                "2",
                "-D",
                "16",
                "--ind",
                str(tmp_path / "ind.txt"),
                *SMALL,
            ],
        )
    )
    t = read_table(out / "particles.csv")
    assert len(t) == 11 and t["input_row"].tolist() == list(range(1, 12))
    assert t["image"].iloc[0].endswith("g01.png") and np.isfinite(t["elbo"]).all()
    import json

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["channels"] == 3 and cfg["model"]["likelihood"] == "bernoulli"
    assert cfg["model"]["image_size"] == 16 and cfg["data"]["scale"] == 2.0


def _bad(tmp_path, kind):
    good = np.random.default_rng(0).normal(size=(4, 8, 8)).astype(np.float32)
    if kind == "star-missing-stack":
        write_mrc(tmp_path / "a.mrcs", good)
        starfile.write(
            pd.DataFrame({"rlnImageName": ["1@a.mrcs", "2@gone.mrcs"]}), tmp_path / "p.star"
        )
        return [tmp_path / "p.star"], "row 2: stack gone.mrcs not found"
    if kind == "star-beyond-end":
        write_mrc(tmp_path / "a.mrcs", good)
        starfile.write(
            pd.DataFrame({"rlnImageName": ["1@a.mrcs", "9@a.mrcs"]}), tmp_path / "p.star"
        )
        return [tmp_path / "p.star"], "row 2: image 9 is beyond the end"
    if kind == "mixed-sizes":
        write_mrc(tmp_path / "a.mrcs", good)
        write_mrc(tmp_path / "b.mrcs", np.zeros((4, 6, 6), np.float32))
        return [tmp_path / "a.mrcs", tmp_path / "b.mrcs"], "mixed image sizes"
    if kind == "fits-table":
        col = fits.Column(name="x", format="E", array=[1.0])
        fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([col])]).writeto(
            tmp_path / "cat.fits"
        )
        return [tmp_path / "cat.fits"], "holds no image"
    if kind == "truncated-mrc":
        write_mrc(tmp_path / "t.mrcs", good)
        data = (tmp_path / "t.mrcs").read_bytes()
        (tmp_path / "t.mrcs").write_bytes(data[:-50])
        return [tmp_path / "t.mrcs"], "not a readable MRC file"
    if kind == "bad-jpeg":
        (tmp_path / "pics").mkdir()
        (tmp_path / "pics" / "x.jpg").write_bytes(b"\xff\xd8 nonsense")
        return [tmp_path / "pics"], "x.jpg: unreadable image"
    if kind == "empty-dir":
        (tmp_path / "nothing").mkdir()
        return [tmp_path / "nothing"], "holds no JPEG, PNG or FITS files"
    if kind == "unknown-suffix":
        (tmp_path / "x.tif").write_bytes(b"II*\0")
        return [tmp_path / "x.tif"], "unknown suffix '.tif'"
    raise AssertionError(kind)


KINDS = [
    "star-missing-stack",
    "star-beyond-end",
    "mixed-sizes",
    "fits-table",
    "truncated-mrc",
    "bad-jpeg",
    "empty-dir",
    "unknown-suffix",
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", ["fit", "info", "preprocess"])
def test_bad_input_is_one_line(tmp_path, kind, command):
    paths, message = _bad(tmp_path, kind)
    args = [command, *map(str, paths)]
    if command == "fit":
        args += ["-o", str(tmp_path / "out"), *SMALL]
    elif command == "preprocess":
        args += ["-o", str(tmp_path / "c.h5"), "-q"]
    r = runner.invoke(app, args)
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    assert message in lines[0]
    assert any(p.name in lines[0] for p in paths)
