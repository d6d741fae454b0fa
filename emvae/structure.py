"""Test particles from atomic models (PDB or mmCIF, read through gemmi): ``emvae simulate
--structure``.

The model
    The first model's protein and nucleic-acid atoms (waters, ligands, ions and hydrogens
    dropped; the first alternative conformation kept). Each atom is an isotropic 3-D Gaussian
    of width ``sigma^2 = B / (8 pi^2) + max(1 A, apix / 2)^2`` (its B factor's blur, a floor
    of 1 A for the atom's own potential, and half a pixel so the projection stays sampled)
    that integrates to its atomic number Z; its projection is the 2-D Gaussian of the same
    width, so a projected model is a set of 2-D blobs (:mod:`emvae.simulate`'s) and a clean
    image sums to about the molecule's total Z.
Views
    ``(rot, tilt, psi)`` in degrees, RELION's ZYZ convention (:func:`euler_matrix`,
    RELION's ``Euler_angles2matrix``): an atom at r (A, the model's frame) lands at
    ``A r``, and the projection is along the rotated z axis. The image shows ``(A r)_x`` to
    the right and ``(A r)_y`` **down** (towards rows of higher index, as in RELION's images:
    ``relion_project`` of a map of the same atoms gives the same picture,
    ``tests/test_simulate_structure.py``), so in emvae's image frame (+y up) the point sits
    at ``((A r)_x, -(A r)_y)``, and psi turns the picture counter-clockwise, the way
    ``theta_deg`` (RELION's ``rlnAnglePsi``) does. :func:`auto_view` looks along the
    direction in which the motion shows most.
Motion
    One conformational coordinate c in [0, 1] (:class:`Motion`): a linear morph to a second
    model of the same molecule (:func:`morph`), or a domain turned about a hinge
    (:func:`hinge`).
Coordinates
    Centred on the Z-weighted centre of mass of conformation 0.5; 1 coordinate unit =
    ``(size - 1) / 2`` px = ``(size - 1) / 2 * apix`` A (docs/conventions.md).

Particles are rendered in chunks with a separable Gaussian sum (:func:`render_separable`,
D^2 M multiply-adds per image for M atoms) and written in a streaming pass
(:func:`write_structure_simulation`), so memory stays bounded whatever the number of
particles. The truth's consensus frame (:func:`emvae.simulate.consensus_frame`) is computed on
a coarse copy of the molecule (:attr:`StructureObject.coarse`: at most :data:`COARSE_GROUPS`
blobs, each a run of consecutive residues).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from emvae import simulate as sim
from emvae.errors import ConfigError, InputError
from emvae.geometry import pixels_per_unit, wrap_degrees

#: Blobs of the coarse molecule the consensus frame is computed on.
COARSE_GROUPS = 48
#: The smallest atom width, A (the atom's own potential; half a pixel is also kept).
SIGMA_FLOOR_A = 1.0


@dataclass(frozen=True)
class Molecule:
    """Atoms of an atomic model: positions ``xyz`` ``(K, 3)`` in A (the file's frame),
    atomic numbers ``z`` ``(K,)``, B factors ``b`` ``(K,)`` in A^2, and for each atom its
    ``keys`` (chain, residue number, insertion code, atom name), the index of its residue in
    file order ``residue`` ``(K,)``, and whether it is a C-alpha (or P) ``ca`` ``(K,)``."""

    path: str
    xyz: np.ndarray
    z: np.ndarray
    b: np.ndarray
    keys: tuple[tuple[str, int, str, str], ...]
    residue: np.ndarray
    ca: np.ndarray

    def select(self, index: np.ndarray) -> Molecule:
        """The atoms at ``index`` (an integer array), in that order."""
        residue = np.unique(self.residue[index], return_inverse=True)[1].reshape(-1)
        return Molecule(
            self.path,
            self.xyz[index],
            self.z[index],
            self.b[index],
            tuple(self.keys[i] for i in index),
            residue,
            self.ca[index],
        )


def read_structure(path: str | os.PathLike[str]) -> Molecule:
    """The protein and nucleic-acid atoms of the first model in a PDB or mmCIF file (gemmi
    picks the format from the suffix; ``.gz`` is read too). One line (:class:`InputError`) for
    a missing file, one gemmi cannot read, or one without such atoms."""
    import gemmi

    p = Path(path)
    if not p.is_file():
        raise InputError(p, "no such file")
    try:
        st = gemmi.read_structure(str(p))
    except (RuntimeError, ValueError) as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(p, f"not a readable PDB or mmCIF file ({text})") from None
    if len(st) == 0:
        raise InputError(p, "holds no model")
    st.remove_alternative_conformations()
    st.remove_hydrogens()
    xyz, z, b, keys, residue, ca = [], [], [], [], [], []
    r = 0
    for chain in st[0]:
        for res in chain:
            info = gemmi.find_tabulated_residue(res.name)
            if info is None or not (info.is_amino_acid() or info.is_nucleic_acid()):
                continue
            for atom in res:
                xyz.append(atom.pos.tolist())
                number = atom.element.atomic_number
                z.append(number if number > 0 else 6)  # an unknown element counts as carbon
                b.append(atom.b_iso)
                keys.append((chain.name, res.seqid.num or 0, res.seqid.icode.strip(), atom.name))
                residue.append(r)
                ca.append(atom.name in ("CA", "P"))
            r += 1
    if not xyz:
        raise InputError(p, "holds no protein or nucleic-acid atoms (not a PDB or mmCIF model?)")
    return Molecule(
        str(p),
        np.asarray(xyz, dtype=np.float64),
        np.asarray(z, dtype=np.float64),
        np.asarray(b, dtype=np.float64),
        tuple(keys),
        np.asarray(residue),
        np.asarray(ca, dtype=bool),
    )


def rotation_about(axis: np.ndarray, angle_rad: np.ndarray) -> np.ndarray:
    """Right-handed rotations ``(n, 3, 3)`` (column vectors) by ``angle_rad`` ``(n,)`` about
    the unit vector ``axis`` ``(3,)`` (Rodrigues)."""
    n = axis / np.linalg.norm(axis)
    return _rodrigues(np.array([[0, -n[2], n[1]], [n[2], 0, -n[0]], [-n[1], n[0], 0]]), angle_rad)


def _rodrigues(k: np.ndarray, angle_rad: np.ndarray) -> np.ndarray:
    """``I + sin(a) k + (1 - cos(a)) k^2`` ``(n, 3, 3)``: the turns by ``angle_rad`` ``(n,)``
    about the unit axes whose cross-product matrices are ``k`` ``(3, 3)`` or ``(n, 3, 3)``."""
    a = np.asarray(angle_rad, dtype=np.float64)[:, None, None]
    return np.asarray(np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k))


def euler_matrix(rot_deg: float, tilt_deg: float, psi_deg: float) -> np.ndarray:
    """RELION's ``Euler_angles2matrix``: ``A = Rz(psi) Ry(tilt) Rz(rot)`` ``(3, 3)``, acting on
    column vectors (an atom at r goes to ``A r``; the projection is along the new z). Rows:

    ``[[cg cb ca - sg sa,  cg cb sa + sg ca, -cg sb],``
    `` [-sg cb ca - cg sa, -sg cb sa + cg ca, sg sb],``
    `` [sb ca,             sb sa,             cb   ]]``

    with a = rot, b = tilt, g = psi. So tilt 90 (rot = psi = 0) sends +z to -x and +x to +z:
    an atom on +z appears left of the centre."""
    a, b, g = np.radians([rot_deg, tilt_deg, psi_deg])
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    return np.array(
        [
            [cg * cb * ca - sg * sa, cg * cb * sa + sg * ca, -cg * sb],
            [-sg * cb * ca - cg * sa, -sg * cb * sa + cg * ca, sg * sb],
            [sb * ca, sb * sa, cb],
        ]
    )


def euler_angles(matrix: np.ndarray) -> tuple[float, float, float]:
    """The inverse of :func:`euler_matrix` (RELION's ``Euler_matrix2angles``): ``(rot, tilt,
    psi)`` degrees of a rotation ``(3, 3)``, tilt in [0, 180]; where tilt is 0 or 180, rot is 0
    and psi takes the whole in-plane turn."""
    m = np.asarray(matrix, dtype=np.float64)
    tilt = float(np.degrees(np.arccos(np.clip(m[2, 2], -1.0, 1.0))))
    if np.hypot(m[2, 0], m[2, 1]) > 1e-9:
        rot = float(np.degrees(np.arctan2(m[2, 1], m[2, 0])))
        psi = float(np.degrees(np.arctan2(m[1, 2], -m[0, 2])))
    else:  # sin(tilt) = 0: A = [[cb cos(psi +- rot), ...]]; put the turn into psi
        rot = 0.0
        psi = float(np.degrees(np.arctan2(m[0, 1], m[0, 0] * np.sign(m[2, 2]))))
    return rot, tilt, psi


def class_views(view: tuple[float, float, float], classes: int) -> list[tuple[float, float, float]]:
    """``classes`` views of one model for ``emvae simulate --structure --classes K``: class k
    sees the model in ``view`` turned out of plane by ``k * 180 / K`` degrees about the
    image's x axis (a right-handed turn of the projected frame; k = 0 is ``view`` itself)."""
    a = euler_matrix(*view)
    out = [tuple(float(v) for v in view)]
    for k in range(1, classes):
        turn = rotation_about(np.array([1.0, 0.0, 0.0]), np.radians([180.0 * k / classes]))[0]
        # rounded to 1e-9 degrees, without -0 (so 90, not 90.0000000000001 or -0.0)
        out.append(tuple(float(np.round(v, 9)) + 0.0 for v in euler_angles(turn @ a)))
    return out  # type: ignore[return-value]


def kabsch(moving: np.ndarray, fixed: np.ndarray) -> np.ndarray:
    """``moving`` ``(K, 3)`` superposed on ``fixed`` ``(K, 3)`` by the rotation and translation
    that minimise the RMSD over all K points (equal weights; Kabsch's SVD, no reflection)."""
    mc, fc = moving.mean(0), fixed.mean(0)
    h = (moving - mc).T @ (fixed - fc)  # (3, 3)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(u @ vt))
    rot = u @ np.diag([1.0, 1.0, d]) @ vt  # row vectors: x -> x rot
    return np.asarray((moving - mc) @ rot + fc)


@dataclass(frozen=True)
class Motion:
    """Atom positions as a function of the conformation c in [0, 1], A.

    ``start`` ``(K, 3)``: conformation 0. Either ``end`` ``(K, 3)`` (a linear morph,
    ``(1 - c) start + c end``), or ``mask`` ``(K,)`` (the domain), ``point`` ``(3,)``,
    ``axis`` ``(3,)`` (unit) and ``degrees``: the domain turns right-handedly about the axis
    through the point by ``c * degrees``. Neither: a rigid molecule."""

    start: np.ndarray
    end: np.ndarray | None = None
    mask: np.ndarray | None = None
    point: np.ndarray | None = None
    axis: np.ndarray | None = None
    degrees: float = 0.0

    @property
    def rigid(self) -> bool:
        """True when the motion moves nothing (no second model, no domain)."""
        return self.end is None and self.mask is None

    def positions(self, conformation: np.ndarray) -> np.ndarray:
        """``(n, K, 3)`` A for conformations ``(n,)``."""
        c = np.asarray(conformation, dtype=np.float64)
        if self.end is not None:
            return np.asarray(self.start + c[:, None, None] * (self.end - self.start))
        out = np.repeat(self.start[None], len(c), axis=0)
        if self.mask is not None and self.point is not None and self.axis is not None:
            rot = rotation_about(self.axis, np.radians(self.degrees) * c)  # (n, 3, 3)
            rel = self.start[self.mask] - self.point
            out[:, self.mask] = self.point + np.einsum("nij,kj->nki", rot, rel)
        return out

    def shifted(self, by: np.ndarray) -> Motion:
        """The same motion of the molecule moved by ``by`` ``(3,)`` A."""
        return Motion(
            self.start + by,
            None if self.end is None else self.end + by,
            self.mask,
            None if self.point is None else self.point + by,
            self.axis,
            self.degrees,
        )


def morph(first: Molecule, second: Molecule, min_shared: float = 0.5) -> tuple[Molecule, Motion]:
    """A linear morph from ``first`` (c = 0) to ``second`` (c = 1) over the atoms both hold,
    matched by (chain, residue number, insertion code, atom name); ``second`` is first
    superposed on ``first`` over those atoms (:func:`kabsch`). Fewer shared atoms than
    ``min_shared`` of ``first``'s (or than 3) is refused in one line."""
    where = {k: i for i, k in enumerate(second.keys)}
    mine = np.array([i for i, k in enumerate(first.keys) if k in where], dtype=np.int64)
    if len(mine) < max(3, min_shared * len(first.keys)):
        raise InputError(
            second.path,
            f"shares {len(mine)} of {first.path}'s {len(first.keys)} atoms (matched by chain, "
            "residue number, insertion code and atom name): not a model of the same molecule?",
        )
    theirs = np.array([where[first.keys[i]] for i in mine], dtype=np.int64)
    mol = first.select(mine)
    end = kabsch(second.xyz[theirs], mol.xyz)
    return mol, Motion(mol.xyz, end=end)


_DOMAIN = re.compile(r"^\s*([^:\s]+)\s*:\s*(-?\d+)\s*-\s*(-?\d+)\s*$")


def parse_domain(spec: str) -> tuple[str, int, int]:
    """``"A:120-160"`` -> ``("A", 120, 160)`` (chain, first and last residue number)."""
    m = _DOMAIN.match(spec)
    if not m or int(m.group(2)) > int(m.group(3)):
        raise ConfigError(f"--domain {spec!r}: give CHAIN:FIRST-LAST, e.g. A:120-160")
    return m.group(1), int(m.group(2)), int(m.group(3))


def hinge(mol: Molecule, domains: list[str], degrees: float) -> Motion:
    """The domain (every residue in the ``domains`` ranges, ``"A:120-160"``; several ranges
    move as one rigid domain) turns by ``c * degrees`` about a hinge.

    The hinge point is the centroid of the C-alpha (P for nucleic acids; all atoms when they
    have none) of the boundary residues: domain residues whose neighbour in their chain's
    order lies outside the domain (without any, the domain C-alpha nearest the rest's
    centroid). The axis is ``(d - p) x (b - p)`` normalised, with d and b the Z-weighted
    centroids of the domain and of the rest (the body) and p the hinge point: a positive
    angle turns the domain towards the body (closes it), a negative one opens it."""
    inside = np.zeros(len(mol.keys), dtype=bool)
    for spec in domains:
        chain, first, last = parse_domain(spec)
        hit = np.array([k[0] == chain and first <= k[1] <= last for k in mol.keys])
        if not hit.any():
            raise InputError(mol.path, f"--domain {spec}: no residue of chain {chain} numbered "
                             f"{first}-{last}")  # fmt: skip
        inside |= hit
    if inside.all():
        raise InputError(mol.path, f"--domain {' '.join(domains)} holds every atom: no body")
    res_in = np.zeros(mol.residue.max() + 1, dtype=bool)
    res_in[mol.residue[inside]] = True
    chain_of = {r: mol.keys[i][0] for i, r in enumerate(mol.residue)}
    boundary = [
        r
        for r in np.flatnonzero(res_in)
        if any(
            q in chain_of and chain_of[q] == chain_of[r] and not res_in[q] for q in (r - 1, r + 1)
        )
    ]
    w = mol.z
    d = (mol.xyz[inside] * w[inside, None]).sum(0) / w[inside].sum()
    b = (mol.xyz[~inside] * w[~inside, None]).sum(0) / w[~inside].sum()
    if boundary:
        atoms = np.isin(mol.residue, boundary) & inside
        if (atoms & mol.ca).any():
            atoms &= mol.ca
        point = mol.xyz[atoms].mean(0)
    else:
        cand = np.flatnonzero(inside & mol.ca if (inside & mol.ca).any() else inside)
        point = mol.xyz[cand[np.argmin(np.linalg.norm(mol.xyz[cand] - b, axis=1))]]
    arm_d, arm_b = d - point, b - point
    axis = np.cross(arm_d, arm_b)
    if np.linalg.norm(axis) < 1e-6 * max(1.0, np.linalg.norm(arm_d) * np.linalg.norm(arm_b)):
        raise InputError(mol.path, "the domain, its hinge and the body lie on one line: no "
                         "hinge axis")  # fmt: skip
    return Motion(mol.xyz, mask=inside, point=point, axis=axis / np.linalg.norm(axis),
                  degrees=degrees)  # fmt: skip


def auto_view(motion: Motion) -> tuple[float, float, float]:
    """The view ``(rot, tilt, psi)`` (degrees) in which the motion shows most: the projection
    direction u that maximises the mean squared projected displacement of the atoms from
    conformation 0 to 1, ``mean |d|^2 - u^T C u`` with ``C = mean d d^T``, i.e. the
    eigenvector of C with the smallest eigenvalue (exact; for a hinge, the hinge axis), taken
    with u_z >= 0. rot and tilt put u on the rotated z axis (``A`` 's last row is u); psi is 0.
    A rigid molecule gets (0, 0, 0)."""
    if motion.rigid:
        return 0.0, 0.0, 0.0
    ends = motion.positions(np.array([0.0, 1.0]))
    disp = ends[1] - ends[0]  # (K, 3)
    _, vec = np.linalg.eigh(disp.T @ disp / len(disp))
    u = vec[:, 0] * (1.0 if vec[2, 0] >= 0 else -1.0)
    tilt = float(np.degrees(np.arccos(np.clip(u[2], -1.0, 1.0))))
    rot = float(np.degrees(np.arctan2(u[1], u[0]))) if np.hypot(u[0], u[1]) > 1e-9 else 0.0
    return rot, tilt, 0.0


def atom_sigma_A(b_iso: np.ndarray, apix: float) -> np.ndarray:
    """Each atom's Gaussian width, A: ``sqrt(B / (8 pi^2) + max(1 A, apix / 2)^2)``."""
    floor = max(SIGMA_FLOOR_A, 0.5 * apix)
    return np.asarray(np.sqrt(np.clip(b_iso, 0.0, None) / (8 * np.pi**2) + floor**2))


@dataclass(eq=False)
class StructureObject:
    """An atomic model seen in one view, with one conformational coordinate; compatible with
    :class:`emvae.simulate.BlobObject` where the consensus frame is concerned (``key``,
    ``blobs``).

    ``motion``: atom positions in A, centred (on the Z-weighted centre of mass of
    conformation 0.5); ``z``, ``sigma_A`` ``(K,)``; ``residue`` ``(K,)`` residue index (the
    coarse copy groups runs of residues); ``view`` ``(rot, tilt, psi)`` degrees; ``size`` px
    and ``apix`` A/px fix the coordinate unit, ``(size - 1) / 2 * apix`` A."""

    name: str
    motion: Motion
    z: np.ndarray
    sigma_A: np.ndarray
    residue: np.ndarray
    view: tuple[float, float, float]
    size: int
    apix: float

    @property
    def unit_A(self) -> float:
        """A per coordinate unit."""
        return pixels_per_unit(self.size) * self.apix

    @property
    def sigmas(self) -> np.ndarray:
        """``(K,)`` coordinate units."""
        return self.sigma_A / self.unit_A

    @property
    def amps(self) -> np.ndarray:
        """Peak heights ``(K,)``: ``Z / (2 pi sigma_px^2)``, so each atom's image sums to Z."""
        return self.z / (2 * np.pi * (self.sigma_A / self.apix) ** 2)

    @cached_property
    def key(self) -> tuple[object, ...]:
        """A hashable identity of the projected model (its atoms, motion and view)."""
        digest = hashlib.sha1()
        for a in (self.motion.start, self.motion.end, self.motion.mask, self.motion.point,
                  self.motion.axis, self.z, self.sigma_A, self.residue):  # fmt: skip
            digest.update(b"-" if a is None else np.ascontiguousarray(a).tobytes())
        return ("structure", digest.hexdigest(), self.motion.degrees, self.view, self.size,
                self.apix)  # fmt: skip

    def project(self, positions: np.ndarray, rotation: np.ndarray | None = None) -> np.ndarray:
        """Atoms ``(n, K, 3)`` (A) seen in the view, then turned by ``rotation`` ``(n, 3, 3)``
        (the tilt, in the view's frame): 2-D centres ``(n, K, 2)`` in coordinate units, +y up."""
        a = euler_matrix(*self.view)
        full = a[None] if rotation is None else rotation @ a  # (n or 1, 3, 3)
        q = np.einsum("nij,nkj->nki", np.broadcast_to(full, (len(positions), 3, 3)), positions)
        return np.stack([q[..., 0], -q[..., 1]], -1) / self.unit_A

    def blobs(
        self, conformation: np.ndarray, rotation: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every atom's blob in the view (turned by ``rotation``, :meth:`project`): centres
        ``(n, K, 2)`` (coordinate units), sigmas ``(K,)`` and amplitudes ``(K,)`` for
        conformations ``(n,)``."""
        return self.project(self.motion.positions(conformation), rotation), self.sigmas, self.amps

    @cached_property
    def coarse(self) -> _Coarse:
        """The molecule as at most :data:`COARSE_GROUPS` blobs (runs of consecutive residues),
        for the consensus frame (:func:`emvae.simulate.consensus_frame`, whose cost grows with
        the square of the number of blobs)."""
        return _Coarse(self)

    @cached_property
    def consensus(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:func:`emvae.simulate.consensus_frame` of :attr:`coarse` (11 conformations, 3
        rounds): conformations ``(11,)``, turns ``(11,)`` degrees, shifts ``(11, 2)`` units."""
        return sim.consensus_frame(self.coarse, n=11, rounds=3)

    def render(
        self,
        conformation: np.ndarray,
        theta_deg: np.ndarray,
        shift_px: np.ndarray,
        tilt: np.ndarray | None = None,
    ) -> np.ndarray:
        """Clean images ``(n, size, size)`` float32 (row 0 at the top) of ``n`` particles:
        conformations ``(n,)``, turned counter-clockwise by ``theta_deg`` ``(n,)``, the centre
        moved to ``shift_px`` ``(n, 2)`` (px, +y up); ``tilt`` ``(n, 3, 3)``: each view first
        turned by these rotations (:func:`draw_tilts`)."""
        return render_separable(*self.blobs(conformation, tilt), theta_deg, shift_px, self.size)


class _Coarse:
    """:class:`StructureObject` reduced to runs of consecutive residues: each run is one blob
    at the Z-weighted centroid of its atoms' projections, amplitude such that it holds the
    run's Z, width the atoms' mean width combined with the run's spread at conformation 0.5."""

    def __init__(self, obj: StructureObject) -> None:
        self.obj = obj
        n_res = int(obj.residue.max()) + 1
        self.group = obj.residue * min(n_res, COARSE_GROUPS) // n_res  # (K,)
        self.n_groups = g = int(self.group.max()) + 1
        self.weight = np.bincount(self.group, obj.z, g)  # (G,)
        mid = self._centres(np.array([0.5]))[0]  # (G, 2)
        atoms = obj.blobs(np.array([0.5]))[0][0]
        spread = np.bincount(self.group, obj.z * ((atoms - mid[self.group]) ** 2).sum(1), g)
        own = np.bincount(self.group, obj.z * obj.sigmas**2, g)  # (G,) the atoms' widths
        var = 0.5 * spread / self.weight + own / self.weight
        self.sigmas = np.sqrt(var)
        self.amps = self.weight / (2 * np.pi * var)

    @property
    def key(self) -> tuple[object, ...]:
        return ("coarse", *self.obj.key)

    def _centres(self, conformation: np.ndarray) -> np.ndarray:
        c, _, _ = self.obj.blobs(conformation)  # (n, K, 2)
        n, g = len(c), self.n_groups
        bins = (np.arange(n)[:, None] * g + self.group).ravel()  # (n K,): image i's groups
        sums = [np.bincount(bins, (self.obj.z * c[..., k]).ravel(), n * g) for k in range(2)]
        return np.stack(sums, -1).reshape(n, g, 2) / self.weight[None, :, None]

    def blobs(self, conformation: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Centres ``(n, G, 2)``, sigmas ``(G,)``, amplitudes ``(G,)`` (coordinate units)."""
        return self._centres(conformation), self.sigmas, self.amps


def structure_object(
    path: str | os.PathLike[str],
    size: int,
    apix: float,
    structure2: str | os.PathLike[str] | None = None,
    domains: list[str] | None = None,
    hinge_deg: float = 30.0,
    view: tuple[float, float, float] | None = None,
) -> StructureObject:
    """Read ``path`` and build the particle: a morph to ``structure2``, or ``domains`` turned by
    ``hinge_deg`` (:func:`hinge`), or neither (rigid); seen in ``view`` (rot, tilt, psi
    degrees; None: :func:`auto_view`). Refuses (one line) a molecule that does not fit in the
    box: its atoms must lie within ``(size - 1) / 2 * apix`` A of its centre in every
    conformation, so every view and in-plane turn stays inside the box."""
    if structure2 is not None and domains:
        raise ConfigError("give either --structure2 (a morph) or --domain (a hinge), not both")
    mol = read_structure(path)
    if structure2 is not None:
        mol, motion = morph(mol, read_structure(structure2))
    elif domains:
        motion = hinge(mol, domains, hinge_deg)
    else:
        motion = Motion(mol.xyz)
    mid = motion.positions(np.array([0.5]))[0]
    motion = motion.shifted(-(mid * mol.z[:, None]).sum(0) / mol.z.sum())
    reach = float(np.linalg.norm(motion.positions(np.linspace(0, 1, 11)), axis=-1).max())
    half = pixels_per_unit(size) * apix
    if reach > half:
        raise InputError(
            path,
            f"atoms reach {reach:.1f} A from the molecule's centre, but a box of {size} px at "
            f"{apix:g} A/px holds {half:.1f} A from its centre: raise --size or --apix to at "
            f"least {int(np.ceil(2 * reach / apix)) + 1} px or {reach / pixels_per_unit(size):.2f} "
            "A/px",
        )
    chosen = auto_view(motion) if view is None else view
    return StructureObject(
        Path(path).stem,
        motion,
        mol.z,
        atom_sigma_A(mol.b, apix),
        mol.residue,
        tuple(float(v) for v in chosen),  # type: ignore[arg-type]
        size,
        apix,
    )


def parse_view(text: str) -> tuple[float, float, float] | None:
    """``"auto"`` -> None; ``"ROT,TILT,PSI"`` (degrees) -> a tuple."""
    if text.strip().lower() == "auto":
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3 or not all(np.isfinite(values)):
        raise ConfigError(f"--view {text!r}: give auto or ROT,TILT,PSI in degrees (e.g. 0,90,0)")
    return values[0], values[1], values[2]


def draw_tilts(n: int, tilt_deg: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Out-of-plane wobble: each particle's view turned by an angle ~ N(0, tilt_deg^2) about an
    axis in the image plane at a uniform angle (from +x towards +y, RELION's image axes).
    Returns the rotations ``(n, 3, 3)`` (applied after the view's), the angles (degrees) and
    the axes' angles (degrees). Drawn from their own generator (seeded ``[seed, 24]``)."""
    rng = np.random.default_rng([seed, 24])
    angle = rng.normal(0.0, tilt_deg, n) if tilt_deg > 0 else np.zeros(n)
    axis = rng.uniform(0.0, 180.0, n)
    ux, uy = np.cos(np.radians(axis)), np.sin(np.radians(axis))  # the unit axes (ux, uy, 0)
    k = np.zeros((n, 3, 3))
    k[:, 0, 2], k[:, 2, 0] = uy, -uy
    k[:, 1, 2], k[:, 2, 1] = -ux, ux
    return _rodrigues(k, np.radians(angle)), angle, axis


def render_separable(
    centres: np.ndarray,
    sigmas: np.ndarray,
    amps: np.ndarray,
    theta_deg: np.ndarray,
    shift_px: np.ndarray,
    size: int,
    dtype: torch.dtype = torch.float32,
    budget: int = 2**23,
    reach: float = 6.0,
) -> np.ndarray:
    """:func:`emvae.simulate.render_blobs` (no stretch or bend) by separable Gaussians.

    Each blob is turned and moved first (rotating an isotropic Gaussian's centre is exact),
    then image = ``Gy^T diag(a) Gx`` with ``Gx[m, j] = exp(-(j - cx_m)^2 / 2 s_m^2)`` (px) and
    likewise Gy over the rows: one batched matrix product, D^2 M multiply-adds per image.
    Each factor is evaluated only within ``reach`` sigma of its blob (exactly 0 beyond,
    relative error below exp(-reach^2 / 2)), which saves nine exponentials in ten at 128 px.
    centres ``(n, M, 2)`` coordinate units, sigmas, amps ``(M,)``, theta_deg ``(n,)``,
    shift_px ``(n, 2)``; returns float32 ``(n, size, size)``, row 0 at the top. ``budget``:
    elements of one chunk's ``(b, M, D)`` factors (bounds memory)."""
    h = pixels_per_unit(size)
    n, m = centres.shape[:2]
    chunk = max(1, budget // max(1, m * size))
    sig_px = np.asarray(sigmas, dtype=np.float64) * h
    r = int(np.ceil(reach * sig_px.max()))
    inv = torch.as_tensor(-0.5 / sig_px**2)[:, None]  # (M, 1), 1/px^2
    amp = torch.as_tensor(amps, dtype=dtype)[:, None]
    out = np.empty((n, size, size), dtype=np.float32)
    for s in range(0, n, chunk):
        c = torch.tensor(centres[s : s + chunk], dtype=torch.float64)  # copies: never a view
        t = torch.deg2rad(torch.tensor(theta_deg[s : s + chunk], dtype=torch.float64))
        cos, sin = torch.cos(t)[:, None], torch.sin(t)[:, None]
        shift = torch.tensor(shift_px[s : s + chunk], dtype=torch.float64) / h
        cx = cos * c[..., 0] - sin * c[..., 1] + shift[:, :1]  # (b, M), coordinate units
        cy = sin * c[..., 0] + cos * c[..., 1] + shift[:, 1:]
        gx = _gaussians((cx + 1) * h, inv, size, r, dtype)  # (b, M, D): column j at x_j
        gy = _gaussians((1 - cy) * h, inv, size, r, dtype).mul_(amp)  # row i at y_i
        out[s : s + chunk] = torch.bmm(gy.transpose(1, 2), gx).numpy()  # (b, rows, columns)
    return out


def _gaussians(
    centre_px: torch.Tensor, inv: torch.Tensor, size: int, r: int, dtype: torch.dtype
) -> torch.Tensor:
    """``exp(inv (j - centre)^2)`` for j = 0 .. size - 1 ``(b, M, size)``, evaluated on the
    ``2 r + 1`` pixels nearest each centre (0 elsewhere)."""
    k = torch.arange(2 * r + 1)
    start = (torch.floor(centre_px).long() - r).clamp_(-r, size - 1 - r)  # (b, M)
    index = start[..., None] + k  # (b, M, W) pixel indices, -r .. size - 1 + r
    offset = (start.to(torch.float64) - centre_px).to(dtype)  # (b, M): window start - centre
    values = (offset[..., None] + k.to(dtype)).square_().mul_(inv.to(dtype)).exp_()
    full = torch.zeros((*centre_px.shape, size + 2 * r), dtype=dtype)
    full.scatter_(2, index.add_(r), values)
    return full[..., r : r + size]


def draw_poses(n: int, shift_std_px: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Conformations ``(n,)`` uniform in [0, 1], turns ``(n,)`` uniform in [-180, 180) degrees
    and shifts ``(n, 2)`` ~ N(0, shift_std_px^2) px, drawn as
    :func:`emvae.simulate.simulate_particles` draws them."""
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.0, 1.0, n)
    theta = rng.uniform(-180.0, 180.0, n)
    shift = rng.normal(0.0, shift_std_px, (n, 2)) if shift_std_px > 0 else np.zeros((n, 2))
    return conf, theta, shift


def structure_objects(
    paths: Sequence[str | os.PathLike[str]],
    size: int,
    apix: float,
    structure2: str | os.PathLike[str] | None = None,
    domains: list[str] | None = None,
    hinge_deg: float = 30.0,
    view: tuple[float, float, float] | None = None,
    classes: int = 1,
) -> list[StructureObject]:
    """The classes of ``emvae simulate --structure``: one :func:`structure_object` per model
    in ``paths`` when there are several (each with the same ``domains`` hinge, and ``view``;
    ``structure2`` refused), or ``classes`` views of the one model (:func:`class_views`)."""
    if len(paths) > 1:
        if structure2 is not None:
            raise ConfigError("--structure2 morphs one --structure: give one --structure with it")
        if classes not in (1, len(paths)):
            raise ConfigError(f"--classes {classes} with {len(paths)} --structure models: each "
                              "model is a class")  # fmt: skip
        return [structure_object(p, size, apix, None, domains, hinge_deg, view) for p in paths]
    first = structure_object(paths[0], size, apix, structure2, domains, hinge_deg, view)
    return [first] + [replace(first, view=v) for v in class_views(first.view, classes)[1:]]


def write_structure_simulation(
    out_dir: str | os.PathLike[str],
    obj: StructureObject | Sequence[StructureObject],
    n: int,
    snr: float = 1.0,
    shift_std_px: float = 2.0,
    seed: int = 0,
    defocus_um: float | tuple[float, float] | None = None,
    astigmatism_um: float = 0.0,
    tilt_deg: float = 0.0,
    chunk: int = 512,
    junk: float = 0.0,
    junk_kinds: Sequence[str] = ("noise", "ice", "fragment", "neighbour"),
    class_weights: Sequence[float] | None = None,
) -> Path:
    """``particles.mrcs`` (float32, the pixel size in the header), ``particles.star`` (RELION
    3.1: poses, optics, the CTF) and ``truth.csv`` of ``n`` particles of ``obj``, as
    :func:`emvae.simulate.write_simulation` writes them, streamed ``chunk`` particles at a
    time: the clean (CTF-modulated) images are written first, their variance gives the noise
    (SNR = clean variance over noise variance, all pixels), which is then added chunk by
    chunk. ``tilt_deg``: :func:`draw_tilts`. Returns the stack's path.

    A mixture (:func:`emvae.simulate.simulate_particles`' terms): ``obj`` several molecules
    (:func:`structure_objects`; same size and pixel size), ``junk``, ``junk_kinds``,
    ``class_weights`` (:func:`emvae.simulate.draw_mixture`). The SNR is then the real
    particles' (junk excluded) and every image gets the same noise; ``truth.csv`` gets
    ``class``, ``junk``, ``junk_kind`` (:func:`emvae.simulate.mixture_truth`). One molecule
    without junk is exactly the plain simulation."""
    import mrcfile

    from emvae.ctf import apply_ctf
    from emvae.io.mrc import new_stack_mmap
    from emvae.io.star_export import Optics, table_to_star, write_star
    from emvae.safety import atomic_output

    objs = [obj] if isinstance(obj, StructureObject) else list(obj)
    first = objs[0]
    if any(o.size != first.size or o.apix != first.apix for o in objs):
        raise ConfigError("the classes' molecules need one box size and pixel size")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    size = first.size
    conf, theta, shift = draw_poses(n, shift_std_px, seed)
    rot, tilt, tilt_axis = draw_tilts(n, tilt_deg, seed)
    draws = None
    if len(objs) > 1 or junk > 0:
        draws = sim.draw_mixture(n, len(objs), junk, junk_kinds, seed, size, class_weights)

    def centres_of(
        k: int, c: np.ndarray, rows: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return objs[k].blobs(c, rot[rows] if tilt_deg and rows is not None else None)

    meta, params, rng = None, None, np.random.default_rng([seed, 25])
    if defocus_um is not None:
        params, meta, rng = sim.draw_ctf(n, seed, defocus_um, first.apix, astigmatism_um)
    chunk = max(1, chunk)
    total, total2, n_real = 0.0, 0.0, 0
    stack = out / "particles.mrcs"
    with atomic_output(stack) as tmp:
        with new_stack_mmap(tmp, stack, n, size) as m:
            m.voxel_size = first.apix
            offset, dt = 1024 + int(m.header.nsymbt), m.data.dtype
        frame = size * size * dt.itemsize
        with open(tmp, "r+b") as f:
            for s in range(0, n, chunk):
                e = min(n, s + chunk)
                if draws is None:
                    clean = first.render(
                        conf[s:e], theta[s:e], shift[s:e], rot[s:e] if tilt_deg else None
                    )
                else:
                    clean = sim.render_mixture(
                        len(objs), draws, np.arange(s, e), conf, theta, shift, size, centres_of,
                        lambda k, c, sg, a, t, u, rows: render_separable(c, sg, a, t, u, size),
                    )  # fmt: skip
                if params is not None:
                    x = torch.from_numpy(clean)[:, None]
                    clean = apply_ctf(x, params[s:e])[:, 0].numpy()
                signal = clean if draws is None else clean[draws.real[s:e]]
                n_real += len(signal)
                total += float(signal.sum(dtype=np.float64))
                total2 += float((signal.astype(np.float64) ** 2).sum())
                f.seek(offset + s * frame)
                f.write(np.ascontiguousarray(clean, dtype=dt).tobytes())
            count = n_real * size * size
            mean = total / count
            std = (
                float(np.sqrt(max(total2 / count - mean**2, 0.0) / snr)) if np.isfinite(snr) else 0
            )
            count = n * size * size
            lo, hi, s1, s2 = np.inf, -np.inf, 0.0, 0.0
            for s in range(0, n, chunk):
                e = min(n, s + chunk)
                f.seek(offset + s * frame)
                img = np.frombuffer(f.read((e - s) * frame), dtype=dt).astype(np.float32)
                if std > 0:
                    img = img + np.asarray(rng.normal(0.0, std, img.shape), dtype=np.float32)
                lo, hi = min(lo, float(img.min())), max(hi, float(img.max()))
                s1 += float(img.sum(dtype=np.float64))
                s2 += float((img.astype(np.float64) ** 2).sum())
                f.seek(offset + s * frame)
                f.write(np.ascontiguousarray(img, dtype=dt).tobytes())
        with mrcfile.mmap(tmp, mode="r+") as m:
            m.header.dmin, m.header.dmax, m.header.dmean = lo, hi, s1 / count
            m.header.rms = np.sqrt(max(s2 / count - (s1 / count) ** 2, 0.0))
    label = np.zeros(n, dtype=np.int64) if draws is None else draws.label
    truth = truth_table(objs, label, conf, theta, shift)
    if tilt_deg:
        truth["tilt_deg"], truth["tilt_axis_deg"] = tilt, tilt_axis
    if draws is not None:
        truth = sim.mixture_truth(draws, truth)
    if meta is not None:
        truth["defocus_um"] = meta.pop("defocus_um").to_numpy()
    truth.to_csv(out / "truth.csv", index=False, float_format="%.6f")
    table = table_to_star(sim.star_poses(truth), size, first.apix, meta, defaults=Optics())
    write_star(table, out / "particles.star")
    return stack


def truth_table(
    objs: Sequence[StructureObject],
    label: np.ndarray,
    conf: np.ndarray,
    theta: np.ndarray,
    shift: np.ndarray,
) -> pd.DataFrame:
    """The truth as :func:`emvae.simulate.truth_table` writes it: image i's pose relative to
    the consensus view of the coarse molecule of its class ``label[i]`` in the untilted view
    (:attr:`StructureObject.consensus`; a rigid molecule has conformation 0 and its body's
    pose), and the body's; rows of label -1 (no particle) are left NaN for
    :func:`emvae.simulate.mixture_truth` to empty."""
    n = len(label)
    c_out, t_out, s_out = np.full(n, np.nan), np.full(n, np.nan), np.full((n, 2), np.nan)
    for k, o in enumerate(objs):
        at = label == k
        if o.motion.rigid:
            c_out[at], t_out[at], s_out[at] = 0.0, wrap_degrees(theta[at]), shift[at]
        else:
            c_out[at] = conf[at]
            t_out[at], s_out[at] = sim.consensus_pose(
                o.coarse, conf[at], theta[at], shift[at], o.size, frame=o.consensus
            )
    return sim.truth_table("particles.mrcs", t_out, s_out, c_out, theta, shift)
