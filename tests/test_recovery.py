"""Training recovers known poses on small synthetic stacks (CPU, well under two minutes).

Thresholds for the rotation (n = 600): after the best global offset, the median error must be
below 10 degrees and 90% of the particles within 10 degrees; unrelated angles give a median of
90 degrees and 11% within 10. The Jammalamadaka-SenGupta circular correlation must exceed 0.5:
for independent uniform angles its standard deviation is about 1/sqrt(n) = 0.04, so 0.5 is
12 standard deviations out. (It is not held higher because for uniformly distributed angles the
circular mean is ill-defined and small errors move it: an answer within 5 degrees of the truth
everywhere can score 0.84, as this run does, where a pure offset scores 1.) Shifts: Pearson
r > 0.95 per axis with the right sign (a sign flip gives r < -0.95).
"""

import numpy as np
import torch

from emvae import RunConfig, fit, read_stack
from emvae.config import ModelConfig, TrainConfig
from emvae.io import write_mrc
from emvae.metrics import angular_error_deg, circular_correlation
from emvae.simulate import render_blobs

N, SIZE = 600, 24


def _stack(tmp_path, blobs, theta_deg, shift_px, snr=10.0):
    rng = np.random.default_rng(1)
    centres = np.broadcast_to(blobs[:, :2], (N, len(blobs), 2))
    img = render_blobs(centres, blobs[:, 2], blobs[:, 3], theta_deg, shift_px, SIZE)
    img += rng.normal(0, np.sqrt(img.var() / snr), img.shape).astype(np.float32)
    write_mrc(tmp_path / "p.mrcs", img, apix=2.0)
    return read_stack(tmp_path / "p.mrcs")


def _fit(tmp_path, stack, size=SIZE, zdim=0, hidden=128, batch_size=50, **model):
    """20 epochs of a ``hidden``-wide model; the particle table."""
    cfg = RunConfig(
        model=ModelConfig(size, zdim=zdim, gen_hidden=hidden, enc_hidden=hidden, **model),
        train=TrainConfig(epochs=20, batch_size=batch_size, lr=1e-3, device="cpu", seed=0),
    )
    return fit(stack, cfg, tmp_path / "run", progress=False).table


def test_rotation_is_recovered(tmp_path):
    # an asymmetric molecule, no rotation of which maps it onto itself
    blobs = np.array([[0.30, 0.0, 0.15, 1.0], [-0.15, 0.2, 0.10, 0.7], [-0.1, -0.25, 0.07, 0.5]])
    theta = np.random.default_rng(0).uniform(-180, 180, N)
    stack = _stack(tmp_path, blobs, theta, np.zeros((N, 2)))
    table = _fit(tmp_path, stack, translation=False)
    rho = circular_correlation(np.radians(table["theta_deg"]), np.radians(theta))
    err, offset = angular_error_deg(table["theta_deg"], theta)
    each = np.abs(np.mod(table["theta_deg"] - theta - offset + 180.0, 360.0) - 180.0)
    within = float(np.mean(each < 10.0))
    print(
        f"rotation recovery: circular correlation {rho:.3f}, median error {err:.2f} deg, "
        f"{100 * within:.0f}% within 10 deg"
    )
    assert err < 10.0 and within > 0.9
    assert rho > 0.5  # positive: theta_deg turns the same way as the truth (a flip gives < 0)
    _relion_average_matches_the_model(tmp_path / "run")


def test_translation_is_recovered(tmp_path):
    blobs = np.array([[0.0, 0.0, 0.15, 1.0], [-0.25, 0.2, 0.08, 0.7], [0.2, -0.2, 0.07, 0.5]])
    shift = np.random.default_rng(0).normal(0, 1.5, (N, 2))
    stack = _stack(tmp_path, blobs, np.zeros(N), shift)
    table = _fit(tmp_path, stack, rotation=False)
    rx = np.corrcoef(table["shift_x_px"], shift[:, 0])[0, 1]
    ry = np.corrcoef(table["shift_y_px"], shift[:, 1])[0, 1]
    print(f"translation recovery: Pearson x {rx:.3f}, y {ry:.3f}")
    assert rx > 0.95 and ry > 0.95
    # in pixels, not coordinate units: the offset-corrected error is well under a pixel
    dx = table["shift_x_px"] - shift[:, 0]
    assert np.median(np.abs(dx - np.median(dx))) < 0.5


