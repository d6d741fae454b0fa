"""Synthetic particles with known poses: 2-D molecules of Gaussian blobs, each with one
conformational degree of freedom (:data:`OBJECTS`: a hinge, a clamp, a slider, and random
asymmetric objects drawn from a seed).

Used by the embedded example (``emvae fit --example``) and by the tests. Ground truth is given
in emvae's image-frame conventions (docs/conventions.md, "What the tables report (image
frame)"): ``theta_deg`` is the counter-clockwise
rotation of the particle relative to the canonical view (+y up), ``shift_x_px``/``shift_y_px``
where the canonical centre lands relative to the box centre.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import torch

from emvae.errors import ConfigError
from emvae.geometry import coordinate_grid, pixels_per_unit, wrap_degrees
from emvae.io.stack import image_name


@dataclass(frozen=True)
class BlobObject:
    """A 2-D particle of Gaussian blobs with one conformational degree of freedom.

    ``body`` ``(M, 4)`` and ``domain`` ``(L, 4)`` hold blobs as (x, y, sigma, amplitude) in
    coordinate units of the canonical view (+y up, 1 unit = (D - 1) / 2 px; docs/conventions.md,
    "Pixel coordinates (internal)").
    The body is rigid; from conformation 0 to 1 the domain turns counter-clockwise by
    ``turn_deg`` about ``pivot`` and moves by ``slide`` (both linear in the conformation).
    """

    name: str
    body: np.ndarray
    domain: np.ndarray
    pivot: tuple[float, float] = (0.0, 0.0)
    turn_deg: float = 0.0
    slide: tuple[float, float] = (0.0, 0.0)

    @property
    def key(self) -> tuple[object, ...]:
        """What identifies the molecule (the consensus frame is cached under it)."""
        return (self.name, self.body.tobytes(), self.domain.tobytes(), self.pivot, self.turn_deg,
                self.slide)  # fmt: skip

    def blobs(self, conformation: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Centres ``(n, M + L, 2)`` (coordinate units), sigmas ``(M + L,)`` and amplitudes
        ``(M + L,)`` for conformations ``(n,)`` in [0, 1]."""
        c = np.asarray(conformation, dtype=np.float64)[:, None]  # (n, 1)
        pivot = np.asarray(self.pivot, dtype=np.float64)
        a = np.radians(self.turn_deg) * c  # (n, 1)
        rel = self.domain[None, :, :2] - pivot  # (1, L, 2)
        cos, sin = np.cos(a), np.sin(a)
        turned = np.stack(
            [cos * rel[..., 0] - sin * rel[..., 1], sin * rel[..., 0] + cos * rel[..., 1]], -1
        )
        domain = pivot + turned + c[..., None] * np.asarray(self.slide, dtype=np.float64)
        body = np.broadcast_to(self.body[:, :2], (len(c), len(self.body), 2))
        centres = np.concatenate([body, domain], axis=1)
        sigmas = np.concatenate([self.body[:, 2], self.domain[:, 2]])
        amps = np.concatenate([self.body[:, 3], self.domain[:, 3]])
        return centres, sigmas, amps


