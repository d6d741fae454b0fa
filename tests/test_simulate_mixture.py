"""emvae simulate --classes/--junk: stacks with known classes and junk (issue 39). The counts,
that each class's images look like that class, that junk is what its kind says, that real
particles keep the poses' conventions, and that one class without junk is the plain
simulation to the byte."""

import hashlib

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch
from conftest import runner
from emvae_cli.main import app

from emvae.align import align_images
from emvae.errors import ConfigError
from emvae.simulate import (
    JUNK_KINDS,
    class_objects,
    consensus_pose,
    cut_blobs,
    draw_mixture,
    get_object,
    parse_junk_kinds,
    render_blobs,
    simulate_particles,
)

MIX = class_objects("hinge", 0, 3)  # hinge, clamp, slide

# sha256 of truth.csv and particles.star written by `emvae simulate OUT -n 60 --size 16
# --seed 5` (a) and with `--ctf 1:2 --astigmatism 0.1 --apix 2 --scale-std 0.1` (b) before
# mixtures existed (commit f659cc4)
GOLDEN = {
    "a": (
        "c5028be727f253c9d48cf65c063ba7a777174e53a46cc81e046bd892c593486f",
        "496883ecce2d5d45352fe1099d002f1a8adfde3b7532e855b14b8d796c439dae",
    ),
    "b": (
        "0e24f825f63862d4cce2233f46e2be3c761c4908cc92188ef44a6c4d8876d49c",
        "47d05bef8a76fc0c59de01bc1252055b37a0c085a59085332a981d331de63f76",
    ),
}
EXTRA = {
    "a": [],
    "b": ["--ctf", "1:2", "--astigmatism", "0.1", "--apix", "2", "--scale-std", "0.1"],
}


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _without_label(path):
    """An MRC file's bytes without the label that records when it was written (bytes
    224-1023 of the header: mrcfile stamps the time there)."""
    data = path.read_bytes()
    return data[:224] + data[1024:]


@pytest.mark.parametrize("case", ["a", "b"])
def test_one_class_without_junk_is_the_plain_simulation_to_the_byte(tmp_path, case):
    base = ["simulate", "-n", "60", "--size", "16", "--seed", "5", *EXTRA[case]]
    plain, mixed = tmp_path / "plain", tmp_path / "mixed"
    assert runner.invoke(app, [base[0], str(plain), *base[1:]]).exit_code == 0
    r = runner.invoke(app, [base[0], str(mixed), *base[1:], "--classes", "1", "--junk", "0"])
    assert r.exit_code == 0, r.output
    for name in ("truth.csv", "particles.star"):
        assert (mixed / name).read_bytes() == (plain / name).read_bytes()
    assert _without_label(mixed / "particles.mrcs") == _without_label(plain / "particles.mrcs")
    # the text files are those simulate wrote before mixtures existed
    assert (_sha(plain / "truth.csv"), _sha(plain / "particles.star")) == GOLDEN[case]
    if case == "a":  # and the pixels are drawn as they were: the poses, the blobs, the noise
        rng = np.random.default_rng(5)
        conf, theta = rng.uniform(0, 1, 60), rng.uniform(-180, 180, 60)
        shift = rng.normal(0, 2.0, (60, 2))
        clean = render_blobs(*get_object("hinge").blobs(conf), theta, shift, 16)
        expect = clean + rng.normal(0, np.sqrt(clean.var()), clean.shape).astype(np.float32)
        assert np.array_equal(mrcfile.read(plain / "particles.mrcs"), expect)


def test_class_and_junk_counts_are_exact():
    n = 1000
    _, truth = simulate_particles(n, 16, snr=1.0, seed=2, obj=MIX, junk=0.2)
    assert truth["junk"].sum() == 200
    assert truth.groupby("junk_kind").size().to_dict() == {
        "fragment": 50, "ice": 50, "neighbour": 50, "noise": 50, "none": 800,
    }  # fmt: skip
    real = truth[truth["junk"] == 0]
    assert sorted(real["class"].value_counts().tolist()) == [266, 267, 267]
    # junk without a particle has class -1 and no pose; fragments and neighbours carry one
    empty = truth["junk_kind"].isin(["noise", "ice"])
    assert (truth.loc[empty, "class"] == -1).all()
    assert truth.loc[empty, "theta_deg"].isna().all()
    carried = truth[truth["junk_kind"].isin(["fragment", "neighbour"])]
    assert carried["class"].between(0, 2).all() and carried["theta_deg"].notna().all()
    assert carried["class"].nunique() == 3
    # junk lies at random places, not in a block
    where = np.flatnonzero(truth["junk"])
    assert where.min() < 100 and where.max() > 900
    # unequal shares, and only some kinds of junk
    draws = draw_mixture(1000, 3, 0.1, ("noise", "ice"), 0, 16, weights=(0.5, 0.3, 0.2))
    real = draws.label[draws.real]
    assert np.bincount(real).tolist() == [450, 270, 180]
    assert sorted(set(draws.kind[~draws.real])) == ["ice", "noise"]


