"""emvae simulate --structure: atomic models projected (emvae.structure). The axes, the Euler
convention (against relion_project), the separable renderer, the two motions, the auto view
and the command's files and errors."""

import shutil
import subprocess

import gemmi
import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch
from conftest import DATA, optics_table, runner
from emvae_cli.main import app

from emvae.errors import InputError
from emvae.simulate import render_blobs
from emvae.structure import (
    draw_tilts,
    euler_matrix,
    read_structure,
    render_separable,
    structure_object,
)

TRYPSIN = DATA / "1gbt_trypsin.pdb"


def _write(path, atoms):
    """A model of ``atoms``: (chain, residue number, atom name, element, (x, y, z) A, B)
    rows, one residue (ALA) per residue number, written through gemmi (.pdb or .cif)."""
    st, model = gemmi.Structure(), gemmi.Model(1)
    for chain_name in dict.fromkeys(a[0] for a in atoms):
        chain = gemmi.Chain(chain_name)
        for num in dict.fromkeys(a[1] for a in atoms if a[0] == chain_name):
            res = gemmi.Residue()
            res.name, res.seqid, res.het_flag = "ALA", gemmi.SeqId(num, " "), "A"
            for c, n, name, element, xyz, b in atoms:
                if c == chain_name and n == num:
                    atom = gemmi.Atom()
                    atom.name, atom.element = name, gemmi.Element(element)
                    atom.pos, atom.b_iso, atom.occ = gemmi.Position(*xyz), b, 1.0
                    res.add_atom(atom)
            chain.add_residue(res)
        model.add_chain(chain)
    st.add_model(model)
    if str(path).endswith(".cif"):
        st.make_mmcif_document().write_file(str(path))
    else:
        st.write_pdb(str(path))
    return path


def _two(tmp_path, where, name="m.pdb"):
    """A sulfur at ``where`` (A) balanced by an oxygen twice as far on the other side, so the
    centre of mass (the image centre) stays at the origin and the sulfur is the brightest."""
    w = np.asarray(where, dtype=float)
    atoms = [("A", 1, "SG", "S", tuple(w), 0.0), ("A", 2, "O", "O", tuple(-2 * w), 0.0)]
    return _write(tmp_path / name, atoms)


def _peak(img):
    return np.unravel_index(np.argmax(img), img.shape)  # (row, column)


def _render(obj, theta=0.0, shift=(0.0, 0.0), conformation=0.0):
    return obj.render(np.array([conformation]), np.array([theta]), np.array([shift]))[0]


def test_model_axes_and_the_turn_in_the_image(tmp_path):
    """View (0, 0, 0), 33 px at 1 A/px (centre: row 16, column 16): +x is right; +y is down
    (towards rows of higher index, as relion_project shows a map's +y); theta 90 turns the
    +x atom counter-clockwise, to above the centre; +z with tilt 90 lands left (x = -z)."""
    size, view = 33, (0.0, 0.0, 0.0)
    x = structure_object(_two(tmp_path, (6, 0, 0), "x.pdb"), size, 1.0, view=view)
    assert _peak(_render(x)) == (16, 22)
    assert _peak(_render(x, theta=90.0)) == (10, 16)
    assert _peak(_render(x, theta=-90.0)) == (22, 16)
    assert _peak(_render(x, shift=(0.0, 3.0))) == (13, 22)  # shifts: +y up
    y = structure_object(_two(tmp_path, (0, 6, 0), "y.pdb"), size, 1.0, view=view)
    assert _peak(_render(y)) == (22, 16)
    z = structure_object(_two(tmp_path, (0, 0, 6), "z.pdb"), size, 1.0, view=(0.0, 90.0, 0.0))
    assert _peak(_render(z)) == (16, 10)
    # apix 0.5: 6 A are 12 px
    assert _peak(_render(structure_object(tmp_path / "x.pdb", 49, 0.5, view=view))) == (24, 36)
    # psi turns the picture as theta does (RELION's rlnAnglePsi)
    psi = structure_object(tmp_path / "x.pdb", size, 1.0, view=(0.0, 0.0, 90.0))
    assert np.allclose(_render(psi), _render(x, theta=90.0), atol=1e-4)