class Blobs(Protocol):
    """What the consensus frame needs of a molecule (:class:`BlobObject`, and the projected
    atomic models of :mod:`emvae.structure`)."""

    @property
    def key(self) -> tuple[object, ...]:
        """A hashable identity of the molecule (its frame is cached under it)."""
        ...

    def blobs(self, conformation: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Centres ``(n, M, 2)`` (coordinate units), sigmas ``(M,)`` and amplitudes ``(M,)`` of
        the molecule's M blobs (or atoms) for conformations ``(n,)`` in [0, 1]."""
        ...


def _blobs(*rows: tuple[float, float, float, float]) -> np.ndarray:
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


# hinge: a heavy head on the right and two lighter lobes (no rotation maps the body onto
# itself); an arm of three blobs on the lower left swings from pointing left (conformation 0)
# to pointing down (1) about the hinge at (-0.22, -0.14).
_HINGE = (-0.22, -0.14)
HINGE = BlobObject(
    "hinge",
    body=_blobs((0.20, 0.00, 0.16, 1.3), (-0.08, 0.14, 0.10, 0.8), (-0.10, -0.12, 0.09, 0.6)),
    domain=_blobs(*((_HINGE[0] - r, _HINGE[1], 0.07, 0.8) for r in (0.12, 0.24, 0.36))),
    pivot=_HINGE,
    turn_deg=90.0,
)
# clamp: a C-shaped body of five blobs of unequal weight open to the right, and a lid of two
# blobs hinged at the upper tip that closes the C by 70 degrees (clockwise).
CLAMP = BlobObject(
    "clamp",
    body=_blobs(
        (0.10, 0.26, 0.08, 0.9),
        (-0.12, 0.22, 0.09, 1.0),
        (-0.26, 0.02, 0.10, 1.2),
        (-0.14, -0.20, 0.09, 0.9),
        (0.08, -0.26, 0.08, 0.6),
    ),
    domain=_blobs((0.24, 0.38, 0.07, 0.8), (0.38, 0.48, 0.07, 0.7)),
    pivot=(0.12, 0.28),
    turn_deg=-70.0,
)
# slide: an L-shaped body and a two-blob domain that slides along its long arm.
SLIDE = BlobObject(
    "slide",
    body=_blobs(
        (-0.30, -0.18, 0.09, 1.1),
        (-0.08, -0.18, 0.09, 1.0),
        (0.14, -0.18, 0.09, 0.9),
        (-0.30, 0.06, 0.08, 0.8),
    ),
    domain=_blobs((-0.26, 0.10, 0.07, 0.9), (-0.14, 0.10, 0.07, 0.7)),
    slide=(0.40, 0.0),
)
OBJECTS = ("hinge", "clamp", "slide", "random")


def random_object(seed: int = 0) -> BlobObject:
    """A random asymmetric particle drawn from ``seed``: a body of 3-5 blobs of unequal size
    and weight, and a chain of 2-3 blobs attached at the body's rim that either swings
    through 60-120 degrees about its attachment point (two draws in three) or slides 0.2-0.3
    units. Centred on the mean conformation's centre of mass and kept within radius 0.75."""
    rng = np.random.default_rng([seed, 2024])
    m = int(rng.integers(3, 6))
    radius = rng.uniform(0.08, 0.32, m)
    angle = rng.uniform(0, 2 * np.pi, m)
    body = np.stack(
        [
            radius * np.cos(angle),
            radius * np.sin(angle),
            rng.uniform(0.07, 0.13, m),
            rng.uniform(0.5, 1.3, m),
        ],
        1,
    )
    out_angle = rng.uniform(0, 2 * np.pi)
    direction = np.array([np.cos(out_angle), np.sin(out_angle)])
    pivot = direction * (np.max(np.hypot(body[:, 0], body[:, 1])) + 0.06)
    links = int(rng.integers(2, 4))
    spacing = rng.uniform(0.12, 0.15)
    chain = pivot + direction * spacing * np.arange(1, links + 1)[:, None]
    domain = np.column_stack([chain, rng.uniform(0.07, 0.09, links), rng.uniform(0.8, 1.2, links)])
    if rng.uniform() < 2 / 3:
        turn = float(rng.uniform(60, 120) * rng.choice([-1, 1]))
        obj = BlobObject(f"random{seed}", body, domain, tuple(pivot), turn)
    else:
        normal = np.array([-direction[1], direction[0]]) * rng.choice([-1, 1])
        obj = BlobObject(f"random{seed}", body, domain, slide=tuple(normal * rng.uniform(0.2, 0.3)))
    # centre of mass of the mean conformation at the origin; whole object within radius 0.75
    centres, sigmas, amps = obj.blobs(np.array([0.0, 0.5, 1.0]))
    weight = amps * sigmas**2
    com = (centres[1] * weight[:, None]).sum(0) / weight.sum()
    extent = np.max(np.hypot(*(centres - com).reshape(-1, 2).T) + 2 * np.tile(sigmas, 3))
    scale = min(1.0, 0.75 / extent)
    return BlobObject(
        obj.name,
        np.column_stack([(body[:, :2] - com) * scale, body[:, 2:]]),
        np.column_stack([(domain[:, :2] - com) * scale, domain[:, 2:]]),
        tuple((np.asarray(obj.pivot) - com) * scale),
        obj.turn_deg,
        tuple(np.asarray(obj.slide) * scale),
    )


def get_object(name: str, seed: int = 0) -> BlobObject:
    """One of :data:`OBJECTS` by name; ``random`` is drawn from ``seed``."""
    fixed = {"hinge": HINGE, "clamp": CLAMP, "slide": SLIDE}
    if name in fixed:
        return fixed[name]
    if name == "random":
        return random_object(seed)
    raise ConfigError(f"unknown object {name!r}; choose one of {', '.join(OBJECTS)}")


def hinge_blobs(conformation: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Blobs of the hinge molecule (:data:`HINGE`) for each conformation in [0, 1]: the arm
    on the lower left swings from pointing left (conformation 0) to down (1)."""
    return HINGE.blobs(conformation)


def render_blobs(
    centres: np.ndarray,
    sigmas: np.ndarray,
    amps: np.ndarray,
    theta_deg: np.ndarray,
    shift_px: np.ndarray,
    size: int,
    chunk: int = 512,
    stretch: np.ndarray | None = None,
    bend: np.ndarray | None = None,
) -> np.ndarray:
    """Render blob molecules posed in the image frame.

    centres ``(n, M, 2)`` in the canonical frame; the particle is rotated counter-clockwise by
    ``theta_deg`` ``(n,)`` about the box centre and its centre moved to ``shift_px`` ``(n, 2)``.
    ``stretch`` ``(n, 2)``: before that, the whole molecule (blobs included) is magnified by
    these factors along its own x and y axes about its centre (the affine pose's s_x, s_y).
    ``bend`` ``(n,)``: before the stretch, each point u of the molecule (coordinate units) is
    moved to ``u + (0, bend * u_x^2)``: a bend b lifts both ends by ``b * x^2`` (b > 0: up in
    the canonical frame), a warp no affine pose can take and a thin-plate spline can.
    Without either, the blobs are placed in the image; with them, every pixel is taken back to
    the canonical frame instead (shift, then the turn, the stretch and the bend undone; the
    bend's inverse is exact, since it keeps x) and the blobs are evaluated there.
    Returns float32 images ``(n, size, size)``, row 0 at the top.
    """
    grid = coordinate_grid(size, size, dtype=torch.float64)  # (N, 2)
    h = pixels_per_unit(size)
    out = np.empty((len(centres), size, size), dtype=np.float32)
    sig = torch.as_tensor(sigmas)
    amp = torch.as_tensor(amps)
    for s in range(0, len(centres), chunk):
        c = torch.as_tensor(np.ascontiguousarray(centres[s : s + chunk]))
        t = torch.deg2rad(torch.as_tensor(theta_deg[s : s + chunk], dtype=torch.float64))
        cos, sin = torch.cos(t)[:, None], torch.sin(t)[:, None]
        u = torch.as_tensor(shift_px[s : s + chunk])[:, None, :] / h
        if stretch is None and bend is None:
            placed = torch.stack(
                [cos * c[..., 0] - sin * c[..., 1], sin * c[..., 0] + cos * c[..., 1]], -1
            )
            d2 = ((grid[None, :, None, :] - (placed + u)[:, None, :, :]) ** 2).sum(-1)  # (b, N, M)
        else:
            p = grid[None] - u  # (b, N, 2)
            v = torch.stack(
                [cos * p[..., 0] + sin * p[..., 1], -sin * p[..., 0] + cos * p[..., 1]], -1
            )
            if stretch is not None:
                v = v / torch.as_tensor(stretch[s : s + chunk])[:, None, :]
            if bend is not None:
                b = torch.as_tensor(bend[s : s + chunk], dtype=torch.float64)[:, None]
                v = torch.stack([v[..., 0], v[..., 1] - b * v[..., 0] ** 2], -1)
            d2 = ((v[:, :, None, :] - c[:, None, :, :]) ** 2).sum(-1)  # (b, N, M)
        img = (amp * torch.exp(-d2 / (2 * sig**2))).sum(-1)
        out[s : s + chunk] = img.reshape(-1, size, size).numpy()
    return out


def draw_stretch(n: int, scale_std: float, stretch_std: float, seed: int) -> np.ndarray | None:
    """Per-particle magnifications ``(n, 2)`` along the molecule's own x and y axes:
    ``exp(m) * (exp(t), exp(-t))`` with ``m ~ N(0, scale_std^2)`` (overall size) and
    ``t ~ N(0, stretch_std^2)`` (axis ratio); None when both are 0. Drawn from their own
    generator, so the poses, conformations and noise stay those of the same seed without."""
    if scale_std <= 0 and stretch_std <= 0:
        return None
    rng = np.random.default_rng([seed, 22])
    m = rng.normal(0.0, scale_std, n) if scale_std > 0 else np.zeros(n)
    t = rng.normal(0.0, stretch_std, n) if stretch_std > 0 else np.zeros(n)
    return np.exp(np.stack([m + t, m - t], 1))


# --- mixtures: several classes and junk (``emvae simulate --classes/--junk``) ---------------

#: The kinds of junk :func:`draw_mixture` draws (``emvae simulate --junk-kinds``): a box of
#: noise only, broad Gaussian blobs of ice, a particle cut in two (a fragment), and a particle
#: with a second one overlapping the box (a neighbour).
JUNK_KINDS = ("noise", "ice", "fragment", "neighbour")
#: Blobs of ice per image (at most; each present with its own draw).
ICE_BLOBS = 3
#: Where the blobs a fragment loses are moved (coordinate units): far enough that they add 0.
_GONE = 1.0e4

Render = Callable[
    [int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, "np.ndarray | None"],
    np.ndarray,
]
Centres = Callable[
    [int, np.ndarray, "np.ndarray | None"], tuple[np.ndarray, np.ndarray, np.ndarray]
]


def parse_junk_kinds(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"noise,ice"`` (or a sequence of names) -> ``("noise", "ice")``, each one of
    :data:`JUNK_KINDS` (``neighbor`` is read as ``neighbour``), duplicates dropped; one line
    (:class:`ConfigError`) for an unknown or empty list."""
    items = text.split(",") if isinstance(text, str) else list(text)
    names = [s.strip().lower().replace("neighbor", "neighbour") for s in items if s.strip()]
    bad = [s for s in names if s not in JUNK_KINDS]
    if bad or not names:
        raise ConfigError(
            f"--junk-kinds {','.join(items)!r}: give one or more of {','.join(JUNK_KINDS)}"
        )
    return tuple(dict.fromkeys(names))


def parse_weights(text: str | None, classes: int) -> tuple[float, ...] | None:
    """``--class-weights "0.5,0.3,0.2"`` -> the ``classes`` shares (normalised later); None
    stays None (equal shares). One line (:class:`ConfigError`) for a wrong count, a negative
    share or shares that sum to 0."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != classes or not all(v >= 0 for v in values) or not sum(values) > 0:
        raise ConfigError(
            f"--class-weights {text!r}: give {classes} non-negative shares (one per class), "
            "comma-separated"
        )
    return values


def class_objects(name: str, seed: int, classes: int) -> list[BlobObject]:
    """The molecules of ``classes`` classes of 2-D blob molecules, class 0 being ``name``
    (:func:`get_object`): for a fixed molecule the other fixed ones follow in
    :data:`OBJECTS` order (hinge, clamp, slide), then random molecules drawn from ``seed``,
    ``seed + 1``, ...; for ``random``, random molecules from ``seed``, ``seed + 1``, ..."""
    if classes < 1:
        raise ConfigError(f"--classes {classes}: need at least 1")
    first = get_object(name, seed)
    fixed = [get_object(k) for k in OBJECTS[:-1] if k != name] if name != "random" else []
    out = [first, *fixed][:classes]
    start = seed + 1 if name == "random" else seed
    out += [random_object(start + i) for i in range(classes - len(out))]
    return out


@dataclass(frozen=True)
class MixtureDraws:
    """What each of ``n`` images of a mixture holds (:func:`draw_mixture`).

    ``label`` ``(n,)`` int: the class (0 .. K - 1) of the molecule centred in the box, -1
    where there is none (noise, ice). ``kind`` ``(n,)`` str: ``""`` for a particle, else the
    junk kind (:data:`JUNK_KINDS`). Fragments: ``cut_normal`` ``(n, 2)`` unit vectors in the
    molecule's canonical frame and ``cut_fraction`` ``(n,)`` in (0, 1): the molecule loses
    that share of its blobs (atoms), those lying furthest along ``-cut_normal`` (a straight
    cut). Neighbours: the second particle's class ``neighbour_label`` ``(n,)``, conformation
    ``neighbour_conf`` ``(n,)``, turn ``neighbour_theta`` ``(n,)`` degrees and centre
    ``neighbour_shift`` ``(n, 2)`` px from the box centre (+y up). Ice: ``ice_centres``
    ``(n, ICE_BLOBS, 2)`` and ``ice_sigmas`` ``(n, ICE_BLOBS)`` coordinate units,
    ``ice_amps`` ``(n, ICE_BLOBS)`` relative to the particles' typical peak (0 for an absent
    blob). Entries an image's kind does not use are drawn anyway (and ignored). ``kinds``: the
    junk kinds asked for (empty without junk)."""

    label: np.ndarray
    kind: np.ndarray
    cut_normal: np.ndarray
    cut_fraction: np.ndarray
    neighbour_label: np.ndarray
    neighbour_conf: np.ndarray
    neighbour_theta: np.ndarray
    neighbour_shift: np.ndarray
    ice_centres: np.ndarray
    ice_sigmas: np.ndarray
    ice_amps: np.ndarray
    kinds: tuple[str, ...] = ()

    @property
    def real(self) -> np.ndarray:
        """``(n,)`` bool: the image is a particle (not junk)."""
        return np.asarray(self.kind == "")


def _split(total: int, parts: int) -> np.ndarray:
    """``total`` split into ``parts`` counts as equal as possible (the first ones larger)."""
    return np.full(parts, total // parts) + (np.arange(parts) < total % parts)


def draw_mixture(
    n: int,
    classes: int,
    junk: float,
    kinds: Sequence[str],
    seed: int,
    size: int,
    weights: Sequence[float] | None = None,
) -> MixtureDraws:
    """Which of ``n`` images holds which class or junk, and each junk image's parameters.

    Exact counts in a random order: ``round(junk * n)`` junk images (at most n - 1), split
    equally between ``kinds``, and the others split between the ``classes`` by ``weights``
    (equal by default; largest remainders for the rounding). Fragments and neighbours are cut
    from or centred on a particle of a class drawn uniformly. Neighbours: the second
    particle's centre lies 0.6-0.9 half-boxes from the box centre in a uniform direction, so it
    overlaps the box's edge and the centred particle. Ice: 1-3 blobs (each present with
    probability 2/3, at least one), centres uniform within 0.8 half-boxes, widths 0.15-0.4
    half-boxes, heights 0.3-1 of the particles' typical peak. Drawn from their own generator
    (seeded ``[seed, 26]``), so the particles' poses, conformations and noise are those of the
    same seed without a mixture. ``size`` (px) converts the neighbours' positions to pixels."""
    if classes < 1:
        raise ConfigError(f"--classes {classes}: need at least 1")
    if not 0.0 <= junk < 1.0:
        raise ConfigError(f"--junk {junk:g}: give the junk fraction in [0, 1)")
    kinds = parse_junk_kinds(list(kinds)) if junk > 0 else ()
    rng = np.random.default_rng([seed, 26])
    n_junk = min(int(round(junk * n)), n - 1) if junk > 0 else 0
    w = np.ones(classes) if weights is None else np.asarray(weights, dtype=np.float64)
    if len(w) != classes or not (w >= 0).all() or not w.sum() > 0:
        raise ConfigError(f"need {classes} non-negative class weights, got {list(w)}")
    quota = (n - n_junk) * w / w.sum()
    counts = np.floor(quota).astype(np.int64)
    extra = np.argsort(-(quota - counts), kind="stable")[: (n - n_junk) - counts.sum()]
    counts[extra] += 1
    label = np.repeat(np.arange(classes), counts)
    kind = np.array([""] * (n - n_junk), dtype=object)
    if n_junk:
        per_kind = _split(n_junk, len(kinds))
        kind = np.concatenate([kind, np.repeat(np.array(kinds, dtype=object), per_kind)])
        label = np.concatenate([label, np.full(n_junk, -1)])
    order = rng.permutation(n)
    label, kind = label[order], kind[order]
    carried = (kind == "fragment") | (kind == "neighbour")
    label[carried] = rng.integers(0, classes, int(carried.sum()))
    angle = rng.uniform(0.0, 2 * np.pi, n)
    where = rng.uniform(0.0, 2 * np.pi, n)
    ice_on = rng.uniform(size=(n, ICE_BLOBS)) < 2 / 3
    ice_on[np.arange(n), rng.integers(0, ICE_BLOBS, n)] = True
    return MixtureDraws(
        label=label.astype(np.int64),
        kind=kind,
        cut_normal=np.stack([np.cos(angle), np.sin(angle)], 1),
        cut_fraction=rng.uniform(0.3, 0.7, n),
        neighbour_label=rng.integers(0, classes, n),
        neighbour_conf=rng.uniform(0.0, 1.0, n),
        neighbour_theta=rng.uniform(-180.0, 180.0, n),
        neighbour_shift=np.stack([np.cos(where), np.sin(where)], 1)
        * rng.uniform(0.6, 0.9, n)[:, None]
        * pixels_per_unit(size),
        ice_centres=rng.uniform(-0.8, 0.8, (n, ICE_BLOBS, 2)),
        ice_sigmas=rng.uniform(0.15, 0.4, (n, ICE_BLOBS)),
        ice_amps=rng.uniform(0.3, 1.0, (n, ICE_BLOBS)) * ice_on,
        kinds=kinds if n_junk else (),
    )


def cut_blobs(centres: np.ndarray, normal: np.ndarray, fraction: np.ndarray) -> np.ndarray:
    """Fragments: of each molecule's blobs ``centres`` ``(m, M, 2)`` (canonical frame,
    coordinate units), the ``fraction`` ``(m,)`` (at least one, never all) lying furthest along
    ``-normal`` ``(m, 2)`` are removed (moved far out of the box, where they add nothing):
    the molecule cut by a straight line across ``normal``. Returns a copy."""
    m, count = centres.shape[:2]
    along = np.einsum("mkd,md->mk", centres, normal)  # (m, M)
    rank = np.argsort(np.argsort(along, axis=1, kind="stable"), axis=1, kind="stable")
    lose = np.clip(np.round(fraction * count), 1, max(1, count - 1)).astype(np.int64)
    out = np.array(centres, dtype=np.float64, copy=True)
    out[rank < lose[:, None]] = _GONE
    return out


def render_gaussians(
    centres: np.ndarray, sigmas: np.ndarray, amps: np.ndarray, size: int, chunk: int = 512
) -> np.ndarray:
    """Images ``(n, size, size)`` float32 (row 0 at the top) of isotropic Gaussians, each
    image its own: centres ``(n, M, 2)``, widths ``(n, M)`` (coordinate units, +y up) and
    peak heights ``(n, M)``."""
    grid = coordinate_grid(size, size, dtype=torch.float64)  # (N, 2)
    out = np.empty((len(centres), size, size), dtype=np.float32)
    for s in range(0, len(centres), chunk):
        c = torch.as_tensor(np.ascontiguousarray(centres[s : s + chunk]), dtype=torch.float64)
        sig = torch.as_tensor(sigmas[s : s + chunk], dtype=torch.float64)[:, None, :]
        amp = torch.as_tensor(amps[s : s + chunk], dtype=torch.float64)[:, None, :]
        d2 = ((grid[None, :, None, :] - c[:, None, :, :]) ** 2).sum(-1)  # (b, N, M)
        img = (amp * torch.exp(-d2 / (2 * sig**2))).sum(-1)
        out[s : s + chunk] = img.reshape(-1, size, size).numpy()
    return out


def render_mixture(
    classes: int,
    draws: MixtureDraws,
    index: np.ndarray,
    conformation: np.ndarray,
    theta_deg: np.ndarray,
    shift_px: np.ndarray,
    size: int,
    centres_of: Centres,
    render: Render,
) -> np.ndarray:
    """Clean images ``(len(index), size, size)`` float32 of the mixture's images ``index``
    ``(m,)`` (rows of ``draws``; batched per class, no loop over images).

    Image i holds class ``label[i]``'s molecule at conformation ``conformation[i]``, turned
    by ``theta_deg[i]`` and centred at ``shift_px[i]`` (all ``(n,)``/``(n, 2)`` over the whole
    stack), cut for a fragment; a neighbour adds the second particle; ice is
    :func:`render_gaussians` scaled by the particles' typical peak (the mean over classes of
    the brightest pixel of conformation 0.5 unturned); noise is 0.
    ``centres_of(k, conformation (m,), rows (m,) | None)`` gives class k's blobs
    (:meth:`BlobObject.blobs`; ``rows``: the images, for per-image extras such as a tilt, None
    for neighbours); ``render(k, centres, sigmas, amps, theta (m,), shift (m, 2), rows | None)``
    draws them (:func:`render_blobs`, :func:`emvae.structure.render_separable`)."""
    index = np.asarray(index, dtype=np.int64)
    out = np.zeros((len(index), size, size), dtype=np.float32)
    label, kind = draws.label[index], draws.kind[index]
    for k in range(classes):
        sel = np.flatnonzero(label == k)
        if len(sel) == 0:
            continue
        rows = index[sel]
        c, s, a = centres_of(k, conformation[rows], rows)
        frag = kind[sel] == "fragment"
        if frag.any():
            c = np.array(c, dtype=np.float64, copy=True)
            c[frag] = cut_blobs(c[frag], draws.cut_normal[rows[frag]],
                                draws.cut_fraction[rows[frag]])  # fmt: skip
        out[sel] = render(k, c, s, a, theta_deg[rows], shift_px[rows], rows)
    for k in range(classes):
        sel = np.flatnonzero((kind == "neighbour") & (draws.neighbour_label[index] == k))
        if len(sel) == 0:
            continue
        rows = index[sel]
        c, s, a = centres_of(k, draws.neighbour_conf[rows], None)
        out[sel] += render(k, c, s, a, draws.neighbour_theta[rows],
                           draws.neighbour_shift[rows], None)  # fmt: skip
    ice = np.flatnonzero(kind == "ice")
    if len(ice):
        one, zero = np.array([0.5]), np.zeros(1)
        peak = np.mean(
            [render(k, *centres_of(k, one, None), zero, zero[:, None] * [0, 0], None).max()
             for k in range(classes)]
        )  # fmt: skip
        rows = index[ice]
        out[ice] = render_gaussians(draws.ice_centres[rows], draws.ice_sigmas[rows],
                                    draws.ice_amps[rows] * peak, size)  # fmt: skip
    return out


def mixture_truth(draws: MixtureDraws, truth: pd.DataFrame) -> pd.DataFrame:
    """``truth`` (one row per image, the columns of :func:`truth_table`, poses of each image's
    centred molecule) with the mixture's columns: ``class`` (the centred molecule's class,
    0 .. K - 1; -1 for noise and ice, whose pose and conformation columns are then empty),
    ``junk`` (0 or 1) and ``junk_kind`` (``none`` for a particle); when the junk may hold
    neighbours (``draws.kinds``), ``neighbour_x_px``, ``neighbour_y_px``: where a neighbour's
    second particle is centred (px from the box centre, +y up; empty for other images)."""
    out = truth.copy()
    none = draws.label < 0
    posed = [c for c in out.columns if c != "image"]
    out.loc[none, posed] = np.nan
    out["class"] = draws.label
    out["junk"] = (~draws.real).astype(np.int64)
    out["junk_kind"] = np.where(draws.real, "none", draws.kind.astype(str))
    if "neighbour" in draws.kinds:
        nb = draws.kind == "neighbour"
        out["neighbour_x_px"] = np.where(nb, draws.neighbour_shift[:, 0], np.nan)
        out["neighbour_y_px"] = np.where(nb, draws.neighbour_shift[:, 1], np.nan)
    return out


def simulate_particles(
    n: int,
    size: int = 40,
    snr: float = 1.0,
    shift_std_px: float = 2.0,
    seed: int = 0,
    stack_name: str = "particles.mrcs",
    obj: BlobObject | Sequence[BlobObject] = HINGE,
    scale_std: float = 0.0,
    stretch_std: float = 0.0,
    bend_std: float = 0.0,
    junk: float = 0.0,
    junk_kinds: Sequence[str] = JUNK_KINDS,
    class_weights: Sequence[float] | None = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """``n`` noisy particles of ``obj`` with uniform conformations in [0, 1], uniform
    rotations and Gaussian shifts.

    SNR is the variance of the clean images (all pixels of the stack) over the noise variance;
    ``snr=inf`` gives clean images. Returns images ``(n, size, size)`` float32 and the truth
    table: ``image``; ``theta_deg``, ``shift_x_px``, ``shift_y_px``, the pose relative to the
    consensus view (:func:`consensus_frame`: what an ideal intensity-based aligner reports, and
    what emvae is compared with); ``conformation``; and ``theta_body_deg``,
    ``shift_body_x_px``, ``shift_body_y_px``, the pose the particle was drawn with (the body's
    frame: the rotation and shift of the rigid part, which for a flexible particle no
    intensity-based method can tell from a conformation-dependent turn; docs/benchmarks.md).

    ``scale_std``, ``stretch_std``: each molecule is also magnified about its centre, along its
    own axes, by :func:`draw_stretch`'s factors; ``truth`` then has ``scale_x``, ``scale_y``
    (what ``--pose affine`` reports; the consensus shift is moved with the stretch, the
    consensus turn is the unstretched molecule's). ``bend_std``: each molecule is also bent
    (:func:`render_blobs`' ``bend``, b ~ N(0, bend_std^2), drawn from its own generator);
    ``truth`` then has ``bend`` (the consensus pose is the unbent molecule's).

    A mixture: ``obj`` a sequence of K molecules (class k is ``obj[k]``; :func:`class_objects`)
    and/or ``junk`` > 0, the fraction of junk images of ``junk_kinds`` (:func:`draw_mixture`,
    which also takes ``class_weights``; :func:`render_mixture`). SNR is then the variance of
    the real particles' clean images (junk excluded) over the noise variance, and every image,
    junk included, gets that noise. ``truth`` then has :func:`mixture_truth`'s columns
    (``class``, ``junk``, ``junk_kind``, and ``neighbour_x_px``, ``neighbour_y_px`` when
    neighbours may occur). Particles keep the poses, conformations and noise the same seed
    gives without a mixture; with one molecule and no junk the result is exactly that.
    """
    objects = [obj] if isinstance(obj, BlobObject) else list(obj)
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.0, 1.0, n)
    theta = rng.uniform(-180.0, 180.0, n)
    shift = rng.normal(0.0, shift_std_px, (n, 2)) if shift_std_px > 0 else np.zeros((n, 2))
    stretch = draw_stretch(n, scale_std, stretch_std, seed)
    bend = np.random.default_rng([seed, 23]).normal(0.0, bend_std, n) if bend_std > 0 else None
    draws = None
    if len(objects) == 1 and junk == 0:
        centres, sigmas, amps = objects[0].blobs(conf)
        clean = render_blobs(centres, sigmas, amps, theta, shift, size, stretch=stretch, bend=bend)
        signal = clean
    else:
        draws = draw_mixture(n, len(objects), junk, junk_kinds, seed, size, class_weights)

        def centres_of(
            k: int, c: np.ndarray, rows: np.ndarray | None
        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            return objects[k].blobs(c)

        def render(
            k: int, c: np.ndarray, s: np.ndarray, a: np.ndarray, t: np.ndarray, u: np.ndarray,
            rows: np.ndarray | None,
        ) -> np.ndarray:  # fmt: skip
            st = None if stretch is None or rows is None else stretch[rows]
            bd = None if bend is None or rows is None else bend[rows]
            return render_blobs(c, s, a, t, u, size, stretch=st, bend=bd)

        clean = render_mixture(
            len(objects), draws, np.arange(n), conf, theta, shift, size, centres_of, render
        )
        signal = clean[draws.real]
    if np.isfinite(snr):
        noise_std = float(np.sqrt(signal.var() / snr))
        images = clean + rng.normal(0.0, noise_std, clean.shape).astype(np.float32)
    else:
        images = clean
    theta_c, shift_c = np.full(n, np.nan), np.full((n, 2), np.nan)  # NaN: no particle (junk)
    for k, o in enumerate(objects):
        at = np.full(n, True) if draws is None else draws.label == k
        theta_c[at], shift_c[at] = consensus_pose(
            o, conf[at], theta[at], shift[at], size, None if stretch is None else stretch[at]
        )
    truth = truth_table(stack_name, theta_c, shift_c, conf, theta, shift)
    if stretch is not None:
        truth["scale_x"], truth["scale_y"] = stretch[:, 0], stretch[:, 1]
    if bend is not None:
        truth["bend"] = bend
    if draws is not None:
        truth = mixture_truth(draws, truth)
    return images.astype(np.float32), truth


def truth_table(
    stack_name: str,
    theta_deg: np.ndarray,
    shift_px: np.ndarray,
    conformation: np.ndarray,
    theta_body_deg: np.ndarray,
    shift_body_px: np.ndarray,
) -> pd.DataFrame:
    """truth.csv's common columns, one row per image ``k@stack_name`` (k from 1): the
    consensus-frame pose (``theta_deg`` ``(n,)``, ``shift_px`` ``(n, 2)``), the conformation
    and the body-frame pose it was drawn with."""
    return pd.DataFrame(
        {
            "image": [image_name(k, stack_name) for k in range(1, len(theta_deg) + 1)],
            "theta_deg": theta_deg,
            "shift_x_px": shift_px[:, 0],
            "shift_y_px": shift_px[:, 1],
            "conformation": conformation,
            "theta_body_deg": theta_body_deg,
            "shift_body_x_px": shift_body_px[:, 0],
            "shift_body_y_px": shift_body_px[:, 1],
        }
    )


def consensus_pose(
    obj: Blobs,
    conformation: np.ndarray,
    theta_deg: np.ndarray,
    shift_px: np.ndarray,
    size: int,
    stretch: np.ndarray | None = None,
    frame: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Body-frame poses -> poses relative to the consensus view (:func:`consensus_frame`).

    A particle of conformation c drawn turned by theta and moved to s is the consensus view
    turned by ``theta + turn(c)`` and moved to ``s + h rot(theta) shift(c)`` (h = (D - 1) / 2
    px per unit). theta_deg ``(n,)``, shift_px ``(n, 2)``; returns the same shapes, theta
    wrapped to [-180, 180). ``stretch`` ``(n, 2)``: the molecules were magnified along their
    own axes (:func:`render_blobs`), which moves the consensus centre with them. ``frame``:
    :func:`consensus_frame`'s result to use (default: computed once per object and process)."""
    confs, turn, shift = _consensus_table(obj) if frame is None else frame
    c = np.asarray(conformation, dtype=np.float64)
    a = np.radians(theta_deg)
    u = np.stack([np.interp(c, confs, shift[:, k]) for k in range(2)], 1) * pixels_per_unit(size)
    if stretch is not None:
        u = u * stretch
    rotated = np.stack(
        [np.cos(a) * u[:, 0] - np.sin(a) * u[:, 1], np.sin(a) * u[:, 0] + np.cos(a) * u[:, 1]], 1
    )
    theta_c = wrap_degrees(theta_deg + np.interp(c, confs, turn))
    return theta_c, shift_px + rotated


_CONSENSUS: dict[tuple[object, ...], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def _consensus_table(obj: Blobs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`consensus_frame` of ``obj``, computed once per object and process."""
    key = obj.key
    if key not in _CONSENSUS:
        _CONSENSUS[key] = consensus_frame(obj)
    return _CONSENSUS[key]


def ctf_2d(
    size: int,
    apix: float,
    defocus_um: float,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
) -> np.ndarray:
    """Isotropic CTF on the ``(size, size)`` FFT grid (numpy order, zero frequency at [0, 0])
    in RELION's convention (:mod:`emvae.ctf`; +amplitude contrast at zero frequency)."""
    from emvae.ctf import COLUMNS, ctf_grid

    row = dict.fromkeys(COLUMNS, 0.0)
    row.update(
        defocus_u_A=defocus_um * 1e4,
        defocus_v_A=defocus_um * 1e4,
        voltage_kV=voltage_kv,
        cs_mm=cs_mm,
        amplitude_contrast=amplitude_contrast,
        scale=1.0,
        apix_A=apix,
    )
    params = torch.tensor([[row[k] for k in COLUMNS]], dtype=torch.float64)
    half = ctf_grid(params, size)[0].numpy()  # (size, size // 2 + 1): columns 0 .. size / 2
    full = np.empty((size, size))
    full[:, : half.shape[1]] = half
    neg = np.arange(half.shape[1], size)  # negative column frequencies: CTF(-k) = CTF(k)
    full[:, neg] = half[(-np.arange(size)) % size][:, size - neg]
    return full


def draw_ctf(
    n: int,
    seed: int,
    defocus_um: float | tuple[float, float],
    apix: float,
    astigmatism_um: float = 0.0,
) -> tuple[torch.Tensor, pd.DataFrame, np.random.Generator]:
    """Each of ``n`` particles' CTF (:func:`write_simulation`): defocus ``defocus_um`` (one
    value, or ``(low, high)`` drawn uniformly), U - V = ``astigmatism_um`` at a uniform angle,
    300 kV, Cs 2.7 mm, amplitude contrast 0.1. Returns the parameters ``(n, len(COLUMNS))``
    float32 for :func:`emvae.ctf.apply_ctf`, their STAR columns (``rlnImageName``,
    ``rlnDefocusU/V`` in A, ``rlnDefocusAngle``, and ``defocus_um``, the mean, for the truth
    table) and the generator (seeded ``seed + 1``) the noise is drawn from next."""
    from emvae.ctf import COLUMNS
    from emvae.io.star_export import Optics

    rng = np.random.default_rng(seed + 1)
    if isinstance(defocus_um, (int, float, np.number)):  # one value (np.isscalar)
        low, high = defocus_um, defocus_um
    else:
        low, high = defocus_um
    df = rng.uniform(low, high, n) * 1e4  # A
    angle = rng.uniform(0.0, 180.0, n) if astigmatism_um else np.zeros(n)
    half = 0.5 * astigmatism_um * 1e4
    optics = Optics()
    rows = dict.fromkeys(COLUMNS, np.zeros(n))
    rows.update(
        defocus_u_A=df + half,
        defocus_v_A=df - half,
        defocus_angle_deg=angle,
        voltage_kV=np.full(n, optics.voltage),
        cs_mm=np.full(n, optics.cs),
        amplitude_contrast=np.full(n, optics.amplitude_contrast),
        scale=np.ones(n),
        apix_A=np.full(n, apix),
    )
    params = torch.from_numpy(np.stack([rows[k] for k in COLUMNS], 1).astype(np.float32))
    meta = pd.DataFrame(
        {
            "rlnImageName": [f"{k:06d}@particles.mrcs" for k in range(1, n + 1)],
            "rlnDefocusU": df + half,
            "rlnDefocusV": df - half,
            "rlnDefocusAngle": angle,
            "defocus_um": df / 1e4,
        }
    )
    return params, meta, rng


def write_simulation(
    out_dir: str | os.PathLike[str],
    n: int,
    size: int = 40,
    snr: float = 1.0,
    shift_std_px: float = 2.0,
    seed: int = 0,
    apix: float = 1.0,
    defocus_um: float | tuple[float, float] | None = None,
    obj: BlobObject | Sequence[BlobObject] = HINGE,
    astigmatism_um: float = 0.0,
    scale_std: float = 0.0,
    stretch_std: float = 0.0,
    bend_std: float = 0.0,
    junk: float = 0.0,
    junk_kinds: Sequence[str] = JUNK_KINDS,
    class_weights: Sequence[float] | None = None,
) -> Path:
    """Write ``particles.mrcs``, ``particles.star`` (RELION 3.1, the true poses) and
    ``truth.csv`` of ``n`` particles of ``obj`` into ``out_dir``; returns the stack's path.

    With ``defocus_um`` (one value, or a range ``(low, high)`` drawn uniformly per particle),
    the clean images are multiplied by each particle's CTF (300 kV, Cs 2.7 mm, amplitude
    contrast 0.1, RELION's convention: :mod:`emvae.ctf`) before the noise is added; SNR is
    measured after it. ``astigmatism_um`` splits defocus U and V by that much, at a random
    angle per particle. The STAR file and ``truth.csv`` (``defocus_um``, the mean) carry them.
    ``scale_std``, ``stretch_std``: see :func:`simulate_particles` (``truth.csv`` gets
    ``scale_x``, ``scale_y``; the STAR file keeps the rigid poses), ``bend_std`` (``bend``).
    A mixture (``obj`` several molecules, ``junk`` > 0, ``junk_kinds``, ``class_weights``: see
    :func:`simulate_particles`): every image gets its CTF and the same noise, whose variance is
    the real particles' clean variance (after the CTF) over ``snr``; ``truth.csv`` gets
    ``class``, ``junk``, ``junk_kind`` (and the neighbours' positions); the STAR file gives the
    images without a particle (noise, ice) a pose of 0.
    """
    from emvae.ctf import apply_ctf
    from emvae.io import write_mrc
    from emvae.io.star_export import Optics, table_to_star, write_star

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = None
    images, truth = simulate_particles(  # clean with a CTF: its noise comes after it
        n, size, snr if defocus_um is None else float("inf"), shift_std_px, seed, obj=obj,
        scale_std=scale_std, stretch_std=stretch_std, bend_std=bend_std, junk=junk,
        junk_kinds=junk_kinds, class_weights=class_weights,
    )  # fmt: skip
    if defocus_um is not None:
        params, meta, rng = draw_ctf(n, seed, defocus_um, apix, astigmatism_um)
        x = torch.from_numpy(images)[:, None]
        clean = torch.cat(
            [apply_ctf(x[i : i + 1024], params[i : i + 1024]) for i in range(0, n, 1024)]
        )[:, 0].numpy()
        signal = clean if "junk" not in truth else clean[truth["junk"].to_numpy() == 0]
        images = clean + rng.normal(0, np.sqrt(signal.var() / snr), clean.shape).astype(np.float32)
        truth["defocus_um"] = meta.pop("defocus_um").to_numpy()
    write_mrc(out / "particles.mrcs", images, apix)
    truth.to_csv(out / "truth.csv", index=False, float_format="%.6f")
    write_star(table_to_star(star_poses(truth), size, apix, meta, defaults=Optics()),
               out / "particles.star")  # fmt: skip
    return out / "particles.mrcs"


def star_poses(truth: pd.DataFrame) -> pd.DataFrame:
    """The truth's poses for the STAR file: images without a particle (a mixture's noise and
    ice, whose poses are empty) get a pose of 0. The truth itself when it has no such rows."""
    cols = ["theta_deg", "shift_x_px", "shift_y_px"]
    if not truth[cols].isna().to_numpy().any():
        return truth
    out = truth.copy()
    out[cols] = out[cols].fillna(0.0)
    return out


def _place(points: np.ndarray, turn_deg: float, shift: np.ndarray | None = None) -> np.ndarray:
    """Points ``(M, 2)`` turned counter-clockwise by ``turn_deg`` about the origin, then moved
    by ``shift``."""
    a = np.radians(turn_deg)
    rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])  # row vectors
    return np.asarray(points @ rot + (0.0 if shift is None else shift))


def _misfit(
    p: np.ndarray,
    c1: np.ndarray,
    s1: np.ndarray,
    a1: np.ndarray,
    ref_c: np.ndarray,
    ref_s: np.ndarray,
    ref_a: np.ndarray,
) -> float:
    """Minus the overlap of blobs 1 with the reference turned by ``p[0]`` degrees and moved by
    ``p[1:]``."""
    return -blob_overlap(c1, s1, a1, _place(ref_c, p[0], p[1:]), ref_s, ref_a)


def blob_overlap(
    c1: np.ndarray, s1: np.ndarray, a1: np.ndarray, c2: np.ndarray, s2: np.ndarray, a2: np.ndarray
) -> float:
    """The integral of the product of two blob images, in closed form.

    Blobs ``a exp(-|x - c|^2 / 2 s^2)``: centres ``(M, 2)``, sigmas ``(M,)``, amplitudes
    ``(M,)`` for each image. Maximising it over a rotation and shift of one image is the
    maximum-correlation alignment (the images' norms do not change under the motion)."""
    v = s1[:, None] ** 2 + s2[None, :] ** 2
    d2 = ((c1[:, None, :] - c2[None, :, :]) ** 2).sum(-1)
    w = 2 * np.pi * (s1[:, None] ** 2) * (s2[None, :] ** 2) / v
    return float((a1[:, None] * a2[None, :] * w * np.exp(-d2 / (2 * v))).sum())


def consensus_frame(
    obj: Blobs, n: int = 21, rounds: int = 4
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each conformation sits relative to the consensus view of ``obj``.

    For a flexible particle the in-plane pose is defined only relative to a reference: an
    aligner that matches intensities (RELION's 2-D classification, emvae) turns each
    conformation to best match the average particle, not to keep one part of it still. This
    is that frame, found the way a single-reference refinement converges: align every one of
    ``n`` conformations (equally spaced in [0, 1]) to the mean of the aligned conformations
    by maximum correlation (:func:`blob_overlap`, exact), ``rounds`` times; then remove the mean
    turn and shift so that the frame agrees with the body's on average.

    Returns conformations ``(n,)``, turns ``(n,)`` (degrees, counter-clockwise) and shifts
    ``(n, 2)`` (coordinate units): conformation c looks like the consensus view turned by
    ``turn`` about the origin and then moved by ``shift``.
    """
    from scipy.optimize import minimize

    confs = np.linspace(0.0, 1.0, n)
    centres, sigmas, amps = obj.blobs(confs)
    turn, shift = np.zeros(n), np.zeros((n, 2))
    for _ in range(rounds):
        # the reference: every conformation brought into the consensus frame (inverse motion)
        ref_c = np.concatenate([_place(centres[k] - shift[k], -turn[k]) for k in range(n)])
        ref_s, ref_a = np.tile(sigmas, n), np.tile(amps, n) / n
        for k in range(n):
            # the reference moved by (turn, shift) onto conformation k: minus the overlap
            args = (centres[k], sigmas, amps, ref_c, ref_s, ref_a)
            start = np.array([turn[k], *shift[k]])
            best = minimize(_misfit, start, args, method="Nelder-Mead", options={"xatol": 1e-4})
            turn[k], shift[k] = best.x[0], best.x[1:]
        turn -= turn.mean()
        shift -= shift.mean(0)
    return confs, turn, shift
