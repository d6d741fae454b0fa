"""Coarse-to-fine (emvae.stages): each stage's grid, crop, noise and CTF mean what the full
box's do, the schedule is parsed and resolved as documented, and a fit resumed mid-schedule
is the uninterrupted fit."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SMALL, runner
from emvae_cli.main import app

from emvae.config import ModelConfig, RunConfig, TrainConfig
from emvae.ctf import COLUMNS, apply_ctf
from emvae.errors import ConfigError
from emvae.geometry import coordinate_grid
from emvae.models import SpatialVAE
from emvae.stages import (
    TABLE_PX,
    auto_stages,
    encoder_view,
    fourier_crop,
    noise_logstd,
    parse_stages,
    size_at,
    stage_ctf,
    stage_grid,
    table_size,
)


def _ok(*args) -> None:
    """Run ``emvae ARGS`` and require it to succeed."""
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output


def _blob(grid: torch.Tensor, centre=(0.3, -0.2), sigma=0.05) -> torch.Tensor:
    """A Gaussian blob evaluated at coordinates ``grid`` ``(N, 2)`` (units)."""
    c = torch.tensor(centre, dtype=grid.dtype)
    return torch.exp(-((grid - c) ** 2).sum(1) / (2 * sigma**2))


def test_the_full_size_grid_is_the_coordinate_grid_bit_for_bit():
    for d in (24, 25, 64):
        assert torch.equal(stage_grid(d, d), coordinate_grid(d, d))


@pytest.mark.parametrize("size", [32, 64])
def test_a_crop_holds_the_object_where_the_stage_grid_says(size):
    """The Fourier crop of a smooth object equals the object evaluated on the stage's grid:
    the grid's offset and scale are the crop's (a half-pixel slip or a flipped axis fails)."""
    d = 128
    full = _blob(coordinate_grid(d, d, dtype=torch.float64), sigma=0.08).reshape(1, 1, d, d)
    crop = fourier_crop(full, size).reshape(-1)
    on_grid = _blob(stage_grid(d, size, torch.float64), sigma=0.08)
    assert (crop - on_grid).abs().max().item() < 1e-3  # half a stage pixel off: > 0.1
    # and the brightest pixel sits right of and below the centre, as the blob does (+x, -y)
    x, y = stage_grid(d, size)[int(crop.argmax())].tolist()
    assert x > 0.25 and y < -0.15


def test_a_crop_keeps_intensities_and_scales_white_noise_by_size():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(64, 1, 64, 64, generator=g, dtype=torch.float64)
    crop = fourier_crop(noise + 3.0, 16)
    assert crop.mean().item() == pytest.approx(3.0, abs=1e-3)
    assert crop.std().item() == pytest.approx(math.exp(noise_logstd(64, 16)), rel=0.01)
    assert math.exp(noise_logstd(64, 16)) == pytest.approx(0.25 * 0.9693, rel=1e-3)
    assert fourier_crop(noise, 64) is noise


def _centroid(values: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    w = values.clamp(min=0) ** 4
    return (grid * w[:, None]).sum(0) / w.sum()


def test_the_encoder_view_keeps_the_full_box_coordinates():
    """A blob keeps its place (+x right, +y up) on the small copy's coordinate grid (the
    copy's corners are the box's corners), with about its intensity times D / size."""
    d, e = 96, 32
    small = coordinate_grid(e, e, dtype=torch.float64)
    for centre in ((0.3, -0.2), (-0.5, 0.6)):
        blob = _blob(coordinate_grid(d, d, dtype=torch.float64), centre, 0.1)
        seen = encoder_view(blob.reshape(1, 1, d, d), e).reshape(-1) * (e / d)
        assert seen.max().item() == pytest.approx(1.0, abs=0.15)
        at = _centroid(seen, small)
        assert torch.allclose(at, torch.tensor(centre, dtype=at.dtype), atol=0.004), at
        # read on the crop's own grid, the place would be off by about a third of a pixel
        off = _centroid(seen, stage_grid(d, e, torch.float64))
        assert (off - at).abs().max().item() > 0.01


def test_the_stage_ctf_is_the_full_ctf_at_the_stage_pixel_size():
    """Rendering on the stage's grid and applying the stage's CTF gives the crop of the
    full-size CTF-applied image: the pixel size is converted (unconverted, it fails)."""
    d, size = 128, 64
    row = dict.fromkeys(COLUMNS, 0.0)
    row.update(defocus_u_A=12000.0, defocus_v_A=12000.0, voltage_kV=300.0, cs_mm=2.7)
    row.update(amplitude_contrast=0.1, scale=1.0, apix_A=1.5)
    params = torch.tensor([[row[k] for k in COLUMNS]])
    full = _blob(coordinate_grid(d, d, dtype=torch.float64), sigma=0.1).float()
    seen = fourier_crop(apply_ctf(full.reshape(1, 1, d, d), params), size)
    coarse = _blob(stage_grid(d, size, torch.float64), sigma=0.1).float().reshape(1, 1, size, size)
    staged = apply_ctf(coarse, stage_ctf(params, d, size))
    assert stage_ctf(params, d, size)[0, COLUMNS.index("apix_A")].item() == pytest.approx(3.0)
    err = (staged - seen).abs().max().item() / seen.abs().max().item()
    assert err < 0.02
    wrong = apply_ctf(coarse, params)  # the full box's pixel size: a different CTF
    assert (wrong - seen).abs().max().item() / seen.abs().max().item() > 0.1


def test_schedules_parse_resolve_and_refuse():
    assert parse_stages("32:20, 64:5", 128) == [(32, 20), (64, 5)]
    assert parse_stages("off", 128) == [] and parse_stages("", 64) == []
    stages = [(32, 2), (64, 3)]
    assert [size_at(stages, 128, e) for e in range(1, 8)] == [32, 32, 64, 64, 64, 128, 128]
    for bad in ("32", "32:0", "64:2,32:2", "128:2", "33:2", "4:1", "a:b"):
        with pytest.raises(ConfigError, match="--stages"):
            parse_stages(bad, 128)
    assert auto_stages(48, 50) == "off" and auto_stages(40, 50) == "off"
    assert auto_stages(64, 50) == "24:40"
    assert auto_stages(128, 50) == "24:40,64:5"
    assert auto_stages(128, 3) == "24:2"


def test_fit_defaults_above_48_px_are_coarse_to_fine_and_old_configs_are_not():
    small = RunConfig(ModelConfig(image_size=40))
    small.resolve()
    assert small.model.encoder_size == 40 and small.train.stages == "off"
    big = RunConfig(ModelConfig(image_size=128), TrainConfig(epochs=20))
    big.resolve()
    assert big.model.encoder_size == 32 and big.model.gen_hidden == 128
    assert big.train.stages == "24:16,64:2"
    tps = RunConfig(ModelConfig(image_size=128, pose="tps"))
    tps.resolve()
    assert tps.model.encoder_size == 128 and tps.train.stages == "off"
    # a config.json written before coarse-to-fine: the networks saw the whole box
    old = big.to_dict()
    del old["model"]["encoder_size"], old["train"]["stages"]
    old["model"]["gen_hidden"] = old["model"]["enc_hidden"] = 500
    back = RunConfig.from_dict(old)
    assert back.model.encoder_size == 128 and back.train.stages == "off"
    assert back.model.gen_hidden == 500
    with pytest.raises(ConfigError, match="--stages"):
        bad = RunConfig(ModelConfig(image_size=64, generator="broadcast"), TrainConfig())
        bad.train.stages = "32:2"
        bad.resolve()


def test_without_epochs_fit_chooses_the_schedule_by_the_particle_count_above_48_px():
    """About 90,000 coarse images (3 to 40 epochs of the training set), then one full-size
    epoch on 5,000 images; -n given, or a box up to 48 px: the schedule as before."""
    from emvae.config import DataConfig

    for n, epochs, stages in [(20_000, 6, "24:5"), (4000, 26, "24:25"), (200, 41, "24:40")]:
        cfg = RunConfig(ModelConfig(image_size=64), data=DataConfig(n_images=n))
        cfg.resolve()
        assert (cfg.train.epochs, cfg.train.stages) == (epochs, stages)
        assert cfg.train.fine_images == 5000
    huge = RunConfig(ModelConfig(image_size=128), data=DataConfig(n_images=1_000_000))
    huge.resolve()
    assert (huge.train.epochs, huge.train.stages) == (4, "24:3")
    given = RunConfig(ModelConfig(image_size=64), TrainConfig(epochs=50), DataConfig(n_images=200))
    given.resolve()
    assert (given.train.stages, given.train.fine_images) == ("24:40", 0)
    small = RunConfig(ModelConfig(image_size=48), data=DataConfig(n_images=20_000))
    small.resolve()
    assert (small.train.epochs, small.train.stages, small.train.fine_images) == (50, "off", 0)
    old = given.to_dict()
    del old["train"]["fine_images"], old["train"]["fine_train"]  # a config.json from before:
    back = RunConfig.from_dict(old)  # every epoch a full pass, every network trained
    assert (back.train.fine_images, back.train.fine_train) == (0, "all")


def test_the_default_batch_is_32_at_every_box_and_b_wins():
    from emvae.config import DataConfig

    for size in (28, 48, 56, 128):
        cfg = RunConfig(ModelConfig(image_size=size), data=DataConfig(n_images=1000))
        cfg.resolve()
        assert cfg.train.batch_size == 32
    given = RunConfig(ModelConfig(image_size=128), TrainConfig(batch_size=64))
    given.resolve()
    assert given.train.batch_size == 64
    back = RunConfig.from_dict(given.to_dict())  # config.json and checkpoints keep it
    assert back.train.batch_size == 64


def test_a_full_size_epoch_trains_on_the_fine_images_only(tmp_path, monkeypatch):
    """--fine-images 10: the coarse epoch sees the whole training set, the full-size epoch a
    random 10 of it (and the hyperprior's weight stays per image of the whole set)."""
    import emvae.train
    from emvae import fit, read_stack

    sim = tmp_path / "sim"
    _ok("simulate", sim, "-n", 60, "--size", 24, "--seed", 2)
    seen: list[tuple[int, float]] = []
    step = emvae.train.training_step

    def counting(model, optimizer, x, *args, **kwargs):
        seen.append((x.shape[0], kwargs["hyper_weight"]))
        return step(model, optimizer, x, *args, **kwargs)

    monkeypatch.setattr(emvae.train, "training_step", counting)
    cfg = RunConfig(
        ModelConfig(image_size=24, zdim=1, gen_hidden=16, enc_hidden=16, encoder_size=16),
        TrainConfig(epochs=2, batch_size=8, stages="12:1", fine_images=10, device="cpu"),
    )
    fit(read_stack(sim / "particles.mrcs"), cfg, tmp_path / "run", progress=False)
    sizes = [b for b, _ in seen]
    assert sum(sizes) == 54 + 10  # 60 images, 6 held out for the test ELBO
    assert sizes[-2:] == [8, 2]  # the full-size epoch: 10 images in batches of 8
    assert {w for _, w in seen} == {1 / 54}


@pytest.mark.parametrize("fine_train", ["generator", "all"])
def test_later_stages_train_the_generator_only_by_default(fine_train, tmp_path):
    """--fine-train generator: after the first stage the pose and z networks keep their
    weights (the table's poses and z are the first stage's) while the generator goes on
    learning; "all" trains everything, as before."""
    from emvae import fit, read_stack
    from emvae.checkpoint import load_checkpoint

    sim = tmp_path / "sim"
    _ok("simulate", sim, "-n", 40, "--size", 24, "--seed", 2)
    cfg = RunConfig(
        ModelConfig(image_size=24, zdim=1, gen_hidden=16, enc_hidden=16, encoder_size=16),
        TrainConfig(
            epochs=3, batch_size=8, stages="12:1,16:1", device="cpu", checkpoint_every=1,
            fine_train=fine_train,
        ),
    )  # fmt: skip
    result = fit(read_stack(sim / "particles.mrcs"), cfg, tmp_path / "run", progress=False)
    assert not result.model.inference_frozen  # only during the fit's later stages
    states = [
        load_checkpoint(tmp_path / "run" / "checkpoints" / f"epoch_{e:04d}.pt")["model"]
        for e in (1, 2, 3)
    ]
    inference = [k for k in states[0] if k.startswith(("encoder.", "content."))]
    generator = [k for k in states[0] if k.startswith("generator.")]
    assert inference and generator
    for a, b in zip(states, states[1:], strict=False):  # 12 -> 16 px, 16 -> 24 px
        assert not all(torch.equal(a[k], b[k]) for k in generator)
        kept = all(torch.equal(a[k], b[k]) for k in inference)
        assert kept == (fine_train == "generator")


def test_the_model_renders_a_stage_on_its_grid_and_back():
    cfg = ModelConfig(image_size=48, encoder_size=24, zdim=1, mask_radius_px=20.0)
    model = SpatialVAE(cfg)
    full_coords, full_mask = model.coords.clone(), model.pixel_index.clone()
    model.set_render_size(24)
    assert torch.equal(model.coords, stage_grid(48, 24))
    assert model.stage.size == 24 and model.stage.noise_logstd == noise_logstd(48, 24)
    radius = model.coords[model.pixel_index].square().sum(-1).sqrt() * 23.5
    assert radius.max().item() <= 20.0 and len(model.pixel_index) > 0.5 * 24 * 24
    features = model.generator.features
    assert features is not None and features.band is not None
    kept = features.freqs.norm(dim=1) <= 0.25 * 23.5  # the stage's Nyquist, cycles per unit
    assert torch.equal(features.band.bool(), kept) and 0 < int(kept.sum()) < 64
    w = model.generator.coord_linear.weight  # (hidden, 2 + 2F): x, y, cos, sin
    cos, sin = w[:, 2:66], w[:, 66:]
    assert (cos[:, ~kept] == 0).all() and (sin[:, ~kept] == 0).all()
    assert (cos[:, kept] != 0).all()  # the kept ones are untouched
    x = torch.randn(3, 1, 48, 48)
    assert model.pixels(x).shape[1] == len(model.pixel_index)
    q = model.encode(x)  # the networks take the full images (they see their 24-px copy)
    assert q.pose_mu.shape[0] == 3
    model.set_render_size(48)
    assert torch.equal(model.coords, full_coords) and torch.equal(model.pixel_index, full_mask)
    assert features.band is None and model.stage.noise_logstd is None


def test_a_fit_resumed_mid_schedule_is_the_uninterrupted_fit(tmp_path):
    """Stages switch by epoch, so resuming after the coarse stage gives the same table; the
    metrics say each epoch's box."""
    sim = tmp_path / "sim"
    _ok("simulate", sim, "-n", 60, "--size", 24, "--seed", 2)
    stack = str(sim / "particles.mrcs")
    opts = [*SMALL, "--stages", "12:1", "--encoder-size", "16", "--fine-images", "20"]
    one = tmp_path / "one"
    _ok("fit", stack, "-o", one, *opts, "-n", 3)
    two = tmp_path / "two"
    _ok("fit", stack, "-o", two, *opts, "-n", 1)
    _ok("fit", stack, "-o", two, "--resume", "-n", 3, "--quiet")
    a, b = (pd.read_csv(p / "particles.csv") for p in (one, two))
    numbers = [t.select_dtypes("number").to_numpy() for t in (a, b)]
    assert np.array_equal(*numbers)
    metrics = pd.read_csv(one / "metrics.csv")
    assert metrics["stage_px"].tolist() == [12, 24, 24]


def test_a_batch_split_into_passes_takes_the_same_step():
    """Memory: a batch rendered in passes of one image (pass_memory_mb tiny) sums to the
    gradient of the whole batch; the step's terms and the new weights agree."""
    from emvae.train import training_step

    cfg = ModelConfig(image_size=20, zdim=1, gen_hidden=16, enc_hidden=16)
    x = torch.randn(6, 1, 20, 20, generator=torch.Generator().manual_seed(1))
    results = []
    for memory in (1024, 0.001):
        torch.manual_seed(0)
        model = SpatialVAE(cfg)
        model.pass_memory_mb = memory
        assert (model.images_per_pass() == 1) == (memory < 1)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)  # Adam would amplify rounding
        rng = torch.Generator().manual_seed(3)
        terms = training_step(model, opt, x, rng)
        weights = torch.cat([p.detach().flatten() for p in model.parameters()])
        results.append((terms.elbo, weights))
    (e1, w1), (e2, w2) = results
    assert torch.allclose(e1, e2, atol=1e-4)
    assert torch.allclose(w1, w2, atol=1e-5)
    assert not torch.equal(w1, torch.cat([p.flatten() for p in SpatialVAE(cfg).parameters()]))


