"""Inference networks: ``images -> (mean parameters, log sigma)`` of a diagonal Gaussian."""

from __future__ import annotations

from torch import Tensor, nn

from emvae.models.generator import mlp


class MLPEncoder(nn.Module):
    """MLP over the flattened image (the paper's inference network).

    Outputs ``n_mean`` values that parameterise the posterior means and ``n_logstd`` log-stds
    (their layout is decided by :meth:`emvae.models.SpatialVAE.encode`).
    """

    def __init__(
        self, n_in: int, hidden: int, layers: int, n_mean: int, n_logstd: int, activation: str
    ) -> None:
        super().__init__()
        self.n_mean = n_mean
        self.net = mlp(n_in, hidden, layers, n_mean + n_logstd, activation)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images ``(B, C, H, W)`` -> means ``(B, n_mean)``, log-stds ``(B, n_logstd)``."""
        out = self.net(images.flatten(1))
        return out[:, : self.n_mean], out[:, self.n_mean :]