def test_each_class_looks_like_its_own_mean():
    """Images of class k, turned and moved back by the truth's poses, correlate with class k's
    clean mean (aligned the same way) better than with the other classes' means, at SNR 1."""
    n, size = 600, 24
    args = dict(n=n, size=size, shift_std_px=1.0, seed=3, obj=MIX)
    images, truth = simulate_particles(snr=1.0, **args)
    clean, _ = simulate_particles(snr=float("inf"), **args)
    label = truth["class"].to_numpy()
    assert sorted(np.bincount(label).tolist()) == [200, 200, 200]

    def aligned(x):
        return (
            align_images(
                torch.from_numpy(x)[:, None],
                torch.tensor(truth["theta_deg"].to_numpy()),
                torch.tensor(truth[["shift_x_px", "shift_y_px"]].to_numpy()),
            )[:, 0]
            .reshape(n, -1)
            .double()
            .numpy()
        )

    a, c = aligned(images), aligned(clean)
    means = np.stack([c[label == k].mean(0) for k in range(3)])  # (3, D*D)

    def standard(x):
        x = x - x.mean(1, keepdims=True)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    corr = standard(a) @ standard(means).T  # (n, 3)
    for k in range(3):
        own = corr[label == k, k].mean()
        others = [corr[label == k, j].mean() for j in range(3) if j != k]
        assert own > max(others) + 0.1, (k, own, others)
    assert (corr.argmax(1) == label).mean() > 0.95


def test_snr_is_the_real_particles_and_noise_junk_holds_no_signal():
    n, snr = 800, 2.0
    args = dict(n=n, size=20, seed=4, obj=MIX, junk=0.3)
    images, truth = simulate_particles(snr=snr, **args)
    clean, _ = simulate_particles(snr=float("inf"), **args)
    real = truth["junk"].to_numpy() == 0
    noise_var = clean[real].var() / snr
    kind = truth["junk_kind"].to_numpy()
    assert np.abs(clean[kind == "noise"]).max() == 0
    noise = images[kind == "noise"]
    assert noise.var() == pytest.approx(noise_var, rel=0.03)
    assert abs(noise.mean()) < 0.02 * np.sqrt(noise_var)
    # every image got the same noise: image minus its clean image
    resid = (images - clean).reshape(n, -1)
    assert resid[~real].var() == pytest.approx(noise_var, rel=0.03)
    assert resid[real].var() == pytest.approx(noise_var, rel=0.03)
    # the signal of the particles, not of the junk, sets the SNR: ice is bright
    assert clean[kind == "ice"].var() > 0.5 * clean[real].var()
    assert (images[real] - clean[real]).var() == pytest.approx(clean[real].var() / snr, rel=0.03)


def _particle(truth, i, size, objects=MIX):
    """Image i's centred particle, uncut, drawn at the truth's body pose."""
    k = int(truth["class"][i])
    row = truth.iloc[i : i + 1]
    return render_blobs(
        *objects[k].blobs(row["conformation"].to_numpy(copy=True)),
        row["theta_body_deg"].to_numpy(copy=True),
        row[["shift_body_x_px", "shift_body_y_px"]].to_numpy(copy=True),
        size,
    )[0]


def test_real_particles_keep_the_pose_conventions(tmp_path):
    """Clean particles of every class are their molecule drawn at the truth's body pose, and
    the truth's theta_deg and shifts are the consensus pose of that class's molecule, as in
    the plain simulation (tests/test_simulate.py); the STAR file holds the same poses (0 for
    images without a particle)."""
    size = 25
    out = tmp_path / "sim"
    args = ["simulate", str(out), "-n", "90", "--size", str(size), "--snr", "inf",
            "--classes", "3", "--junk", "0.2", "--seed", "6", "--apix", "2"]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "classes hinge, clamp, slide, 18 junk (noise, ice, fragment, neighbour)" in r.output
    images = mrcfile.read(out / "particles.mrcs")
    truth = pd.read_csv(out / "truth.csv")
    real = np.flatnonzero(truth["junk"] == 0)
    for i in real:
        expect = _particle(truth, i, size)
        assert np.abs(images[i] - expect).max() < 1e-4 * expect.max()
    for k, obj in enumerate(MIX):
        rows = truth[(truth["class"] == k) & (truth["junk"] == 0)]
        theta, shift = consensus_pose(
            obj,
            rows["conformation"].to_numpy(),
            rows["theta_body_deg"].to_numpy(),
            rows[["shift_body_x_px", "shift_body_y_px"]].to_numpy(),
            size,
        )
        assert np.allclose(rows["theta_deg"], theta, atol=1e-4)
        assert np.allclose(rows[["shift_x_px", "shift_y_px"]], shift, atol=1e-4)
    assert truth.loc[real, "theta_deg"].between(-180, 180).all()
    star = starfile.read(out / "particles.star", always_dict=True)["particles"]
    psi = star["rlnAnglePsi"].to_numpy()
    assert np.allclose(psi[real], truth.loc[real, "theta_deg"], atol=1e-5)
    assert (psi[truth["class"] == -1] == 0).all()


