"""``emvae analyze``: PCA, UMAP and clusters of a run's latent space."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from emvae.analyze import analyze_run
from emvae.run import ANALYZE
from emvae_cli.common import SEED_MAX, arg, err_console, user_errors

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
    out: Path | None = typer.Option(
        None, "-o", "--out", show_default=False, help=f"Folder (default RUN/{ANALYZE})."
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Replace an earlier analysis in -o (not files emvae did not write).",
    ),
) -> None:
    """Clusters of the particles in z (numbered by size, like RELION's classes) and PCA.

    Writes clusters.csv (image, input_row, cluster, PC1.., UMAP1, UMAP2), analyze.json, the
    generator's image at each cluster centre, each cluster's aligned average, scatter plots
    by cluster and density, and a walk along each principal component. An earlier analysis in
    RUN/analyze is replaced (in -o DIR with --force)."""
    result = analyze_run(run, out, k, method, umap, seed, force)
    dest = out or run / ANALYZE
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
