"""The simulated molecules (emvae simulate --object) and the consensus frame of their truth."""

import numpy as np
import pytest

from emvae.errors import ConfigError
from emvae.simulate import (
    HINGE,
    OBJECTS,
    BlobObject,
    blob_overlap,
    consensus_frame,
    consensus_pose,
    get_object,
    render_blobs,
    simulate_particles,
)


def _place(points, turn_deg, shift):
    a = np.radians(turn_deg)
    rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])  # ccw, row vectors
    return points @ rot + shift


@pytest.mark.parametrize("name", [*OBJECTS[:-1], "random:0", "random:1", "random:7"])
def test_every_object_is_asymmetric_and_changes_with_its_conformation(name):
    """No rotation maps a molecule onto itself (the rotation is identifiable), and its two end
    conformations differ clearly."""
    kind, _, seed = name.partition(":")
    obj = get_object(kind, int(seed or 0))
    c, s, a = obj.blobs(np.array([0.3]))
    self_overlap = blob_overlap(c[0], s, a, c[0], s, a)
    for turn in range(30, 360, 30):
        turned = blob_overlap(c[0], s, a, _place(c[0], turn, 0), s, a)
        assert turned < 0.95 * self_overlap, (name, turn)
    ends, s, a = obj.blobs(np.array([0.0, 1.0]))
    assert blob_overlap(ends[0], s, a, ends[1], s, a) < 0.9 * self_overlap


def test_random_objects_are_drawn_from_their_seed():
    assert np.array_equal(get_object("random", 4).body, get_object("random", 4).body)
    assert not np.array_equal(get_object("random", 4).body, get_object("random", 5).body)
    with pytest.raises(ConfigError, match="unknown object 'blob'"):
        get_object("blob")


def test_blob_overlap_is_the_integral_of_the_product():
    obj = get_object("clamp")
    c, s, a = obj.blobs(np.array([0.2, 0.7]))
    size = 201  # fine grid over the box [-1, 1]^2: pixel area (2 / 200)^2
    imgs = render_blobs(c, s, a, np.zeros(2), np.zeros((2, 2)), size).astype(np.float64)
    numeric = (imgs[0] * imgs[1]).sum() * (2 / (size - 1)) ** 2
    assert blob_overlap(c[0], s, a, c[1], s, a) == pytest.approx(numeric, rel=1e-3)


def test_a_rigid_molecule_is_its_own_consensus():
    rigid = BlobObject("rigid", HINGE.body, HINGE.domain, HINGE.pivot)
    _, turn, shift = consensus_frame(rigid)
    assert np.abs(turn).max() < 1e-3 and np.abs(shift).max() < 1e-5


def test_consensus_pose_is_where_the_particle_matches_the_consensus_best():
    """The truth's theta_deg and shifts: the particle is the consensus view placed there. The
    consensus view (the mean of all conformations brought into the frame) overlaps the particle
    less when turned 2 degrees either way, or placed at the body's pose instead; with the turn's
    sign flipped, the frames would disagree by twice the turn (about 35 degrees at the ends)."""
    confs, turn, shift = consensus_frame(HINGE)
    assert turn[-1] - turn[0] > 30  # the hinge's arm pulls the frame round by 35 degrees
    c, s, a = HINGE.blobs(confs)
    ref = np.concatenate([_place(c[k] - shift[k], -turn[k], 0) for k in range(len(confs))])
    rs, ra = np.tile(s, len(confs)), np.tile(a, len(confs))
    size, h = 40, 19.5
    conformation = np.array([0.05, 0.5, 0.9])
    body_theta = np.array([40.0, -120.0, 170.0])
    body_shift = np.array([[1.5, -2.0], [0.0, 1.0], [-2.5, 0.5]])
    theta, shift_px = consensus_pose(HINGE, conformation, body_theta, body_shift, size)
    parts, ps, pa = HINGE.blobs(conformation)
    for k in range(3):
        particle = _place(parts[k], body_theta[k], body_shift[k] / h)

        def score(t, u, particle=particle):
            return blob_overlap(particle, ps, pa, _place(ref, t, u), rs, ra)

        best = score(theta[k], shift_px[k] / h)
        assert best > score(theta[k] + 2, shift_px[k] / h)
        assert best > score(theta[k] - 2, shift_px[k] / h)
        assert best > score(theta[k], shift_px[k] / h + [0.05, 0])
        if abs(conformation[k] - 0.5) > 0.2:
            assert best > score(body_theta[k], body_shift[k] / h)


def test_truth_gives_both_frames():
    _, truth = simulate_particles(50, 24, snr=2.0, seed=1)
    assert {"theta_body_deg", "shift_body_x_px", "shift_body_y_px"} <= set(truth.columns)
    diff = np.mod(truth["theta_deg"] - truth["theta_body_deg"] + 180, 360) - 180
    # the difference is the consensus turn of each conformation: a smooth, increasing function
    order = np.argsort(truth["conformation"].to_numpy())
    assert np.all(np.diff(diff.to_numpy()[order]) > -1e-6)
    assert truth["theta_deg"].between(-180, 180).all()
