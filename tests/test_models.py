"""Generator, encoder and model assembly."""

import pytest
import torch
from torch import nn

from emvae.config import ModelConfig
from emvae.errors import ConfigError
from emvae.models import SpatialGenerator, SpatialVAE


@pytest.mark.parametrize("zdim", [0, 1, 5])
def test_split_first_layer_equals_concatenated_mlp(zdim):
    torch.manual_seed(0)
    gen = SpatialGenerator(zdim, hidden=32, layers=3, n_out=2, activation="tanh").double()
    coords = torch.randn(4, 50, 2, dtype=torch.float64)
    z = torch.randn(4, zdim, dtype=torch.float64)
    first = nn.Linear(2 + zdim, 32).double()
    with torch.no_grad():
        w = gen.coord_linear.weight
        if zdim:
            w = torch.cat([w, gen.latent_linear.weight], 1)
        first.weight.copy_(w)
        first.bias.copy_(gen.coord_linear.bias)
    naive = nn.Sequential(first, nn.Tanh(), *gen.body)
    inputs = torch.cat([coords, z.unsqueeze(1).expand(-1, 50, -1)], -1)  # (B, N, 2 + K)
    assert torch.allclose(gen(coords, z), naive(inputs), atol=1e-12)


def test_a_cpu_rendering_without_autograd_goes_in_chunks_and_gives_the_same_pixels(monkeypatch):
    """Above CPU_CHUNK_ROWS rows (images x pixels) a no-grad CPU rendering runs the network over
    chunks of pixels: every image's every pixel comes out as from one pass, in order."""
    import emvae.models.generator as generator
    from emvae.models.generator import FourierFeatures

    torch.manual_seed(0)
    gen = SpatialGenerator(2, 16, 2, 1, "tanh", FourierFeatures(8, 2.0)).double()
    coords = torch.rand(3, 1000, 2, dtype=torch.float64) * 2 - 1
    z = torch.randn(3, 2, dtype=torch.float64)
    whole = gen(coords, z)  # autograd on: one pass
    calls = []
    render = gen._render
    monkeypatch.setattr(gen, "_render", lambda c, zz: calls.append(c.shape) or render(c, zz))
    monkeypatch.setattr(generator, "CPU_CHUNK_ROWS", 600)  # 200 pixels of 3 images a chunk
    with torch.no_grad():
        chunked = gen(coords, z)
    assert calls == [torch.Size([3, 200, 2])] * 5
    assert torch.allclose(chunked, whole, rtol=0, atol=1e-12)


def test_pose_layout_and_canonical_decode():
    cfg = ModelConfig(image_size=12, zdim=3, gen_hidden=16, enc_hidden=16)
    model = SpatialVAE(cfg)
    q = model.encode(torch.randn(5, 1, 12, 12))
    assert q.z_mu.shape == (5, 3) and q.pose_mu.shape == (5, 3)  # theta, dx, dy
    z = torch.randn(5, 3)
    # the canonical image ignores the pose; a shifted one differs
    assert torch.equal(model.canonical(z), model.decode(z, torch.zeros(5, 3)))
    assert not torch.allclose(model.canonical(z), model.decode(z, torch.full((5, 3), 0.3)))


def test_vanilla_generator_ignores_coordinates():
    cfg = ModelConfig(
        image_size=8,
        zdim=2,
        generator="vanilla",
        rotation=False,
        translation=False,
        gen_hidden=16,
        enc_hidden=16,
    )
    model = SpatialVAE(cfg)
    assert model.transform.n_params == 0
    out = model.decode(torch.randn(3, 2), torch.zeros(3, 0))
    assert out.shape == (3, 64, 1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"generator": "vanilla"}, "vanilla generator has no coordinates"),
        ({"theta_prior": "vonmises"}, "unknown theta prior"),
        ({"likelihood": "bernoulli", "learn_noise": True}, "--learn-noise"),
        ({"zdim": -1}, "--zdim"),
    ],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(image_size=8, **kwargs).validate()


def test_small_images_get_small_networks_by_default():
    from emvae.config import RunConfig

    assert (ModelConfig(image_size=28).gen_hidden, ModelConfig(image_size=28).enc_hidden) == (
        128,
        128,
    )
    assert ModelConfig(image_size=40).gen_hidden == 128  # the paper's EM box (benchmarks.md)
    # above 48 px the networks see a 32-px copy (coarse-to-fine): the small widths again;
    # the paper's 500 when they see the whole box
    assert ModelConfig(image_size=49).gen_hidden == 128
    assert ModelConfig(image_size=49, encoder_size=49).gen_hidden == 500
    assert ModelConfig(image_size=64, pose="tps").gen_hidden == 500
    assert ModelConfig(image_size=28, gen_hidden=64).gen_hidden == 64
    stored = RunConfig(model=ModelConfig(image_size=64, gen_hidden=300)).to_dict()
    assert RunConfig.from_dict(stored).model.gen_hidden == 300  # a checkpoint keeps its width