def test_passes_fit_the_memory_given():
    """The number of images per pass follows the generator's size and the render size: a
    128-px box at 2 x 128 with 2 hypotheses fits 1 GB in about 5 images per training pass."""
    model = SpatialVAE(ModelConfig(image_size=128, zdim=1))
    assert model.config.gen_hidden == 128 and model.config.hypotheses == 2
    assert model.images_per_pass() == 1024 * 2**20 // (12 * 128 * 128 * 2 * 384)  # 6
    model.set_render_size(32)
    assert model.images_per_pass() == 1024 * 2**20 // (12 * 32 * 32 * 2 * 384)  # 113
    # an inference pass holds 0.6 of a training pass's bytes (measured at 128 px): 189 images
    assert model.images_per_pass(training=False) == int(1024 * 2**20 // (7.2 * 32 * 32 * 2 * 384))


def test_the_pass_memory_defaults_to_the_devices(monkeypatch, tmp_path):
    """1024 MB on a CPU (stored in config.json, so a resume keeps it); a quarter of a GPU's
    memory on CUDA; a model loaded for encoding takes its own device's default."""
    from types import SimpleNamespace

    from emvae.data import default_pass_memory_mb
    from emvae.run import load_model

    assert default_pass_memory_mb("cpu") == 1024
    card = SimpleNamespace(total_memory=80 * 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda dev: card)
    assert default_pass_memory_mb("cuda:0") == 20 * 1024
    assert TrainConfig().pass_memory_mb is None
    sim = tmp_path / "sim"
    _ok("simulate", sim, "-n", 30, "--size", 16, "--seed", 2)
    out = tmp_path / "run"
    _ok("fit", sim / "particles.mrcs", "-o", out, *SMALL, "-n", 1)
    model, config, _ = load_model(out)
    assert config.train.pass_memory_mb == 1024 and model.pass_memory_mb == 1024


def test_a_stage_likelihood_uses_the_crop_noise():
    """At a coarse stage the Gaussian's std is the crop's noise std (exp(noise_logstd)), not
    1: the log-likelihood equals N(y; mean, s^2) summed over the stage's pixels."""
    from emvae.objective import log_likelihood

    cfg = ModelConfig(image_size=64, zdim=1)
    g = torch.Generator().manual_seed(2)
    y, mean = torch.randn(3, 32 * 32, 1, generator=g), torch.randn(3, 32 * 32, 1, generator=g)
    ls = noise_logstd(64, 32)
    got = log_likelihood(cfg, y, mean, ls)
    want = torch.distributions.Normal(mean, math.exp(ls)).log_prob(y).sum((1, 2))
    assert torch.allclose(got, want, rtol=1e-5)
    unit = torch.distributions.Normal(mean, 1.0).log_prob(y).sum((1, 2))
    assert torch.allclose(log_likelihood(cfg, y, mean), unit, rtol=1e-5)


def test_the_tables_elbo_is_the_images_lowest_frequencies_up_to_64_px():
    """Above TABLE_PX a coarse-to-fine fit's tables compute the ELBO and correlation on the
    images' lowest 64 x 64 frequencies, rendered as a 64-px stage renders (the CTF at the
    crop's pixel size, the crop's noise, the mask on its grid): the value is the 64-px pass's,
    a pattern at the 80-px box's Nyquist frequency leaves every column unchanged while the
    full-size ELBO sees it, and the model renders at 80 px after."""
    from emvae.encode import elbo_pass, encode

    def fit(size: int, stages: str = "24:5", **kw) -> RunConfig:
        return RunConfig(model=ModelConfig(image_size=size, **kw), train=TrainConfig(stages=stages))

    assert table_size(fit(128)) == TABLE_PX == 64
    assert table_size(fit(48, stages="24:5")) == 48
    assert table_size(fit(128, stages="off")) == 128  # trained at full size: its own box
    assert table_size(fit(128, likelihood="bernoulli")) == 128
    assert table_size(fit(128, learn_noise=True)) == 128  # its noise was learnt at full size
    torch.manual_seed(0)
    cfg = ModelConfig(
        image_size=80, zdim=1, gen_hidden=16, enc_hidden=16, ctf="on", mask_radius_px=30.0
    )
    model = SpatialVAE(cfg).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 80, 80, generator=g)
    ctf = torch.zeros(4, len(COLUMNS))
    values = {"defocus_u_A": 15000.0, "defocus_v_A": 14000.0, "voltage_kV": 300.0,
              "cs_mm": 2.7, "amplitude_contrast": 0.1, "scale": 1.0, "apix_A": 2.0}  # fmt: skip
    for name, value in values.items():
        ctf[:, COLUMNS.index(name)] = value
    i = torch.arange(80)
    checker = 3.0 * (-1.0) ** (i[:, None] + i[None, :]).float()  # 40 cycles per box
    dev = torch.device("cpu")
    # the tables' pass: the rotation searched (at 24 px, inside the 64-px rendering)
    plain, patterned = (encode(model, v, dev, ctf=ctf, elbo_px=64) for v in (x, x + checker))
    assert model.render_size == 80
    assert np.allclose(plain.elbo, patterned.elbo, rtol=1e-4)
    assert np.allclose(plain.ncc, patterned.ncc, atol=1e-5)
    assert np.allclose(plain.z_mu, patterned.z_mu, atol=1e-5)
    eps = torch.randn(4, model.n_latent, generator=torch.Generator().manual_seed(0))  # encode's
    with torch.no_grad():
        with model.rendering_at(64):
            at_64 = elbo_pass(model, x, eps, ctf)[1].elbo
        full = [elbo_pass(model, v, eps, ctf)[1].elbo for v in (x, x + checker)]
    assert (full[1] < full[0] - 1000).all()  # at full size the pattern costs 4.5 nats a pixel
    # the values (the poses as the networks give them, as elbo_pass takes them)
    exact = encode(model, x, dev, ctf=ctf, elbo_px=64, search=False)
    assert np.allclose(exact.elbo, at_64.numpy(), rtol=1e-5)
    unbounded = encode(model, x + checker, dev, ctf=ctf, search=False)  # elbo_px None: 80 px
    assert np.allclose(unbounded.elbo, full[1].numpy(), rtol=1e-5)
