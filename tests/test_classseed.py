"""Classes seeded apart (``--class-seed``): particles clustered on their images aligned by the
model's poses, then q(class) pulled towards those clusters for a while (emvae.classseed)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SMALL, runner
from emvae_cli.main import app
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from emvae.checkpoint import load_checkpoint
from emvae.classseed import (
    _aligned,
    _clusters,
    _standardised,
    class_pull_weight,
    coherence,
    seed_classes,
)
from emvae.config import ModelConfig, RunConfig
from emvae.encode import encode
from emvae.errors import ConfigError
from emvae.geometry import image_to_model_pose
from emvae.models import SpatialVAE
from emvae.models.vae import RotationBins
from emvae.train import seed_class_nll, training_step

#: Gaussian blobs (x, y in px from the box centre, +y up; std px; amplitude): an asymmetric
#: particle
BLOBS = [(0.0, 4.0, 2.0, 1.0), (-5.0, -3.0, 2.5, -0.7), (5.0, -1.0, 1.5, 0.8)]


def _posed(size: int, theta_deg: float, shift_px: tuple[float, float], blobs=BLOBS) -> np.ndarray:
    """The particle turned counter-clockwise by ``theta_deg`` about the box centre, then moved
    by ``shift_px`` (+x right, +y up): the table's pose, drawn analytically ``(D, D)``."""
    c = (size - 1) / 2
    rows, cols = np.mgrid[:size, :size].astype(float)
    x, y = cols - c, c - rows  # +y up
    t = math.radians(theta_deg)
    img = np.zeros((size, size))
    for bx, by, s, a in blobs:
        px = bx * math.cos(t) - by * math.sin(t) + shift_px[0]
        py = bx * math.sin(t) + by * math.cos(t) + shift_px[1]
        img += a * np.exp(-((x - px) ** 2 + (y - py) ** 2) / (2 * s * s))
    return img


def _model(classes: int, size: int = 24, seed: int = 0) -> SpatialVAE:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        image_size=size, rotation_bins=8, zdim=1, enc_hidden=16, gen_hidden=16, classes=classes
    )
    return SpatialVAE(cfg).eval()


def test_the_pull_starts_after_the_seeding_and_falls_to_zero_halfway_through_the_rest():
    weights = [class_pull_weight(10.0, e, 5, 20) for e in range(1, 21)]
    assert weights[:5] == [0.0] * 5  # before and in the seeding epoch
    assert weights[5] == 10.0  # epoch 6: the start
    assert weights[6] == pytest.approx(10.0 * (1 - 1 / 7))  # 15 epochs left: 7 to fall
    assert weights[12:] == [0.0] * 8  # from epoch 13 on the classes are free
    assert all(class_pull_weight(10.0, e, 0, 20) == 0.0 for e in range(1, 21))  # no seeding


def test_the_seed_term_is_minus_log_q_of_the_target_class_and_skips_particles_without_one():
    log_q = torch.tensor([[0.0, 1.0, 2.0, 3.0], [3.0, 0.0, 0.0, 1.0]]).log_softmax(1)  # K 2, R 2
    bins = RotationBins(log_q, torch.zeros(2, 4), torch.zeros(2, 4), classes=2)
    p = log_q.exp()
    want = -math.log(p[0, 2] + p[0, 3])  # image 0 -> class 1; image 1 has none
    got = seed_class_nll(bins, torch.tensor([1, -1]))
    assert got.item() == pytest.approx(want, rel=1e-6)
    both = seed_class_nll(bins, torch.tensor([1, 0])).item()
    assert both == pytest.approx(want - math.log(p[1, 0] + p[1, 1]), rel=1e-6)


def _resolved(classes: int, epochs: int) -> RunConfig:
    cfg = RunConfig(model=ModelConfig(image_size=24, classes=classes))
    cfg.train.epochs = epochs
    cfg.resolve()
    return cfg


