"""``emvae analyze`` (PCA, UMAP and clusters of a run's latent space) and ``emvae
convergence`` (poses, latents and clusters compared between kept checkpoints)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from emvae.analyze import analyze_run
from emvae.convergence import check_convergence
from emvae.run import ANALYZE, CONVERGENCE
from emvae_cli.common import DEVICE, DEVICE_HELP, SEED_MAX, arg, err_console, user_errors

Method = Literal["kmeans", "gmm"]


@user_errors
def analyze(
    run: Path = typer.Argument(..., help="A run directory (emvae fit -o)."),
    k: int = typer.Option(
        arg(analyze_run, "k"), "-k", "--clusters", min=1, help="Number of clusters."
    ),
    method: Method = typer.Option(
        arg(analyze_run, "method"),
        "--method",
        help="kmeans (scikit-learn KMeans) or gmm (Gaussian mixture).",
    ),
    umap: bool = typer.Option(
        False, "--umap", help="Also a 2-D UMAP of z (needs the umap-learn package)."
    ),
    seed: int = typer.Option(
        arg(analyze_run, "seed"), "--seed", min=0, max=SEED_MAX, help="Seed of the clustering."
    ),
    epoch: int | None = typer.Option(
        None,
        "--epoch",
        min=0,
        show_default=False,
        help="Analyse the checkpoint kept at this epoch (fit --checkpoint-every) instead of "
        f"the final table; every particle is encoded again (default -o RUN/{ANALYZE}/"
        "epoch_NNNN).",
    ),
    out: Path | None = typer.Option(
        None, "-o", "--out", show_default=False, help=f"Folder (default RUN/{ANALYZE})."
    ),
    force: bool = typer.Option(
        False, "--force", help="Replace an earlier analysis in -o (not files emvae did not write)."
    ),
) -> None:
    """Clusters of the particles in z (numbered by size, like RELION's classes) and PCA.

    Writes clusters.csv (image, input_row, cluster, PC1.., UMAP1, UMAP2), analyze.json, the
    generator's image at each cluster centre, each cluster's aligned average, scatter plots
    by cluster and density, and a walk along each principal component. An earlier analysis in
    RUN/analyze is replaced (in -o DIR with --force)."""
    result = analyze_run(run, out, k, method, umap, seed, force, epoch)
    dest = out or run / ANALYZE / ("" if epoch is None else f"epoch_{epoch:04d}")
    for note in result["notes"]:
        err_console.print(note, highlight=False, markup=False)
    sizes = ", ".join(f"{c}: {n}" for c, n in enumerate(result["cluster_sizes"], start=1))
    explained = ", ".join(f"{e:.0%}" for e in result["explained_variance_ratio"][:5])
    err_console.print(
        f"{result['k']} clusters ({result['method']}) of {result['particles']} particles: "
        f"{sizes}; PCA explained variance {explained}",
        highlight=False,
    )
    err_console.print(
        f"wrote {dest / 'clusters.csv'}, {dest / 'analyze.json'} and "
        f"{len(result['figures'])} figures",
        highlight=False,
    )


@user_errors
def convergence(
    run: Path = typer.Argument(..., help="A run directory (emvae fit -o)."),
    max_particles: int = typer.Option(
        arg(check_convergence, "max_particles"),
        "--max-particles",
        min=0,
        help="Particles encoded per checkpoint, drawn once with --seed (0: all).",
    ),
    k: int = typer.Option(
        arg(check_convergence, "k"), "-k", "--clusters", min=1, help="Clusters of z per epoch."
    ),
    method: Method = typer.Option(
        arg(check_convergence, "method"),
        "--method",
        help="kmeans (scikit-learn KMeans) or gmm (Gaussian mixture).",
    ),
    seed: int = typer.Option(
        arg(check_convergence, "seed"),
        "--seed",
        min=0,
        max=SEED_MAX,
        help="Seed of the particles drawn and of the clustering.",
    ),
    device: str = typer.Option(DEVICE, "--device", help=DEVICE_HELP),
    out: Path | None = typer.Option(
        None, "-o", "--out", show_default=False, help=f"Folder (default RUN/{CONVERGENCE})."
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Replace an earlier comparison in -o (not files emvae did not write).",
    ),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress display."),
) -> None:
    """Has the fit converged? Compare the checkpoints the fit kept (fit --checkpoint-every),
    each with the one before: the agreement of z (R^2 of an affine fit, z being defined up to
    sign and axes), the median difference of theta after the best global offset, the adjusted
    Rand index of k clusters of z, and the ELBO. Writes convergence.csv (one row per pair),
    convergence.png and convergence.json."""
    lines = check_convergence(run, out, max_particles, seed, k, method, device, force, not quiet)
    for line in lines:
        err_console.print(line, highlight=False)
