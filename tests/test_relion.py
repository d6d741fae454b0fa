"""Poses written to STAR files mean, to RELION, what they mean to emvae.

The round trips run RELION 3.1.3's own ``relion_stack_create --apply_transformation`` (Debian's
``relion`` package; `.ci/run` installs it) and skip when it is absent.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch
from conftest import (
    DATA,
    RELION,
    SMALL,
    corr,
    optics_table,
    real_data,
    relion_align,
    render_model,
    runner,
)
from emvae_cli.main import app

from emvae.align import align_images
from emvae.geometry import model_to_image_pose
from emvae.io import open_stack, read_table, write_mrc
from emvae.io import star_export as sx

needs_relion = pytest.mark.skipif(RELION is None, reason="RELION is not installed")


def _posed_stack(tmp_path: Path, box: int, n: int = 10):
    """Clean images T(x R(theta) + dx) with known poses, the template at theta = 0, the table."""
    g = torch.Generator().manual_seed(box)
    theta = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * np.pi
    shift = torch.randn(n, 2, generator=g, dtype=torch.float64) * 3 / ((box - 1) / 2)
    images = render_model(theta, shift, box)[:, 0].numpy()
    ref = render_model(torch.zeros(1), torch.zeros(1, 2), box)[0, 0].numpy()
    write_mrc(tmp_path / f"p{box}.mrcs", images, apix=1.7)
    theta_deg, shift_px = model_to_image_pose(theta, shift, box)
    table = pd.DataFrame(
        {
            "image": [f"{k + 1}@p{box}.mrcs" for k in range(n)],
            "theta_deg": theta_deg.numpy(),
            "shift_x_px": shift_px[:, 0].numpy(),
            "shift_y_px": shift_px[:, 1].numpy(),
        }
    )
    return images, ref, table


@needs_relion
@pytest.mark.parametrize("box", [65, 64])
@pytest.mark.parametrize("relion30", [False, True])
def test_relion_applies_exported_poses_onto_the_template(tmp_path, box, relion30):
    images, ref, table = _posed_stack(tmp_path, box)
    star = tmp_path / "p.star"
    sx.write_star(sx.table_to_star(table, box, 1.7, relion30=relion30), star)
    aligned = relion_align(star)
    scores = [corr(a, ref) for a in aligned]
    assert min(scores) >= 0.99, scores
    # emvae align does what RELION does, within interpolation error
    ours = align_images(
        torch.from_numpy(images)[:, None],
        torch.tensor(table["theta_deg"].to_numpy()),
        torch.tensor(table[["shift_x_px", "shift_y_px"]].to_numpy()),
    )[:, 0].numpy()
    assert np.abs(ours - aligned).max() < 1e-5 * np.abs(ref).max()


@needs_relion
def test_even_boxes_need_the_half_pixel_term_and_the_sign_matters(tmp_path, monkeypatch):
    images, ref, table = _posed_stack(tmp_path, 64)
    flipped = table.assign(theta_deg=-table["theta_deg"])
    sx.write_star(sx.table_to_star(flipped, 64, 1.7), tmp_path / "flip.star")
    assert np.median([corr(a, ref) for a in relion_align(tmp_path / "flip.star")]) < 0.9
    monkeypatch.setattr(sx, "_centre_offset", lambda box: np.zeros(2))
    sx.write_star(sx.table_to_star(table, 64, 1.7), tmp_path / "naive.star")
    assert min(corr(a, ref) for a in relion_align(tmp_path / "naive.star")) < 0.99


ORIGIN_PAIRS = [  # (root, centred, shifted, most that raw shifted and centred images correlate)
    ("data", "blobs31_centered", "blobs31", 0.8),  # tests/data: relion_project, origins in A
    ("shared", "em/rln_proj_64_centered", "em/rln_proj_64_shifted", 0.5),  # ASPIRE's, pixels
]


@pytest.mark.parametrize(("where", "centred", "shifted", "raw_most"), ORIGIN_PAIRS)
def test_relion_made_origins_map_shifted_onto_centred(where, centred, shifted, raw_most):
    """RELION projected the same particles with and without origins (rlnOriginXAngst or
    pixel rlnOriginX/Y): read as emvae poses, both align onto the same images."""
    pair = (centred, shifted)
    if where == "data":
        em = DATA
    else:
        em = real_data(*(f"{n}{ext}" for n in pair for ext in (".star", ".mrcs")))
    aligned, raw = [], []
    for name in (f"{n}.star" for n in pair):
        s = open_stack(em / name)
        psi, shift = sx.star_pose(s.metadata, s.apix, s.size)
        x = torch.from_numpy(np.array(s.images[:], dtype=np.float64))
        aligned.append(align_images(x, torch.from_numpy(psi), torch.from_numpy(shift))[:, 0])
        raw.append(x[:, 0])
    assert min(corr(a, b) for a, b in zip(*aligned, strict=True)) > 0.98
    assert max(corr(a, b) for a, b in zip(*raw, strict=True)) < raw_most  # the shifts are real
    s = open_stack(em / f"{shifted}.star")
    psi, shift = sx.star_pose(s.metadata, s.apix, s.size)
    wrong = align_images(
        torch.from_numpy(np.array(s.images[:], dtype=np.float64)),
        torch.from_numpy(psi),
        torch.from_numpy(shift * np.array([1.0, -1.0])),  # y origin read with the wrong sign
    )[:, 0]
    assert max(corr(a, b) for a, b in zip(aligned[0], wrong, strict=True)) < 0.9


def test_export_inverts_import():
    rng = np.random.default_rng(0)
    theta, shift = rng.uniform(-180, 180, 20), rng.normal(0, 5, (20, 2))
    for box in (64, 65):
        origin = sx.relion_origin(theta, shift, box)
        assert np.allclose(sx.table_pose(theta, origin, box), shift)
    # odd boxes: rlnOriginX = -shift_x, rlnOriginY = shift_y
    # (docs/conventions.md, "RELION's 2-D pose")
    assert np.allclose(sx.relion_origin(theta, shift, 65), shift * np.array([-1, 1]))


def _table(n=4):
    return pd.DataFrame(
        {
            "image": [f"{k}@s.mrcs" for k in range(1, n + 1)],
            "input_row": np.arange(n),
            "theta_deg": np.linspace(-170, 170, n),
            "theta_std_deg": np.full(n, 2.0),
            "shift_x_px": np.linspace(-2, 2, n),
            "shift_y_px": np.linspace(1, -1, n),
            "shift_x_std_px": np.full(n, 0.1),
            "shift_y_std_px": np.full(n, 0.1),
            "z1": np.linspace(0, 1, n),
            "z1_std": np.full(n, 0.5),
            "elbo": np.full(n, -100.0),
            "split": ["train"] * (n - 1) + ["test"],
        }
    )


def test_star_files_read_back_with_the_right_types(tmp_path):
    t = _table()
    sx.write_star(sx.table_to_star(t, 33, 1.25), tmp_path / "a.star")
    back = starfile.read(tmp_path / "a.star", always_dict=True)
    assert list(back) == ["optics", "particles"]
    assert tmp_path.joinpath("a.star").read_text().count("# version 30001") == 2
    o, p = back["optics"], back["particles"]
    assert o["rlnImageSize"].dtype.kind == "i" and o["rlnImagePixelSize"].iloc[0] == 1.25
    assert {"rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"} <= set(o.columns)
    assert p["rlnImageName"].tolist()[0] == "000001@s.mrcs"
    for col in ("rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", "emvaeZ1", "emvaeZ1Std"):
        assert p[col].dtype.kind == "f", col
    assert np.allclose(p["rlnAnglePsi"], t["theta_deg"])
    assert np.allclose(p["rlnOriginXAngst"] / 1.25, -t["shift_x_px"] + 0)  # odd box 33
    assert p["emvaeSplit"].tolist()[-1] == "test"
    sx.write_star(sx.table_to_star(t, 33, None, relion30=True), tmp_path / "b.star")
    legacy = starfile.read(tmp_path / "b.star")
    assert isinstance(legacy, pd.DataFrame) and "rlnOriginX" in legacy
    assert np.allclose(legacy["rlnOriginY"], t["shift_y_px"])
    assert "rlnOriginXAngst" not in legacy and "rlnMagnification" not in legacy


def test_pixel_size_needed_for_angstrom_origins(tmp_path):
    with pytest.raises(Exception, match="pixel size is unknown.*--apix"):
        sx.table_to_star(_table(), 33, None)
    write_mrc(tmp_path / "s.mrcs", np.zeros((4, 33, 33), np.float32))
    pd.DataFrame(_table()).to_csv(tmp_path / "t.csv", index=False)
    r = runner.invoke(app, ["export-star", str(tmp_path / "t.csv"), "-o", str(tmp_path / "o.star")])
    assert r.exit_code == 1 and "box size is unknown" in r.output
    args = ["export-star", str(tmp_path / "t.csv"), "--box", "33", "-o", str(tmp_path / "o.star")]
    r = runner.invoke(app, args)
    assert r.exit_code == 1 and "--apix" in r.output and len(r.output.strip().splitlines()) == 1
    r = runner.invoke(app, [*args, "--apix", "2.0"])
    assert r.exit_code == 0, r.output
    p = starfile.read(tmp_path / "o.star")["particles"]
    assert np.allclose(p["rlnOriginXAngst"], -_table()["shift_x_px"] * 2.0)


@pytest.mark.parametrize(
    "layout, columns",
    [
        ("3.1", {}),  # the optics group's rlnImagePixelSize (rows without rlnOpticsGroup)
        ("3.0", {"rlnImagePixelSize": 2.0}),
        ("3.0", {"rlnDetectorPixelSize": 5.0, "rlnMagnification": 25000.0}),  # 5 um / 25000
    ],
)
def test_export_star_takes_the_pixel_size_the_input_star_states(tmp_path, layout, columns):
    """No --apix needed when the --input STAR states the pixel size; the table's rows are the
    STAR's in reverse order (input_row)."""
    n = 6
    table = _table(n).assign(input_row=np.arange(n)[::-1])
    table.to_csv(tmp_path / "t.csv", index=False)
    rows = pd.DataFrame({"rlnImageName": [f"{k:06d}@s.mrcs" for k in range(n, 0, -1)]})
    rows = rows.assign(**columns)
    star = tmp_path / "in.star"
    blocks = {"optics": optics_table(apix=2.0, size=33), "particles": rows}
    starfile.write(blocks if layout == "3.1" else rows, star)
    out = tmp_path / "o.star"
    args = ["export-star", str(tmp_path / "t.csv"), "--input", str(star), "-o", str(out)]
    r = runner.invoke(app, args if layout == "3.1" else [*args, "--box", "33"])  # 3.1: its box
    assert r.exit_code == 0, r.output
    assert "RELION 3.1" in r.output
    p = starfile.read(out, always_dict=True)["particles"]
    assert p["rlnImageName"].tolist() == rows["rlnImageName"].iloc[::-1].tolist()
    assert np.allclose(p["rlnOriginXAngst"], -table["shift_x_px"] * 2.0)  # odd box 33


