"""Subsets of a run's particles, written back in the input's own format (``emvae select``).

A selection is made on the run's particle table (``particles.csv``: one row per fitted image)
by cluster (``RUN/analyze/clusters.csv`` from ``emvae analyze``), by a condition on the table's
columns (:mod:`emvae.query`: comparisons, and/or/not, arithmetic, a few functions; never
evaluated as Python) or by a list of input rows. What is written names the
selected particles by their ``input_row`` (0-based row of the run's input file: STAR or .cs
row, or position in the stack), so it applies to the input the run was fitted on:

* ``OUT.txt`` and ``OUT.npy``: the input rows, ascending (``emvae fit --ind``, cryoDRGN's
  ``--ind``);
* ``OUT.star`` (a RELION STAR input): the input's particle rows at those rows, every column,
  in the input's order, every other block (the optics table) as it was;
* ``OUT.cs`` (a cryoSPARC input): the input's structured array at those rows, same dtype.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emvae.config import RunConfig
from emvae.errors import ConfigError, InputError
from emvae.io import input_files, kind_by_suffix, read_indices
from emvae.io.stack import image_name, same_image
from emvae.query import condition_mask
from emvae.run import ANALYZE, OUTPUTS, Run
from emvae.safety import atomic_output, check_writable, refuse_existing, refuse_inputs_as_outputs

#: Where ``emvae analyze`` writes its per-particle clusters and embeddings.
CLUSTERS = Path(ANALYZE) / "clusters.csv"
#: Output suffixes; a given OUT ending in one of them is taken as its stem.
SUFFIXES = (".txt", ".npy", ".star", ".cs")

__all__ = [
    "CLUSTERS",
    "InputRows",
    "output_paths",
    "parse_clusters",
    "query_frame",
    "read_clusters",
    "read_input_rows",
    "select_rows",
    "select_run",
    "selected_input_rows",
    "write_selection",
]


# ----------------------------------------------------------------------------- selecting


def parse_clusters(text: str) -> list[int]:
    """``"1,3"`` -> ``[1, 3]`` (cluster numbers, 1-based as RELION's rlnClassNumber)."""
    try:
        numbers = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise ConfigError(
            f"--cluster {text!r}: expected cluster numbers separated by commas (1,3)"
        ) from None
    if not numbers:
        raise ConfigError("--cluster: name at least one cluster number")
    return sorted(set(numbers))


def read_clusters(run: str | os.PathLike[str]) -> pd.DataFrame | None:
    """``RUN/analyze/clusters.csv`` (columns ``image``, ``input_row``, ``cluster``, ``PC1``..,
    ``UMAP1``..), or None when ``emvae analyze`` has not written it."""
    path = Path(run) / CLUSTERS
    if not path.exists():
        return None
    from emvae.analyze import check_clusters

    check_clusters(run, path)
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(path, f"not a readable clusters table ({msg})") from None
    if "image" not in table:
        raise InputError(path, "has no image column to match the run's particles")
    if table["image"].duplicated().any():
        name = table["image"][table["image"].duplicated()].iloc[0]
        raise InputError(path, f"names particle {name} twice")
    if "cluster" in table:
        number = pd.to_numeric(table["cluster"], errors="coerce")
        bad = ~(number.notna() & (number >= 1) & (number == number.round()))
        if bad.any():
            row = int(np.argmax(bad.to_numpy()))
            raise InputError(
                path,
                f"line {row + 2}: cluster {table['cluster'].iloc[row]!r} is not a cluster "
                f"number (1, 2, ...)",
            )
    return table


def query_frame(table: pd.DataFrame, clusters: pd.DataFrame | None = None) -> pd.DataFrame:
    """The particle table with the columns of ``clusters`` (matched by ``image`` name, not by
    position) added; the table's own columns win where both have one. One row per table row,
    in the table's order."""
    frame = table.reset_index(drop=True)
    if clusters is None:
        return frame
    extra = [c for c in clusters.columns if c not in frame.columns]
    indexed = clusters.set_index(clusters["image"].astype(str))
    names = frame["image"].astype(str)
    missing = ~names.isin(indexed.index)
    if missing.any():
        raise InputError(
            CLUSTERS,
            f"has no row for {int(missing.sum())} of the run's {len(frame)} particles (first: "
            f"{names[missing].iloc[0]}); it was made from another fit: run emvae analyze again",
        )
    if not extra:
        return frame
    added = indexed.loc[names.to_numpy(), extra].reset_index(drop=True)
    return pd.concat([frame, added], axis=1)


def select_rows(
    table: pd.DataFrame,
    *,
    clusters: list[int] | None = None,
    query: str | None = None,
    indices: np.ndarray | None = None,
    invert: bool = False,
    cluster_table: pd.DataFrame | None = None,
) -> np.ndarray:
    """Sorted 0-based positions into ``table`` (a run's particle table) of the particles that
    exactly one criterion selects:

    * ``clusters``: cluster numbers (1-based) of ``cluster_table`` (``analyze/clusters.csv``,
      rows matched to the table by ``image`` name);
    * ``query``: a condition (:func:`emvae.query.condition_mask`) on the table's columns (``image``,
      ``input_row``, ``theta_deg``, ``shift_x_px``, ..., ``theta_prob``, ``z1``.., ``elbo``,
      ``split``) and, given ``cluster_table``, its columns (``cluster``, ``PC1``.., ...);
    * ``indices``: 0-based input rows, i.e. values of the table's ``input_row`` column.

    ``invert`` selects the run's other particles. Selecting none is an error.
    """
    _one_criterion(clusters, query, indices)
    n = len(table)
    if clusters is not None:
        if cluster_table is None:
            raise ConfigError("--cluster needs the run's clusters: run emvae analyze RUN first")
        if "cluster" not in cluster_table:
            raise InputError(CLUSTERS, "has no cluster column")
        frame = query_frame(table[["image"]], cluster_table[["image", "cluster"]])
        have = sorted({int(c) for c in frame["cluster"].dropna()})
        unknown = [c for c in clusters if c not in have]
        if unknown:
            raise ConfigError(
                f"--cluster: no cluster {', '.join(map(str, unknown))} in {CLUSTERS} "
                f"(it has {', '.join(map(str, have)) or 'none'})"
            )
        mask = frame["cluster"].isin(clusters).to_numpy(dtype=bool)
        what = f"--cluster {','.join(map(str, clusters))}"
    elif query is not None:
        mask = condition_mask(query_frame(table, cluster_table), query)
        what = f"--query {query!r}"
    else:
        if "input_row" not in table:
            raise InputError("(table)", "has no input_row column to match --indices against")
        rows = table["input_row"].to_numpy(np.int64)
        wanted = np.asarray(indices, dtype=np.int64)
        absent = wanted[~np.isin(wanted, rows)]
        if len(absent):
            raise ConfigError(
                f"--indices: input row {int(absent[0])} is not one of the run's {n} particles"
                + (f" ({len(absent)} such rows)" if len(absent) > 1 else "")
            )
        mask = np.isin(rows, wanted)
        what = "--indices"
    if invert:
        mask = ~mask
        what += " --invert"
    if not mask.any():
        raise ConfigError(f"{what} selects none of the run's {n} particles")
    return np.flatnonzero(mask)


def _one_criterion(cluster: object, query: object, indices: object) -> None:
    """Refuse, in one line, none or several of --cluster, --query and --indices."""
    options = {"--cluster": cluster, "--query": query, "--indices": indices}
    given = [name for name, value in options.items() if value is not None]
    if len(given) != 1:
        got = f" (got {', '.join(given)})" if given else ""
        raise ConfigError(f"give exactly one of --cluster, --query, --indices{got}")


def selected_input_rows(table: pd.DataFrame, positions: np.ndarray) -> np.ndarray:
    """The ``input_row`` values (0-based rows of the run's input) of the table rows at
    ``positions``, ascending: input order, as ``--ind`` lists are written."""
    if "input_row" not in table:
        raise InputError("(table)", "has no input_row column: not an emvae particle table?")
    return np.sort(table["input_row"].to_numpy(np.int64)[np.asarray(positions)])


# ----------------------------------------------------------------------------- the input


@dataclass
class InputRows:
    """The run's input file, read for writing a subset of it: ``kind`` "star" (``blocks``,
    with ``key`` the particle block) or "cs" (``array``), or "none" (index lists only)."""

    kind: str
    path: Path | None = None
    blocks: dict[str, Any] = field(default_factory=dict[str, Any])
    key: str = ""
    version: str = ""
    array: np.ndarray | None = None
    note: str = ""

    @property
    def suffix(self) -> str | None:
        """The suffix of the input's own subset (.star or .cs), or None (index lists only)."""
        return {"star": ".star", "cs": ".cs"}.get(self.kind)


def _text(b: bytes | str) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else str(b)


def _check_rows(
    path: Path, names: list[str], table: pd.DataFrame, n_run: int, ind: str | None
) -> None:
    """The input must still hold the rows the run was fitted on, named as the table names
    them."""
    n = len(names)
    rows = table["input_row"].to_numpy(np.int64)
    if ind is None and n_run and n != n_run:
        raise InputError(
            path, f"now holds {n} particles but the run was fitted on {n_run}: it has changed"
        )
    if len(rows) and rows.max() >= n:
        raise InputError(
            path,
            f"holds {n} particles but the run's table names input row {int(rows.max())} "
            "(0-based): it has changed",
        )
    images = table["image"].astype(str).to_numpy()
    now = np.asarray(names, dtype=object)[rows]
    for k in np.flatnonzero(images != now):  # spelt alike, or the same image spelt apart?
        row, image = int(rows[k]), images[k]
        if not same_image(image, names[row]):
            raise InputError(
                path,
                f"row {row} is now {names[row]} but the run's particle {k + 1} was {image}: "
                "the file has changed since the fit",
            )


def read_input_rows(config: RunConfig, table: pd.DataFrame) -> InputRows:
    """The run's input (``config``: its RunConfig; ``table``: its particle table) when it was
    one RELION STAR or cryoSPARC .cs file, checked to still hold the fitted rows; otherwise
    ``kind="none"``."""
    paths = list(config.data.paths)
    if not paths:
        return InputRows("none", note="the run does not record its input")
    first = Path(paths[0])
    kind = kind_by_suffix(first)
    if kind not in ("star", "cs"):
        return InputRows("none")
    if len(paths) > 1:
        return InputRows("none", note=f"the run read {len(paths)} inputs: index lists only")
    if not first.exists():
        raise InputError(first, "no such file (the run's input; is this the folder it ran in?)")
    n_run, ind = config.data.n_images, config.data.ind
    if kind == "star":
        from emvae.io.star import particle_block, read_star_blocks

        blocks = read_star_blocks(first)
        particles, _, version = particle_block(first, blocks)
        key = next(k for k, v in blocks.items() if v is particles)
        names = particles["rlnImageName"].astype(str).tolist()
        _check_rows(first, names, table, n_run, ind)
        return InputRows("star", first, blocks=blocks, key=key, version=version)
    from emvae.io.cryosparc import load_cs_table

    array = load_cs_table(first)  # NumPy or CSDAT layout; a subset is written as NumPy
    fields = getattr(array.dtype, "names", None) or ()
    if array.ndim != 1 or not {"blob/path", "blob/idx"} <= set(fields):
        raise InputError(first, "is not a cryoSPARC particle file (no blob/path, blob/idx)")
    names = [
        image_name(int(i) + 1, _text(p).lstrip(">"))
        for i, p in zip(array["blob/idx"], array["blob/path"], strict=True)
    ]
    _check_rows(first, names, table, n_run, ind)
    return InputRows("cs", first, array=array)


# ----------------------------------------------------------------------------- writing


def output_paths(out: str | os.PathLike[str], suffix: str | None) -> list[Path]:
    """``OUT.txt``, ``OUT.npy`` and ``OUT`` + ``suffix`` (".star"/".cs"/None) for the stem
    ``OUT`` (a given ``OUT.txt``, ``.npy``, ``.star``, ``.cs`` is taken as its stem)."""
    p = Path(out)
    if p.suffix.lower() in SUFFIXES:
        p = p.with_suffix("")
    exts = [".txt", ".npy", *([suffix] if suffix else [])]
    return [p.with_name(p.name + e) for e in exts]


def _float(v: float) -> str:
    """RELION's 6 decimals where they are exact, else the shortest text that reads back the
    same float: a subset keeps every input value."""
    s = f"{v:.6f}"
    return s if float(s) == v else repr(float(v))


def write_selection(
    rows: np.ndarray, out: str | os.PathLike[str], source: InputRows, force: bool = False
) -> list[Path]:
    """Write the selection of 0-based input ``rows`` (ascending) under the stem ``out``: the
    index lists and, for a STAR or .cs input, its subset. Every file is written atomically and
    only once all are complete are they renamed into place; existing files are refused
    unless ``force``. Returns the paths written."""
    paths = output_paths(out, source.suffix)
    refuse_existing(paths, force)
    rows = np.asarray(rows, dtype=np.int64)
    with contextlib.ExitStack() as stack:
        tmp = [stack.enter_context(atomic_output(p)) for p in paths]
        tmp[0].write_text("".join(f"{r}\n" for r in rows))
        with open(tmp[1], "wb") as f:
            np.save(f, rows)
        if source.kind == "star":
            from emvae.io.star_export import write_star

            blocks = dict(source.blocks)
            blocks[source.key] = blocks[source.key].iloc[rows].reset_index(drop=True)
            write_star(blocks, tmp[2], float_format=_float)
        elif source.kind == "cs":
            assert source.array is not None
            with open(tmp[2], "wb") as f:  # np.save(path) would append .npy
                np.save(f, source.array[rows])
    return paths


# ----------------------------------------------------------------------------- emvae select


def select_run(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    cluster: str | None = None,
    query: str | None = None,
    indices: str | os.PathLike[str] | None = None,
    invert: bool = False,
    force: bool = False,
) -> str:
    """``emvae select``: select particles of the run in ``run_dir`` by exactly one of
    ``cluster`` ("1,3": 1-based clusters of ``RUN/analyze/clusters.csv``), ``query`` (a
    condition on the table's columns, :mod:`emvae.query`) or ``indices`` (a file of 0-based
    input rows: .txt, .npy or cryoDRGN .pkl); ``invert`` keeps the others. Writes the
    selection under the stem ``out`` (:func:`write_selection`) and returns the line that says
    what was written."""
    _one_criterion(cluster, query, indices)
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
    wanted = None if indices is None else read_indices(indices, _row_count(source, table, config))
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
    return f"wrote {names}: {len(rows)} of {len(table)} particles{what.get(source.kind, '')}{note}"


def _row_count(source: InputRows, table: pd.DataFrame, config: RunConfig) -> int:
    """How many rows the run's input has (an index beyond is refused): a STAR or .cs file's;
    a stack's is the run's when it fitted all of it, else unknown (a bound no index reaches)."""
    if source.kind == "star":
        return len(source.blocks[source.key])
    if source.kind == "cs":
        return len(source.array) if source.array is not None else 0
    return len(table) if config.data.ind is None else 2**62