def test_fragments_are_part_of_a_particle():
    size = 28
    images, truth = simulate_particles(
        300, size, snr=float("inf"), seed=7, obj=MIX, junk=0.5, junk_kinds=("fragment",)
    )
    frag = np.flatnonzero(truth["junk_kind"] == "fragment")
    assert len(frag) == 150
    shares = []
    for i in frag:
        full = _particle(truth, i, size)
        assert images[i].max() > 0.05 * full.max()
        assert (images[i] <= full + 1e-5 * full.max()).all()  # nothing added: only cut away
        shares.append(images[i].sum() / full.sum())
    assert 0.1 < min(shares) and max(shares) < 0.95 and 0.3 < np.median(shares) < 0.7
    # the cut is straight: every blob removed lies behind every blob kept, along the normal
    c = np.random.default_rng(0).normal(size=(4, 9, 2))
    normal = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]])
    out = cut_blobs(c, normal, np.full(4, 0.5))
    for j in range(4):
        gone = out[j, :, 0] > 100
        along = c[j] @ normal[j]
        assert gone.sum() == 4 and along[gone].max() < along[~gone].min()


def test_neighbours_put_a_second_particle_off_centre():
    size, h = 32, 15.5
    images, truth = simulate_particles(
        200, size, snr=float("inf"), seed=8, obj=MIX, junk=0.5, junk_kinds=("neighbour",)
    )
    nb = np.flatnonzero(truth["junk_kind"] == "neighbour")
    assert len(nb) == 100 and truth.loc[nb, "neighbour_x_px"].notna().all()
    assert truth.loc[truth["junk"] == 0, "neighbour_x_px"].isna().all()
    rows, cols = np.mgrid[0:size, 0:size]
    x, y = cols - (size - 1) / 2, (size - 1) / 2 - rows  # px, +y up
    for i in nb:
        centred = _particle(truth, i, size)
        second = images[i] - centred
        assert second.min() > -1e-5 * centred.max()
        assert second.sum() > 0.15 * centred.sum()  # a good part of it lies in the box
        where = np.array([(second * x).sum(), (second * y).sum()]) / second.sum()
        drawn = truth.loc[i, ["neighbour_x_px", "neighbour_y_px"]].to_numpy(float)
        assert 0.6 * h <= np.hypot(*drawn) <= 0.9 * h
        assert np.hypot(*where) > 0.35 * h  # off-centre, towards where it was put
        assert where @ drawn / (np.hypot(*where) * np.hypot(*drawn)) > 0.9


def test_the_classes_come_from_the_object_family():
    assert [o.name for o in class_objects("hinge", 0, 5)] == [
        "hinge", "clamp", "slide", "random0", "random1",
    ]  # fmt: skip
    assert [o.name for o in class_objects("clamp", 3, 3)] == ["clamp", "hinge", "slide"]
    assert [o.name for o in class_objects("random", 4, 3)] == ["random4", "random5", "random6"]
    assert parse_junk_kinds("noise, neighbor") == ("noise", "neighbour")
    assert parse_junk_kinds(",".join(JUNK_KINDS)) == JUNK_KINDS
    with pytest.raises(ConfigError, match="--junk-kinds"):
        parse_junk_kinds("noise,dust")


def test_command_writes_a_mixture_with_ctf_and_refuses_bad_options(tmp_path):
    from emvae.particles import Particles

    out = tmp_path / "sim"
    args = ["simulate", str(out), "-n", "80", "--size", "20", "--classes", "2", "--junk",
            "0.25", "--junk-kinds", "noise,fragment", "--ctf", "1:2", "--apix", "3",
            "--class-weights", "3,1"]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    truth = pd.read_csv(out / "truth.csv")
    assert list(truth.columns) == [
        "image", "theta_deg", "shift_x_px", "shift_y_px", "conformation", "theta_body_deg",
        "shift_body_x_px", "shift_body_y_px", "class", "junk", "junk_kind", "defocus_um",
    ]  # fmt: skip
    assert truth["junk"].sum() == 20 and truth["defocus_um"].notna().all()
    assert np.bincount(truth.loc[truth["junk"] == 0, "class"]).tolist() == [45, 15]
    p = Particles.open([str(out / "particles.star")])
    assert len(p) == 80 and p.ctf_mode()[0] == "on"
    for bad, message in (
        (["--junk-kinds", "dust"], "--junk-kinds"),
        (["--class-weights", "1,2,3"], "--class-weights"),
        (["--junk", "1"], "--junk"),
    ):
        r = runner.invoke(app, [*args, "--force", *bad])
        assert r.exit_code != 0 and message in r.output, r.output


