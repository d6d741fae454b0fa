"""Inference networks: ``images -> (mu, log sigma)`` of a diagonal Gaussian posterior."""

from __future__ import annotations

from torch import Tensor, nn

from emvae.models.generator import mlp


class MLPEncoder(nn.Module):
    """MLP over the flattened image (the paper's inference network).

    Outputs the mean and log-std of ``n_latent`` variables, ordered ``[z_1..z_K, pose...]``.
    """

    def __init__(self, n_in: int, hidden: int, layers: int, n_latent: int, activation: str) -> None:
        super().__init__()
        self.n_latent = n_latent
        self.net = mlp(n_in, hidden, layers, 2 * n_latent, activation)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images ``(B, C, H, W)`` -> mu ``(B, L)``, logstd ``(B, L)``."""
        out = self.net(images.flatten(1))
        return out[:, : self.n_latent], out[:, self.n_latent :]
