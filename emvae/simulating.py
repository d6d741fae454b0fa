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
    wrote = f"wrote {out / 'particles.mrcs'}, {out / 'particles.star'}, {out / 'truth.csv'}"
    if structure:  # an atomic model's projections (emvae.structure)
        weights = parse_weights(class_weights, len(structure) if len(structure) > 1 else classes)
        if scale_std + stretch_std + bend_std > 0:
            raise ConfigError("--scale-std, --stretch-std and --bend-std are for --object, not "
                              "--structure")  # fmt: skip
        objs = st.structure_objects(
            list(structure), size, apix, structure2, list(domains), hinge_deg, st.parse_view(view),
            classes,
        )  # fmt: skip
        st.write_structure_simulation(
            out, objs if len(objs) > 1 else objs[0], n, snr, shift_std, seed, df, astigmatism,
            tilt_deg, junk=junk, junk_kinds=kinds, class_weights=weights,
        )  # fmt: skip
        auto = " (auto)" if view.strip().lower() == "auto" else ""
        lines = [
            f"{o.name}: {len(o.z)} atoms, view rot {o.view[0]:.1f} tilt {o.view[1]:.1f} psi "
            f"{o.view[2]:.1f} deg{auto if k == 0 else ''}"
            for k, o in enumerate(objs)
        ]
        if len(objs) == 1 and junk == 0:
            return [f"{lines[0]}; {wrote}"]
        lines = [f"class {k}: {line}" for k, line in enumerate(lines)]
        return [*lines, f"{n} images, {round(junk * n)} junk ({', '.join(kinds)}); {wrote}"]
    if structure2 is not None or domains or tilt_deg > 0:
        raise ConfigError("--structure2, --domain and --tilt-deg need --structure")
    weights = parse_weights(class_weights, classes)  # the 2-D blob molecules (emvae.simulate)
    particles = class_objects(obj, object_seed, classes)
    write_simulation(
        out, n, size, snr, shift_std, seed, apix, df, particles if classes > 1 else particles[0],
        astigmatism, scale_std, stretch_std, bend_std, junk, kinds, weights,
    )  # fmt: skip
    if classes > 1 or junk > 0:
        names = ", ".join(p.name for p in particles)
        return [f"{n} images: classes {names}, {round(junk * n)} junk ({', '.join(kinds)})", wrote]
    return [wrote]