def test_thresholds_exceed_chance():
    """The rotation thresholds are far above what unrelated angles reach."""
    rng = np.random.default_rng(5)
    for _ in range(50):
        a, b = rng.uniform(-180, 180, N), rng.uniform(-180, 180, N)
        assert abs(circular_correlation(np.radians(a), np.radians(b))) < 0.25
        err, _ = angular_error_deg(a, b)
        assert err > 60.0


def _anisotropic(img: np.ndarray) -> np.ndarray:
    """The image minus its rotational average about the box centre, inside the inscribed disc
    (the part of an image that depends on its orientation), flattened."""
    d = img.shape[0]
    yy, xx = np.mgrid[:d, :d]
    r = np.hypot(xx - (d - 1) / 2, yy - (d - 1) / 2)
    ring = np.round(r).astype(int)
    profile = np.bincount(ring.ravel(), img.ravel()) / np.maximum(np.bincount(ring.ravel()), 1)
    return (img - profile[ring])[r < (d - 1) / 2]


def _relion_average_matches_the_model(run):
    """End to end: RELION, applying the exported poses, averages the particles into the
    model's canonical image (theta = 0, dx = 0).

    Compared is the orientation-dependent part of the two images (each minus its rotational
    average): the radial profile agrees whatever the angles, and the 20-epoch generator is
    smoother than the average of 600 aligned particles, which caps the plain correlation near
    0.89 even when every pose is right. Threshold 0.7: this run scores about 0.85, while the
    same export with rlnAnglePsi negated (a sign convention error) scores about 0.44.
    """
    import shutil

    if shutil.which("relion_stack_create") is None:
        return
    import starfile
    from conftest import corr, relion_align

    from emvae import load_model

    model, _, _ = load_model(run)
    canonical = model.canonical(torch.zeros(1, 0))[0, :, 0].reshape(SIZE, SIZE).detach().numpy()
    average = relion_align(run / "particles.star").mean(0)
    score = corr(_anisotropic(average), _anisotropic(canonical))
    blocks = starfile.read(run / "particles.star", always_dict=True)
    flipped = blocks["particles"].assign(rlnAnglePsi=-blocks["particles"]["rlnAnglePsi"])
    starfile.write({"optics": blocks["optics"], "particles": flipped}, run / "flipped.star")
    control = relion_align(run / "flipped.star").mean(0)
    control_score = corr(_anisotropic(control), _anisotropic(canonical))
    print(
        f"RELION aligned average vs canonical image: {score:.3f} "
        f"(plain correlation {corr(average, canonical):.3f}; psi negated {control_score:.3f})"
    )
    assert score > 0.7 > control_score


def test_conformation_is_recovered(tmp_path):
    """z learns the molecule's conformation, with the paper's mlp pose network on rotated
    copies, in a miniature (600 hinge particles of 20 px, SNR 10, uniform rotations, 20 epochs;
    under a minute on 2 CPU cores). (The equivariant default with its z-delay of 0 reached only
    0.64 on this set at seed 0, 0.91 at seed 1, 0.96 with a z-delay of 2: docs/benchmarks.md.)

    |Pearson| of z1 with the conformation: 0.94-0.97 after 20 epochs with 1 or 2 threads (z takes
    off between epochs 8 and 15, when exactly depends on the seed and on the order of floating-
    point sums, then plateaus); a z that ignores the conformation scores about 0.04 (the
    standard error of r for 600 particles), and a collapsed z is also caught by latent_usage.
    The rotation is compared with the truth's consensus frame (emvae.simulate.consensus_frame):
    circular correlation about 0.997 and median error about 1 degree."""
    from emvae.bench import array_stack
    from emvae.latents import latent_usage
    from emvae.simulate import simulate_particles

    images, truth = simulate_particles(600, 20, snr=10.0, shift_std_px=0.5, seed=0)
    stack = array_stack(images, "p.mrcs")
    table = _fit(tmp_path, stack, 20, zdim=1, hidden=48, batch_size=25, encoder="mlp")
    r = abs(np.corrcoef(table["z1"], truth["conformation"])[0, 1])
    rho = circular_correlation(np.radians(table["theta_deg"]), np.radians(truth["theta_deg"]))
    err, _ = angular_error_deg(table["theta_deg"], truth["theta_deg"])
    print(f"conformation recovery: |r| {r:.3f}; rotation {rho:.3f}, median error {err:.2f} deg")
    assert r > 0.8
    assert rho > 0.95 and err < 3.0
    assert latent_usage(table)[0].used
