"""Generator networks: ``(coordinates, z) -> per-pixel distribution parameters``.

Every generator takes transformed coordinates ``(B, N, 2)`` and latents ``(B, K)`` and returns
``(B, N, n_out)``. A generator whose ``uses_coordinates`` is False ignores the coordinates (and
so cannot model rotation or translation); one whose ``full_grid`` is True (the broadcast
CNN) takes only the whole D x D grid in row-major order, N = D*D.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def make_activation(name: str) -> nn.Module:
    """The nonlinearity ``name`` (:data:`emvae.config.Activation`) as a module."""
    kinds: dict[str, type[nn.Module]] = {
        "tanh": nn.Tanh,
        "relu": nn.ReLU,
        "leaky_relu": nn.LeakyReLU,
        "gelu": nn.GELU,
        "silu": nn.SiLU,
    }
    return kinds[name]()


def mlp(n_in: int, hidden: int, layers: int, n_out: int, activation: str) -> nn.Sequential:
    """``layers`` hidden layers of width ``hidden``, then a linear output layer."""
    mods: list[nn.Module] = []
    width = n_in
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), make_activation(activation)]
        width = hidden
    mods.append(nn.Linear(width, n_out))
    return nn.Sequential(*mods)


class FourierFeatures(nn.Module):
    """Coordinates ``(..., 2)`` -> ``(..., 2 + 2F)``: the coordinates, then ``cos`` and ``sin``
    of ``2 pi x . f`` for F fixed random frequencies f ~ N(0, ``scale``^2 I) (cycles per
    coordinate unit; isotropic, so no direction is favoured as the coordinates turn). A
    coordinate MLP learns fine detail slowly from raw coordinates (its spectral bias); these
    features let it draw small domains from the start (Tancik et al. 2020; cryoDRGN encodes its
    decoder's coordinates for the same reason). The frequencies are a buffer saved with the
    model."""

    freqs: Tensor

    def __init__(self, n: int, scale: float, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        freqs = torch.randn(n, 2, generator=g, dtype=torch.float64) * scale
        self.register_buffer("freqs", freqs.float())
        self.n_out = 2 + 2 * n
        self.band: Tensor | None = None  # (F,) 1 below the band limit, 0 above; None: all

    def limit(self, cycles_per_unit: float | None) -> None:
        """Switch off the features above ``cycles_per_unit`` (a coarse stage's Nyquist
        frequency, :mod:`emvae.stages`: what its grid cannot represent would alias); None:
        every feature. The switched-off features' weights get no gradient and are kept."""
        if cycles_per_unit is None:
            self.band = None
            return
        self.band = (self.freqs.norm(dim=1) <= cycles_per_unit).float()

    def forward(self, coords: Tensor) -> Tensor:
        """Coordinates ``(..., 2)`` -> features ``(..., 2 + 2F)``: the coordinates, then the
        cosine and sine of each random frequency (switched-off ones zero)."""
        phase = (2 * math.pi) * (coords @ self.freqs.T.to(coords.dtype))
        cos, sin = torch.cos(phase), torch.sin(phase)
        if self.band is not None:
            band = self.band.to(device=cos.device, dtype=cos.dtype)
            cos, sin = cos * band, sin * band
        return torch.cat([coords, cos, sin], -1)


# rows (pixels x images) per chunk of a CPU rendering without autograd (SpatialGenerator)
CPU_CHUNK_ROWS = 4096


class SpatialGenerator(nn.Module):
    """Coordinate MLP ``p_g(y_i | x_i, z)`` (Bepler et al. 2019, eq. 2) with the first layer split.

    The first layer is linear in ``[x; z]`` (or in ``[features(x); z]`` with
    :class:`FourierFeatures`), so ``W_x x`` is computed per pixel and ``W_z z`` once per image
    and the two are broadcast-added; the ``(B, N, 2 + K)`` concatenated input is never built.
    Numerically this equals an MLP on the concatenation (tested).

    Without autograd on the CPU (the final table's ELBO, montages) the pixels go through the
    network in chunks of about :data:`CPU_CHUNK_ROWS` rows, so that each layer's activations stay
    in the cache: whole (B, N, H) activations are memory-bound there (tanh, the features' sin and
    cos, their concatenation), and chunks render about 2.5 times as many pixels a second at
    64-128 px (docs/benchmarks.md, "Users' sizes").
    """

    uses_coordinates = True

    def __init__(
        self,
        zdim: int,
        hidden: int,
        layers: int,
        n_out: int,
        activation: str,
        features: FourierFeatures | None = None,
    ) -> None:
        super().__init__()
        self.zdim = zdim
        self.features = features
        self.coord_linear = nn.Linear(2 if features is None else features.n_out, hidden)
        self.latent_linear = nn.Linear(zdim, hidden, bias=False) if zdim > 0 else None
        self.act = make_activation(activation)
        self.body = mlp(hidden, hidden, layers - 1, n_out, activation)

    def forward(self, coords: Tensor, z: Tensor) -> Tensor:
        """coords ``(B, N, 2)``, z ``(B, K)`` -> ``(B, N, n_out)``."""
        b, n = coords.shape[:2]
        traced = torch.compiler.is_compiling()  # torch.export (ONNX), torch.compile
        if traced or coords.device.type != "cpu" or torch.is_grad_enabled():
            return self._render(coords, z)
        if b * n <= CPU_CHUNK_ROWS:  # (after the checks above: export's batch is symbolic)
            return self._render(coords, z)
        rows = max(1, CPU_CHUNK_ROWS // b)  # pixels per image in a chunk
        return torch.cat([self._render(coords[:, a : a + rows], z) for a in range(0, n, rows)], 1)

    def _render(self, coords: Tensor, z: Tensor) -> Tensor:
        if self.features is not None:
            coords = self.features(coords)  # (B, N, 2 + 2F)
        h = self.coord_linear(coords)  # (B, N, H)
        if self.latent_linear is not None:
            h = h + self.latent_linear(z).unsqueeze(1)  # (B, 1, H) broadcast over pixels
        out: Tensor = self.body(self.act(h))
        return out


class ClassLinear(nn.Module):
    """K linear layers, one per class, applied to each rendering by its class:
    ``(R, N, in)`` and classes ``(R,)`` (0-based) -> ``(R, N, out)``. Each rendering's weights
    are gathered from the K sets (a batched product: no host synchronisation, the FLOPs of
    one layer)."""

    def __init__(self, classes: int, n_in: int, n_out: int) -> None:
        super().__init__()
        layers = [nn.Linear(n_in, n_out) for _ in range(classes)]  # nn.Linear's initialisation
        self.weight = nn.Parameter(torch.stack([m.weight.detach().T for m in layers]))  # (K,i,o)
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in layers]))  # (K, out)

    def forward(self, x: Tensor, classes: Tensor) -> Tensor:
        """x ``(R, N, in)``, classes ``(R,)`` -> ``(R, N, out)``."""
        w, b = self.weight[classes].to(x.dtype), self.bias[classes].to(x.dtype)
        out: Tensor = torch.baddbmm(b.unsqueeze(1), x, w)
        return out


