"""``emvae explore`` (the latent explorer in the browser) and ``emvae export-onnx``."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import typer

from emvae.explore import HOST, PORT
from emvae.render import export_run
from emvae_cli.common import DEVICE, DEVICE_HELP, arg, err_console, user_errors


@user_errors
def explore(
    run: Path = typer.Argument(
        ..., help="A run directory (emvae fit -o), or a folder of runs (a menu on the page)."
    ),
    port: int = typer.Option(PORT, "--port", min=1, max=65535, help="Port to listen on."),
    host: str = typer.Option(
        HOST,
        "--host",
        help="Address to listen on; the default is this machine only (0.0.0.0: every "
        "network interface, without any password).",
    ),
    device: str = typer.Option(DEVICE, "--device", help=DEVICE_HELP),
    out: Path | None = typer.Option(
        None,
        "-o",
        "--out",
        show_default=False,
        help="Folder for saved selections (default RUN/explore).",
    ),
) -> None:
    """Explore a run in the browser: the latent scatter coloured by any column, a particle's
    image, reconstruction and pose-free rendering on a click, sliders that move the
    generator through z, theta and the shift, and selections saved as index lists for
    emvae select --indices and emvae fit --ind. Stops with Ctrl+C."""
    from emvae.explore_app import serve_explorer  # FastAPI is imported for this command only

    serve_explorer(
        run, host, port, device, out, say=typer.echo,
        warn=partial(err_console.print, highlight=False),
    )  # fmt: skip


@user_errors
def export_onnx(
    run: Path = typer.Argument(..., help="A run directory or a checkpoint (.pt)."),
    out: Path = typer.Option(..., "-o", "--out", help="The ONNX file to write."),
    opset: int = typer.Option(
        arg(export_run, "opset"), "--opset", min=18, help="ONNX opset version."
    ),
    check: bool = typer.Option(
        True, "--check/--no-check", help="Run the file in onnxruntime and compare with torch."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Export the generator as ONNX: inputs z (batch, K), theta_deg (batch,) and shift_px
    (batch, 2), output image (batch, C, D, D), batch dynamic. theta_deg turns the canonical
    view counter-clockwise (the particle table's theta_deg); shift_px moves its centre, in
    model pixels, +x right, +y up; the image is the generator's pixel mean (normalised units,
    or probabilities for a Bernoulli model), without CTF."""
    err_console.print(export_run(run, out, opset, check, force), highlight=False, soft_wrap=True)
