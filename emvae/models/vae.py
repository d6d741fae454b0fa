"""The spatial-VAE: inference network + coordinate transform + generator."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from emvae.augment import rotate_images
from emvae.config import ModelConfig
from emvae.geometry import coordinate_grid
from emvae.models.encoder import MLPEncoder
from emvae.models.generator import SpatialGenerator, VanillaGenerator
from emvae.models.transform import RigidTransform

POSE_LOGSTD_OFFSET = math.log(0.1)


@dataclass
class Posterior:
    """Diagonal Gaussian q(z, pose | y): z ``(B, K)``, pose ``(B, P)`` (means and log-stds)."""

    z_mu: Tensor
    z_logstd: Tensor
    pose_mu: Tensor
    pose_logstd: Tensor


class SpatialVAE(nn.Module):
    """Model of paper section 2, rebuilt from a :class:`ModelConfig` alone.

    Images are ``(B, C, D, D)``; the generator's output is ``(B, D*D, n_out)`` in row-major
    pixel order (see :func:`emvae.geometry.coordinate_grid`).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        d, c = config.image_size, config.channels
        self.transform = RigidTransform(config.rotation, config.translation)
        n_latent = config.zdim + self.transform.n_params
        self.theta_vector = config.rotation and config.theta_param == "vector"
        self.encoder = build_encoder(config, n_latent + int(self.theta_vector), n_latent)
        self.generator = build_generator(config)
        self.register_buffer("coords", coordinate_grid(d, d), persistent=False)
        # The likelihood sees only pixels inside the circular mask (all pixels without one);
        # the spatial generator is evaluated on those coordinates alone.
        self.masked = config.mask_radius_px is not None
        if self.masked:
            r = (self.coords / config.pixel_to_unit).square().sum(-1).sqrt()
            inside = torch.nonzero(r <= config.mask_radius_px).squeeze(1)
            self.register_buffer("pixel_index", inside, persistent=False)
        # Pose posteriors start narrow (sigma ~ 0.1 rad / coordinate units): started near the
        # prior's width, the sampled rotation is noise, the generator learns the rotational
        # average and q(theta) collapses onto the prior.
        offset = torch.zeros(n_latent)
        offset[config.zdim :] = POSE_LOGSTD_OFFSET
        self.register_buffer("logstd_offset", offset, persistent=False)
        self.n_pixels = d * d
        self.channels = c

    def encode(self, images: Tensor, gamma: Tensor | None = None) -> Posterior:
        """q(z, pose | images). images ``(B, C, D, D)``.

        With ``gamma`` ``(B,)`` (radians), the inference network sees each image rotated
        counter-clockwise by gamma and gamma is added back to the predicted theta, so the
        posterior still describes the original image (rotation augmentation, paper section 4.3).
        """
        if gamma is not None:
            images = rotate_images(images, gamma)
        mu, logstd = self.encoder(images)
        logstd = logstd + self.logstd_offset
        k = self.config.zdim
        pose_mu = mu[:, k:]
        if self.theta_vector:  # theta = atan2 of two outputs: continuous over the full circle
            theta = torch.atan2(pose_mu[:, 1:2], pose_mu[:, :1])
            pose_mu = torch.cat([theta, pose_mu[:, 2:]], 1)
        if gamma is not None and self.config.rotation:
            pose_mu = torch.cat(
                [pose_mu[:, :1] + gamma.unsqueeze(1).to(mu.dtype), pose_mu[:, 1:]], 1
            )
        return Posterior(mu[:, :k], logstd[:, :k], pose_mu, logstd[:, k:])

    def decode(self, z: Tensor, pose: Tensor, full: bool = False) -> Tensor:
        """Generator output ``(B, N, n_out)`` for z ``(B, K)`` and pose ``(B, P)``.

        N is every pixel with ``full`` or without a mask, else the masked pixels (the ones
        :meth:`pixels` returns), in row-major order.
        """
        part = self.masked and not full
        if self.generator.uses_coordinates:
            grid = self.coords[self.pixel_index] if part else self.coords
            return self.generator(self.transform(grid, pose), z)
        out = self.generator(None, z)
        return out[:, self.pixel_index] if part else out

    def pixels(self, images: Tensor) -> Tensor:
        """The likelihood's targets: ``(B, C, D, D)`` -> ``(B, N, C)`` (masked pixels only)."""
        y = images_to_pixels(images)
        return y[:, self.pixel_index] if self.masked else y

    @property
    def n_latent(self) -> int:
        """K + P: the width of the noise :meth:`sample` needs per image."""
        return self.config.zdim + self.transform.n_params

    def forward(
        self,
        images: Tensor,
        gamma: Tensor | None = None,
        eps: Tensor | None = None,
        use_z: bool = True,
    ) -> tuple[Posterior, Tensor]:
        """Encode, sample with noise ``eps`` ``(B, K + P)``, decode: (posterior, generator
        output ``(B, N, n_out)``). The one call DistributedDataParallel wraps."""
        q = self.encode(images, gamma)
        z, pose = self.sample(q, use_z=use_z, eps=eps)
        return q, self.decode(z, pose)

    def sample(
        self,
        q: Posterior,
        rng: torch.Generator | None = None,
        use_z: bool = True,
        eps: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """One reparameterised sample (z, pose); z is 0 when ``use_z`` is False (z-delay).

        ``eps`` ``(B, K + P)`` standard normal noise, drawn here from ``rng`` when not given."""
        if eps is None:
            eps = torch.randn(
                q.pose_mu.shape[0], self.n_latent, generator=rng, device=q.pose_mu.device
            )
        eps = eps.to(q.pose_mu.dtype)
        k = q.z_mu.shape[1]
        z = q.z_mu + torch.exp(q.z_logstd) * eps[:, :k]
        if not use_z:
            z = torch.zeros_like(z)
        pose = q.pose_mu + torch.exp(q.pose_logstd) * eps[:, k:]
        return z, pose

    def canonical(self, z: Tensor) -> Tensor:
        """Generator output at theta = 0, dx = 0 for z ``(B, K)``: ``(B, N, n_out)``."""
        pose = z.new_zeros(z.shape[0], self.transform.n_params)
        return self.decode(z, pose, full=True)


def build_encoder(cfg: ModelConfig, n_mean: int, n_logstd: int) -> nn.Module:
    n_in = cfg.channels * cfg.image_size**2
    if cfg.encoder == "mlp":
        return MLPEncoder(n_in, cfg.enc_hidden, cfg.enc_layers, n_mean, n_logstd, cfg.activation)
    raise ValueError(cfg.encoder)  # unreachable after validate()


def build_generator(cfg: ModelConfig) -> nn.Module:
    if cfg.generator == "spatial":
        return SpatialGenerator(cfg.zdim, cfg.gen_hidden, cfg.gen_layers, cfg.n_out, cfg.activation)
    if cfg.generator == "vanilla":
        return VanillaGenerator(
            cfg.zdim, cfg.gen_hidden, cfg.gen_layers, cfg.image_size**2, cfg.n_out, cfg.activation
        )
    raise ValueError(cfg.generator)  # unreachable after validate()


def images_to_pixels(images: Tensor) -> Tensor:
    """``(B, C, H, W)`` -> ``(B, H*W, C)`` in the generator's pixel order."""
    return images.flatten(2).transpose(1, 2)


def pixels_to_images(pixels: Tensor, size: int) -> Tensor:
    """``(B, H*W, C)`` -> ``(B, C, H, W)``."""
    b, _, c = pixels.shape
    return pixels.transpose(1, 2).reshape(b, c, size, size)