def test_the_seeding_epoch_defaults_to_a_quarter_of_the_run_and_old_or_short_runs_have_none():
    three = _resolved(3, 20)
    assert three.train.class_seed == 5
    assert _resolved(1, 20).train.class_seed == 0
    assert _resolved(3, 7).train.class_seed == 0  # no epochs to spare before the poses settle
    old = three.to_dict()
    del old["train"]["class_seed"]
    assert RunConfig.from_dict(old).train.class_seed == 0  # resumes as it was trained
    three.train.class_seed = -1
    with pytest.raises(ConfigError, match="--class-seed"):
        three.validate()


def test_images_are_aligned_by_the_tables_pose_convention():
    """_aligned undoes each image's pose: posed copies of one particle (turned counter-
    clockwise, moved +x right / +y up) all come back onto the particle itself; the sign of the
    angle or of the shift flipped leaves them apart."""
    size = 24
    model = _model(2, size)
    compact = [(0.0, 3.0, 2.0, 1.0), (-3.0, -2.0, 2.0, -0.7), (3.0, -1.0, 2.0, 0.8)]
    poses = [(0.0, (0.0, 0.0)), (90.0, (2.0, 0.0)), (-135.0, (-1.0, 1.5)), (30.0, (0.0, -2.0))]
    images = np.stack([_posed(size, t, s, compact) for t, s in poses])
    theta, shift = image_to_model_pose(
        torch.tensor([t for t, _ in poses]), torch.tensor([s for _, s in poses]), size
    )
    pose_mu = torch.cat([theta[:, None], shift], 1).numpy()
    cpu = torch.device("cpu")
    x = torch.tensor(images)[:, None].float()
    template = _aligned(model, x[:1], np.zeros((1, 3), np.float32), cpu, 1)
    assert np.abs(_aligned(model, x, pose_mu, cpu, 2) - template).max() < 0.08  # bilinear
    for flipped in (slice(0, 1), slice(1, 3)):  # the angle's sign, the shift's
        wrong = pose_mu.copy()
        wrong[:, flipped] *= -1
        error = np.abs(_aligned(model, x, wrong, cpu, 2) - template).max(1)
        assert error[1:].min() > 0.5


def test_seeds_split_two_molecules_and_agree_with_the_models_classes():
    """Two molecules (an L of three blobs and one wide blob), posed at random: the seeds
    separate them exactly, and are numbered as the model's own classes as far as possible."""
    rng = np.random.default_rng(0)
    size, n = 24, 60
    other = [(0.0, 0.0, 4.5, 1.0)]
    kinds = np.arange(n) % 2
    images = np.stack(
        [
            _posed(size, rng.uniform(-180, 180), tuple(rng.normal(0, 1, 2)), BLOBS if k else other)
            + rng.normal(0, 0.05, (size, size))
            for k in kinds
        ]
    )
    data = torch.tensor(images)[:, None].float()
    data = (data - data.mean()) / data.std()
    model = _model(2, size)
    seeds = seed_classes(model, data, torch.device("cpu"), 32, seed=0)
    real = seeds >= 0  # an untrained model's junk score flags a third: still 40 seeds
    assert real.sum() >= 30
    table = pd.crosstab(kinds[real], seeds[real])
    assert table.shape == (2, 2) and (table.to_numpy().min(1) == 0).all()  # exact split
    now = encode(model, data, torch.device("cpu")).class_prob.argmax(1)[real]
    assert (seeds[real] == now).sum() >= (seeds[real] == 1 - now).sum()  # the model's numbers


def test_coherence_is_the_signal_fraction_for_copies_of_one_view_and_1_over_n_for_noise():
    rng = np.random.default_rng(0)
    n, pixels, snr = 400, 2000, 0.5
    view = rng.normal(0, math.sqrt(snr), pixels)  # signal power s against noise power 1
    copies = view + rng.normal(0, 1, (n, pixels))
    assert coherence(copies) == pytest.approx(snr / (1 + snr) + 1 / (n * (1 + snr)), abs=0.01)
    assert coherence(rng.normal(0, 1, (n, pixels))) == pytest.approx(1 / n, rel=0.1)


def _views(rng: np.random.Generator, kinds: np.ndarray, pixels: int = 400) -> np.ndarray:
    """Noisy copies (SNR 0.5) of one random view per kind ``(n, pixels)``: aligned images."""
    views = rng.normal(0, math.sqrt(0.5), (kinds.max() + 1, pixels))
    return views[kinds] + rng.normal(0, 1, (len(kinds), pixels))