def test_fit_writes_star_keeping_input_rows_in_a_shuffled_subset(tiny_stack, tmp_path):
    """A STAR input with its own columns, fitted on a shuffled subset: particles.star has
    those rows, in that order, every input column, and only the pose columns replaced."""
    n = 60
    optics = optics_table()
    particles = pd.DataFrame(
        {
            "rlnImageName": [f"{k:06d}@{tiny_stack.name}" for k in range(1, n + 1)],
            "rlnOpticsGroup": [1] * n,
            "rlnDefocusU": np.arange(n) * 100.0 + 10000,
            "rlnMicrographName": [f"mic{k // 10}.mrc" for k in range(n)],
            "rlnAnglePsi": np.full(n, 99.0),
            "rlnOriginXAngst": np.full(n, 9.0),
        }
    )
    star = tiny_stack.parent / "in.star"
    starfile.write({"optics": optics, "particles": particles}, star)
    ind = np.random.default_rng(0).permutation(n)[:25]
    np.save(tmp_path / "ind.npy", ind)
    out = tmp_path / "run"
    r = runner.invoke(
        app, ["fit", str(star), "--ind", str(tmp_path / "ind.npy"), "-o", str(out)] + SMALL
    )
    assert r.exit_code == 0, r.output
    got = starfile.read(out / "particles.star", always_dict=True)
    rows, table = got["particles"], read_table(out / "particles.csv")
    assert rows["rlnImageName"].tolist() == particles["rlnImageName"].iloc[ind].tolist()
    assert np.array_equal(rows["rlnDefocusU"], particles["rlnDefocusU"].iloc[ind])
    assert rows["rlnMicrographName"].tolist() == particles["rlnMicrographName"].iloc[ind].tolist()
    assert np.allclose(rows["rlnAnglePsi"], table["theta_deg"])
    assert not np.allclose(rows["rlnOriginXAngst"], 9.0)
    assert got["optics"]["rlnVoltage"].iloc[0] == 200.0
    assert table["input_row"].tolist() == ind.tolist()
    # export-star from the run directory writes the same file
    r = runner.invoke(app, ["export-star", str(out), "-o", str(tmp_path / "again.star")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "again.star").read_text() == (out / "particles.star").read_text()


@pytest.mark.parametrize("box", [64, 65])
def test_emvae_align_command_equals_relion(tmp_path, box):
    images, ref, table = _posed_stack(tmp_path, box)
    table.to_csv(tmp_path / "t.csv", index=False)
    out = tmp_path / "aligned.mrcs"
    args = ["align", str(tmp_path / "t.csv"), str(tmp_path / f"p{box}.mrcs"), "-o", str(out)]
    r = runner.invoke(app, [*args, "-q", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    ours = mrcfile.read(out).astype(np.float64)
    average = mrcfile.read(tmp_path / "aligned_avg.mrc")
    assert np.allclose(average.reshape(box, box), ours.mean(0), atol=1e-6)
    assert min(corr(a, ref) for a in ours) > 0.99
    if RELION is not None:
        sx.write_star(sx.table_to_star(table, box, 1.7), tmp_path / "p.star")
        assert np.abs(ours - relion_align(tmp_path / "p.star")).max() < 1e-5 * np.abs(ref).max()
    r = runner.invoke(app, [*args, "-q"])
    assert r.exit_code == 1 and "--force" in r.output
    shuffled = table.iloc[::-1]
    shuffled.to_csv(tmp_path / "t.csv", index=False)
    r = runner.invoke(app, [*args, "-q", "--force"])
    assert r.exit_code == 1 and "the table's row says" in r.output


def test_fit_star_pixel_size_from_header_option_or_unknown(tiny_stack, tmp_path):
    """particles.star takes the pixel size from the MRC header, or --apix; without either it
    is written in the 3.0 layout (origins in pixels) and fit says so."""
    runs = {}
    for name, extra in (("header", []), ("option", ["--apix", "2.5"])):
        out = tmp_path / name
        r = runner.invoke(app, ["fit", str(tiny_stack), "-o", str(out), *SMALL, *extra])
        assert r.exit_code == 0, r.output
        runs[name] = starfile.read(out / "particles.star", always_dict=True)
    table = read_table(tmp_path / "header" / "particles.csv")
    assert runs["header"]["optics"]["rlnImagePixelSize"].iloc[0] == 1.5  # tiny_stack's header
    assert runs["option"]["optics"]["rlnImagePixelSize"].iloc[0] == 2.5
    origin = sx.relion_origin(
        table["theta_deg"].to_numpy(), table[["shift_x_px", "shift_y_px"]].to_numpy(), 16
    )
    assert np.allclose(
        runs["header"]["particles"]["rlnOriginXAngst"], origin[:, 0] * 1.5, atol=1e-4
    )
    bare = tmp_path / "bare.mrcs"
    write_mrc(bare, mrcfile.read(tiny_stack))
    r = runner.invoke(app, ["fit", str(bare), "-o", str(tmp_path / "bare"), *SMALL])
    assert r.exit_code == 0 and "RELION 3.0: pixel size unknown" in r.output.replace("\n", " ")
    legacy = starfile.read(tmp_path / "bare" / "particles.star")
    assert "rlnOriginX" in legacy and "rlnOriginXAngst" not in legacy
    enc = tmp_path / "enc.csv"
    r = runner.invoke(
        app,
        [
            "encode",
            str(tmp_path / "option"),
            str(tiny_stack),
            "-o",
            str(enc),
            "-q",
            "--apix",
            "2.5",
        ],
    )
    assert r.exit_code == 0, r.output
    again = starfile.read(tmp_path / "enc.star", always_dict=True)["particles"]
    assert np.allclose(again["rlnAnglePsi"], runs["option"]["particles"]["rlnAnglePsi"], atol=1e-3)


def test_relion30_pixel_origins_are_the_31_origins_in_angstrom():
    """blobs30.star (RELION 3.0: rlnOriginX/Y in px, pixel size from detector/magnification) and
    blobs31.star (rlnOriginXAngst, optics block) give the same poses; origins are not zero."""
    poses = []
    for name in ("blobs31.star", "blobs30.star"):
        s = open_stack(DATA / name)
        poses.append(sx.star_pose(s.metadata, s.apix, s.size))
        assert s.apix == 2.5
    (psi31, shift31), (psi30, shift30) = poses
    assert np.array_equal(psi31, psi30) and np.allclose(shift31, shift30, atol=1e-9)
    centred = open_stack(DATA / "blobs31_centered.star")
    _, zero = sx.star_pose(centred.metadata, centred.apix, centred.size)
    # the shift the origins add is the origin turned by psi: as long as the origin in pixels
    origins = s.metadata[["rlnOriginX", "rlnOriginY"]].to_numpy(float)
    assert np.allclose(np.linalg.norm(shift31 - zero, axis=1), np.linalg.norm(origins, axis=1))
    assert 1.0 < np.linalg.norm(origins, axis=1).max() <= 4 * np.sqrt(2)


def test_cryosparc_file_made_by_cryosparc_tools_gives_its_optics(tmp_path):
    from emvae.particles import Particles

    stack = open_stack(DATA / "blobs.cs")
    table = _table(len(stack)).assign(image=stack.names)
    assert Particles.of(stack).write_star(table, tmp_path / "p.star") == "3.1"
    blocks = starfile.read(tmp_path / "p.star", always_dict=True)
    optics = blocks["optics"].iloc[0]
    assert optics["rlnVoltage"] == 300.0 and optics["rlnImageSize"] == 32
    assert optics["rlnSphericalAberration"] == pytest.approx(2.7, abs=1e-6)
    assert optics["rlnAmplitudeContrast"] == pytest.approx(0.1, abs=1e-6)
    assert optics["rlnImagePixelSize"] == pytest.approx(2.5, abs=1e-6)
    assert blocks["particles"]["rlnAnglePsi"].tolist() == pytest.approx(table["theta_deg"])


def test_cryosparc_input_gives_its_optics(tmp_path):
    # the .cs names its 2.9 MB stack, which is only in ../shared/data
    cs = real_data("em/empiar_10076_7.cs", "em/empiar_10076_7.mrc") / "em" / "empiar_10076_7.cs"
    from emvae.particles import Particles

    stack = open_stack(cs)
    table = _table(len(stack)).assign(image=stack.names)
    assert Particles.of(stack).write_star(table, tmp_path / "p.star") == "3.1"
    optics = starfile.read(tmp_path / "p.star", always_dict=True)["optics"].iloc[0]
    assert (optics["rlnVoltage"], optics["rlnSphericalAberration"]) == (300.0, 2.7)
    assert optics["rlnAmplitudeContrast"] == 0.07 and optics["rlnImageSize"] == 320
    assert optics["rlnImagePixelSize"] == pytest.approx(1.31, abs=1e-3)


def test_star_output_is_the_same_bytes_whatever_the_clock(tmp_path, monkeypatch):
    """starfile writes the time of day into its header; emvae's STAR files must not, so the
    same poses written at two different times give byte-identical files."""
    import datetime as dt

    import starfile.writer

    table = pd.DataFrame(
        {
            "image": ["1@s.mrcs", "2@s.mrcs"],
            "theta_deg": [10.0, -35.5],
            "shift_x_px": [0.5, -1.25],
            "shift_y_px": [0.0, 2.0],
        }
    )
    blocks = sx.table_to_star(table, 32, 1.5)

    class Clock(dt.datetime):
        hour = 1

        @classmethod
        def now(cls, tz=None):
            return dt.datetime(2020, 1, 2, cls.hour, 2, 3)

    monkeypatch.setattr(starfile.writer, "datetime", Clock)
    first = sx.write_star(blocks, tmp_path / "a.star").read_bytes()
    Clock.hour = 23
    second = sx.write_star(blocks, tmp_path / "b.star").read_bytes()
    assert first == second
    assert b"01:02:03" not in first and b"emvae" in first.split(b"\n")[0]
    got = starfile.read(tmp_path / "a.star", always_dict=True)
    assert np.allclose(got["particles"]["rlnAnglePsi"], table["theta_deg"])


@pytest.mark.skipif(shutil.which("relion_project") is None, reason="RELION is not installed")
def test_our_ctf_is_relions_sign_astigmatism_angle_and_scale(tmp_path):
    """relion_project --ctf against emvae.ctf.apply_ctf on relion_project's CTF-free
    projections of one map: astigmatic CTFs at three angles agree to 1e-4 of the image's range;
    the opposite sign or a mirrored astigmatism angle would not."""
    import subprocess

    from emvae.ctf import apply_ctf, ctf_params

    d, apix = 32, 3.0
    g = np.arange(d) - d // 2
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    vol = np.zeros((d, d, d), np.float32)
    for cx, cy, cz, s, a in [(4, 0, 0, 3, 1), (-5, 3, 2, 2.5, 0.8), (0, -6, -1, 2, 0.6)]:
        vol += a * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * s * s))
    with mrcfile.new(tmp_path / "vol.mrc") as m:
        m.set_data(vol)
        m.voxel_size = apix
    optics = optics_table(apix, d, voltage=300.0, cs=2.7, ac=0.1)
    particles = pd.DataFrame(
        {
            **{c: [0.0] * 3 for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")},
            "rlnOriginXAngst": [0.0] * 3,
            "rlnOriginYAngst": [0.0] * 3,
            "rlnDefocusU": [15000.0, 25000.0, 8000.0],
            "rlnDefocusV": [15000.0, 15000.0, 6000.0],
            "rlnDefocusAngle": [0.0, 30.0, 120.0],
            "rlnOpticsGroup": [1] * 3,
            "rlnImageName": [f"{k}@x.mrcs" for k in (1, 2, 3)],
        }
    )
    starfile.write({"optics": optics, "particles": particles}, tmp_path / "in.star")
    for name, extra in (("plain", []), ("ctf", ["--ctf"])):
        args = ["relion_project", "--i", "vol.mrc", "--o", name, "--ang", "in.star"]
        r = subprocess.run(
            [*args, "--angpix", str(apix), *extra], cwd=tmp_path, capture_output=True, text=True
        )
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    plain = torch.from_numpy(mrcfile.read(tmp_path / "plain.mrcs").astype(np.float64))[:, None]
    relion = mrcfile.read(tmp_path / "ctf.mrcs").astype(np.float64)
    params = torch.from_numpy(ctf_params(particles, optics, apix, "in.star"))

    def error(p: torch.Tensor) -> float:
        ours = apply_ctf(plain, p)[:, 0].numpy()
        return float(np.abs(ours - relion).max() / np.ptp(relion))

    assert error(params) < 1e-4
    flipped = params.clone()
    flipped[:, 8] = -flipped[:, 8]  # the scale column: the opposite sign
    mirrored = params.clone()
    mirrored[:, 2] = -mirrored[:, 2]  # astigmatism angle measured the other way round
    assert error(flipped) > 0.5 and error(mirrored) > 0.01


@needs_relion
def test_relion_keeps_emvaes_own_columns_through_a_selection(tmp_path):
    """RELION 3.1 reads a STAR that emvae wrote, extra ``emvae*`` columns and all: it keeps
    (and ignores) them when it selects particles, so a subset chosen in RELION still carries
    each particle's z, stds, ELBO and split."""
    import subprocess

    t = _table(8)
    sx.write_star(sx.table_to_star(t, 33, 1.25), tmp_path / "a.star")
    handler = Path(RELION).with_name("relion_star_handler")
    r = subprocess.run(
        [str(handler), "--i", "a.star", "--o", "sel.star", "--select", "rlnAnglePsi",
         "--minval", "0", "--maxval", "180"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    p = starfile.read(tmp_path / "sel.star", always_dict=True)["particles"]
    keep = t["theta_deg"].between(0, 180)
    assert len(p) == int(keep.sum()) == 4
    assert np.allclose(p["emvaeZ1"], t.loc[keep, "z1"]) and (p["emvaeElbo"] == -100.0).all()
    assert np.allclose(p["emvaeAnglePsiStd"], 2.0) and p["emvaeSplit"].tolist()[-1] == "test"