def test_euler_matrix_is_relions_zyz():
    def rz(a):
        c, s = np.cos(np.radians(a)), np.sin(np.radians(a))
        return np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])

    def ry(b):
        c, s = np.cos(np.radians(b)), np.sin(np.radians(b))
        return np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])

    assert np.allclose(euler_matrix(30, 50, 70), rz(70) @ ry(50) @ rz(30))
    assert np.allclose(euler_matrix(0, 90, 0) @ [0, 0, 1], [-1, 0, 0])
    assert np.allclose(euler_matrix(0, 90, 0) @ [1, 0, 0], [0, 0, 1])
    assert np.allclose(
        euler_matrix(30, 50, 70)[2],
        [
            np.sin(np.radians(50)) * np.cos(np.radians(30)),
            np.sin(np.radians(50)) * np.sin(np.radians(30)),
            np.cos(np.radians(50)),
        ],
    )


@pytest.mark.skipif(shutil.which("relion_project") is None, reason="RELION is not installed")
def test_projection_equals_relion_project_of_a_map_of_the_same_atoms(tmp_path):
    """A map of the atoms as 3-D Gaussians, projected by relion_project at two views, equals
    our projection at the same --view (correlation > 0.99); the picture flipped top to bottom
    (model +y up) would not match."""
    d, apix, b = 32, 2.0, 700.0  # B 700 A^2: sigma 3.2 A, 1.6 voxels, well sampled
    atoms = [
        ("A", 1, "SG", "S", (8.0, 2.0, -3.0), b),
        ("A", 2, "C", "C", (-6.0, 7.0, 4.0), b),
        ("A", 3, "N", "N", (1.0, -9.0, 6.0), b),
        ("A", 4, "O", "O", (-4.0, -3.0, -8.0), b),
    ]
    path = _write(tmp_path / "m.pdb", atoms)
    views = [(0.0, 0.0, 0.0), (30.0, 50.0, 70.0)]
    objs = [structure_object(path, d, apix, view=v) for v in views]
    pos = objs[0].motion.start / apix  # (K, 3) voxels from the centre, voxel d // 2
    g = np.arange(d) - d // 2
    zz, yy, xx = np.meshgrid(g, g, g, indexing="ij")
    vol = np.zeros((d, d, d), np.float32)
    for (x, y, z), zn, s in zip(pos, objs[0].z, objs[0].sigma_A / apix, strict=True):
        vol += zn * np.exp(-((xx - x) ** 2 + (yy - y) ** 2 + (zz - z) ** 2) / (2 * s * s))
    with mrcfile.new(tmp_path / "vol.mrc") as m:
        m.set_data(vol)
        m.voxel_size = apix
    particles = pd.DataFrame(
        {
            "rlnAngleRot": [v[0] for v in views],
            "rlnAngleTilt": [v[1] for v in views],
            "rlnAnglePsi": [v[2] for v in views],
            "rlnOriginXAngst": [0.0] * 2,
            "rlnOriginYAngst": [0.0] * 2,
            "rlnOpticsGroup": [1] * 2,
            "rlnImageName": ["1@x.mrcs", "2@x.mrcs"],
        }
    )
    starfile.write({"optics": optics_table(apix, d), "particles": particles}, tmp_path / "in.star")
    args = ["relion_project", "--i", "vol.mrc", "--o", "proj", "--ang", "in.star"]
    r = subprocess.run([*args, "--angpix", str(apix)], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    relion = mrcfile.read(tmp_path / "proj.mrcs").astype(np.float64)
    for k, obj in enumerate(objs):
        # RELION's centre, pixel (16, 16), is half a pixel right of and below ours (15.5)
        ours = _render(obj, shift=(0.5, -0.5)).astype(np.float64)
        assert np.corrcoef(ours.ravel(), relion[k].ravel())[0, 1] > 0.99
        flipped = _render(obj, shift=(0.5, 0.5))[::-1]
        assert np.corrcoef(flipped.ravel(), relion[k].ravel())[0, 1] < 0.9


def test_separable_rendering_equals_render_blobs():
    rng = np.random.default_rng(3)
    centres = rng.uniform(-0.6, 0.6, (5, 30, 2))
    sigmas, amps = rng.uniform(0.03, 0.12, 30), rng.uniform(0.5, 2.0, 30)
    theta, shift = rng.uniform(-180, 180, 5), rng.normal(0, 2, (5, 2))
    ref = render_blobs(centres, sigmas, amps, theta, shift, 41)
    fast = render_separable(centres, sigmas, amps, theta, shift, 41, budget=30 * 41 * 2)
    assert np.abs(fast - ref).max() < 1e-5 * np.abs(ref).max()
    exact = render_separable(centres, sigmas, amps, theta, shift, 41, dtype=torch.float64)
    assert np.abs(exact - ref).max() < 1e-6 * np.abs(ref).max()  # render_blobs' float32


def test_an_image_sums_to_the_molecules_atomic_numbers():
    obj = structure_object(TRYPSIN, 80, 1.0, view=(10.0, 20.0, 30.0))
    assert len(obj.z) == 1629  # 223 residues of trypsin, protein atoms only
    img = _render(obj, theta=33.0, shift=(1.5, -2.0))
    assert img.sum() == pytest.approx(obj.z.sum(), rel=1e-4)


def _chain(n=10, bend_at=5, step=3.8):
    """CA atoms of a chain along +x for residues 1..bend_at, then along +y."""
    rows, p = [], np.zeros(3)
    for i in range(1, n + 1):
        rows.append(("A", i, "CA", "C", tuple(p), 10.0))
        p = p + (np.array([step, 0, 0]) if i < bend_at else np.array([0, step, 0]))
    return rows


def test_hinge_turns_the_domain_about_its_axis_and_closes_it(tmp_path):
    path = _write(tmp_path / "l.pdb", _chain())
    obj = structure_object(path, 64, 1.0, domains=["A:6-10"], hinge_deg=40.0, view=(0, 0, 0))
    m = obj.motion
    assert m.mask is not None and m.point is not None and m.axis is not None
    assert m.mask.tolist() == [False] * 5 + [True] * 5
    start, end = m.positions(np.array([0.0, 1.0]))
    assert np.allclose(start[~m.mask], end[~m.mask])  # the body stays
    dist = np.linalg.norm(start[m.mask, None] - start[None, m.mask], axis=-1)
    assert np.allclose(dist, np.linalg.norm(end[m.mask, None] - end[None, m.mask], axis=-1))
    # the hinge point: residue 6's CA (its neighbour 5 is outside); the axis: along z
    assert np.allclose(m.point, start[5]) and abs(m.axis[2]) == pytest.approx(1.0)
    u, v = start[m.mask] - m.point, end[m.mask] - m.point
    turned = np.degrees(np.arctan2(np.cross(u, v) @ m.axis, (u * v).sum(1)))
    assert np.allclose(turned[1:], 40.0)  # residue 6 sits on the axis
    body = start[~m.mask].mean(0)
    assert np.linalg.norm(end[m.mask].mean(0) - body) < np.linalg.norm(start[m.mask].mean(0) - body)
    other = structure_object(path, 64, 1.0, domains=["A:6-10"], hinge_deg=20.0, view=(0, 0, 0))
    assert obj.key != other.key  # the consensus frame is cached per motion


def test_auto_view_looks_along_the_hinge_axis(tmp_path):
    """The chain turned by a rotation R: its hinge axis is R z; the auto view's projection
    direction (the Euler matrix's last row) is that axis, and the domain's motion then lies
    in the image plane."""
    rot = torch.linalg.matrix_exp(torch.tensor([[0, -0.4, 0.9], [0.4, 0, -0.3], [-0.9, 0.3, 0]]))
    r = rot.numpy()
    rows = [(c, n, a, e, tuple(r @ np.array(p)), b) for c, n, a, e, p, b in _chain()]
    obj = structure_object(_write(tmp_path / "t.pdb", rows), 64, 1.0, domains=["A:6-10"])
    assert abs(euler_matrix(*obj.view)[2] @ (r @ [0, 0, 1])) > 0.999
    assert abs(euler_matrix(*obj.view)[2] @ obj.motion.axis) > 0.999
    assert obj.view[1] <= 90.0 and obj.view[2] == 0.0
    fixed = structure_object(tmp_path / "t.pdb", 64, 1.0, domains=["A:6-10"], view=(0, 0, 0))
    assert fixed.view == (0.0, 0.0, 0.0)


def test_morph_goes_from_the_first_model_to_the_superposed_second(tmp_path):
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(0)
    xyz = np.round(rng.normal(0, 6, (8, 3)), 3)  # as the files hold them
    first = [("A", i // 2 + 1, f"C{i % 2}", "C", tuple(p), 0.0) for i, p in enumerate(xyz)]
    moved = xyz.copy()
    moved[0] += [4.0, -2.0, 1.0]  # the motion
    turn = Rotation.from_euler("zyx", [40, -20, 70], degrees=True)
    other = np.round(turn.apply(moved) + [30.0, -5.0, 12.0], 3)  # anywhere in space
    second = [("A", i // 2 + 1, f"C{i % 2}", "C", tuple(p), 0.0) for i, p in enumerate(other)]
    second.append(("B", 1, "CA", "C", (50.0, 0.0, 0.0), 0.0))  # not in the first: ignored
    a, b = _write(tmp_path / "a.pdb", first), _write(tmp_path / "b.cif", second)
    obj = structure_object(a, 64, 1.0, structure2=b, view=(0, 0, 0))
    start, end = obj.motion.positions(np.array([0.0, 1.0]))
    centre = start - xyz
    assert np.allclose(centre, centre[0])  # conformation 0: the first model, moved as a whole
    best, _ = Rotation.align_vectors(xyz - xyz.mean(0), other - other.mean(0))
    expect = best.apply(other - other.mean(0)) + xyz.mean(0) + centre[0]
    assert np.allclose(end, expect, atol=1e-6)  # conformation 1: the second, superposed
    c0, _, _ = obj.blobs(np.array([0.0]))
    assert np.allclose(c0[0], np.stack([start[:, 0], -start[:, 1]], 1) / 31.5)
    few = _write(tmp_path / "few.pdb", second[:2])
    with pytest.raises(InputError, match="shares 2 of .* 8 atoms"):
        structure_object(a, 64, 1.0, structure2=few)


def test_structure_files_read_as_pdb_and_mmcif_alike(tmp_path):
    pdb = read_structure(TRYPSIN)
    st = gemmi.read_structure(str(TRYPSIN))
    st.make_mmcif_document().write_file(str(tmp_path / "t.cif"))
    cif = read_structure(tmp_path / "t.cif")
    assert pdb.keys == cif.keys and np.allclose(pdb.xyz, cif.xyz)
    assert ("A", 184, "A", "CA") in pdb.keys  # insertion codes are kept (chymotrypsin numbering)
    assert set(pdb.z) == {6.0, 7.0, 8.0, 16.0}


def test_tilts_turn_the_view_out_of_plane():
    rot, angle, axis = draw_tilts(2000, 5.0, 0)
    assert np.allclose(rot @ rot.transpose(0, 2, 1), np.eye(3), atol=1e-12)
    assert np.std(angle) == pytest.approx(5.0, rel=0.1)
    tilt = np.degrees(np.arccos(np.clip(rot[:, 2, 2], -1, 1)))  # how far z moved
    assert np.allclose(tilt, np.abs(angle), atol=1e-6)
    assert draw_tilts(3, 0.0, 0)[1].tolist() == [0.0] * 3


def test_command_writes_stack_star_with_ctf_and_truth(tmp_path):
    from emvae.particles import Particles

    out = tmp_path / "sim"
    options = "-n 6 --size 72 --apix 1.0 --view 0,90,0 --ctf 1:2 --snr 2 --tilt-deg 3".split()
    r = runner.invoke(app, ["simulate", str(out), "--structure", str(TRYPSIN), *options])
    assert r.exit_code == 0, r.output
    assert "1629 atoms, view rot 0.0 tilt 90.0 psi 0.0" in r.output
    with mrcfile.open(out / "particles.mrcs") as m:
        assert m.data.shape == (6, 72, 72) and m.data.dtype == np.float32
        assert float(m.voxel_size.x) == pytest.approx(1.0)
        assert m.header.dmax == pytest.approx(m.data.max()) and m.header.rms > 0
    truth = pd.read_csv(out / "truth.csv")
    columns = ("image theta_deg shift_x_px shift_y_px conformation theta_body_deg shift_body_x_px "
               "shift_body_y_px tilt_deg tilt_axis_deg defocus_um")  # fmt: skip
    assert list(truth.columns) == columns.split()
    assert (truth["conformation"] == 0).all()  # rigid: no motion was given
    assert np.allclose(truth["theta_deg"], truth["theta_body_deg"], atol=1e-5)
    p = Particles.open([str(out / "particles.star")])
    assert len(p) == 6 and p.stack.apix == pytest.approx(1.0)
    assert p.ctf_mode()[0] == "on"
    assert np.allclose(p.ctf("on")[:, 0], truth["defocus_um"] * 1e4, rtol=1e-5)
    star = starfile.read(out / "particles.star", always_dict=True)["particles"]
    assert np.allclose(star["rlnAnglePsi"], truth["theta_deg"], atol=1e-4)


def test_a_full_disk_stops_the_simulation_in_one_line_before_it_writes(tmp_path, monkeypatch):
    """The stack's space is checked and reserved before any image is rendered: one line
    naming the output folder and the MiB needed, and no stack or temporary file is left."""
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=10_000))
    out = tmp_path / "sim"
    options = "-n 40 --size 64 --apix 1.0 --snr 2".split()
    r = runner.invoke(app, ["simulate", str(out), "--structure", str(TRYPSIN), *options])
    assert r.exit_code == 1, r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output, r.output
    assert "MiB" in r.output and str(out) in r.output, r.output
    assert not out.exists() or not [p for p in out.iterdir() if "particles" in p.name]


def test_truth_poses_are_the_images_poses(tmp_path):
    """Clean particles of an asymmetric rigid molecule: each image is the model rendered at
    the truth's theta_deg and shift; the conformation of a hinge is written too."""
    rows = [
        ("A", 1, "SG", "S", (7.0, 1.0, 0.0), 0.0),
        ("A", 2, "C", "C", (-3.0, 5.0, 2.0), 0.0),
        ("A", 3, "N", "N", (-2.0, -6.0, -1.0), 0.0),
    ]
    path = _write(tmp_path / "r.pdb", rows)
    out = tmp_path / "sim"
    options = "-n 5 --size 33 --view 20,30,40 --snr inf --seed 4".split()
    r = runner.invoke(app, ["simulate", str(out), "--structure", str(path), *options])
    assert r.exit_code == 0, r.output
    images = mrcfile.read(out / "particles.mrcs")
    truth = pd.read_csv(out / "truth.csv")
    obj = structure_object(path, 33, 1.0, view=(20.0, 30.0, 40.0))
    shift = truth[["shift_x_px", "shift_y_px"]].to_numpy()
    expect = obj.render(np.zeros(5), truth["theta_deg"].to_numpy(), shift)
    assert np.abs(images - expect).max() < 1e-4 * np.abs(expect).max()
    chain = _write(tmp_path / "l.pdb", _chain())
    options = "-n 20 --size 64 --domain A:6-10 --hinge-deg 40".split()
    r = runner.invoke(app, ["simulate", str(tmp_path / "h"), "--structure", str(chain), *options])
    assert r.exit_code == 0, r.output
    truth = pd.read_csv(tmp_path / "h" / "truth.csv")
    assert truth["conformation"].between(0, 1).all() and truth["conformation"].std() > 0.1
    turn = np.mod(truth["theta_deg"] - truth["theta_body_deg"] + 180, 360) - 180
    assert np.ptp(turn) > 1.0  # the consensus frame follows the swinging domain


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "no such file"),
        ("not-a-model", "no protein or nucleic-acid atoms"),
        ("binary", "not a readable PDB or mmCIF file"),
        ("domain", "--domain B:1-5: no residue of chain B numbered 1-5"),
        ("few-shared", "shares 1 of"),
        ("too-big", "atoms reach"),
        ("view", "--view '1,2': give auto or ROT,TILT,PSI"),
        ("both", "either --structure2"),
    ],
)
def test_bad_structure_input_is_one_line(tmp_path, case, message):
    model = _write(tmp_path / "ok.pdb", _chain())
    extra, named = [], model
    if case == "missing":
        named = tmp_path / "absent.pdb"
    elif case == "not-a-model":
        named = tmp_path / "notes.pdb"
        named.write_text("hello\n")
    elif case == "binary":
        named = tmp_path / "x.mrc"
        named.write_bytes(bytes(range(256)) * 8)
    elif case == "domain":
        extra = ["--domain", "B:1-5"]
    elif case == "few-shared":
        other = _write(tmp_path / "other.pdb", _chain()[:1])
        extra, named = ["--structure2", str(other)], other
    elif case == "too-big":
        extra = ["--size", "16"]
    elif case == "view":
        extra = ["--view", "1,2"]
    elif case == "both":
        extra = ["--structure2", str(model), "--domain", "A:6-10"]
    structure = model if case in ("few-shared", "domain", "too-big", "view", "both") else named
    args = ["simulate", str(tmp_path / "out"), "--structure", str(structure), "-n", "3"]
    r = runner.invoke(app, [*args, "--size", "64", *extra])  # the last --size counts
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.output
    assert "Traceback" not in r.output
    if case not in ("view", "both"):
        assert named.name in lines[0]


