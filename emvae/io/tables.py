"""The per-particle table: CSV for people and scripts, HDF5 for large runs."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from emvae.errors import InputError
from emvae.safety import atomic_output


def write_table(df: pd.DataFrame, path: str | os.PathLike[str], run_id: str = "") -> None:
    """Write ``df`` as CSV, or as HDF5 when ``path`` ends in ``.h5``/``.hdf5`` (which also keeps
    the ``run_id`` of the fit that made it)."""
    p = Path(path)
    with atomic_output(p) as tmp:
        if p.suffix in (".h5", ".hdf5"):
            write_table_h5(df, tmp, run_id)
        else:
            df.to_csv(tmp, index=False, float_format="%.7g")


def write_table_h5(df: pd.DataFrame, path: str | os.PathLike[str], run_id: str = "") -> None:
    """One dataset per column under ``/particles``, column order in the group's attributes."""
    with h5py.File(path, "w") as f:
        g = f.create_group("particles")
        g.attrs["columns"] = list(df.columns)
        if run_id:
            g.attrs["run_id"] = run_id
        for col in df.columns:
            values = df[col].to_numpy()
            if values.dtype == object:
                g.create_dataset(
                    col, data=values.astype(str).astype(object), dtype=h5py.string_dtype()
                )
            else:
                g.create_dataset(col, data=values)


def _last_line(p: Path) -> bytes:
    """The file's last line, its line break included when it has one."""
    with open(p, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - 65536))
        tail = f.read()
    return tail[tail.rstrip(b"\n").rfind(b"\n") + 1 :]


def check_complete(p: Path, table: pd.DataFrame, star: bool = False, ours: bool = False) -> None:
    """Refuse a text table cut short (an interrupted copy or write). CSV: its last line holds
    fewer fields than the header (or, ``ours``: a file emvae writes, does not end: emvae ends
    every line). STAR (whitespace-separated): its last row lacks fields every other row has."""
    if len(table) == 0:
        return
    if star:
        last = table.iloc[-1].isna()
        before = table.iloc[:-1][last.index[last.to_numpy()]]
        cut, have = bool(last.any()) and not before.isna().any().any(), int((~last).sum())
    else:
        line = _last_line(p)
        have = len(next(csv.reader([line.decode("utf-8", "replace").rstrip("\r\n")]), []))
        cut = have < table.shape[1] or (ours and not line.endswith(b"\n"))
    if cut:
        with open(p, "rb") as f:
            lines = sum(1 for _ in f)
        raise InputError(
            p,
            f"the file is truncated at line {lines}: its last row has {have} of "
            f"{table.shape[1]} fields (an interrupted copy or write?)",
        )


def read_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a table written by :func:`write_table` (CSV or HDF5)."""
    p = Path(path)
    if not p.exists():
        raise InputError(p, "no such file")
    if p.suffix in (".h5", ".hdf5"):
        try:
            with h5py.File(p, "r") as f:
                g = f["particles"]
                cols = [str(c) for c in g.attrs["columns"]]
                run_id = str(g.attrs.get("run_id", ""))
                data = {}
                for c in cols:
                    v = g[c][()]
                    if v.dtype == object:
                        v = np.array([s.decode() if isinstance(s, bytes) else s for s in v])
                    data[c] = v
        except (OSError, KeyError) as e:
            raise InputError(p, f"not an emvae particle table ({e})") from None
        table = pd.DataFrame(data)
        table.attrs["run_id"] = run_id
        return table
    try:
        table = pd.read_csv(p)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(p, f"not a readable CSV table ({e})") from None
    check_complete(p, table)
    return table
