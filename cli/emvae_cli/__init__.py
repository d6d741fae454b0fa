"""The ``emvae`` command line (a thin Typer layer over the :mod:`emvae` library)."""
