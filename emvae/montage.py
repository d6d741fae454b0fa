"""``emvae montage``: what the generator draws at theta = 0, dx = 0 as z moves.

Interpolations between particles (paper Fig. 6), the learned 1-D / 2-D manifold on an
inverse-normal-CDF grid (Figs. 3, 4), samples from the prior (Fig. 5), per-dimension traversals
(for larger K) and an animated GIF of the motion along a path, as arrays
``(rows, cols, C, D, D)`` that :mod:`emvae.figures.tiles` lays out; the ``*_labels`` functions
give each montage's :class:`~emvae.figures.tiles.Labels` from the same z its panels are drawn
at. :func:`write_montages` writes them all for a run or a checkpoint.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from scipy.stats import norm
from torch import Tensor

from emvae.errors import ConfigError, InputError
from emvae.figures import page, tiles
from emvae.figures.tiles import Labels, z_lines
from emvae.io.stack import image_key, image_label
from emvae.latents import latent_columns
from emvae.models import SpatialVAE, pixels_to_images
from emvae.objective import pixel_mean
from emvae.run import MONTAGE, Run, load_model
from emvae.safety import check_memory, claim_outputs, record_outputs


@torch.no_grad()
def decode_mean(model: SpatialVAE, z: Tensor, classes: Tensor | None = None) -> Tensor:
    """Pixel means at theta = 0, dx = 0 for z ``(B, K)``: ``(B, C, D, D)`` (normalised units
    for a Gaussian model, [0, 1] for a Bernoulli one); ``classes`` ``(B,)``: each image's class
    (0-based, ``--classes``; None: the model's :meth:`~SpatialVAE.rendering_class`)."""
    dev = next(model.parameters()).device
    params = model.canonical(z.to(dev), None if classes is None else classes.to(dev))
    return pixels_to_images(pixel_mean(model.config, params), model.config.image_size).cpu()


@torch.no_grad()
def reconstruct(
    model: SpatialVAE, images: Tensor, ctf: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Each image ``(B, C, D, D)`` (normalised, as the model sees it; with its CTF ``ctf``
    ``(B, 10)`` when the model's encoder needs it) encoded and drawn again:
    ``(rendered, z, pose)``. ``rendered`` ``(B, C, D, D)`` is the generator's mean at the
    posterior means of z ``(B, K)`` and of the pose ``(B, P)`` (model units, the layout of
    :class:`emvae.models.RigidTransform`; the most probable rotation bin with rotation bins),
    i.e. the particle as the model explains it, turned and shifted as it lies in the image.
    The CTF is not applied (the rendering is the CTF-free object)."""
    model.eval()
    dev = next(model.parameters()).device
    x = images.to(dev, torch.float32)
    with model.table_poses(ctf is not None or model.config.ctf != "on"):  # as the table
        q = model.encode(x, ctf=None if ctf is None else ctf.to(dev))
    params = model.decode(q.z_mu, q.pose_mu, full=True, classes=q.best_class())
    rendered = pixels_to_images(pixel_mean(model.config, params), model.config.image_size)
    return rendered.cpu(), q.z_mu.cpu(), q.pose_mu.cpu()


def interpolation(
    model: SpatialVAE, z_a: Tensor, z_b: Tensor, observed: Tensor | None, steps: int = 8
) -> Tensor:
    """One row per pair: observed A (if given), the generator at ``steps`` equally spaced z
    from ``z_a`` to ``z_b`` (both included), observed B. ``z_a``, ``z_b``: ``(P, K)``;
    observed ``(P, 2, C, D, D)``. Returns ``(P, steps [+ 2], C, D, D)``."""
    t = torch.linspace(0, 1, steps, dtype=z_a.dtype)[None, :, None]
    z = (1 - t) * z_a[:, None] + t * z_b[:, None]  # exactly z_a and z_b at the ends
    dec = _decode_grid(model, z)
    if observed is None:
        return dec
    return torch.cat([observed[:, :1], dec, observed[:, 1:]], dim=1)


def quantile_grid(n: int, values: np.ndarray | None = None) -> np.ndarray:
    """``n`` values of z at the quantiles ``(i + 1/2) / n``: of the prior N(0, 1) (the paper's
    manifold grid), or of ``values`` ``(N,)`` (a dimension's posterior means: the range the
    particles actually cover)."""
    q = (np.arange(n) + 0.5) / n
    return norm.ppf(q) if values is None else np.quantile(np.asarray(values, np.float64), q)


def manifold_grids(k: int, n: int, z_data: np.ndarray | None = None) -> list[Tensor]:
    """The values of each z on the manifold grid: ``k`` tensors ``(n,)`` (increasing), at
    quantiles of the prior or of the particles' posterior means ``z_data`` ``(N, K)``."""
    if k not in (1, 2):
        raise ConfigError(f"the manifold grid is for 1-D or 2-D z; this model has {k}-D z")
    columns = [None] * k if z_data is None else list(z_data.T[:k])
    return [torch.tensor(quantile_grid(n, c), dtype=torch.float32) for c in columns]


def manifold(model: SpatialVAE, n: int = 10, z_data: np.ndarray | None = None) -> Tensor:
    """The learned manifold for K = 1 (one row of ``n``) or K = 2 (``n x n``; z1 along columns,
    z2 up the rows): ``(rows, n, C, D, D)``. The grid is at quantiles of the prior, or of the
    particles' posterior means ``z_data`` ``(N, K)`` when given (:func:`manifold_grids`)."""
    return _decode_grid(model, manifold_z(model.config.zdim, n, z_data))


def manifold_z(k: int, n: int, z_data: np.ndarray | None = None) -> Tensor:
    """The z of :func:`manifold`: ``(rows, n, k)`` (K = 2: z1 along the columns, z2 up the
    rows, the top row at the largest z2; K = 1: one row)."""
    grids = manifold_grids(k, n, z_data)
    if k == 1:
        return grids[0][None, :, None]
    z2, z1 = torch.meshgrid(grids[1].flip(0), grids[0], indexing="ij")  # top row: largest z2
    return torch.stack([z1, z2], -1)


def prior_z(k: int, rows: int = 8, cols: int = 8, seed: int = 0) -> Tensor:
    """The z :func:`prior_samples` draws from N(0, I): ``(rows * cols, k)``, row by row."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows * cols, k, generator=g)


def prior_samples(model: SpatialVAE, rows: int = 8, cols: int = 8, seed: int = 0) -> Tensor:
    """Generator means for z drawn from N(0, I) (:func:`prior_z`): ``(rows, cols, C, D, D)``."""
    k = model.config.zdim
    return _decode_grid(model, prior_z(k, rows, cols, seed).reshape(rows, cols, k))


def traversals(
    model: SpatialVAE,
    n: int = 9,
    span: float = 2.5,
    dims: list[int] | None = None,
    z_data: np.ndarray | None = None,
) -> Tensor:
    """One row per latent dimension: that z from ``-span`` to ``span`` (prior std units), the
    others at 0; or, with the particles' posterior means ``z_data`` ``(N, K)``, from their 2nd
    to 98th percentile with the others at their medians. Returns ``(len(dims), n, C, D, D)``."""
    return _decode_grid(model, traversal_z(model.config.zdim, n, span, dims, z_data))


def traversal_z(
    k: int,
    n: int = 9,
    span: float = 2.5,
    dims: list[int] | None = None,
    z_data: np.ndarray | None = None,
) -> Tensor:
    """The z of :func:`traversals`: ``(len(dims), n, k)``."""
    dims = list(range(k)) if dims is None else dims
    if z_data is None:
        lo, hi, centre = np.full(k, -span), np.full(k, span), np.zeros(k)
    else:
        lo, hi = np.quantile(z_data, [0.02, 0.98], axis=0)
        centre = np.median(z_data, axis=0)
    z = torch.tensor(np.tile(centre, (len(dims), n, 1)), dtype=torch.float32)
    for row, d in enumerate(dims):
        z[row, :, d] = torch.linspace(float(lo[d]), float(hi[d]), n)
    return z


def principal_path(z_data: np.ndarray) -> Tensor:
    """``(2, K)``: the ends of the main axis of the particles' posterior means ``(N, K)`` (their
    first principal component through their mean, from its 2nd to its 98th percentile), the
    path along which the particles vary most."""
    z = np.asarray(z_data, dtype=np.float64)
    mean = z.mean(0)
    _, _, vt = np.linalg.svd(z - mean, full_matrices=False)
    t = (z - mean) @ vt[0]
    lo, hi = np.quantile(t, [0.02, 0.98])
    return torch.tensor(np.stack([mean + lo * vt[0], mean + hi * vt[0]]), dtype=torch.float32)


# ----------------------------------------------------------------------------- local metric


def _flat_mean(model: SpatialVAE, z: Tensor) -> Tensor:
    """Pixel means at theta = 0, dx = 0, flattened: z ``(B, K)`` -> ``(B, C * D * D)`` (the
    units of :func:`decode_mean`), differentiable in z."""
    mean = pixel_mean(model.config, model.canonical(z))
    return pixels_to_images(mean, model.config.image_size).flatten(1)


def canonical_jacobian(model: SpatialVAE, z: Tensor, batch: int = 64) -> Tensor:
    """The Jacobian of the pose-free image (the generator's pixel means at theta = 0,
    dx = 0, :func:`decode_mean`) with respect to z, at each z ``(n, K)``: ``(n, P, K)``,
    P = C * D * D pixel values, in (pixel-value units) per unit z (normalised units for a
    Gaussian model, probability for a Bernoulli one; z in prior standard-deviation units).

    Exact (automatic differentiation, no finite steps): one Jacobian-vector product per
    latent dimension over a batch of ``batch`` points at a time (each image depends on its
    own z only, so the product along e_k gives column k of every point's Jacobian); no loop
    over points. Computed on the model's device and dtype, returned on the CPU."""
    param = next(model.parameters())
    z = z.to(param.device, param.dtype)
    n, k = z.shape
    if k == 0:
        raise ConfigError("a model without latent dimensions has no Jacobian in z")
    was_training = model.training
    model.eval()
    f = functools.partial(_flat_mean, model)
    out = []
    try:
        for start in range(0, n, batch):
            zb = z[start : start + batch]
            cols = []
            for d in range(k):
                e = torch.zeros_like(zb)
                e[:, d] = 1.0
                # J e by the double-backward trick (torch.autograd.functional.jvp: any layer
                # with a backward rule; torch.func's forward mode would first script its
                # decompositions with the deprecated torch.jit)
                with torch.enable_grad():
                    cols.append(torch.autograd.functional.jvp(f, zb, e)[1])
            out.append(torch.stack(cols, -1).detach().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def singular_values(model: SpatialVAE, z: Tensor, batch: int = 64) -> Tensor:
    """The singular values of :func:`canonical_jacobian` at each z ``(n, K)``: ``(n, K)``,
    largest first: how far the image moves per unit step of z along the fastest and the
    slowest direction, (pixel-value units) per unit z (root of the summed squared change of
    every pixel, i.e. the Euclidean norm of the image's change)."""
    j = canonical_jacobian(model, z, batch).double()
    s: Tensor = torch.linalg.svdvals(j).to(torch.float32)
    return s


def local_metric(model: SpatialVAE, z: Tensor, batch: int = 64) -> Tensor:
    """The magnification factor ``sqrt(det(J^T J))`` of the decoder at each z ``(n, K)``:
    ``(n,)``, J ``(P, K)`` = :func:`canonical_jacobian`. The volume of image space swept per
    unit volume of z: the product of the K singular values (:func:`singular_values`), so
    ((pixel-value units) per unit z)^K; for K = 1 the image's speed along z. 0 where the
    image does not depend on z."""
    return singular_values(model, z, batch).double().prod(-1).to(torch.float32)


def metric_grid(
    model: SpatialVAE, n: int = 10, z_data: np.ndarray | None = None, batch: int = 64
) -> tuple[Tensor, Tensor]:
    """The local metric over the grid of :func:`manifold` (K = 2: cell ``(r, c)`` is tile
    ``(r, c)``, z1 along the columns, z2 up the rows; K = 1: one row): ``(magnification
    (rows, n), singular values (rows, n, K))`` (:func:`local_metric`,
    :func:`singular_values`)."""
    z = manifold_z(model.config.zdim, n, z_data)
    rows, _, k = z.shape
    s = singular_values(model, z.reshape(-1, k), batch)
    return s.double().prod(-1).float().reshape(rows, n), s.reshape(rows, n, k)


def _decode_grid(model: SpatialVAE, z: Tensor) -> Tensor:
    """:func:`decode_mean` over a grid of z ``(rows, cols, K)``: ``(rows, cols, C, D, D)``."""
    d = model.config.image_size
    images = decode_mean(model, z.flatten(0, -2))
    return images.reshape(*z.shape[:-1], model.config.channels, d, d)


# ----------------------------------------------------------------------------- labels


def interpolation_labels(
    z_a: Tensor, z_b: Tensor, steps: int, observed: Sequence[Sequence[Sequence[str]]] = ()
) -> Labels:
    """Labels of :func:`interpolation`: each generated tile's z, the fraction t of the way
    from A to B above its column; ``observed[p]`` (two captions, for A and B of pair p: the
    particle's name and θ) under the observed ends when they are shown."""
    t = torch.linspace(0, 1, steps, dtype=z_a.dtype)
    z = (1 - t)[None, :, None] * z_a[:, None] + t[None, :, None] * z_b[:, None]
    tiles = [[z_lines(z[p, s]) for s in range(steps)] for p in range(len(z_a))]
    columns = [f"t {v:.2f}" for v in t.tolist()]
    if observed:
        tiles = [[list(observed[p][0]), *row, list(observed[p][1])] for p, row in enumerate(tiles)]
        columns = ["input", *columns, "input"]
    return Labels(columns=columns, tiles=tiles)


def manifold_labels(k: int, n: int, z_data: np.ndarray | None = None) -> Labels:
    """Labels of :func:`manifold`: z1 above each column; for 2-D z, z2 left of each row
    (largest at the top)."""
    grids = manifold_grids(k, n, z_data)
    columns = [f"z1 {v:+.2f}" for v in grids[0].tolist()]
    rows = [f"z2 {v:+.2f}" for v in grids[1].flip(0).tolist()] if k == 2 else []
    return Labels(columns=columns, rows=rows)


def traversal_labels(
    k: int,
    n: int = 9,
    span: float = 2.5,
    dims: list[int] | None = None,
    z_data: np.ndarray | None = None,
) -> Labels:
    """Labels of :func:`traversals`: the dimension left of each row, its value under each
    tile (the others are at their medians, or 0)."""
    dims = list(range(k)) if dims is None else dims
    z = traversal_z(k, n, span, dims, z_data)
    tiles = [[[f"{float(z[r, s, d]):+.2f}"] for s in range(n)] for r, d in enumerate(dims)]
    return Labels(rows=[f"z{d + 1}" for d in dims], tiles=tiles)


def prior_labels(k: int, rows: int = 8, cols: int = 8, seed: int = 0) -> Labels:
    """Labels of :func:`prior_samples`: each sample's z under it."""
    z = prior_z(k, rows, cols, seed).reshape(rows, cols, k)
    return Labels(tiles=[[z_lines(z[r, c]) for c in range(cols)] for r in range(rows)])


@dataclass
class PoseTraversal:
    """The poses of :func:`pose_traversals`: ``pose`` ``(rows, n, P)`` (model units, the layout
    of :class:`emvae.models.transform.DeformTransform`), each row's parameter name and each
    tile's value in user units (degrees, pixels, log-scale, shear)."""

    pose: Tensor
    names: list[str]
    values: list[list[str]]


def pose_traversal(model: SpatialVAE, n: int = 9, span: float = 2.0) -> PoseTraversal:
    """One row per pose parameter, the others at the identity: theta over a full turn; each
    shift over +-``span`` prior stds (pixels); log s_x, log s_y and the shear over the fitted
    prior's mean +- ``span`` of its stds; each spline control point's x and y displacement
    over +-``span`` prior stds (pixels)."""
    cfg = model.config
    h = (cfg.image_size - 1) / 2
    rows: list[tuple[str, int, np.ndarray, np.ndarray]] = []  # name, column, model, shown
    col = 0
    if cfg.rotation:
        deg = np.linspace(-180.0, 180.0, n, endpoint=False)
        rows.append(("theta", col, np.radians(-deg), deg))  # theta_deg = -theta
        col += 1
    if cfg.translation:
        px = np.linspace(-span, span, n) * cfg.shift_prior_px
        rows += [("dx px", col, px / h, px), ("dy px", col + 1, px / h, px)]
        col += 2
    if cfg.affine and model.affine_prior_mean is not None and model.affine_prior_logstd is not None:
        nu = model.affine_prior_mean.detach().cpu().double().numpy()
        tau = model.affine_prior_logstd.detach().cpu().double().exp().numpy()
        for j, name in enumerate(("log sx", "log sy", "shear")):
            v = nu[j] + np.linspace(-span, span, n) * tau[j]
            rows.append((name, col + j, v, v))
        col += 3
    if cfg.tps:
        px = np.linspace(-span, span, n) * cfg.tps_prior_px
        for k in range(cfg.tps_grid**2):
            for a, axis in enumerate("xy"):
                rows.append((f"d{k + 1}{axis} px", col + 2 * k + a, px / h, px))
    pose = torch.zeros(len(rows), n, model.transform.n_params)
    for r, (_, c, v, _) in enumerate(rows):
        pose[r, :, c] = torch.as_tensor(v, dtype=torch.float32)
    shown = [[f"{x:+.2f}" for x in row[3]] for row in rows]
    return PoseTraversal(pose, [row[0] for row in rows], shown)


@torch.no_grad()
def pose_traversals(
    model: SpatialVAE, n: int = 9, span: float = 2.0, z: Tensor | None = None
) -> Tensor:
    """The generator's mean along each pose parameter (:func:`pose_traversal`) at one z
    ``(K,)`` (0 when not given; e.g. the particles' median): ``(rows, n, C, D, D)``."""
    t = pose_traversal(model, n, span)
    rows = t.pose.shape[0]
    dev = next(model.parameters()).device
    k = model.config.zdim
    zz = torch.zeros(k) if z is None else torch.as_tensor(z, dtype=torch.float32)
    zs = zz.expand(rows * n, k).to(dev)
    params = model.decode(zs, t.pose.reshape(rows * n, -1).to(dev), full=True)
    mean = pixels_to_images(pixel_mean(model.config, params), model.config.image_size).cpu()
    return mean.reshape(rows, n, *mean.shape[1:])


def pose_traversal_labels(model: SpatialVAE, n: int = 9, span: float = 2.0) -> Labels:
    """Labels of :func:`pose_traversals`: the parameter left of each row, its value under
    each tile (degrees, pixels, log-scale or shear)."""
    t = pose_traversal(model, n, span)
    return Labels(rows=t.names, tiles=[[[v] for v in row] for row in t.values])


# ----------------------------------------------------------------------------- emvae montage


def write_montages(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    pairs: int = 4,
    named_pairs: Sequence[str] = (),
    steps: int = 8,
    grid: int = 10,
    samples: int = 8,
    seed: int = 0,
    gif_steps: int | None = 24,
    labels: bool = True,
    force: bool = False,
) -> tuple[list[Path], list[str]]:
    """Every montage of a run directory or checkpoint ``source`` into ``out`` (default
    ``RUN/montage``): interpolations between ``pairs`` random test particles (or the
    ``named_pairs``, ``"A,B"`` image names) in ``steps``; the manifold on a ``grid`` x ``grid``
    grid (1-D, 2-D z) or traversals; pose traversals (non-rigid poses); ``samples`` x
    ``samples`` prior samples (``seed``); a GIF of ``gif_steps`` steps along the particles'
    main axis of z (None: no GIF); ``labels``: text around the tiles.

    Returns (the files written, notes to show). Files of these names that emvae did not write
    are refused (:func:`emvae.safety.claim_outputs`); earlier montages are replaced in
    ``RUN/montage``, and in ``out`` only with ``force``. A model of K ``--classes`` gets one
    set per class, in ``classN`` folders (N 1-based, as the table's ``class``), each from
    that class's particles."""
    model, config, _ = load_model(source)
    owner = Run.of(source)
    run = None if owner is None else owner.path
    dest = Path(out) if out is not None else (run or Path(source).parent) / MONTAGE
    d = config.model.image_size
    for flag, n in (("--grid", grid ** min(config.model.zdim, 2)), ("--samples", samples**2)):
        # each tile as float64, and the picture drawn 2x2 per pixel (RGB), twice over
        need = 2 * n * (8 * config.model.channels * d * d + 3 * (2 * d + 4) ** 2)
        check_memory(need, f"montage {flag} {grid if flag == '--grid' else samples}")
    table = None if run is None or not config.model.zdim else Run.open(run).table()
    options = _MontageOptions(pairs, named_pairs, steps, grid, samples, seed, gif_steps, labels)
    n_classes = config.model.classes
    if n_classes == 1:
        return _write_set(model, run, table, dest, options, force or out is None, config.run_id)
    written: list[Path] = []
    notes: list[str] = []
    for c in range(n_classes):
        mine = None if table is None else table[table["class"] == c + 1]
        with model.rendering_class(c):
            sub = dest / f"class{c + 1}"
            files, said = _write_set(
                model, run, mine, sub, options, force or out is None, config.run_id
            )
        written += files
        notes += [f"class {c + 1}: {line}" for line in said]
    return written, notes


class _MontageOptions(NamedTuple):
    """:func:`write_montages`' choices, passed on to each set."""

    pairs: int
    named_pairs: Sequence[str]
    steps: int
    grid: int
    samples: int
    seed: int
    gif_steps: int | None
    labels: bool


def _write_set(
    model: SpatialVAE,
    run: Path | None,
    table: pd.DataFrame | None,
    dest: Path,
    o: _MontageOptions,
    replace: bool,
    run_id: str,
) -> tuple[list[Path], list[str]]:
    """One set of montages (:func:`write_montages`) into ``dest``, from ``table``'s particles
    (None: no run table)."""
    config = model.config
    claim_outputs(dest, page.MONTAGES, replace, "montages")
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    notes: list[str] = []
    try:
        k = config.zdim
        path_z = z_data = None
        if k == 0:
            canonical = prior_samples(model, 1, 1)
            written.append(tiles.save_png(canonical, dest / page.CANONICAL.name, 4))
        else:
            if table is not None and table.empty:
                table = None  # a class that holds no particle: the prior's montages only
            path_z = _interpolations(model, run, table, o, dest, written, notes)
            # grids span what the particles cover, not the prior
            z_data = None if table is None else table[latent_columns(table)].to_numpy(np.float64)
            if k <= 2:
                name, grid_z = page.MANIFOLD.name, manifold(model, o.grid, z_data)
                tags: Labels | None = manifold_labels(k, o.grid, z_data)
            else:
                name, grid_z = page.TRAVERSALS.name, traversals(model, z_data=z_data)
                tags = traversal_labels(k, z_data=z_data)
            written.append(tiles.save_png(grid_z, dest / name, labels=tags if o.labels else None))
        if config.pose != "rigid":  # each pose parameter, next to z's traversals
            z_mid = None if z_data is None else torch.from_numpy(np.median(z_data, 0)).float()
            tags = pose_traversal_labels(model) if o.labels else None
            pictures = pose_traversals(model, z=z_mid)
            written.append(tiles.save_png(pictures, dest / page.POSE_TRAVERSALS.name, labels=tags))
        if k:
            tags = prior_labels(k, o.samples, o.samples, o.seed) if o.labels else None
            pictures = prior_samples(model, o.samples, o.samples, o.seed)
            written.append(tiles.save_png(pictures, dest / page.PRIOR_SAMPLES.name, labels=tags))
        if k and o.gif_steps:
            if z_data is not None:  # along the particles' main axis of variation
                path_z = principal_path(z_data)
            elif path_z is None:  # no particles to walk between: along z1 of the prior
                path_z = torch.zeros(2, k)
                path_z[0, 0], path_z[1, 0] = -2.0, 2.0
            n = o.gif_steps
            t = torch.cat([torch.linspace(0, 1, n), torch.linspace(1, 0, n)[1:-1]])
            z = path_z[0] + t[:, None] * (path_z[1] - path_z[0])
            captions = [z_lines(v, most=2) for v in z.tolist()] if o.labels else None
            frames = decode_mean(model, z)
            gif = dest / page.LATENT_MOTION.name
            written.append(tiles.save_gif(frames, gif, positions=t.numpy(), captions=captions))
    finally:  # claim_outputs found no other files of these names: all are emvae's now
        record_outputs(dest, page.MONTAGES, run_id)
    return written, notes


def _interpolations(
    model: SpatialVAE,
    run: Path | None,
    table: pd.DataFrame | None,
    o: _MontageOptions,
    dest: Path,
    written: list[Path],
    notes: list[str],
) -> Tensor | None:
    """Write interpolation.png (into ``written``); return the first pair's z ``(2, K)``, or
    None without a run directory."""
    if run is None or table is None:
        if o.named_pairs:
            raise ConfigError("--pair needs the run directory (its particle table)")
        return None
    r = Run.open(run)
    zs = [f"z{i + 1}" for i in range(model.config.zdim)]
    keys = {image_key(n): i for i, n in enumerate(table["image"])}
    if o.named_pairs:
        chosen = []
        for text in o.named_pairs:
            a, sep, b = text.partition(",")
            if not sep:
                raise ConfigError(f"--pair {text!r}: give two image names as 'A,B'")
            for name in (a, b):
                if image_key(name) not in keys:
                    raise InputError(run, f"has no particle {name}")
            chosen.append((keys[image_key(a)], keys[image_key(b)]))
        idx = np.array(chosen)
    else:
        split = table["split"].to_numpy() if "split" in table else None
        pool = np.flatnonzero(split == "test") if split is not None else np.arange(0)
        if len(pool) < 2:
            pool = np.arange(len(table))
        rng = np.random.default_rng(o.seed)
        idx = np.array([rng.choice(pool, 2, replace=False) for _ in range(o.pairs)])
    z = torch.tensor(table[zs].to_numpy(np.float32))
    z_a, z_b = z[idx[:, 0]], z[idx[:, 1]]
    observed: Tensor | None
    try:  # the table's index: the run's images in order (after --ind)
        observed = r.particles().images(table.index.to_numpy()[idx.reshape(-1)])
        observed = observed.reshape(len(idx), 2, *observed.shape[1:])
    except (InputError, ConfigError) as e:
        notes.append(f"note: input images not shown ({e})")
        observed = None
    pictures = interpolation(model, z_a, z_b, observed, o.steps)
    if observed is not None and model.config.likelihood == "bernoulli":
        pictures = pictures.clamp(0, 1)
    ends = (0, -1) if observed is not None else ()
    names = None
    if o.labels and observed is not None:  # each observed end: its image number and theta
        names = [[_particle_lines(table.iloc[i]) for i in (a, b)] for a, b in idx.tolist()]
    tags = interpolation_labels(z_a, z_b, o.steps, names or ()) if o.labels else None
    path = dest / page.INTERPOLATION.name
    written.append(tiles.save_png(pictures, path, own_contrast=ends, labels=tags))
    return torch.stack([z_a[0], z_b[0]])


def _particle_lines(row: pd.Series) -> list[str]:
    """Caption of an observed particle: ``17@`` (its image number in its stack) and its θ."""
    return [image_label(row["image"]), f"θ {float(row['theta_deg']):+.0f}°"]