class ClassSpatialGenerator(SpatialGenerator):
    """:class:`SpatialGenerator` with one body per class (``--class-generator separate``): the
    coordinates' first layer is shared, then each class has its own first-layer offset and its
    own hidden and output layers. Its latent input is ``(B, K + C)``: z, then the one-hot of
    the class to draw (C classes), as for the shared generator."""

    def __init__(
        self,
        zdim: int,
        classes: int,
        hidden: int,
        layers: int,
        n_out: int,
        activation: str,
        features: FourierFeatures | None = None,
    ) -> None:
        super().__init__(zdim + classes, hidden, 1, n_out, activation, features)
        self.classes = classes
        widths = [hidden] * layers + [n_out]
        self.layers = nn.ModuleList(
            ClassLinear(classes, a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        del self.body

    def _render(self, coords: Tensor, z: Tensor) -> Tensor:
        if self.features is not None:
            coords = self.features(coords)
        cls = z[:, -self.classes :].argmax(1)
        h: Tensor = self.coord_linear(coords)
        if self.latent_linear is not None:  # z and the class's offset
            h = h + self.latent_linear(z).unsqueeze(1)
        for layer in self.layers:
            h = layer(self.act(h), cls)
        return h


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
        out: Tensor = self.net(z).view(z.shape[0], self.n_pixels, self.n_out)
        return out


class BroadcastGenerator(nn.Module):
    """Spatial Broadcast decoder (Watters et al. 2019; seeds 001-002) on transformed coordinates.

    z ``(B, K)`` is tiled over the D x D pixel grid and concatenated with the two coordinate
    channels at each pixel, ``[x R(theta) + dx; z]`` (the coordinates the spatial generator
    sees, so rotation and translation inference work unchanged), then an unstrided CNN:
    ``layers`` 3 x 3 convolutions (zero padding 1, ``hidden`` channels, ReLU by default) and a
    1 x 1 convolution to ``n_out``. Unlike the coordinate MLP, each output pixel depends on the
    coordinates and z of its 3 x 3 neighbourhood per layer, so the decoder needs the whole
    grid: coordinates ``(B, D*D, 2)`` in the row-major order of
    :func:`emvae.geometry.coordinate_grid` (``SpatialVAE.decode`` renders every pixel and
    then selects the masked or sampled ones). ``kernel=1`` makes every convolution 1 x 1: a
    per-pixel MLP on ``[x'; z]`` (no neighbourhood), used by the tests.
    """

    uses_coordinates = True
    full_grid = True  # evaluates the whole D x D grid only (no pixel subsets)

    def __init__(
        self,
        zdim: int,
        size: int,
        hidden: int,
        layers: int,
        n_out: int,
        activation: str = "relu",
        kernel: int = 3,
    ) -> None:
        super().__init__()
        self.zdim = zdim
        self.size = size
        mods: list[nn.Module] = []
        width = 2 + zdim
        for _ in range(layers):
            mods += [
                nn.Conv2d(width, hidden, kernel, padding=kernel // 2),
                make_activation(activation),
            ]
            width = hidden
        mods.append(nn.Conv2d(width, n_out, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, coords: Tensor, z: Tensor) -> Tensor:
        """coords ``(B, D*D, 2)`` (row-major pixel grid), z ``(B, K)`` -> ``(B, D*D, n_out)``."""
        b, n, _ = coords.shape
        d = self.size
        if n != d * d:
            raise ValueError(f"the broadcast decoder renders the whole {d} x {d} grid, got {n} px")
        grid = coords.transpose(1, 2).reshape(b, 2, d, d)  # row i = image row i (y down the rows)
        if self.zdim > 0:
            tiled = z.to(grid.dtype)[:, :, None, None].expand(b, self.zdim, d, d)
            grid = torch.cat([grid, tiled], 1)
        out: Tensor = self.net(grid).flatten(2).transpose(1, 2)
        return out