def test_euler_angles_invert_the_matrix_and_views_turn_about_x():
    from emvae.structure import class_views, euler_angles, euler_matrix, rotation_about

    rng = np.random.default_rng(0)
    for rot, tilt, psi in [*rng.uniform([-180, 0, -180], [180, 180, 180], (20, 3)),
                           (30.0, 0.0, 20.0), (0.0, 180.0, 70.0)]:  # fmt: skip
        a = euler_matrix(rot, tilt, psi)
        assert np.allclose(euler_matrix(*euler_angles(a)), a, atol=1e-9)
    views = class_views((10.0, 80.0, -30.0), 4)
    assert views[0] == (10.0, 80.0, -30.0) and len(views) == 4
    for k, v in enumerate(views):
        turn = rotation_about(np.array([1.0, 0.0, 0.0]), np.radians([45.0 * k]))[0]
        assert np.allclose(euler_matrix(*v), turn @ euler_matrix(10.0, 80.0, -30.0), atol=1e-9)


def test_structure_mixture_views_and_models(tmp_path):
    """--structure with --classes K: K views of one model, each class's particles the model
    rendered in its view at the truth's pose; --structure twice: one class per model."""
    from test_simulate_structure import TRYPSIN, _two

    from emvae.structure import structure_object

    size, out = 48, tmp_path / "views"
    args = ["simulate", str(out), "--structure", str(TRYPSIN), "--classes", "2", "-n", "24",
            "--size", str(size), "--apix", "1.5", "--view", "0,90,0", "--snr", "inf",
            "--junk", "0.25", "--junk-kinds", "noise,fragment", "--seed", "3"]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "class 1: 1gbt_trypsin: 1629 atoms, view rot 90.0 tilt 90.0 psi 0.0" in r.output
    images = mrcfile.read(out / "particles.mrcs")
    truth = pd.read_csv(out / "truth.csv")
    assert truth["junk"].sum() == 6 and sorted(truth["junk_kind"].unique()) == [
        "fragment", "noise", "none",
    ]  # fmt: skip
    assert np.bincount(truth.loc[truth["junk"] == 0, "class"]).tolist() == [9, 9]
    views = [(0.0, 90.0, 0.0), (90.0, 90.0, 0.0)]
    for k, view in enumerate(views):
        obj = structure_object(TRYPSIN, size, 1.5, view=view)
        rows = truth[(truth["class"] == k) & (truth["junk"] == 0)]
        expect = obj.render(
            np.zeros(len(rows)),
            rows["theta_deg"].to_numpy(copy=True),
            rows[["shift_x_px", "shift_y_px"]].to_numpy(copy=True),
        )
        assert np.abs(images[rows.index] - expect).max() < 1e-4 * expect.max()
        frag = truth[(truth["class"] == k) & (truth["junk_kind"] == "fragment")]
        if len(frag):
            full = obj.render(
                np.zeros(len(frag)),
                frag["theta_deg"].to_numpy(copy=True),
                frag[["shift_x_px", "shift_y_px"]].to_numpy(copy=True),
            )
            assert (images[frag.index] <= full + 1e-4 * full.max()).all()
            assert (images[frag.index].sum((1, 2)) < 0.8 * full.sum((1, 2))).all()
    assert np.abs(images[truth["junk_kind"] == "noise"]).max() == 0
    two = tmp_path / "two"
    models = [
        str(_two(tmp_path, (6.0, 0.0, 0.0), "a.pdb")),
        str(_two(tmp_path, (0, 5.0, 2.0), "b.pdb")),
    ]
    args = ["simulate", str(two), "--structure", models[0], "--structure", models[1], "-n", "10",
            "--size", "33", "--view", "0,0,0", "--class-weights", "4,1"]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "class 0: a: " in r.output and "class 1: b: " in r.output
    assert pd.read_csv(two / "truth.csv")["class"].tolist().count(0) == 8
    r = runner.invoke(app, [*args, "--force", "--classes", "3"])
    assert r.exit_code == 1 and "--classes 3 with 2 --structure" in r.output