def _components(features: np.ndarray) -> np.ndarray:
    from sklearn.decomposition import PCA

    return PCA(10, random_state=0).fit_transform(features)


def test_a_cluster_of_kept_junk_gets_no_target_and_the_molecules_split_exactly():
    """Two molecules and a third as many boxes of junk unlike each other (bright, offset
    blobs at random places): k-means with two clusters gives the junk one of them. The junk
    cluster is recognised by its incoherence and left without targets."""
    rng = np.random.default_rng(1)
    kinds = np.repeat([0, 1], 150)
    pixels = 400
    yy, xx = np.mgrid[:20, :20]
    junk = np.stack(
        [
            8 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 8.0).ravel()
            + 3
            + rng.normal(0, 1, pixels)
            for cx, cy in rng.uniform(0, 20, (100, 2))
        ]
    )
    features = np.concatenate([_views(rng, kinds, pixels), junk])
    points = _components(features)
    assert adjusted_rand_score(kinds, KMeans(2, random_state=0).fit_predict(points)[:300]) < 0.5
    labels = _clusters(_standardised(features), points, points, 2, seed=0)
    assert (labels[300:] == -1).mean() > 0.9  # the junk: no target
    real = labels[:300]
    assert (real >= 0).all()
    assert pd.crosstab(kinds, real).to_numpy().min(1).max() == 0  # an exact split


def test_without_a_junk_cluster_every_molecule_keeps_its_target():
    """Three molecules and no junk: the K + 1st cluster splits a molecule and is coherent,
    so nothing is dropped and the K clusters are the molecules."""
    rng = np.random.default_rng(2)
    kinds = np.repeat([0, 1, 2], 120)
    features = _views(rng, kinds)
    points = _components(features)
    labels = _clusters(_standardised(features), points, points, 3, seed=0)
    assert (labels >= 0).all()
    assert adjusted_rand_score(kinds, labels) == 1.0


def test_the_pull_moves_q_towards_the_seeded_class():
    """Ten steps with the pull raise q(seeded class) above 0.75 and well above ten without it."""
    x = torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0, 1] * 4)
    reached = []
    for pull in (0.0, 100.0):
        model = _model(2, 16)
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(10):
            training_step(model, optimizer, x, augment=False, class_target=target, class_pull=pull)
        log_q = model.encode(x).bins.class_log_prob().gather(1, target[:, None])
        reached.append(log_q.mean().item())
    assert reached[1] > math.log(0.75) and reached[1] > reached[0] + 0.3


