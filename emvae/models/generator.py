"""Generator networks: ``(coordinates, z) -> per-pixel distribution parameters``.

Every generator takes transformed coordinates ``(B, N, 2)`` and latents ``(B, K)`` and returns
``(B, N, n_out)``. A generator whose ``uses_coordinates`` is False ignores the coordinates (and
so cannot model rotation or translation).
"""

from __future__ import annotations

from torch import Tensor, nn


def make_activation(name: str) -> nn.Module:
    return {
        "tanh": nn.Tanh,
        "relu": nn.ReLU,
        "leaky_relu": nn.LeakyReLU,
        "gelu": nn.GELU,
        "silu": nn.SiLU,
    }[name]()


def mlp(n_in: int, hidden: int, layers: int, n_out: int, activation: str) -> nn.Sequential:
    """``layers`` hidden layers of width ``hidden``, then a linear output layer."""
    mods: list[nn.Module] = []
    width = n_in
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), make_activation(activation)]
        width = hidden
    mods.append(nn.Linear(width, n_out))
    return nn.Sequential(*mods)


class SpatialGenerator(nn.Module):
    """Coordinate MLP ``p_g(y_i | x_i, z)`` with the first layer split (SPEC section 1).

    The first layer is linear in ``[x; z]``, so ``W_x x`` is computed per pixel and ``W_z z``
    once per image and the two are broadcast-added; the ``(B, N, 2 + K)`` concatenated input is
    never built. Numerically this equals an MLP on the concatenation (tested).
    """

    uses_coordinates = True

    def __init__(self, zdim: int, hidden: int, layers: int, n_out: int, activation: str) -> None:
        super().__init__()
        self.zdim = zdim
        self.coord_linear = nn.Linear(2, hidden)
        self.latent_linear = nn.Linear(zdim, hidden, bias=False) if zdim > 0 else None
        self.act = make_activation(activation)
        self.body = mlp(hidden, hidden, layers - 1, n_out, activation)

    def forward(self, coords: Tensor, z: Tensor) -> Tensor:
        """coords ``(B, N, 2)``, z ``(B, K)`` -> ``(B, N, n_out)``."""
        h = self.coord_linear(coords)  # (B, N, H)
        if self.latent_linear is not None:
            h = h + self.latent_linear(z).unsqueeze(1)  # (B, 1, H) broadcast over pixels
        return self.body(self.act(h))


class VanillaGenerator(nn.Module):
    """Standard VAE decoder: an MLP from z to every pixel at once (the paper's baseline)."""

    uses_coordinates = False

    def __init__(
        self, zdim: int, hidden: int, layers: int, n_pixels: int, n_out: int, activation: str
    ) -> None:
        super().__init__()
        self.n_pixels = n_pixels
        self.n_out = n_out
        self.net = mlp(zdim, hidden, layers, n_pixels * n_out, activation)

    def forward(self, coords: Tensor | None, z: Tensor) -> Tensor:
        """z ``(B, K)`` -> ``(B, N, n_out)``; coords are ignored."""
        return self.net(z).view(z.shape[0], self.n_pixels, self.n_out)
