"""``emvae report`` and ``emvae montage``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import typer

from emvae import montage as mt
from emvae.errors import ConfigError, InputError
from emvae.io.stack import image_key
from emvae.latents import latent_columns
from emvae.report import MONTAGES, write_report
from emvae.run import MONTAGE, REPORT, Run, load_model
from emvae.safety import check_memory, claim_outputs, record_outputs
from emvae_cli.common import SEED_MAX, arg, err_console, user_errors


@user_errors
def report(
    run: Path = typer.Argument(..., help="A run directory (emvae fit -o)."),
    reference: Path | None = typer.Option(
        None,
        "--reference",
        show_default=False,
        help="Known poses/factors: a CSV with image (N@file), theta_deg, [shift_x_px, "
        "shift_y_px, numeric factors], or a STAR file from another program.",
    ),
    out: Path | None = typer.Option(
        None, "-o", "--out", show_default=False, help="Folder for the report (default RUN/report)."
    ),
    examples: int = typer.Option(
        arg(write_report, "examples"),
        "--examples",
        min=0,
        help="Held-out particles shown beside their reconstructions (0: none).",
    ),
    force: bool = typer.Option(
        False, "--force", help="Replace an earlier report in -o (never files emvae did not write)."
    ),
    partial: bool = typer.Option(
        False, "--partial", help="Accept a --reference naming only some of the run's particles."
    ),
) -> None:
    """Learning curves, histograms, latent scatter; agreement with a --reference.

    With --reference: circular correlation, angular error, shift and latent correlations.
    Writes PNGs, report.json and a self-contained report.html (numbered figures with units,
    example particles and their reconstructions, the run's montages, how the run was made)."""
    result = write_report(run, reference, out, examples, force, partial)
    dest = out or run / REPORT
    for key, frame in (("rotation", ""), ("rotation_body", " (body frame)")):
        rot = result.get(key)
        if rot:
            err_console.print(
                f"rotation vs reference{frame}: circular correlation "
                f"{rot['circular_correlation']:.3f}, median error {rot['median_error_deg']:.1f} "
                f"deg ({rot['median_error_with_flip_deg']:.1f} allowing a flip), "
                f"{result['matched']} particles matched",
                highlight=False,
            )
    shift = result.get("shift")
    if shift and "rms_error_px" in shift:
        err_console.print(
            f"shift vs reference: Pearson x {shift['pearson_x']:.3f}, y {shift['pearson_y']:.3f}; "
            f"after removing the centre offset ({shift['offset_x_px']:+.2f}, "
            f"{shift['offset_y_px']:+.2f}) px: RMS error {shift['rms_error_px']:.2f} px",
            highlight=False,
        )
    used = {u["name"]: u["used"] for u in result.get("latent_usage", [])}
    for name, columns in result.get("latent", {}).items():
        for column, r in columns.items():
            note = "" if used.get(name, True) else " (z unused: this correlation is noise)"
            err_console.print(
                f"{name} vs {column}: Pearson {r['pearson']:+.3f}, Spearman "
                f"{r['spearman']:+.3f}{note}",
                highlight=False,
            )
    for warning in result["warnings"]:
        err_console.print(warning, highlight=False, style="bold")
    err_console.print(
        f"wrote {dest / 'report.html'}, {dest / 'report.json'} and {len(result['figures'])} "
        "figures",
        highlight=False,
    )


@user_errors
def montage(
    source: Path = typer.Argument(..., help="A run directory or a checkpoint (.pt)."),
    out: Path | None = typer.Option(
        None, "-o", "--out", show_default=False, help="Folder (default RUN/montage)."
    ),
    pairs: int = typer.Option(
        4, "--pairs", min=1, help="Random pairs of test particles to interpolate."
    ),
    pair: list[str] | None = typer.Option(
        None, "--pair", show_default=False, help="A pair of image names 'A,B' (repeatable)."
    ),
    steps: int = typer.Option(
        arg(mt.interpolation, "steps"),
        "--steps",
        min=2,
        help="Interpolation steps (ends included).",
    ),
    grid: int = typer.Option(
        arg(mt.manifold, "n"), "--grid", min=1, help="Manifold grid size for 1-D / 2-D z."
    ),
    samples: int = typer.Option(
        arg(mt.prior_samples, "rows"), "--samples", min=1, help="Prior samples: an N x N grid."
    ),
    seed: int = typer.Option(
        arg(mt.prior_samples, "seed"),
        "--seed",
        min=0,
        max=SEED_MAX,
        help="Seed for pairs and prior samples.",
    ),
    gif: bool = typer.Option(
        True, "--gif/--no-gif", help="Animated GIF along the particles' main axis of z."
    ),
    gif_steps: int = typer.Option(
        24,
        "--gif-steps",
        min=2,
        help="GIF: steps along the path, ends included; it goes there and back, so the GIF "
        "has 2 x steps - 2 frames.",
    ),
    labels: bool = typer.Option(
        True,
        "--labels/--no-labels",
        help="Write each tile's z (and an observed particle's name and theta) beside it; "
        "--no-labels: the tiles alone.",
    ),
    force: bool = typer.Option(
        False, "--force", help="Replace earlier montages in -o (never files emvae did not write)."
    ),
) -> None:
    """Interpolations, manifold, prior samples, traversals and a GIF (PNG); with --pose
    affine/tps also a traversal of each pose parameter.

    Everything is the generator's mean at theta = 0, dx = 0. Manifold, traversals and the GIF
    span the range of z the run's particles cover (the prior's, given only a checkpoint)."""
    model, config, _ = load_model(source)
    owner = Run.of(source)
    run = None if owner is None else owner.path
    dest = out or ((run or source.parent) / MONTAGE)
    k, d = config.model.zdim, config.model.image_size
    for flag, tiles in (("--grid", grid ** min(k, 2)), ("--samples", samples**2)):
        # each tile as float64, and the picture drawn 2x2 per pixel (RGB), twice over
        need = 2 * tiles * (8 * config.model.channels * d * d + 3 * (2 * d + 4) ** 2)
        check_memory(need, f"montage {flag} {grid if flag == '--grid' else samples}")
    claim_outputs(dest, MONTAGES, force or out is None, "montages")
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        _montages(
            model,
            config,
            run,
            dest,
            written,
            pairs,
            pair,
            steps,
            grid,
            samples,
            seed,
            gif,
            gif_steps,
            labels,
        )
    finally:  # claim_outputs found no other files of these names: all are emvae's now
        record_outputs(dest, MONTAGES, config.run_id)
    err_console.print(
        f"wrote {', '.join(str(p) for p in written)}", highlight=False, soft_wrap=True
    )


def _montages(
    model,
    config,
    run,
    dest,
    written,
    pairs,
    pair,
    steps,
    grid,
    samples,
    seed,
    gif,
    gif_steps,
    labels,
) -> None:
    """montage's figures, into ``dest`` (each path appended to ``written``)."""
    k = config.model.zdim
    path_z = z_data = None
    if k == 0:
        written.append(mt.save_png(mt.prior_samples(model, 1, 1), dest / "canonical.png", 4))
    else:
        path_z = _pairs(run, model, pairs, pair or [], steps, seed, dest, written, labels)
        z_data = _posterior_means(run)  # grids span what the particles cover, not the prior
        if k <= 2:
            name, tiles = "manifold.png", mt.manifold(model, grid, z_data)
            tags = mt.manifold_labels(k, grid, z_data)
        else:
            name, tiles = "traversals.png", mt.traversals(model, z_data=z_data)
            tags = mt.traversal_labels(k, z_data=z_data)
        written.append(mt.save_png(tiles, dest / name, labels=tags if labels else None))
    if config.model.pose != "rigid":  # each pose parameter, next to z's traversals
        z_mid = None if z_data is None else torch.from_numpy(np.median(z_data, 0)).float()
        written.append(
            mt.save_png(
                mt.pose_traversals(model, z=z_mid),
                dest / "pose_traversals.png",
                labels=mt.pose_traversal_labels(model) if labels else None,
            )
        )
    if k:
        written.append(
            mt.save_png(
                mt.prior_samples(model, samples, samples, seed),
                dest / "prior_samples.png",
                labels=mt.prior_labels(k, samples, samples, seed) if labels else None,
            )
        )
        if gif:
            if z_data is not None:  # along the particles' main axis of variation
                path_z = mt.principal_path(z_data)
            elif path_z is None:  # no particles to walk between: along z1 of the prior
                path_z = torch.zeros(2, k)
                path_z[0, 0], path_z[1, 0] = -2.0, 2.0
            n = gif_steps
            t = torch.cat([torch.linspace(0, 1, n), torch.linspace(1, 0, n)[1:-1]])
            z = path_z[0] + t[:, None] * (path_z[1] - path_z[0])
            captions = [mt.z_lines(v, most=2) for v in z.tolist()] if labels else None
            written.append(
                mt.save_gif(
                    mt.decode_mean(model, z),
                    dest / "latent_motion.gif",
                    positions=t.numpy(),
                    captions=captions,
                )
            )


def _posterior_means(run: Path | None) -> np.ndarray | None:
    """The run's posterior means of z ``(N, K)``, or None without a run directory."""
    if run is None:
        return None
    table = Run.open(run).table()
    return table[latent_columns(table)].to_numpy(np.float64)


def _pairs(run, model, n_pairs, named, steps, seed, dest, written, labels=True):
    """Write interpolation.png; return the first pair's z ``(2, K)`` (or None)."""
    if run is None:
        if named:
            raise ConfigError("--pair needs the run directory (its particle table)")
        return None
    r = Run.open(run)
    table, config = r.table(), r.config
    zs = [f"z{i + 1}" for i in range(config.model.zdim)]
    keys = {image_key(n): i for i, n in enumerate(table["image"])}
    if named:
        idx = []
        for text in named:
            a, sep, b = text.partition(",")
            if not sep:
                raise ConfigError(f"--pair {text!r}: give two image names as 'A,B'")
            for name in (a, b):
                if image_key(name) not in keys:
                    raise InputError(run, f"has no particle {name}")
            idx.append((keys[image_key(a)], keys[image_key(b)]))
        idx = np.array(idx)
    else:
        pool = np.flatnonzero(table["split"].to_numpy() == "test") if "split" in table else []
        if len(pool) < 2:
            pool = np.arange(len(table))
        rng = np.random.default_rng(seed)
        idx = np.array([rng.choice(pool, 2, replace=False) for _ in range(n_pairs)])
    z = torch.tensor(table[zs].to_numpy(np.float32))
    z_a, z_b = z[idx[:, 0]], z[idx[:, 1]]
    try:  # table rows are the run's images in order (after --ind)
        observed = r.particles().images(idx.reshape(-1))
        observed = observed.reshape(len(idx), 2, *observed.shape[1:])
    except (InputError, ConfigError) as e:
        err_console.print(f"note: input images not shown ({e})", highlight=False)
        observed = None
    grid = mt.interpolation(model, z_a, z_b, observed, steps)
    if observed is not None and config.model.likelihood == "bernoulli":
        grid = grid.clamp(0, 1)
    ends = (0, -1) if observed is not None else ()
    names = None
    if labels and observed is not None:  # each observed end: its image index and theta
        names = [[_particle_lines(table.iloc[int(i)]) for i in (a, b)] for a, b in idx.tolist()]
    tags = mt.interpolation_labels(z_a, z_b, steps, names or ()) if labels else None
    written.append(mt.save_png(grid, dest / "interpolation.png", own_contrast=ends, labels=tags))
    return torch.stack([z_a[0], z_b[0]])


def _particle_lines(row) -> list[str]:
    """Caption of an observed particle: ``17@`` (its image number in its stack) and its θ."""
    k, _ = image_key(row["image"])
    return [f"{k}@", f"θ {float(row['theta_deg']):+.0f}°"]