def test_the_oracle_finds_the_conformation_of_clean_particles_and_not_of_noise(tmp_path):
    """examples/oracle_z.py: from the true poses, the conformation's posterior mean follows the
    truth on a clean set and stops doing so when the noise swamps the motion."""
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "examples" / "oracle_z.py"
    sim = ["--structure", str(TRYPSIN), "--domain", "A:133-245", "--hinge-deg", "30"]
    shape = ["--size", "32", "--apix", "2.0", "--ctf", "1:2", "--tilt-deg", "5", "--seed", "4"]
    ceilings = []
    for snr in ("20", "0.0005"):
        out = tmp_path / snr
        r = runner.invoke(app, ["simulate", str(out), *sim, *shape, "--snr", snr, "-n", "40"])
        assert r.exit_code == 0, r.output
        args = [sys.executable, str(script), str(out), *sim, *shape, "--grid", "11", "--crops",
                "16", "--theta-bins", "4"]  # fmt: skip
        done = subprocess.run(args, capture_output=True, text=True, check=True)
        lines = done.stdout.splitlines()
        assert [line.split()[0] for line in lines] == ["32", "16"]
        ceilings.append([float(line.split("ceiling ")[1].split()[0]) for line in lines])
    clean, noisy = ceilings
    assert min(clean) > 0.97 and max(noisy) < 0.6
