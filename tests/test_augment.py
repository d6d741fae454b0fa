"""The sign of the rotation augmentation, proved on rendered templates."""

import math

import pytest
import torch
from conftest import corr, render_model, template
from torch import nn

from emvae.augment import rotate_images
from emvae.config import ModelConfig
from emvae.models import SpatialVAE, pixels_to_images

SIZE = 41


def _interior(img, radius=0.8):
    """Pixels inside a circle (corners are lost by any rotation)."""
    from emvae.geometry import coordinate_grid

    g = coordinate_grid(SIZE, SIZE)
    keep = (g**2).sum(1) < radius**2
    return img.reshape(*img.shape[:-2], -1)[..., keep]


@pytest.mark.parametrize("gamma_deg", [30.0, 90.0, -125.0])
def test_rotate_images_turns_counter_clockwise(gamma_deg):
    """An image at model pose theta0, rotated counter-clockwise by gamma, is the same template at
    theta0 - gamma (it would be theta0 + gamma with the opposite sign)."""
    theta0 = torch.tensor([0.4], dtype=torch.float64)
    gamma = torch.tensor([math.radians(gamma_deg)], dtype=torch.float64)
    img = render_model(theta0, None, SIZE).float()
    rotated = rotate_images(img, gamma.float())
    expect = render_model(theta0 - gamma, None, SIZE)
    wrong = render_model(theta0 + gamma, None, SIZE)
    assert corr(_interior(rotated), _interior(expect)) > 0.995
    assert corr(_interior(rotated), _interior(wrong)) < 0.9


def test_rotate_images_quarter_turn_is_exact():
    """90 degrees counter-clockwise on a grid is np.rot90 (row 0 at the top)."""
    img = torch.randn(2, 3, SIZE, SIZE)
    out = rotate_images(img, torch.full((2,), math.pi / 2))
    assert torch.allclose(out, torch.rot90(img, 1, dims=(-2, -1)), atol=1e-4)


class OracleEncoder(nn.Module):
    """Finds theta by brute-force matching against the template (no learning involved)."""

    def __init__(self, vector: bool) -> None:
        super().__init__()
        self.vector = vector
        self.angles = torch.linspace(-math.pi, math.pi, 721)[:-1]
        self.refs = render_model(self.angles.double(), None, SIZE).float().flatten(1)

    def forward(self, images):
        scores = images.flatten(1) @ self.refs.T  # (B, A)
        theta = self.angles[scores.argmax(1)]
        mu = torch.stack([theta.cos(), theta.sin()], 1) if self.vector else theta[:, None]
        return torch.cat([mu, torch.full_like(theta[:, None], -6.0)], 1)  # means, log-std


class TemplateGenerator(nn.Module):
    uses_coordinates = True

    def forward(self, coords, z):
        return template(coords.double()).float().unsqueeze(-1)


@pytest.mark.parametrize("theta_param", ["vector", "linear"])
@pytest.mark.parametrize("gamma_deg", [0.0, 50.0, 170.0, -100.0])
def test_augmented_inference_reconstructs_the_original(gamma_deg, theta_param):
    """Through SpatialVAE.encode(images, gamma): the inference network sees the image rotated by
    gamma, gamma is removed from its angle, and the decoder reproduces the original image."""
    cfg = ModelConfig(
        image_size=SIZE,
        zdim=0,
        translation=False,
        gen_hidden=8,
        enc_hidden=8,
        theta_param=theta_param,
        theta_posterior="gaussian",
    )
    model = SpatialVAE(cfg)
    model.encoder = OracleEncoder(vector=theta_param == "vector")
    model.generator = TemplateGenerator()
    theta0 = torch.tensor([1.1, -2.5], dtype=torch.float64)
    images = render_model(theta0, None, SIZE).float()
    gamma = torch.full((2,), math.radians(gamma_deg))
    q = model.encode(images, gamma)
    err = torch.remainder(q.pose_mu[:, 0] - theta0.float() + math.pi, 2 * math.pi) - math.pi
    assert err.abs().max() < math.radians(2.0)
    recon = pixels_to_images(model.decode(q.z_mu, q.pose_mu), SIZE)
    for b in range(2):
        assert corr(_interior(recon[b]), _interior(images[b])) > 0.99
