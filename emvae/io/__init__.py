"""Readers and writers. :func:`read_stack` picks the reader by the file's suffix."""

from __future__ import annotations

import os
from pathlib import Path

from emvae.errors import InputError
from emvae.io.mrc import MRC_SUFFIXES, read_mrc, write_mrc
from emvae.io.stack import ImageStack
from emvae.io.tables import read_table, write_table


def read_stack(path: str | os.PathLike) -> ImageStack:
    """Open an image stack lazily, choosing the reader by suffix."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in MRC_SUFFIXES:
        return read_mrc(p)
    if not p.exists():
        raise InputError(p, "no such file")
    raise InputError(
        p, f"unknown suffix {suffix or '(none)'!r}; emvae reads {', '.join(MRC_SUFFIXES)}"
    )


__all__ = ["ImageStack", "read_mrc", "read_stack", "read_table", "write_mrc", "write_table"]
