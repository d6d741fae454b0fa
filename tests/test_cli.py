"""The command line through Typer's test runner: a real fit, encode, and one-line errors."""

import mrcfile
import numpy as np
import pytest
from conftest import SMALL, runner
from emvae_cli.main import app

from emvae.io import read_table


def _ok(result):
    assert result.exit_code == 0, result.output
    return result


def test_fit_then_encode(tiny_stack, tmp_path):
    out = tmp_path / "run"
    _ok(runner.invoke(app, ["fit", str(tiny_stack), "-o", str(out), *SMALL]))
    table = read_table(out / "particles.csv")
    assert len(table) == 60 and table["image"].iloc[0] == f"1@{tiny_stack}"
    enc = tmp_path / "enc.csv"
    _ok(
        runner.invoke(
            app,
            [
                "encode",
                str(out / "checkpoints" / "last.pt"),
                str(tiny_stack),
                "-o",
                str(enc),
                "--device",
                "cpu",
                "-q",
            ],
        )
    )
    again = read_table(enc)
    assert np.allclose(again["z1"], table["z1"], atol=1e-6)
    assert np.allclose(again["theta_deg"], table["theta_deg"], atol=1e-4)
    # refuses to overwrite, both commands
    r = runner.invoke(app, ["encode", str(out), str(tiny_stack), "-o", str(enc), "-q"])
    assert r.exit_code != 0 and "--force" in r.output
    r = runner.invoke(app, ["fit", str(tiny_stack), "-o", str(out), *SMALL])
    assert r.exit_code != 0 and "--resume" in r.output
    # resume to more epochs
    _ok(runner.invoke(app, ["fit", str(tiny_stack), "-o", str(out), "--resume", "-n", "3", "-q"]))
    assert len(np.genfromtxt(out / "metrics.csv", delimiter=",", names=True)) == 3


def test_fit_example(tmp_path):
    out = tmp_path / "ex"
    _ok(
        runner.invoke(
            app,
            [
                "fit",
                "--example",
                "-o",
                str(out),
                "-n",
                "1",
                "--gen-hidden",
                "16",
                "--enc-hidden",
                "16",
                "-q",
            ],
        )
    )
    assert (out / "example" / "truth.csv").exists()
    assert len(read_table(out / "particles.csv")) == len(read_table(out / "example/truth.csv"))


def _bad(tmp_path, kind):
    p = tmp_path / "bad.mrcs"
    if kind == "missing":
        return tmp_path / "missing.mrcs"
    if kind == "not-mrc":
        p.write_text("this is not an MRC file\n" * 100)
    elif kind == "empty":
        with mrcfile.new(p) as m:
            m.set_data(np.zeros((0, 8, 8), np.float32))
    elif kind == "one-image":
        with mrcfile.new(p) as m:
            m.set_data(np.random.default_rng(0).normal(size=(1, 8, 8)).astype(np.float32))
    elif kind == "non-square":
        with mrcfile.new(p) as m:
            m.set_data(np.zeros((4, 8, 6), np.float32))
    elif kind == "nan":
        data = np.random.default_rng(0).normal(size=(4, 8, 8)).astype(np.float32)
        data[2, 0, 0] = np.nan
        with mrcfile.new(p) as m:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m.set_data(data)
    return p


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing", "no such file"),
        ("not-mrc", "not a readable MRC file"),
        ("empty", "contains no images"),
        ("one-image", "at least 2"),
        ("non-square", "square"),
        ("nan", "image 3 contains NaN"),
    ],
)
def test_bad_input_is_one_line(tmp_path, kind, message):
    path = _bad(tmp_path, kind)
    r = runner.invoke(app, ["fit", str(path), "-o", str(tmp_path / "out"), *SMALL])
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert len(lines) == 1, r.output
    assert message in lines[0] and path.name in lines[0]
    assert "Traceback" not in r.output


def test_bad_options_are_one_line(tiny_stack, tmp_path):
    r = runner.invoke(
        app, ["fit", str(tiny_stack), "-o", str(tmp_path / "o"), "--theta-prior", "vonmises", "-q"]
    )
    assert r.exit_code == 1 and "unknown theta prior" in r.output
    r = runner.invoke(app, ["fit", "-o", str(tmp_path / "o")])
    assert r.exit_code == 1 and "--example" in r.output
    r = runner.invoke(
        app, ["encode", str(tiny_stack), str(tiny_stack), "-o", str(tmp_path / "e.csv")]
    )
    assert r.exit_code == 1 and "not a readable emvae checkpoint" in r.output


def test_help_texts_keep_square_brackets_and_show_no_bool_metavars():
    from emvae_cli.main import app

    report = runner.invoke(app, ["report", "--help"])
    assert report.exit_code == 0 and "[shift_x_px, shift_y_px" in report.output
    fit = runner.invoke(app, ["fit", "--help"])
    assert "--rotation / --no-rotation" in fit.output and "<bool>" not in fit.output