def test_a_fit_resumed_after_the_seeding_is_the_uninterrupted_fit(tiny_stack, tmp_path):
    opts = [*SMALL, "--classes", "2", "--class-seed", "1", "--seed", "4"]
    one, two = tmp_path / "one", tmp_path / "two"
    r = runner.invoke(app, ["fit", str(tiny_stack), "-o", str(one), *opts, "-n", "3"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["fit", str(tiny_stack), "-o", str(two), *opts, "-n", "1"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["fit", str(tiny_stack), "-o", str(two), "--resume", "-n", "3", "-q"])
    assert r.exit_code == 0, r.output
    a, b = (pd.read_csv(p / "particles.csv") for p in (one, two))
    assert np.array_equal(*(t.select_dtypes("number").to_numpy() for t in (a, b)))
    assert "classes seeded: " in (one / "run.log").read_text()
    assert load_checkpoint(one / "checkpoints" / "last.pt")["class_seeds"].shape == (60,)


# ---------------------------------------------------------------------------------------------
# --junk-out: the particles the junk score flags stop training the model.


def test_junk_out_defaults_to_the_first_epoch_with_classes_and_to_never_without():
    three = _resolved(3, 20)
    assert three.train.junk_out == 1 and three.train.class_seed == 5
    assert _resolved(1, 20).train.junk_out == 0
    assert _resolved(3, 7).train.junk_out == 1  # no seeding: the junk still leaves
    old = three.to_dict()
    del old["train"]["junk_out"]
    assert RunConfig.from_dict(old).train.junk_out == 0  # resumes as it was trained
    three.train.junk_out = -1
    with pytest.raises(ConfigError, match="--junk-out"):
        three.validate()


def _recording_epochs(monkeypatch) -> dict[int, set[int]]:
    """The particles each training epoch of a fit run in this process trains on."""
    import emvae.train

    seen: dict[int, set[int]] = {}
    real = emvae.train._train_epoch

    def recording(s, data, train_idx, bar, epoch, limit=None):
        seen[epoch] = set(train_idx.tolist())
        return real(s, data, train_idx, bar, epoch, limit)

    monkeypatch.setattr(emvae.train, "_train_epoch", recording)
    return seen


def _every_third_flagged(monkeypatch) -> np.ndarray:
    import emvae.train

    flags = np.arange(60) % 3 == 0
    monkeypatch.setattr(emvae.train, "flag_junk", lambda *a, **k: flags.copy())
    return flags


def test_the_particles_flagged_at_junk_out_train_no_more(tiny_stack, tmp_path, monkeypatch):
    flags = _every_third_flagged(monkeypatch)
    seen = _recording_epochs(monkeypatch)
    out = tmp_path / "run"
    r = runner.invoke(
        app, ["fit", str(tiny_stack), "-o", str(out), *SMALL, "--junk-out", "1", "-n", "3"]
    )
    assert r.exit_code == 0, r.output
    table = pd.read_csv(out / "particles.csv")
    train = set(table.index[table["split"] == "train"].tolist())
    assert seen[1] == train  # every training particle until the end of epoch 1
    kept = {i for i in train if not flags[i]}
    assert seen[2] == seen[3] == kept and len(kept) < len(train)
    assert len(table) == 60 and table["z1"].notna().all()  # the table keeps every particle
    out_of = f"junk left out of training: {len(train) - len(kept)} of {len(train)}"
    assert out_of in (out / "run.log").read_text()
    stored = load_checkpoint(out / "checkpoints" / "last.pt")["junk_out"]
    assert np.array_equal(stored.numpy(), flags)


def test_a_fit_resumed_after_junk_out_is_the_uninterrupted_fit(tiny_stack, tmp_path, monkeypatch):
    """The flags are the checkpoint's: a resumed run does not train on the junk again."""
    _every_third_flagged(monkeypatch)
    opts = [*SMALL, "--junk-out", "1", "--seed", "4"]
    one, two = tmp_path / "one", tmp_path / "two"
    r = runner.invoke(app, ["fit", str(tiny_stack), "-o", str(one), *opts, "-n", "3"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["fit", str(tiny_stack), "-o", str(two), *opts, "-n", "1"])
    assert r.exit_code == 0, r.output
    seen = _recording_epochs(monkeypatch)
    r = runner.invoke(app, ["fit", str(tiny_stack), "-o", str(two), "--resume", "-n", "3", "-q"])
    assert r.exit_code == 0, r.output
    assert all(i % 3 for i in seen[2] | seen[3])
    a, b = (pd.read_csv(p / "particles.csv") for p in (one, two))
    assert np.array_equal(*(t.select_dtypes("number").to_numpy() for t in (a, b)))


def test_with_classes_the_seedings_junk_is_what_leaves(tiny_stack, tmp_path, monkeypatch):
    """--junk-out at the seeding's epoch: the seeding's junk (target -1) stops training."""
    import emvae.train

    targets = np.where(np.arange(60) % 4 == 0, -1, np.arange(60) % 2)
    monkeypatch.setattr(emvae.train, "seed_classes", lambda *a, **k: targets.copy())
    monkeypatch.setattr(emvae.train, "flag_junk", lambda *a, **k: pytest.fail("not called"))
    seen = _recording_epochs(monkeypatch)
    out = tmp_path / "run"
    opts = [*SMALL, "--classes", "2", "--class-seed", "2", "--junk-out", "2", "-n", "3"]
    r = runner.invoke(app, ["fit", str(tiny_stack), "-o", str(out), *opts])
    assert r.exit_code == 0, r.output
    assert seen[1] == seen[2]  # no junk out before the seeding's epoch
    assert seen[3] == {i for i in seen[2] if targets[i] >= 0} and len(seen[3]) < len(seen[2])


def test_with_classes_by_default_the_first_epochs_flags_leave_and_the_seeding_takes_no_more(
    tiny_stack, tmp_path, monkeypatch
):
    """The default --junk-out with --classes: the junk score's flags after epoch 1 leave; the
    seeding later (epoch 2) removes no one, even the particles it leaves without a class."""
    import emvae.train

    flags = _every_third_flagged(monkeypatch)
    targets = np.where(np.arange(60) % 4 == 1, -1, np.arange(60) % 2)
    seeded: list[int] = []

    def seeding(*a, **k):
        seeded.append(1)
        return targets.copy()

    monkeypatch.setattr(emvae.train, "seed_classes", seeding)
    seen = _recording_epochs(monkeypatch)
    out = tmp_path / "run"
    opts = [*SMALL, "--classes", "2", "--class-seed", "2", "-n", "3"]
    r = runner.invoke(app, ["fit", str(tiny_stack), "-o", str(out), *opts])
    assert r.exit_code == 0, r.output
    assert seeded == [1]
    kept = {i for i in seen[1] if not flags[i]}
    assert seen[2] == seen[3] == kept and len(kept) < len(seen[1])
    assert any(targets[i] < 0 for i in seen[3])  # the seeding's unclassed still train


@pytest.mark.parametrize(("z_delay", "use_z"), [("0", True), ("2", False)])
def test_junk_flags_taken_while_z_is_held_render_z_at_0(
    tiny_stack, tmp_path, monkeypatch, z_delay, use_z
):
    """The flags after epoch 1 score each particle as that epoch trained the generator: with z
    held at 0 (--z-delay 2), rendered at z = 0, not at the untrained z network's output."""
    import emvae.train

    calls: list[bool] = []
    real = emvae.train.encode

    def recording(*a, **k):
        calls.append(k.get("use_z", True))
        return real(*a, **k)

    monkeypatch.setattr(emvae.train, "encode", recording)
    out = tmp_path / "run"
    opts = [*SMALL, "--junk-out", "1", "--z-delay", z_delay, "-n", "1"]
    r = runner.invoke(app, ["fit", str(tiny_stack), "-o", str(out), *opts])
    assert r.exit_code == 0, r.output
    assert calls[0] is use_z


def test_junk_out_never_leaves_nothing_to_train_on(tiny_stack, tmp_path, monkeypatch):
    import emvae.train

    monkeypatch.setattr(emvae.train, "flag_junk", lambda *a, **k: np.ones(60, bool))
    seen = _recording_epochs(monkeypatch)
    out = tmp_path / "run"
    r = runner.invoke(
        app, ["fit", str(tiny_stack), "-o", str(out), *SMALL, "--junk-out", "1", "-n", "2"]
    )
    assert r.exit_code == 0, r.output
    assert (
        seen[2] == seen[1] and "junk not left out: it is 54 of 54" in (out / "run.log").read_text()
    )
    assert "junk_out" not in load_checkpoint(out / "checkpoints" / "last.pt")


def test_junk_out_takes_the_empty_boxes_out_of_training(tmp_path):
    """The real flags (no stand-in): a 16-px stack with 20 empty boxes among 80; after epoch 2
    the junk score takes all of them out of training, and hardly any particle."""
    from emvae.simulate import write_simulation

    stack = write_simulation(
        tmp_path / "sim", n=80, size=16, snr=5.0, shift_std_px=0.5, seed=3, junk=0.25,
        junk_kinds=("noise",),
    )  # fmt: skip
    out = tmp_path / "run"
    r = runner.invoke(
        app, ["fit", str(stack), "-o", str(out), *SMALL, "--junk-out", "2", "-n", "3"]
    )
    assert r.exit_code == 0, r.output
    junk = pd.read_csv(stack.parent / "truth.csv")["junk"].to_numpy() == 1
    flags = load_checkpoint(out / "checkpoints" / "last.pt")["junk_out"].numpy()
    assert junk.sum() == 20 and flags[junk].all() and flags[~junk].sum() <= 3
    assert "junk left out of training: " in (out / "run.log").read_text()
