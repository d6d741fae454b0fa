"""``emvae select``: a subset of a run's particles, as index lists and in the input's format."""

from __future__ import annotations

from pathlib import Path

import typer

from emvae.errors import ConfigError
from emvae.io import input_files, read_indices
from emvae.run import OUTPUTS, Run
from emvae.safety import check_writable, refuse_existing, refuse_inputs_as_outputs
from emvae.select import (
    CLUSTERS,
    output_paths,
    parse_clusters,
    read_clusters,
    read_input_rows,
    select_rows,
    selected_input_rows,
    write_selection,
)
from emvae_cli.common import err_console, user_errors


@user_errors
def select(
    run_dir: Path = typer.Argument(..., help="A run directory (particles.h5 + config.json)."),
    out: Path = typer.Option(
        ...,
        "-o",
        "--out",
        help="Stem of the outputs: OUT.txt and OUT.npy (0-based input rows), and OUT.star or "
        "OUT.cs when the run's input was a STAR or cryoSPARC file.",
    ),
    cluster: str | None = typer.Option(
        None,
        "--cluster",
        show_default=False,
        help="Clusters to keep, 1-based, comma separated (1,3), from RUN/analyze/clusters.csv "
        "(emvae analyze).",
    ),
    query: str | None = typer.Option(
        None,
        "--query",
        show_default=False,
        help="A condition on the particle table's columns ('z1 > 0.5 and theta_prob > 0.9', "
        "'cluster in [1, 3]', 'abs(z2) < 1'); analyze/clusters.csv's columns too when present. "
        "Comparisons, and/or/not, arithmetic and a few functions; never run as Python.",
    ),
    indices: Path | None = typer.Option(
        None,
        "--indices",
        show_default=False,
        help="0-based input rows to keep (values of the table's input_row; .txt, .npy or "
        "cryoDRGN .pkl).",
    ),
    invert: bool = typer.Option(False, "--invert", help="Keep the run's other particles."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
) -> None:
    """Select particles of a run by cluster, condition or index list; write their input rows
    (for fit --ind and cryoDRGN --ind) and the input's own STAR or .cs rows."""
    options = {"--cluster": cluster, "--query": query, "--indices": indices}
    given = [name for name, value in options.items() if value is not None]
    if len(given) != 1:
        got = f" (got {', '.join(given)})" if given else ""
        raise ConfigError(f"give exactly one of --cluster, --query, --indices{got}")
    run = Run.open(run_dir)
    table = run.table()
    config = run.config
    source = read_input_rows(config, table)
    paths = output_paths(out, source.suffix)
    inputs = [
        *input_files(config.data.paths, table["image"].astype(str)),
        *(run.path / name for name in OUTPUTS),
        run.path / CLUSTERS,
        *([indices] if indices is not None else []),
    ]
    refuse_inputs_as_outputs(paths, inputs)
    refuse_existing(paths, force)
    check_writable(paths[0].parent)
    clusters = read_clusters(run.path)
    if cluster is not None and clusters is None:
        raise ConfigError(
            f"{run.path / CLUSTERS}: not found; --cluster needs the run's clusters: run "
            f"emvae analyze {run_dir} first"
        )
    wanted = None
    if indices is not None:
        if source.kind == "star":
            n = len(source.blocks[source.key])
        elif source.kind == "cs":
            n = len(source.array) if source.array is not None else 0
        else:  # a stack: its size is the run's when it fitted all of it
            n = len(table) if config.data.ind is None else 2**62
        wanted = read_indices(indices, n)
    positions = select_rows(
        table,
        clusters=parse_clusters(cluster) if cluster is not None else None,
        query=query,
        indices=wanted,
        invert=invert,
        cluster_table=clusters,
    )
    rows = selected_input_rows(table, positions)
    written = write_selection(rows, out, source, force)
    names = ", ".join([str(written[0]), *(p.suffix for p in written[1:])])
    what = {"star": f" (RELION {source.version} STAR rows)", "cs": " (cryoSPARC rows)"}
    note = f"; {source.note}" if source.note else ""
    err_console.print(
        f"wrote {names}: {len(rows)} of {len(table)} particles{what.get(source.kind, '')}{note}",
        highlight=False,
        soft_wrap=True,
    )
