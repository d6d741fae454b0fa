"""What ``emvae simulate`` does: its options checked, the 2-D blob molecules
(:mod:`emvae.simulate`) or an atomic model's projections (:mod:`emvae.structure`) written, and
the lines it prints at the end (:func:`simulate_stack`).

Its own module because it uses both: :mod:`emvae.structure` draws on :mod:`emvae.simulate`,
so neither can hold the choice between them without a cycle."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from emvae import structure as st
from emvae.config import physical
from emvae.errors import ConfigError
from emvae.safety import check_memory, refuse_existing
from emvae.simulate import (
    JUNK_KINDS,
    class_objects,
    parse_junk_kinds,
    parse_weights,
    write_simulation,
)

Defocus = float | tuple[float, float] | None


def defocus_range(text: str) -> float | tuple[float, float]:
    """``--ctf 1.5`` or ``--ctf 0.8:2.5`` (um)."""
    try:
        values = [float(v) for v in text.split(":")]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or not all(v > 0 for v in values) or values[0] > values[-1]:
        raise ConfigError(f"--ctf {text!r}: give a defocus in um (1.5) or a range (0.8:2.5)")
    return values[0] if len(values) == 1 else (values[0], values[1])


def simulate_stack(
    out: Path, *, n: int = 1000, size: int = 40, snr: float = 1.0, shift_std: float = 2.0,
    apix: float = 1.0, defocus: str | None = None, astigmatism: float = 0.0, seed: int = 0,
    obj: str = "hinge", object_seed: int = 0, scale_std: float = 0.0, stretch_std: float = 0.0,
    bend_std: float = 0.0, structure: Sequence[Path] = (), structure2: Path | None = None,
    domains: Sequence[str] = (), hinge_deg: float = 30.0, view: str = "auto",
    tilt_deg: float = 0.0, classes: int = 1, class_weights: str | None = None,
    junk: float = 0.0, junk_kinds: str = ",".join(JUNK_KINDS), force: bool = False,
) -> list[str]:  # fmt: skip
    """``emvae simulate``, its options as the command line gives them: particles.mrcs, .star
    and truth.csv written to ``out``; the lines that say what was written, returned. One line
    (:class:`ConfigError`) for an option out of range, before any work."""
    refuse_existing(out / "particles.mrcs", force)
    if n < 1 or size < 8 or not snr > 0:
        raise ConfigError("need -n >= 1, --size >= 8 and --snr > 0")
    physical("--apix", apix)
    check_memory(4 * n * size * size * 4, f"simulate -n {n} --size {size}")  # ~4 copies
    df = None if defocus is None else defocus_range(defocus)
    kinds = parse_junk_kinds(junk_kinds)
    if structure:
        k = len(structure) if len(structure) > 1 else classes
        return _structure(
            out, list(structure), structure2, list(domains), hinge_deg, view, tilt_deg, n, size,
            snr, shift_std, apix, df, astigmatism, seed, scale_std + stretch_std + bend_std > 0,
            classes, parse_weights(class_weights, k), junk, kinds,
        )  # fmt: skip
    if structure2 is not None or domains or tilt_deg > 0:
        raise ConfigError("--structure2, --domain and --tilt-deg need --structure")
    return _blobs(
        out, obj, object_seed, classes, class_weights, n, size, snr, shift_std, seed, apix,
        df, astigmatism, scale_std, stretch_std, bend_std, junk, kinds,
    )  # fmt: skip


def _blobs(
    out: Path, obj: str, object_seed: int, classes: int, class_weights: str | None, n: int,
    size: int, snr: float, shift_std: float, seed: int, apix: float, df: Defocus,
    astigmatism: float, scale_std: float, stretch_std: float, bend_std: float, junk: float,
    kinds: tuple[str, ...],
) -> list[str]:  # fmt: skip
    """The 2-D blob molecules (:mod:`emvae.simulate`)."""
    weights = parse_weights(class_weights, classes)
    particles = class_objects(obj, object_seed, classes)
    stack = write_simulation(
        out, n, size, snr, shift_std, seed, apix, df, particles if classes > 1 else particles[0],
        astigmatism, scale_std, stretch_std, bend_std, junk, kinds, weights,
    )  # fmt: skip
    lines = []
    if classes > 1 or junk > 0:
        lines.append(
            f"{n} images: classes {', '.join(p.name for p in particles)}, "
            f"{round(junk * n)} junk ({', '.join(kinds)})"
        )
    return [*lines, f"wrote {stack}, {out / 'particles.star'}, {out / 'truth.csv'}"]


def _structure(
    out: Path, structure: list[Path], structure2: Path | None, domains: list[str],
    hinge_deg: float, view: str, tilt_deg: float, n: int, size: int, snr: float,
    shift_std: float, apix: float, df: Defocus, astigmatism: float, seed: int, deformed: bool,
    classes: int, weights: tuple[float, ...] | None, junk: float, kinds: tuple[str, ...],
) -> list[str]:  # fmt: skip
    """``--structure``: an atomic model's projections (:mod:`emvae.structure`)."""
    if deformed:
        raise ConfigError("--scale-std, --stretch-std and --bend-std are for --object, not "
                          "--structure")  # fmt: skip
    objs = st.structure_objects(
        structure, size, apix, structure2, domains, hinge_deg, st.parse_view(view), classes
    )
    stack = st.write_structure_simulation(
        out, objs if len(objs) > 1 else objs[0], n, snr, shift_std, seed, df, astigmatism,
        tilt_deg, junk=junk, junk_kinds=kinds, class_weights=weights,
    )  # fmt: skip
    auto = " (auto)" if view.strip().lower() == "auto" else ""
    wrote = f"wrote {stack}, {out / 'particles.star'}, {out / 'truth.csv'}"
    if len(objs) == 1 and junk == 0:
        rot, tilt, psi = objs[0].view
        return [
            f"{objs[0].name}: {len(objs[0].z)} atoms, view rot {rot:.1f} tilt {tilt:.1f} psi "
            f"{psi:.1f} deg{auto}; {wrote}"
        ]
    lines = []
    for k, obj in enumerate(objs):
        rot, tilt, psi = obj.view
        lines.append(
            f"class {k}: {obj.name}: {len(obj.z)} atoms, view rot {rot:.1f} tilt {tilt:.1f} "
            f"psi {psi:.1f} deg{auto if k == 0 else ''}"
        )
    return [*lines, f"{n} images, {round(junk * n)} junk ({', '.join(kinds)}); {wrote}"]
