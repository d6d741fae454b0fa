"""What ``emvae info`` says about an input: format, size, pixel size and its origin, values."""

from __future__ import annotations

import numpy as np

from emvae.io.stack import ImageStack

SAMPLE = 2000  # value range from at most this many images, evenly spread


def describe(stack: ImageStack) -> list[tuple[str, str]]:
    """(label, text) lines describing ``stack``; reads at most :data:`SAMPLE` images."""
    n, c, d = len(stack), stack.channels, stack.size
    lines = [
        ("source", stack.source),
        ("format", stack.format),
        ("images", f"{n:,}"),
        (
            "image size",
            f"{d} x {d} px" + (f" (from {stack.input_size} px)" if stack.input_size else ""),
        ),
        ("channels", str(c)),
        ("dtype", str(np.dtype(stack.images.dtype))),
    ]
    if stack.apix:
        px = f"{stack.apix:.4g} A/px (from the {stack.apix_from})"
        if stack.scale != 1:
            px += f"; {stack.apix * stack.scale:.4g} A/px after preprocessing"
        lines.append(("pixel size", px))
    else:
        lines.append(("pixel size", "unknown (give --apix)"))
    files = [str(s.path) for s in getattr(stack.images, "parts", ()) if hasattr(s, "path")]
    if files:  # the stacks a STAR / .cs / .txt file named, as found (--datadir first)
        more = f", ... ({len(files)} files)" if len(files) > 3 else ""
        lines.append(("stacks read", ", ".join(files[:3]) + more))
    if stack.star_version:
        lines.append(("STAR version", f"RELION {stack.star_version}"))
    if stack.optics is not None:
        groups = stack.optics
        cols = [
            k
            for k in ("rlnOpticsGroup", "rlnImagePixelSize", "rlnImageSize", "rlnVoltage")
            if k in groups
        ]
        rows = "; ".join(
            ", ".join(f"{k.removeprefix('rln')}={r[k]}" for k in cols) for _, r in groups.iterrows()
        )
        lines.append(("optics groups", f"{len(groups)}: {rows}"))
    if stack.metadata is not None:
        cols = list(map(str, stack.metadata.columns))
        more = f" ... ({len(cols)} in all)" if len(cols) > 10 else ""
        lines.append(("metadata columns", ", ".join(cols[:10]) + more))
    if stack.preprocessed is not None:
        done = {k: v for k, v in stack.preprocessed.items() if v not in (None, False, 0, "none")}
        lines.append(("preprocessed", ", ".join(f"{k}={v}" for k, v in done.items()) or "-"))
    idx = np.unique(np.linspace(0, n - 1, min(n, SAMPLE)).astype(np.int64))
    values = np.asarray(stack.images[idx], dtype=np.float64)
    finite = np.isfinite(values)
    shown = "all images" if len(idx) == n else f"{len(idx)} images spread over the stack"
    if finite.any():
        v = values[finite]
        rng = f"{v.min():.4g} to {v.max():.4g}, mean {v.mean():.4g}, std {v.std():.4g} ({shown})"
    else:
        rng = "no finite values"
    if not finite.all():
        rng += f"; {int((~finite).sum())} NaN/infinite pixels"
    lines.append(("values", rng))
    gib = stack.nbytes_float32() / 2**30
    lines.append(("memory (float32)", f"{gib:.3g} GiB for the whole stack at this size"))
    for note in stack.notes:
        lines.append(("note", note))
    return lines
