"""fit(): outputs, checkpoints that rebuild the model, exact resume, output protection."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from emvae import Particles, Run, RunConfig, fit, load_model, read_stack
from emvae.config import ModelConfig, TrainConfig, read_config
from emvae.data import load_images, normalize_
from emvae.encode import encode
from emvae.errors import ConfigError, EmvaeError, OutputExistsError
from emvae.io import open_stack, read_table
from emvae.train import evaluation_autocast


def _config(stack, epochs=3, **model):
    return RunConfig(
        model=ModelConfig(image_size=stack.size, zdim=1, gen_hidden=32, enc_hidden=32, **model),
        train=TrainConfig(
            epochs=epochs, batch_size=16, lr=1e-3, z_delay=1, device="cpu", checkpoint_every=2
        ),
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from emvae.simulate import write_simulation

    d = tmp_path_factory.mktemp("fit")
    path = write_simulation(d / "data", n=60, size=16, snr=5.0, shift_std_px=0.5, seed=3, apix=1.5)
    stack = read_stack(path)
    result = fit(stack, _config(stack), d / "run", progress=False)
    return stack, result


def test_outputs(run):
    stack, result = run
    out = result.out_dir
    metrics = np.genfromtxt(out / "metrics.csv", delimiter=",", names=True)
    assert metrics["epoch"].tolist() == [1, 2, 3]
    assert np.isfinite(metrics["test_elbo"]).all()
    # ELBO = -error - KL, per image
    assert np.allclose(
        metrics["train_elbo"], -metrics["train_error"] - metrics["train_kl"], rtol=1e-4
    )
    assert metrics["train_kl_z"][0] == 0.0 and metrics["train_kl_z"][1] > 0  # z-delay of 1
    # the KL of each latent dimension, summing to kl_z (one dimension here)
    for split in ("train", "test"):
        assert np.allclose(metrics[f"{split}_kl_z1"], metrics[f"{split}_kl_z"], rtol=1e-4)
    table = read_table(out / "particles.csv")
    assert table["image"].tolist() == [f"{k}@{stack.source}" for k in range(1, 61)]
    assert (table["split"] == "test").sum() == 6
    assert list(table.columns) == [
        "image", "input_row", "theta_deg", "theta_std_deg", "shift_x_px", "shift_y_px",
        "shift_x_std_px", "shift_y_std_px", "shift_x_A", "shift_y_A", "theta_prob", "z1", "z1_std",
        "elbo", "ncc", "junk", "split",
    ]  # fmt: skip
    assert np.allclose(table["shift_x_A"], 1.5 * table["shift_x_px"], rtol=1e-5)
    assert table["theta_deg"].between(-180, 180).all()
    h5 = read_table(out / "particles.h5")
    assert h5["image"].tolist() == table["image"].tolist()
    assert np.allclose(h5["z1"], table["z1"], rtol=1e-6)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["zdim"] == 1 and cfg["data"]["n_images"] == 60
    assert (out / "checkpoints" / "epoch_0002.pt").exists()


def test_checkpoint_rebuilds_model_with_identical_encodings(run):
    stack, result = run
    model, config, ckpt = load_model(result.out_dir)
    assert ckpt["epoch"] == 3 and ckpt["version"]
    data = normalize_(load_images(stack, torch.device("cpu")), config.data.mean, config.data.std)
    amp = evaluation_autocast(torch.device("cpu"), config.train.amp)  # the ELBO as fit renders it
    enc = encode(model, data, torch.device("cpu"), seed=config.train.seed, amp=amp)
    table = Particles.of(stack).table(config.model, enc)
    for col in ("theta_deg", "shift_x_px", "z1", "elbo"):
        assert np.array_equal(table[col].to_numpy(), result.table[col].to_numpy()), col


def test_resume_continues_exactly(tmp_path, run):
    stack, result = run
    cfg2 = _config(stack, epochs=2)
    fit(stack, cfg2, tmp_path / "r", progress=False)
    resumed = fit(stack, _config(stack, epochs=3), tmp_path / "r", resume=True, progress=False)
    full = result.model.state_dict()
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, full[k]), k
    assert [r["train_elbo"] for r in resumed.history] == [r["train_elbo"] for r in result.history]


def test_existing_output_is_not_overwritten(run, tmp_path):
    stack, result = run
    before = (result.out_dir / "particles.csv").read_bytes()
    with pytest.raises(OutputExistsError, match="--force"):
        fit(stack, _config(stack), result.out_dir, progress=False)
    assert (result.out_dir / "particles.csv").read_bytes() == before
    with pytest.raises(EmvaeError, match="nothing to resume"):
        fit(stack, _config(stack), tmp_path / "empty", resume=True, progress=False)


def test_force_overwrites(run, tmp_path):
    stack, _ = run
    cfg = _config(stack, epochs=1)
    fit(stack, cfg, tmp_path / "f", progress=False)
    again = fit(stack, _config(stack, epochs=1), tmp_path / "f", force=True, progress=False)
    assert len(again.history) == 1


def test_a_library_fit_without_a_data_section_records_its_images_and_resumes(tiny_stack, tmp_path):
    """fit() fills config.data itself (count, box, inputs, --ind), so the run resumes."""
    ind = tmp_path / "even.txt"
    np.savetxt(ind, np.arange(0, 60, 2), fmt="%d")
    model = ModelConfig(image_size=16, zdim=1, gen_hidden=16, enc_hidden=16, encoder="mlp")
    config = RunConfig(model=model, train=TrainConfig(epochs=1, batch_size=10, device="cpu"))
    out = tmp_path / "run"
    fit(open_stack(tiny_stack, ind=ind), config, out, progress=False)
    saved = read_config(out / "config.json").data
    assert (saved.n_images, saved.input_size, saved.ind) == (30, 16, str(ind))
    assert saved.paths == [str(tiny_stack)] and saved.std > 0
    stored = RunConfig.from_dict(json.loads((out / "config.json").read_text()))
    stored.train.epochs = 2
    again = fit(open_stack(saved.paths, ind=saved.ind), stored, out, resume=True, progress=False)
    assert len(again.history) == 2 and len(again.table) == 30
    assert again.table["image"].iloc[1] == f"3@{tiny_stack}"  # the --ind rows, mapped back


def test_the_readme_library_example_and_reading_the_run_back(tiny_stack, tmp_path):
    """Particles.open -> fit -> Run: the run rebuilds its model, table and images."""
    particles = Particles.open(tiny_stack)
    model = ModelConfig(image_size=particles.size, zdim=1, gen_hidden=16, enc_hidden=16)
    config = RunConfig(model=model, train=TrainConfig(epochs=1, batch_size=20, device="cpu"))
    result = fit(particles, config, tmp_path / "r", progress=False)
    run = Run(tmp_path / "r")
    assert run.config.run_id == result.config.run_id and run.config.data.n_images == 60
    table = run.table()
    assert table.attrs["run_id"] == result.config.run_id
    assert np.array_equal(table["theta_deg"], result.table["theta_deg"])
    assert len(run.metrics()) == 1 and run.model()[2]["epoch"] == 1
    again = run.particles()
    assert again.data == result.config.data
    assert torch.equal(again.load(), particles.load())  # the same images, normalised the same


def test_pixel_subsampled_training_is_stored_and_resumes_exactly(tiny_stack, tmp_path):
    """--pixel-fraction 0.5: recorded in config.json, drawn from the run's generator (so a
    resumed run repeats the uninterrupted one), and the table still uses every pixel."""
    stack = read_stack(tiny_stack)

    def config(epochs):
        cfg = _config(stack, epochs=epochs)
        cfg.train.pixel_fraction = 0.5
        return cfg

    whole = fit(stack, config(2), tmp_path / "a", progress=False)
    fit(stack, config(1), tmp_path / "b", progress=False)
    resumed = fit(stack, config(2), tmp_path / "b", resume=True, progress=False)
    assert read_config(tmp_path / "a" / "config.json").train.pixel_fraction == 0.5
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, whole.model.state_dict()[k]), k
    plain = fit(stack, _config(stack, epochs=2), tmp_path / "c", progress=False)
    assert not np.allclose(plain.table["elbo"], whole.table["elbo"])  # another objective


def test_beta_weights_the_kls_and_metrics_keep_the_true_elbo(tiny_stack, tmp_path):
    """--beta 4 --pose-beta 0.5: config.json records them, metrics.csv's ELBO columns are the
    ELBO (elbo = -error - kl, unweighted) and the objective columns are the weighted sum, and
    the weights change what is learnt (beta = 1 is the plain ELBO: no objective column)."""
    stack = read_stack(tiny_stack)
    cfg = _config(stack, epochs=2)
    cfg.train.beta, cfg.train.pose_beta = 4.0, 0.5
    weighted = fit(stack, cfg, tmp_path / "w", progress=False)
    back = read_config(tmp_path / "w" / "config.json").train
    assert (back.beta, back.pose_beta) == (4.0, 0.5)
    m = pd.read_csv(tmp_path / "w" / "metrics.csv")
    for split in ("train", "test"):
        kl_pose = m[f"{split}_kl_theta"] + m[f"{split}_kl_shift"]
        np.testing.assert_allclose(
            m[f"{split}_elbo"], -m[f"{split}_error"] - m[f"{split}_kl"], rtol=1e-4
        )
        expected = m[f"{split}_elbo"] - 3.0 * m[f"{split}_kl_z"] + 0.5 * kl_pose
        np.testing.assert_allclose(m[f"{split}_objective"], expected, rtol=1e-4, atol=1e-3)
    plain = fit(stack, _config(stack, epochs=2), tmp_path / "p", progress=False)
    assert "train_objective" not in pd.read_csv(tmp_path / "p" / "metrics.csv")
    assert not np.allclose(plain.table["elbo"], weighted.table["elbo"])
    cfg.train.beta = -1.0
    with pytest.raises(ConfigError, match="--beta must be a finite number >= 0"):
        cfg.train.validate()
